"""Helpers of the fault-matrix tests: run the CLI as a user would, check it failed as promised."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def run_cli(*args, cwd: Path | None = None, env: dict | None = None, timeout: float = 300) -> Result:
    """`python -m recforge ARGS` in a child process (threads 1), as a user's shell would run it."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("RECFORGE_")}
    full_env = {
        **inherited,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO / "src"),
        **{k: str(v) for k, v in (env or {}).items()},
    }
    done = subprocess.run(
        [sys.executable, "-m", "recforge", *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def assert_user_error(result: Result, *needles: str, code: int = 2) -> str:
    """Exit `code`, exactly one stderr line `recforge: error: ...` holding every needle, no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.code == code, f"exit {result.code}, stderr:\n{result.stderr}\nstdout:\n{result.stdout[-2000:]}"
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in lines if line.startswith("recforge: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], f"expected one error line, got:\n{result.stderr}"
    for needle in needles:
        assert str(needle) in errors[0], f"{needle!r} not in: {errors[0]}"
    return errors[0]


def snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every file under `roots` (paths relative to each root's parent), for byte-identity checks."""
    files = {}
    for root in roots:
        root = Path(root)
        if root.is_file():
            files[str(root)] = hashlib.sha256(root.read_bytes()).hexdigest()
            continue
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            files[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files
