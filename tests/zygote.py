"""Runs the tests' `python -m recforge ARGS` commands as forks of one process that has imported
torch and recforge once. Each command is still a process of its own (its environment, folder,
output files, exit status, a SIGKILL of its own), but it starts in a fraction of a second instead
of the ~2.5 s that importing torch and what a first command pulls in (dynamo, TensorBoard, pyarrow)
takes, which the kill tests would pay hundreds of times. Only imports run here, no command, so no
state of one command reaches another; the one thread they start (pyarrow's jemalloc background
thread) is not copied by a fork, and jemalloc's fork handlers keep its locks consistent.

Requests and replies are JSON lines on stdin / stdout (tests/faults.py's `run_cli` is the client).
"""

from __future__ import annotations

import contextlib
import json
import os
import runpy
import signal
import sys
import time

import pyarrow.compute  # noqa: F401  (what a command imports: once, for every fork)
import pyarrow.csv  # noqa: F401
import pyarrow.parquet  # noqa: F401
import torch._dynamo  # noqa: F401
import torch.distributed  # noqa: F401
import torch.profiler  # noqa: F401
import torch.utils.tensorboard  # noqa: F401

import recforge.cli  # noqa: F401
import recforge.inference  # noqa: F401
import recforge.registry  # noqa: F401
import recforge.train.loop  # noqa: F401


def command(request: dict) -> None:
    """In the fork: become the command (never returns: the interpreter exits as the command does)."""
    os.setpgid(0, 0)  # its own group (the parent sets it too, whichever runs first): a timeout kills what it started
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path in ((0, os.devnull), (1, request["stdout"]), (2, request["stderr"])):
        opened = os.open(path, os.O_RDONLY if fd == 0 else os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    sys.argv = ["recforge", *request["args"]]
    runpy.run_module("recforge", run_name="__main__", alter_sys=True)
    raise SystemExit(0)


def wait(pid: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return {"code": os.waitstatus_to_exitcode(status)}
        time.sleep(0.005)
    os.killpg(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return {"timeout": True}


def main() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            command(request)
        with contextlib.suppress(ProcessLookupError, PermissionError):  # it has exited already
            os.setpgid(pid, pid)
        sys.stdout.write(json.dumps(wait(pid, request["timeout"])) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
