"""What a pickle would make, found without making it: the checks that keep a checkpoint from
running code.

torch.load(weights_only=True) refuses a pickle naming anything but tensors, but its error text is
torch's (it changed in 2.13), so "refused because it holds objects" and "damaged" cannot be told
apart by the message. `named_globals` reads a pickle with stand-ins for every class and function
it names, so nothing it names is imported or called, and lists them: a checkpoint naming anything
beyond torch's tensor rebuilding holds Python objects. torch.distributed.checkpoint reads its
`.metadata` with a plain `pickle.load`, which would run whatever it names: `restricted_load` makes
only the classes of `allowed`.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

from recforge.core.errors import RecforgeError


class _StandIn:
    """Whatever a pickle builds from a name: accepts every call, item and state, does nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _StandIn()

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


class _Recording(pickle.Unpickler):
    def __init__(self, stream):
        super().__init__(stream)
        self.named: list[tuple[str, str]] = []

    def find_class(self, module: str, name: str):
        self.named.append((module, name))
        return _StandIn

    def persistent_load(self, pid):  # a torch file's storages live beside the pickle, in the zip
        return _StandIn()


def named_globals(data: bytes) -> list[tuple[str, str]] | None:
    """The (module, name) pairs a pickle names, in order; None if it is not a whole pickle."""
    reader = _Recording(io.BytesIO(data))
    try:
        reader.load()
    except Exception:  # noqa: BLE001  cut short or not a pickle: damaged, whatever it names
        return None
    return reader.named


def file_globals(path: str | Path) -> list[tuple[str, str]]:
    """What the pickles of a file name: a torch.save file or torch.export archive (a zip: each of
    its members, archives in it too) or a pickle (torch.save's legacy format); [] where none reads."""
    try:
        with open(path, "rb") as f:
            return _globals_in(f.read())
    except OSError:
        return []


def _globals_in(data: bytes) -> list[tuple[str, str]]:
    if not data.startswith(b"PK"):
        return named_globals(data) or []
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return [g for info in archive.infolist() if info.file_size for g in _globals_in(archive.read(info))]
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, ValueError):  # damaged: what was read stands
        return []


def is_tensor_rebuilding(module: str, name: str) -> bool:
    """What torch.save writes for a dict of tensors, numbers and strings: torch's storages and
    rebuild functions, and OrderedDict (state dicts)."""
    return module in ("torch", "torch._utils") or (module, name) == ("collections", "OrderedDict")


class _Restricted(pickle.Unpickler):
    def __init__(self, stream, allowed: Callable[[str, str], bool], path: Path):
        super().__init__(stream)
        self.allowed, self.path = allowed, path

    def find_class(self, module: str, name: str):
        if not self.allowed(module, name):
            raise RecforgeError(
                f"{self.path}: names {module}.{name}, a Python object a recforge checkpoint never holds; "
                "not loaded (it was not written by recforge, or was altered)"
            )
        return super().find_class(module, name)


def restricted_load(path: str | Path, allowed: Callable[[str, str], bool]):
    """Unpickle `path`, making only the classes and functions `allowed(module, name)` accepts
    (anything else is refused, naming it); a damaged file is refused as such."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _Restricted(f, allowed, path).load()
    except (RecforgeError, OSError):
        raise
    except Exception:  # noqa: BLE001  cut short, or not a pickle
        raise RecforgeError(f"{path}: not readable (damaged, or not a checkpoint file)") from None
