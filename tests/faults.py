"""Helpers of the fault-matrix tests: run the CLI as a user would, check it failed as promised."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def run_cli(*args, cwd: Path | None = None, env: dict | None = None, timeout: float = 300) -> Result:
    """`python -m recforge ARGS` in a child process (threads 1), as a user's shell would run it,
    forked from a process that has imported torch already (tests/zygote.py)."""
    request = {
        "args": list(map(str, args)),
        "cwd": str(Path(cwd or os.getcwd()).resolve()),
        "env": _environment(env or {}),
        "timeout": timeout,
    }
    with tempfile.TemporaryDirectory() as folder, _zygote_lock:
        request["stdout"], request["stderr"] = (str(Path(folder, name)) for name in ("stdout", "stderr"))
        reply = _zygote().ask(request)
        if reply.get("timeout"):
            raise subprocess.TimeoutExpired(["recforge", *request["args"]], timeout)
        return Result(reply["code"], Path(request["stdout"]).read_text(), Path(request["stderr"]).read_text())


def _environment(extra: dict) -> dict[str, str]:
    """This process's environment without RECFORGE_ settings, one thread, the checkout's source, `extra`."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("RECFORGE_")}
    fixed = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    return {**inherited, **fixed, **{k: str(v) for k, v in extra.items()}}


class _Zygote:
    def __init__(self):
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "zygote.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_environment({}),
            text=True,
        )

    def ask(self, request: dict) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())


_zygote_lock = threading.Lock()
_running: _Zygote | None = None


def _zygote() -> _Zygote:
    """This test process's zygote, started at the first command (again if it died, which it never should)."""
    global _running
    if _running is None or _running.process.poll() is not None:
        _running = _Zygote()
    return _running


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


def prepared_files(out: Path) -> dict[str, str]:
    """sha256 of every file of a prepared folder but prepare.json (how the run went), by path inside it."""
    return {k.split(f"{out.name}/", 1)[1]: v for k, v in snapshot(out).items() if not k.endswith("prepare.json")}


def assert_interrupted_preparation_continues(tmp_path: Path, monkeypatch, prepare, step: str, finished: int):
    """`prepare(out, log)` (the pass engine's worker tasks `engine._task(op, ...)`, run in this process) is
    interrupted (Ctrl-C) as task `finished + 1` of pass `step` starts, then run again: its folder
    and journal are kept in between; the second run redoes none of the earlier passes' tasks, only
    the interrupted pass's others and every later one, to a folder byte-identical to an
    uninterrupted run's (prepare.json aside), nothing left beside it."""
    from recforge.prepare import engine, journal

    calls: dict[str, int] = {}
    interrupt, task = False, engine._task

    def counted(op, *args):  # and interrupted at the chosen task, when `interrupt`
        calls[op] = calls.get(op, 0) + 1
        if interrupt and op == step and calls[op] == finished + 1:
            raise KeyboardInterrupt
        return task(op, *args)

    monkeypatch.setattr(engine, "_task", counted)
    prepare(tmp_path / "reference", lambda *_: None)
    tasks, calls = calls, {}
    passes = list(tasks)  # in the order they ran
    assert step in passes, (step, passes)
    monkeypatch.setattr(journal, "JOURNAL_SECONDS", 0.0)  # a journal entry after every task
    interrupt, out = True, tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        prepare(out, lambda *_: None)
    assert not out.exists()
    [kept] = tmp_path.glob(".out.resumable-*")
    assert (kept / "journal.json").is_file()
    interrupt, calls, logged = False, {}, []
    prepare(out, logged.append)
    assert any("continuing the interrupted preparation" in line for line in logged), logged
    for op in passes:  # the passes before: nothing again; the interrupted one: its other tasks
        before, after = passes.index(op) < passes.index(step), passes.index(op) > passes.index(step)
        assert calls.get(op, 0) == (0 if before else tasks[op] if after else tasks[op] - finished), (op, calls, tasks)
    assert prepared_files(out) == prepared_files(tmp_path / "reference")
    assert not list(tmp_path.glob(".out.*"))
