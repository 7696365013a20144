"""User-facing errors: one line, naming the file, line and field where there is one."""


class RecforgeError(Exception):
    """An error caused by the user's input or environment; the CLI prints it as one line."""


class DataError(RecforgeError):
    """A bad value in an input file."""

    def __init__(self, path, line: int | None, field: str | None, message: str):
        where = f"{path}:{line}" if line is not None else str(path)
        what = f" field '{field}':" if field else ""
        super().__init__(f"{where}:{what} {message}")
        self.path, self.line, self.field = path, line, field
