import contextlib
import inspect
import os
import socket
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


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS's choice): tests running at once never share one."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(processes: int = 2, torchrun_flags: tuple[str, ...] = ()) -> list[str]:
    """`torchrun --nproc-per-node N -m recforge` on a free master port."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(processes),
        "--master-port",
        str(free_port()),
        *torchrun_flags,
        "-m",
        "recforge",
    ]


# Test tiers, by what a test does (its source and its fixtures'): `make test-fast` runs the
# unit-level ones (not slow), `make test` all. A test is
#   distributed  when it starts torchrun or several nodes,
#   torchrec     when it shards tables with TorchRec,
#   serve        when it runs the HTTP server,
#   slow         when it is one of those, starts processes, or trains or exports a model.
TIER_WORDS = {
    "distributed": ("torchrun", "two_nodes"),
    "torchrec": ("needs_torchrec", "torchrec_available", "embedding-sharding"),
    "serve": ("TestClient", "Server("),
    "slow": ("subprocess", '"train"', '"export"', '"tune"', "prepare_outbrain"),
}


def _source(item) -> str:
    """The test's source and its fixtures' in the suite (what it runs)."""
    texts = [inspect.getsource(item.function)]
    for definitions in item._fixtureinfo.name2fixturedefs.values():
        for definition in definitions:
            if definition.baseid:  # the test suite's own fixtures, not pytest's
                with contextlib.suppress(OSError, TypeError):
                    texts.append(inspect.getsource(definition.func))
    return "\n".join(texts)


def pytest_collection_modifyitems(items):
    for item in items:
        source = _source(item)
        tiers = {tier for tier, words in TIER_WORDS.items() if any(w in source for w in words)}
        if tiers:
            tiers.add("slow")
        for tier in sorted(tiers):
            item.add_marker(getattr(pytest.mark, tier))
