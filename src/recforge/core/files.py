"""Writes that never leave a half-written file behind: write a temp file, then rename.

Every file operation whose interruption matters passes `fault_point`, the hook of the kill tests
(tests/test_kills.py): with `RECFORGE_FAULT_AT=N` the process kills itself (SIGKILL, as the OOM
killer or a pre-empted machine would) at the Nth such point, and `RECFORGE_FAULT_LOG=FILE`
records each point's name, so a test can count them and try every one. Unset, a point costs an
environment lookup.

Files and folders get the permissions the user's umask gives (as `open` and `mkdir` do), not the
0600 / 0700 that `tempfile` uses for its own names.

A write that fails (a full disk, a read-only folder) raises an OSError naming the file the user
knows (`naming`), never a temp name or none, so the CLI prints it as one line; nothing half-written
stays behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recforge.core.errors import RecforgeError

_fault_count = 0


def fault_point(operation: str, path: str | Path) -> None:
    """Count a file operation; kill this process at the one `RECFORGE_FAULT_AT` names (tests).
    Under torchrun only rank 0 counts: it writes the run's files, and its death ends the others."""
    global _fault_count
    log, at = os.environ.get("RECFORGE_FAULT_LOG"), os.environ.get("RECFORGE_FAULT_AT")
    if not (log or at) or os.environ.get("RANK", "0") != "0":
        return
    _fault_count += 1
    if log:
        with open(log, "a") as f:
            f.write(f"{_fault_count} {operation} {path}\n")
    if at and int(at) == _fault_count:
        os.kill(os.getpid(), signal.SIGKILL)


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


def _as_umask_allows(path: str | Path, mode: int) -> None:
    os.chmod(path, mode & ~_umask())


def _os_error(error: BaseException | None) -> OSError | None:
    """The OSError that `error` is, or was raised from or while handling (torch.save turns a failed
    write into a RuntimeError), if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno is not None:
            return error
        seen.add(id(error))
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return None


def _within(filename, folder: str | Path) -> bool:
    return filename is not None and Path(os.path.abspath(os.fsdecode(filename))).is_relative_to(os.path.abspath(folder))


@contextlib.contextmanager
def naming(path: str | Path, inside: str | Path | None = None):
    """Re-raise a failed file operation in the block as an OSError naming `path` (numpy's, pyarrow's
    and torch's write errors name no file; a temp file's name means nothing to the user). With
    `inside` (a temp folder standing in for `path`), only errors about files in it are renamed."""
    try:
        yield
    except Exception as error:
        cause = None if isinstance(error, RecforgeError) else _os_error(error)
        if cause is None or (inside is not None and not _within(cause.filename, inside)):
            raise
        assert cause.errno is not None  # `_os_error` returns only errors with an errno
        raise OSError(cause.errno, os.strerror(cause.errno), str(path)) from error


def _remove_stale(folder: Path, prefix: str) -> None:
    """Remove what killed processes left in `folder` under `prefix`PID-... (their PID is gone)."""
    for stale in folder.glob(glob.escape(prefix) + "*-*"):
        pid = stale.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            remove(stale)


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "w") -> None:
    """Call `write(fileobj)` on a temp file beside `path` (`.NAME.PID-XXXX.tmp`), fsync it, then
    rename it over `path`; temp files of killed writers of `path` are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path.parent, f".{path.name}.")
    fault_point("write", path)
    with naming(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, mode) as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            _as_umask_allows(tmp, 0o666)
            fault_point("rename", path)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    fault_point("written", path)


def preallocate(path: str | Path) -> None:
    """Reserve the disk space of the whole file (a fresh memory-mapped output is sparse): a full
    disk then fails here as an OSError, not later as SIGBUS when a page of the map is written."""
    with naming(path):
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system that cannot: write as before
                raise
        finally:
            os.close(fd)


def atomic_link(source: str | Path, target: str | Path) -> None:
    """Make `target` name the same file as `source` (a hard link; a copy where the file system has
    none), replacing `target` in one rename."""
    source, target = Path(source), Path(target)
    _remove_stale(target.parent, f".{target.name}.")
    tmp = target.parent / f".{target.name}.{os.getpid()}-link"
    tmp.unlink(missing_ok=True)
    fault_point("link", target)
    with naming(target):
        try:
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
            fault_point("rename", target)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    fault_point("renamed", target)


@contextlib.contextmanager
def held_alone(folder: str | Path, what: str):
    """An exclusive flock on `folder` (which the kernel drops when the process dies, however it
    dies, and which moves with the folder when it is renamed) while the block runs, or refuse at
    once, naming the process that holds it. Yields whether `folder` is still the folder locked:
    False when its holder renamed or removed it meanwhile (the caller looks again)."""
    import fcntl

    with naming(folder):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _flock_holder(os.fstat(fd).st_ino)
            raise RecforgeError(
                f"{what} is running in another process ({f'PID {holder}' if holder else 'PID unknown'}); "
                "wait for it to end"
            ) from None
        try:
            still_there = os.stat(folder).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            still_there = False
        yield still_there
    finally:
        os.close(fd)


def _flock_holder(inode: int) -> int | None:
    """The PID holding a flock on `inode`, from Linux's /proc/locks (None elsewhere)."""
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:  # "1: FLOCK  ADVISORY  WRITE 4242 08:01:1234 0 EOF"
        parts = line.split()
        if len(parts) > 5 and parts[1] == "FLOCK" and parts[5].rsplit(":", 1)[-1] == str(inode):
            return int(parts[4])
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def temp_folder(beside: str | Path) -> Path:
    """A new, empty folder next to `beside` (`.NAME.partial-PID-XXXX`) to build its replacement
    in. Those a killed process left beside it (its PID gone) are removed first."""
    beside = Path(beside)
    beside.parent.mkdir(parents=True, exist_ok=True)
    if beside.exists():  # without it, a stale folder may hold the only copy (see ctr_format.new_folder)
        _remove_stale(beside.parent, f".{beside.name}.partial-")
    fault_point("mkdir", beside)
    with naming(beside):
        tmp = Path(tempfile.mkdtemp(prefix=f".{beside.name}.partial-{os.getpid()}-", dir=beside.parent))
    _as_umask_allows(tmp, 0o777)
    return tmp


def replace(source: str | Path, target: str | Path) -> None:
    """Rename `source` over `target` (files; or a folder onto a missing or empty one)."""
    fault_point("rename", target)
    os.replace(source, target)
    fault_point("renamed", target)


RENAME_EXCHANGE = 2


def exchange(a: str | Path, b: str | Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE), so a kill never leaves neither
    in place; False where the system or file system cannot (the caller then renames twice)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_cwd = -100
    fault_point("exchange", b)
    if renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            return False
        raise OSError(code, os.strerror(code), str(b))
    fault_point("exchanged", b)
    return True


def remove(path: str | Path) -> None:
    """Delete a file or a folder tree, if it exists."""
    path = Path(path)
    fault_point("remove", path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


class _WriteOnly:
    """A file seen only through its `write`: numpy then writes an array's data in chunks with it,
    not with `tofile`, whose short write on a full disk raises an OSError without an errno."""

    def __init__(self, f):
        self.write = f.write


def write_array(path: str | Path, array) -> None:
    """A numpy array as .npy, atomically."""
    import numpy as np

    atomic_write(path, lambda f: np.save(_WriteOnly(f), array, allow_pickle=False), mode="wb")


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def append_jsonl(path: str | Path, obj: Any) -> None:
    """Append one JSON object as one line; a line is written with a single write call, and one
    that fails (a full disk) is cut off again, so the file never ends in half a line."""
    line = (json.dumps(obj) + "\n").encode()
    fault_point("append", path)
    with naming(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            end = os.lseek(fd, 0, os.SEEK_END)
            try:
                written = 0
                while written < len(line):  # unbuffered: nothing is left to flush after a failure
                    written += os.write(fd, line[written:])
                os.fsync(fd)
            except BaseException:
                os.ftruncate(fd, end)
                raise
        finally:
            os.close(fd)
    fault_point("appended", path)


def read_jsonl(path: str | Path) -> list[dict]:
    """The objects of a JSON-lines file; a last line cut short by a kill is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                from recforge.core.errors import DataError

                raise DataError(path, number, None, "not a JSON object (the file was edited or damaged)") from None
    return records
