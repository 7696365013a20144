"""recforge as a user gets it: a wheel built from this checkout, installed into a fresh virtual
environment, run from a folder outside the checkout (presets and feature specs must come from the
package, not from the source tree)."""

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from faults import REPO


def run(*args, cwd, env) -> subprocess.CompletedProcess:
    done = subprocess.run([*map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{args}: {done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel")
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("RECFORGE_")
    }
    env["OMP_NUM_THREADS"] = "1"
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        root / "dist",
        REPO,
        cwd=root,
        env=env,
    )
    (wheel,) = (root / "dist").glob("recforge-*.whl")
    venv.create(root / "env", with_pip=True)
    python = root / "env" / "bin" / "python"
    # The dependencies (torch and the rest) come from this interpreter's environment, not the
    # network: a .pth line adds its site-packages after the fresh environment's own.
    site = Path(
        run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=root, env=env).stdout.strip()
    )
    ours = [path for path in sys.path if path.endswith(("site-packages", "dist-packages"))]
    (site / "deps.pth").write_text("".join(f"{path}\n" for path in ours))
    run(python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel, cwd=root, env=env)
    work = root / "elsewhere"
    work.mkdir()
    return root / "env" / "bin" / "recforge", python, work, env


def test_the_wheel_runs_outside_the_checkout(installed):
    recforge, python, work, env = installed
    where = run(python, "-c", "import recforge; print(recforge.__file__)", cwd=work, env=env).stdout
    assert str(work.parent / "env") in where and str(REPO) not in where
    assert run(recforge, "--version", cwd=work, env=env).stdout.startswith("recforge 0.")
    assert "quickstart" in run(recforge, "presets", cwd=work, env=env).stdout
    # The quickstart preset by name, on a small cut of its dataset.
    run(
        recforge,
        "train",
        "--config",
        "quickstart",
        "--synthetic-users",
        300,
        "--synthetic-items",
        400,
        "--synthetic-interactions",
        12000,
        "--epochs",
        1,
        "--cache-dir",
        work / "cache",
        "--output-dir",
        work / "run",
        cwd=work,
        env=env,
    )
    summary = json.loads((work / "run" / "summary.json").read_text())
    assert summary["metrics"]["HR@10"] > 0 and summary["baseline"]["model"] == "popularity"
    # Its bundle, from the installed package (the serving layer and torch.export).
    checkpoint = work / "run" / "checkpoints" / "best.pt"
    run(
        recforge,
        "export",
        "--checkpoint",
        checkpoint,
        "--out",
        work / "bundle",
        "--format",
        "torch-export",
        cwd=work,
        env=env,
    )
    manifest = json.loads((work / "bundle" / "manifest.json").read_text())
    assert manifest["model"] == "neumf" and manifest["equivalence"]["torch-export"]["max_abs_difference"] <= 1e-5
    # The Outbrain preparer reads its feature spec from the package.
    run(
        recforge,
        "prepare",
        "outbrain-synthetic",
        "--synthetic-displays",
        300,
        "--out",
        work / "outbrain",
        cwd=work,
        env=env,
    )
    assert (work / "outbrain" / "meta.json").is_file()
