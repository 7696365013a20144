"""What runs a bundle's model, behind one protocol: a `Runtime` class `export`s its file from the
eager model (`Scoring`), loading the file is constructing it (on a device), calling it scores.

| runtime        | file             | runs on                                                       |
|----------------|------------------|---------------------------------------------------------------|
| eager          | weights.npz      | the model rebuilt from the manifest: CPU or CUDA              |
| torch-export   | model.pt2        | torch.export's program, moved to the device: CPU or CUDA      |
| onnx           | model.onnx       | ONNX Runtime: its CPU provider, or CUDA's where installed      |
| aoti           | model.aoti.pt2   | AOTInductor's library, compiled for the exporting machine's CPU |

A new runtime is one class here and one line in `RUNTIMES`.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from recforge.core.errors import RecforgeError, one_line
from recforge.core.files import atomic_write
from recforge.core.pickles import foreign_objects, tensors_only
from recforge.models.layers import Linear
from recforge.registry import build_model, config_from_dict
from recforge.runtime import gemm
from recforge.train.distributed_checkpoint import load_model_state

MAX_BATCH = 65_536  # the exported programs' largest batch
ONNX_OPSET = 18


class Scoring(nn.Module):
    """A model as the exported programs see it: positional int64 / float32 tensors [B, ...] in
    `inputs` order -> click probabilities [B] in fp32."""

    def __init__(self, model: nn.Module, inputs: list[str]):
        super().__init__()
        self.model, self.inputs = model, inputs

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        batch = {k: t if t.is_floating_point() else t.long() for k, t in zip(self.inputs, tensors)}
        return torch.sigmoid(self.model(batch).float())


class Runtime:
    """The protocol. `name` is the --runtime / --format name, `file` what `export` writes in the
    bundle; `inputs` name the positional tensors (the manifest's model_inputs)."""

    name: ClassVar[str]
    file: ClassVar[str]

    def __init__(self, folder: Path, inputs: list[str], manifest: dict, device: torch.device):
        raise NotImplementedError

    @staticmethod
    def export(scoring: Scoring, tensors: tuple, folder: Path) -> Path:
        """Write the runtime's file from the eager model, on the CPU; returns its path."""
        raise NotImplementedError

    def __call__(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """Probabilities [B] (fp32, on the CPU) of the model inputs `arrays` (numpy, [B, ...])."""
        raise NotImplementedError


class _TorchRuntime(Runtime):
    """A torch module of positional input tensors (`self.module`, in `self.inputs` order) on `self.device`."""

    module: Callable[..., torch.Tensor]  # an nn.Module, or AOTInductor's compiled model
    inputs: list[str]
    device: torch.device

    def __call__(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        tensors = (torch.from_numpy(np.ascontiguousarray(arrays[k])).to(self.device) for k in self.inputs)
        with torch.inference_mode():
            return self.module(*tensors).cpu().numpy()


class EagerRuntime(_TorchRuntime):
    """The model rebuilt from the manifest's architecture with weights.npz."""

    name, file = "eager", "weights.npz"

    def __init__(self, folder: Path, inputs: list[str], manifest: dict, device: torch.device):
        try:
            cfg = config_from_dict(manifest["config"])
            model = build_model(cfg, manifest["model_dims"], torch.device("cpu"))
        except (RecforgeError, KeyError, TypeError, ValueError) as e:  # its settings are not the flags' fault
            message = one_line(str(e)) if isinstance(e, RecforgeError) else f"{type(e).__name__}: {e}"
            raise RecforgeError(
                f"{folder / 'manifest.json'}: its config and model_dims build no model ({message}); "
                "the manifest was edited or damaged: export the checkpoint again"
            ) from None
        state = read_weights(folder / self.file)
        tensors = {k: torch.from_numpy(v) for k, v in state.items()}
        load_model_state(model, tensors, folder / self.file, described_by="manifest.json")
        if device.type == "cpu":  # a server's batches have any size: CPU kernels by size
            for layer in model.modules():
                if isinstance(layer, Linear) and layer.in_features and layer.out_features:
                    layer.by_rows = gemm.inference_backends(layer.in_features, layer.out_features)
        self.module, self.inputs, self.device = Scoring(model, inputs).eval().to(device), inputs, device

    @staticmethod
    def export(scoring: Scoring, tensors: tuple, folder: Path) -> Path:
        path = folder / EagerRuntime.file
        weights = scoring.model.state_dict().items()
        # Any: the arrays go to np.savez as keywords, which its stubs would also read as allow_pickle.
        state: dict[str, Any] = {k: v.detach().cpu().numpy() for k, v in weights if isinstance(v, torch.Tensor)}
        atomic_write(path, lambda f: np.savez(f, **state), mode="wb")
        return path


class ProgramRuntime(_TorchRuntime):
    """model.pt2, torch.export's program."""

    name, file = "torch-export", "model.pt2"

    def __init__(self, folder: Path, inputs: list[str], manifest: dict, device: torch.device):
        path = folder / self.file
        _refuse_objects(path)  # torch.export.load unpickles the archive's pickles in full: name them first
        with _loading(path, "a torch.export program"), tensors_only(path):  # and what the scan cannot read
            program = torch.export.load(path)
            if device.type != "cpu":  # exported on the CPU: its constants and weights moved
                # The ignores: torch.export.passes is a subpackage torch.export.load imports, not torch.export.
                if not hasattr(torch.export.passes, "move_to_device_pass"):  # type: ignore[attr-defined]
                    raise RecforgeError(
                        f"--runtime torch-export --device {device}: this torch ({torch.__version__}) cannot move "
                        "an exported program to a GPU; use --runtime eager there"
                    )
                program = torch.export.passes.move_to_device_pass(program, device)  # type: ignore[attr-defined]
            self.module, self.inputs, self.device = program.module(), inputs, device

    @staticmethod
    def export(scoring: Scoring, tensors: tuple, folder: Path) -> Path:
        program = _program(scoring, tensors)
        # Without example inputs the archive holds JSON and raw tensors only: torch.export would
        # save them with torch.save and load them with torch.load, falling back to full unpickling.
        program._example_inputs = None
        path = folder / ProgramRuntime.file
        torch.export.save(program, path)
        return path


class AotiRuntime(_TorchRuntime):
    """model.aoti.pt2, AOTInductor's compiled program: machine code for the CPU it was exported on."""

    name, file = "aoti", "model.aoti.pt2"

    def __init__(self, folder: Path, inputs: list[str], manifest: dict, device: torch.device):
        path = folder / self.file
        if device.type != "cpu":
            raise RecforgeError(
                f"--runtime aoti --device {device}: {path.name} was compiled for the CPU by recforge export; "
                "serve it with --device cpu, or use --runtime eager or torch-export on the GPU"
            )
        with _loading(path, "an AOTInductor package"):
            self.module, self.inputs, self.device = torch._inductor.aoti_load_package(str(path)), inputs, device

    @staticmethod
    def export(scoring: Scoring, tensors: tuple, folder: Path) -> Path:
        """It needs a C++ compiler at export time, not at load."""
        path = folder / AotiRuntime.file
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch._inductor.aoti_compile_and_package(_program(scoring, tensors), package_path=str(path))
        except Exception as e:  # noqa: BLE001  no compiler, an unsupported op: the export cannot be made here
            raise RecforgeError(f"--format aoti: AOTInductor did not build here ({type(e).__name__}: {e})") from None
        return path


class OnnxRuntime(Runtime):
    """model.onnx on ONNX Runtime: its CUDA provider on a GPU (onnxruntime-gpu), else its CPU one."""

    name, file = "onnx", "model.onnx"

    def __init__(self, folder: Path, inputs: list[str], manifest: dict, device: torch.device):
        try:
            import onnxruntime
        except ImportError:
            raise RecforgeError("--runtime onnx needs onnxruntime (pip install 'recforge[serve]')") from None
        providers: list[str | tuple[str, dict[str, int]]] = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise RecforgeError(
                    f"--runtime onnx --device {device}: this ONNX Runtime has no CUDA provider (pip install "
                    "onnxruntime-gpu), or serve with --device cpu"
                )
            providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), *providers]
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # as `--threads` set it
        options.log_severity_level = 3
        with _loading(folder / self.file, "an ONNX model"):
            self.session = onnxruntime.InferenceSession(str(folder / self.file), options, providers=providers)
        self.inputs = inputs
        types = {"tensor(float)": np.float32, "tensor(int32)": np.int32, "tensor(int64)": np.int64}
        self.dtypes = {i.name: types[i.type] for i in self.session.get_inputs()}

    @staticmethod
    def export(scoring: Scoring, tensors: tuple, folder: Path) -> Path:
        path = folder / OnnxRuntime.file
        big = sum(p.numel() * p.element_size() for p in scoring.parameters()) > 1 << 30  # protobuf's 2 GB limit
        # The exporter reports each step on stdout and warns about its own optimizer's choices.
        with warnings.catch_warnings(), _quiet_loggers("torch.onnx", "onnxscript", "onnx_ir"):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                scoring,
                tensors,
                str(path),
                input_names=scoring.inputs,
                output_names=["probability"],
                dynamic_shapes=_dynamic(tensors),
                opset_version=ONNX_OPSET,
                dynamo=True,
                external_data=big,
                verbose=False,
            )
        return path

    def __call__(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        feed = {k: np.ascontiguousarray(arrays[k], self.dtypes[k]) for k in self.inputs}
        return self.session.run(None, feed)[0]


RUNTIMES: dict[str, type[Runtime]] = {
    runtime.name: runtime for runtime in (EagerRuntime, ProgramRuntime, OnnxRuntime, AotiRuntime)
}


def _dynamic(tensors) -> tuple:
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    return (tuple({0: batch} for _ in tensors),)


def _program(scoring: Scoring, tensors):
    with torch.inference_mode(False), torch.no_grad():
        return torch.export.export(scoring, tensors, dynamic_shapes=_dynamic(tensors))


class _quiet_loggers:
    def __init__(self, *names: str):
        self.loggers = [logging.getLogger(n) for n in names]

    def __enter__(self):
        self.levels = [lg.level for lg in self.loggers]
        for lg in self.loggers:
            lg.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        for lg, level in zip(self.loggers, self.levels):
            lg.setLevel(level)


def _refuse_objects(path: Path) -> None:
    """Refuse a file whose pickles name anything beyond tensors, before a loader unpickles them
    (a bundle whose manifest was re-hashed passes the SHA-256 check, whatever it holds)."""
    foreign = foreign_objects(path)
    if foreign:
        raise RecforgeError(f"{path}: names {foreign[0]}, a Python object no recforge export holds; not loaded")


@contextlib.contextmanager
def _loading(path: Path, what: str):
    """A program file that its runtime cannot load, as one line (torch.export logs its tracebacks
    of a failed load before it gives up: quiet)."""
    try:
        with _quiet_loggers("torch.export", "torch._export"):
            yield
    except RecforgeError:
        raise
    except Exception as e:  # noqa: BLE001  the runtimes' own errors are tracebacks of their internals
        raise RecforgeError(
            f"{path}: not loadable as {what} ({type(e).__name__}); damaged, or not recforge's export"
        ) from None


def read_weights(path: Path) -> dict[str, np.ndarray]:
    """weights.npz's arrays, loaded without pickle: an object array is refused as Python objects."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            return {k: saved[k] for k in saved.files}
    except Exception:  # noqa: BLE001  why, from the archive's headers (numpy's message is its wording)
        if any(dtype.hasobject for dtype in _npz_dtypes(path)):
            raise RecforgeError(
                f"{path}: holds Python objects (an object array), never a bundle's; not loaded"
            ) from None
        raise RecforgeError(f"{path}: not readable (damaged)") from None


def _npz_dtypes(path: Path) -> list[np.dtype]:
    """The dtypes an .npz's headers declare (those that can be read)."""
    dtypes = []
    with contextlib.suppress(OSError, zipfile.BadZipFile), zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            with contextlib.suppress(ValueError, OSError), archive.open(name) as f:
                version = np.lib.format.read_magic(f)
                header = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                dtypes.append(header(f)[2])
    return dtypes
