"""The inputs: which files, cut into newline-aligned byte ranges (units), read in blocks of whole
lines or counted by newlines; and the rows of each split."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from recforge.core.errors import DataError, RecforgeError
from recforge.prepare.engine import BadLine, Unit, line_ranges

KAGGLE_DAYS = 7
TERABYTE_DAYS = 24
MAX_CHUNK_BYTES = 1 << 30  # a chunk is one bytes object; pyarrow's binary offsets are int32
_PIECE = 1 << 26  # reads for counting newlines


def criteo_files(kind: str, data_dir: Path) -> list[Path]:
    """The input files in row order (plain preferred when both `name` and `name.gz` exist)."""
    data_dir = Path(data_dir).expanduser()
    if kind == "criteo-kaggle":
        path = _plain_or_gz(data_dir, "train.txt")
        if path is None:
            raise RecforgeError(
                f"{data_dir / 'train.txt'}: file not found (nor train.txt.gz); unpack Criteo's "
                "Kaggle Display Advertising Challenge dac.tar.gz there"
            )
        return [path]
    days = [_plain_or_gz(data_dir, f"day_{k}") for k in range(TERABYTE_DAYS)]
    present = [k for k, p in enumerate(days) if p is not None]
    if len(present) < 2 or present != list(range(len(present))):
        missing = [k for k in range(max(present, default=1) + 1) if days[k] is None]
        raise RecforgeError(
            f"{data_dir}: Criteo Terabyte needs day_0, day_1, ... (plain or .gz) without gaps, "
            f"at least two days; missing day_{missing[0]}"
        )
    return [day for day in days if day is not None]  # (day_0 .. day_N, as checked)


def _plain_or_gz(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _split_rows(kind: str, file_rows: list[int]) -> dict[str, int]:
    """Rows per split, as Facebook's DLRM reference splits: Kaggle's rows are cut into 7 days
    (`divmod`: the first `rows % 7` days one row longer), Terabyte's days are its files; the
    last day is held out, its first half `test` and its second half `valid` (`np.array_split`)."""
    total = sum(file_rows)
    if kind == "criteo-kaggle":
        day, longer = divmod(total, KAGGLE_DAYS)
        train = (KAGGLE_DAYS - 1) * day + min(longer, KAGGLE_DAYS - 1)
    else:
        train = total - file_rows[-1]
    held_out = total - train
    test = (held_out + 1) // 2
    return {"train": train, "test": test, "valid": held_out - test}


def _units(files: list[Path], chunk_bytes: int) -> list[Unit]:
    """Each plain file cut into ranges of whole lines; a .gz file is one unit (gzip cannot be split)."""
    units = []
    for index, path in enumerate(files):
        if path.suffix == ".gz":
            units.append(Unit(index, str(path)))
        else:
            units += [Unit(index, str(path), a, b) for a, b in line_ranges(path, 0, chunk_bytes)]
    return units


def _mean_line_bytes(path: Path) -> float:
    """Mean line length over the first MiB: turns `chunk_rows` into a byte size."""
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            head = f.read(1 << 20)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(path, None, None, f"cannot read: {e}") from None
    return len(head) / max(1, head.count(b"\n")) or 1.0


def _blocks(unit: Unit, chunk_bytes: int) -> Iterator[bytes | bytearray]:
    """Whole lines of the unit, about `chunk_bytes` at a time; at most one block alive at once."""
    with _reading():
        if unit.end is not None:
            with open(unit.path, "rb") as f:
                f.seek(unit.start)
                yield f.read(unit.end - unit.start)
            return
        carry = b""
        with gzip.open(unit.path, "rb") as f:
            while piece := f.read(chunk_bytes):
                cut = piece.rfind(b"\n") + 1
                if not cut:
                    carry += piece
                    continue
                block = bytearray(carry)
                block += memoryview(piece)[:cut]
                carry = piece[cut:]
                del piece
                yield block
                del block
        if carry:
            yield carry


def _count_lines(unit: Unit, report: Callable[[int], None]) -> int:
    """Lines in the unit (a last line without a newline counts); `report` is told the lines counted."""
    lines, last = 0, b"\n"
    with _reading():
        if unit.end is not None:
            with open(unit.path, "rb") as f:
                f.seek(unit.start)
                left = unit.end - unit.start
                while left > 0 and (piece := f.read(min(_PIECE, left))):
                    lines += piece.count(b"\n")
                    left -= len(piece)
                    last = piece[-1:]
            report(lines + (last != b"\n"))
        else:
            with gzip.open(unit.path, "rb") as f:
                while piece := f.read(_PIECE):
                    lines += piece.count(b"\n")
                    last = piece[-1:]
                    report(piece.count(b"\n"))
    return lines + (last != b"\n")


@contextmanager
def _reading():
    """An unreadable input (a truncated or corrupt .gz) becomes a DataError naming the file."""
    try:
        yield
    except (OSError, EOFError, zlib.error) as e:
        raise BadLine(None, None, f"cannot read: {e}") from None
