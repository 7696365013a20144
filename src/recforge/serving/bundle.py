"""A bundle: one self-contained folder from which a trained model scores raw rows anywhere.

    manifest.json      model, task, input schema, versions, the checkpoint's metrics and data
                       fingerprint, the files and their SHA-256, the exports' measured equivalence
    weights.npz        the eager model's tensors (numpy, no pickle)
    model.pt2          torch.export program (dynamic batch 1..65,536), `--format torch-export`
    model.aoti.pt2     the program compiled by AOTInductor for this machine, `--format aoti`
    model.onnx         ONNX (opset 18; EmbeddingBag and offsets as ONNX ops), `--format onnx`
    assets             what the task's serving assets keep (`Task.assets`, `Task.export`): a click
                       log's encoders.json, encoders/, meta.json; ranking data's id maps and
                       each user's training items

Loading runs no pickle: JSON, `np.load(allow_pickle=False)`, torch.export's archive of raw
tensors and ONNX's protobuf. The model is rebuilt from the manifest's architecture. What runs it
(and writes each file) is a runtime of `recforge.serving.runtimes`, on the device asked for.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from recforge.core.checkpoint import check_same_data, check_same_model
from recforge.core.errors import RecforgeError
from recforge.core.files import write_json
from recforge.data.ctr_format import check_out, new_folder
from recforge.registry import build_model, config_from_dict, model_entry, task_named
from recforge.runtime.distributed import pick_device
from recforge.serving.runtimes import MAX_BATCH, RUNTIMES, EagerRuntime, Scoring, read_weights
from recforge.tasks.serving import Exported
from recforge.train.distributed_checkpoint import load_weights, open_checkpoint

FORMAT = "recforge-bundle-1"
FORMATS = ("onnx", "torch-export")  # the default exports; "aoti" is asked for by name (it compiles C++)
# The most an exported program's probability may differ from the eager model's: fp32 kernels that
# sum in another order differ by ~1e-7; a wrong export, by far more. Over it, export fails.
EQUIVALENCE_TOLERANCE = 1e-4


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- export


def export(
    checkpoint_path: str | Path,
    out: str | Path,
    formats=FORMATS,
    data_dir: str | None = None,
    overwrite=False,
    log=print,
) -> dict:
    """Write the bundle of a checkpoint into `out` (built beside it, moved in when complete);
    returns its manifest."""
    checkpoint = open_checkpoint(checkpoint_path)
    cfg = config_from_dict(checkpoint["config"])
    check_same_model(checkpoint, checkpoint_path, cfg.model)
    if data_dir:
        cfg.data.data_dir, cfg.data.prepared_dir = data_dir, None
    task = model_entry(cfg.model).task
    model = build_model(cfg, checkpoint["model_dims"], torch.device("cpu"))
    load_weights(checkpoint, model, checkpoint_path)
    model.eval()
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    _check_finite(state, checkpoint_path, "not exported")
    check = functools.partial(check_out, marker="manifest.json", kind="bundle", owned=_bundle_files)
    with new_folder(out, overwrite, check=check) as folder:
        exported = task.export(cfg, folder, log=lambda *_: None)
        check_same_data(checkpoint, checkpoint_path, exported.fingerprint, exported.data)
        assets = task.assets(folder)
        sample, sample_of = exported.sample, exported.sample_of
        scoring = Scoring(model, assets.model_inputs).eval()
        tensors = tuple(torch.from_numpy(sample[k]) for k in assets.model_inputs)
        EagerRuntime.export(scoring, tensors, folder)
        with torch.inference_mode():
            expected = scoring(*tensors).numpy()
        if not np.isfinite(expected).all():
            raise RecforgeError(
                f"{checkpoint_path}: the model gives {int((~np.isfinite(expected)).sum()):,} non-finite probabilities "
                f"on {sample_of}; not exported"
            )
        equivalence = {}
        for name in formats:
            begin = time.perf_counter()
            equivalence[name] = _export_checked(name, scoring, tensors, folder, exported, expected, log)
            equivalence[name]["export_s"] = time.perf_counter() - begin
        history = checkpoint.get("history") or {}
        manifest = {
            "format": FORMAT,
            "model": cfg.model,
            "task": task.name,
            "config": checkpoint["config"],
            "model_dims": checkpoint["model_dims"],
            "inputs": assets.inputs,
            "model_inputs": assets.model_inputs,
            "versions": {"recforge": version("recforge"), "torch": torch.__version__.split("+")[0]},
            "checkpoint": {
                "path": str(Path(checkpoint_path).expanduser().resolve()),
                "epoch": checkpoint.get("epoch"),
                "step": checkpoint.get("step"),
                # the run's best evaluation up to this checkpoint, and where it was
                "best_metrics": history.get("best_metrics"),
                "best_step": history.get("best_step"),
            },
            "data": checkpoint.get("data"),
            "equivalence": {
                "rows": sample_of,
                "batch sizes": [1, len(next(iter(sample.values()))), MAX_BATCH],
                "tolerance": EQUIVALENCE_TOLERANCE,
            }
            | equivalence,
            "files": {p.relative_to(folder).as_posix(): _sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()},
        }
        write_manifest(folder, manifest)  # last: a folder without it is not a bundle
    return manifest


def _export_checked(name: str, scoring: Scoring, tensors, folder: Path, exported: Exported, expected, log) -> dict:
    """One format's program, written and loaded back, its probabilities within the tolerance of
    the eager model's on the export sample, at the extremes of its dynamic batch too; else refused."""
    path = RUNTIMES[name].export(scoring, tensors, folder)
    runtime = RUNTIMES[name](folder, scoring.inputs, {}, torch.device("cpu"))
    sample, sample_of = exported.sample, exported.sample_of
    worst = max(  # NaN where the program gives one: refused below
        _largest_difference(runtime(sample), expected),
        # the extremes of the dynamic batch: one row, and 65,536 (the sample repeated)
        _largest_difference(runtime({k: v[:1] for k, v in sample.items()}), expected[:1]),
        _largest_difference(runtime(_repeat(sample, MAX_BATCH)), np.resize(expected, MAX_BATCH)),
    )
    if not worst <= EQUIVALENCE_TOLERANCE:
        raise RecforgeError(
            f"--format {name}: the exported program's probabilities differ from the eager model's by "
            f"{worst:.2e} on {sample_of}, over the tolerance {EQUIVALENCE_TOLERANCE:g}; not exported"
        )
    log(f"{name}: {path.name}, largest difference from the eager model {worst:.2e} ({sample_of})")
    return {"file": path.name, "max_abs_difference": worst}


def _largest_difference(got: np.ndarray, expected: np.ndarray) -> float:
    """The largest absolute difference; NaN if `got` has a non-finite value (max() would drop it)."""
    return float(np.abs(got - expected).max()) if np.isfinite(got).all() else float("nan")


def _check_finite(state: dict[str, np.ndarray], path: str | Path, outcome: str) -> None:
    """Refuse weights holding NaN or infinity: every probability they touch would be NaN."""
    for name, value in state.items():
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise RecforgeError(
                f"{path}: tensor {name} holds {int((~np.isfinite(value)).sum()):,} non-finite values (NaN or "
                f"infinity), so the model would score NaN; {outcome}"
            )


def read_manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    if not path.is_file():
        raise RecforgeError(f"{folder}: not a recforge bundle (no manifest.json; `recforge export` makes one)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RecforgeError(f"{path}: damaged manifest ({e})") from None


def write_manifest(folder: Path, manifest: dict) -> None:
    write_json(folder / "manifest.json", manifest)


def _bundle_files(out: Path) -> set[str]:
    return {name.split("/")[0] for name in read_manifest(out).get("files", {})} | {"manifest.json"}


def _repeat(arrays: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    return {k: np.resize(v, (rows, *v.shape[1:])) for k, v in arrays.items()}


class ModelFault(RecforgeError):
    """The model gave what no caller may take for a result (NaN): the server answers 500 with it."""


# What `Bundle` reads from a manifest, and the type each must have.
MANIFEST_FIELDS = {
    "model": str,
    "task": str,
    "config": dict,
    "model_dims": dict,
    "model_inputs": list,
    "inputs": list,
    "equivalence": dict,
    "files": dict,
}


def _check_manifest(manifest: dict, path: Path) -> None:
    """A manifest missing a field, or holding one of another type, is named, not a KeyError."""
    for name, kind in MANIFEST_FIELDS.items():
        if not isinstance(manifest.get(name), kind):
            problem = "lacks" if name not in manifest else f"has a {type(manifest[name]).__name__} as"
            raise RecforgeError(
                f"{path}: {problem} field '{name}' ({kind.__name__} expected); the manifest was edited or "
                "damaged: export the checkpoint again"
            )


class Bundle:
    """An exported folder, opened: its manifest, the assets that encode requests, one runtime on
    one device (`device`: auto, cpu, cuda or cuda:N)."""

    def __init__(self, folder: str | Path, runtime: str = "eager", verify: bool = True, device: str = "auto"):
        self.folder = Path(folder).expanduser()
        self.manifest = read_manifest(self.folder)
        if self.manifest.get("format") != FORMAT:
            raise RecforgeError(
                f"{self.folder}: bundle format {self.manifest.get('format')!r}, this recforge reads {FORMAT}"
            )
        _check_manifest(self.manifest, self.folder / "manifest.json")
        if verify:
            for name, digest in self.manifest["files"].items():
                path = self.folder / name
                if not path.is_file():
                    raise RecforgeError(f"{path}: missing (the manifest lists it)")
                if _sha256(path) != digest:
                    raise RecforgeError(f"{path}: damaged (its SHA-256 differs from the manifest's)")
            weights = self.folder / "weights.npz"
            _check_finite(read_weights(weights), weights, "the bundle is refused (export a sound checkpoint)")
        self.assets = task_named(self.manifest["task"], self.folder / "manifest.json").assets(self.folder)
        if runtime != "eager" and runtime not in {k for k in self.manifest["equivalence"] if k in RUNTIMES}:
            raise RecforgeError(
                f"{self.folder}: no {runtime} export in this bundle (`recforge export --format {runtime}`)"
            )
        self.runtime_name, self.device = runtime, pick_device(device)
        self.runtime = RUNTIMES[runtime](self.folder, self.manifest["model_inputs"], self.manifest, self.device)

    # Forward passes of at most this many rows: larger ones are slower on a CPU once the activations
    # leave the caches (W2 DLRM, eager: 240k samples/s at 8,192 rows, 140k at 16,384, 123k at 65,536).
    FORWARD_ROWS = 8192

    def probabilities(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """Click probabilities of the model inputs `arrays`; a non-finite one is never returned (an
        error naming the model instead: a probability of NaN would be taken for a score)."""
        return self.checked(self.unchecked_probabilities(arrays))

    def unchecked_probabilities(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """`probabilities` before `checked`: the server checks each request's part on its own."""
        rows = len(next(iter(arrays.values())))
        if rows <= self.FORWARD_ROWS:
            return self.runtime(arrays)
        return np.concatenate(
            [
                self.runtime({k: v[i : i + self.FORWARD_ROWS] for k, v in arrays.items()})
                for i in range(0, rows, self.FORWARD_ROWS)
            ]
        )

    def checked(self, scores: np.ndarray) -> np.ndarray:
        finite = np.isfinite(scores)
        if not finite.all():
            raise ModelFault(
                f"the {self.manifest['model']} model of {self.folder} ({self.runtime_name}) gave a non-finite "
                f"probability for {int((~finite).sum()):,} of {len(scores):,} rows (first: row "
                f"{int(np.argmin(finite)):,}): its weights or export are broken, or the rows hold values far "
                "beyond training's"
            )
        return scores
