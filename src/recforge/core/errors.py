"""User-facing errors: one line, naming the file, line and field where there is one."""

import errno


class RecforgeError(Exception):
    """An error caused by the user's input or environment; the CLI prints it as one line."""


class DataError(RecforgeError):
    """A bad value in an input file."""

    def __init__(self, path, line: int | None, field: str | None, message: str):
        where = f"{path}:{line}" if line is not None else str(path)
        what = f" field '{field}':" if field else ""
        super().__init__(f"{where}:{what} {message}")
        self.path, self.line, self.field, self.message = path, line, field, message

    def __reduce__(self):  # raised in a preparation worker, it is pickled back to the main process
        return type(self), (self.path, self.line, self.field, self.message)


# Environment faults a user can fix, by errno; the CLI names the path with one of these.
NAMED_OS_ERRORS = {
    errno.ENOSPC: "no space left on device (free some space or choose another folder)",
    errno.EDQUOT: "disk quota exceeded (free some space or choose another folder)",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOENT: "no such file or folder",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.EISDIR: "is a folder, not a file",
    errno.EEXIST: "already exists",
    errno.ENAMETOOLONG: "file name too long",
    errno.EMFILE: "too many open files (raise `ulimit -n`)",
    errno.EIO: "input/output error (a failing disk or network file system)",
}


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def user_message(error: BaseException) -> tuple[str | None, int]:
    """(the one line to print, exit code 2) for an error the user can fix; (None, 1) for a bug."""
    if isinstance(error, RecforgeError):
        return one_line(str(error)), 2
    if isinstance(error, OSError) and error.errno in NAMED_OS_ERRORS:
        return f"{error.filename or 'a file'}: {NAMED_OS_ERRORS[error.errno]}", 2
    if isinstance(error, MemoryError):
        return "out of memory; try a smaller --batch-size or --valid-batch-size", 2
    return None, 1
