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

import contextlib
import io
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

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


def named_globals(data: bytes) -> list[tuple[str, str]]:
    """The (module, name) pairs a pickle names, in order, up to where it stops parsing (a pickle
    cut short after naming something still names it)."""
    reader = _Recording(io.BytesIO(data))
    with contextlib.suppress(Exception):  # cut short or not a pickle: what it named so far stands
        reader.load()
    return reader.named


def file_globals(path: str | Path) -> list[tuple[str, str]]:
    """What the pickles of a file name: a torch.save file or torch.export archive (a zip: each
    member that is a pickle or an archive itself) or a pickle (torch.save's legacy format); []
    where none reads. Raw tensor data is not read (only its first bytes)."""
    try:
        with open(path, "rb") as f:
            return _globals_in(f)
    except OSError:
        return []


def _globals_in(f) -> list[tuple[str, str]]:
    head = f.read(2)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):  # a pickle's protocol mark
        return named_globals(head + f.read())
    if head != b"PK":
        return []
    try:
        with zipfile.ZipFile(io.BytesIO(head + f.read())) as archive:
            found = []
            for info in archive.infolist():
                with archive.open(info) as member:
                    found += _globals_in(member)
            return found
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, ValueError):  # damaged: what was read stands
        return []


def foreign_objects(path: str | Path) -> list[str]:
    """ "module.name" of each thing the file's pickles name beyond tensor rebuilding, in order."""
    return [f"{m}.{n}" for m, n in file_globals(path) if not is_tensor_rebuilding(m, n)]


_REBUILDING = {
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch", "Size"),
    ("collections", "OrderedDict"),
}


def is_tensor_rebuilding(module: str, name: str) -> bool:
    """What torch.save writes for a dict of tensors, numbers and strings: typed storages, dtypes,
    tensor rebuilding, OrderedDict (state dicts). Not the rest of torch: torch.load, for one,
    would unpickle another file."""
    if (module, name) in _REBUILDING:
        return True
    return module == "torch" and (name.endswith("Storage") or isinstance(getattr(torch, name, None), torch.dtype))


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


@contextlib.contextmanager
def tensors_only(path: str | Path):
    """While the block runs, torch.load reads with weights_only=True and pickle.load(s) make only
    tensor rebuilding (anything else is refused, naming `path`): for a loader that unpickles its
    file in full whatever it holds (torch.export.load falls back to torch.load(weights_only=False)
    for its archive's pickles and reads constants with pickle.loads). Not for threads that load
    other files meanwhile: it swaps the functions of the modules."""
    real_torch_load, real_load, real_loads = torch.load, pickle.load, pickle.loads

    def torch_load(*args, **kwargs):
        return real_torch_load(*args, **{**kwargs, "weights_only": True})

    def load(file, *args, **kwargs):
        return _Restricted(file, is_tensor_rebuilding, Path(path)).load()

    torch.load, pickle.load = torch_load, load
    pickle.loads = lambda data, *args, **kwargs: load(io.BytesIO(data))
    try:
        yield
    finally:
        torch.load, pickle.load, pickle.loads = real_torch_load, real_load, real_loads


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
