import os
import sys
import tempfile
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_configure(config):
    # Measured GEMM choices (recforge.runtime.gemm) go to one folder per test session, shared by
    # xdist's workers and the processes tests start, not the user's ~/.cache.
    os.environ.setdefault("RECFORGE_CACHE_DIR", tempfile.mkdtemp(prefix="recforge-tests-cache-"))


def tiny_synthetic_args(tmp_path: Path, **overrides) -> list[str]:
    """CLI flags for a few-second NeuMF run on a small synthetic dataset."""
    flags = {
        "dataset": "synthetic",
        "synthetic-users": 151,
        "synthetic-items": 300,
        "synthetic-interactions": 6000,
        "cache-dir": tmp_path / "cache",
        "output-dir": tmp_path / "run",
        "epochs": 3,
        "batch-size": 1024,
        "num-factors": 8,
        "layers": "32,16,8",
        "threads": 1,
        "learning-rate": 0.01,
    }
    flags.update({k.replace("_", "-"): v for k, v in overrides.items()})
    return [x for k, v in flags.items() for x in (f"--{k}", str(v))]


@pytest.fixture
def python():
    return sys.executable


def torchrun_command(master_port: int, processes: int = 2, torchrun_flags: tuple[str, ...] = ()) -> list[str]:
    """`torchrun --nproc-per-node N -m recforge` on a fixed port (tests in one run must not share one)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(processes),
        "--master-port",
        str(master_port),
        *torchrun_flags,
        "-m",
        "recforge",
    ]
