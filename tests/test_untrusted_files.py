"""Files a user is handed (checkpoints of every saving path, bundles whose manifest was re-hashed
after an edit) and models gone bad: refused in one line naming the file, before anything they
name runs; a NaN model is never exported, served or written as a probability."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_synthetic_args
from faults import assert_user_error, run_cli, snapshot

from recforge import registry
from recforge.cli import main
from recforge.core.checkpoint import load_checkpoint, save_checkpoint
from recforge.optim.build import make_optimizers
from recforge.train.distributed_checkpoint import from_one_process


class _Payload:
    """A pickle that, if unpickled, creates the file `marker`: what an attacker would put in."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _pickled(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A NeuMF run (last.pt, best.pt), the same checkpoint as a multi-process (DCP) folder, and its
    bundle with the torch.export program."""
    root = tmp_path_factory.mktemp("trained")
    main(["train", *tiny_synthetic_args(root, epochs=2)])
    best = root / "run" / "checkpoints" / "best.pt"
    checkpoint = load_checkpoint(best)
    cfg = registry.config_from_dict(checkpoint["config"])
    model = registry.build_model(cfg, checkpoint["model_dims"], torch.device("cpu"))
    from_one_process(checkpoint, root / "dcp", "step-1", model, make_optimizers(cfg, model))
    main(["export", "--checkpoint", str(best), "--out", str(root / "bundle"), "--format", "torch-export"])
    return root


def _copy(source: Path, target: Path) -> Path:
    (shutil.copytree if source.is_dir() else shutil.copyfile)(source, target)
    return target


def _rehash(bundle: Path) -> None:
    """What an attacker does after editing a bundle: the manifest's SHA-256s made to match again."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"] = {name: hashlib.sha256((bundle / name).read_bytes()).hexdigest() for name in manifest["files"]}
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def _evaluate(checkpoint: Path):
    return run_cli("evaluate", "--checkpoint", checkpoint, "--output", checkpoint.parent / "evaluation.json")


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("saved_by", ["last.pt", "best.pt"])
def test_a_one_process_checkpoint_holding_code_is_refused_naming_it_and_nothing_runs(trained, tmp_path, saved_by):
    marker = tmp_path / "ran"
    checkpoint = load_checkpoint(trained / "run" / "checkpoints" / saved_by)
    checkpoint["history"] = _Payload(marker)
    evil = tmp_path / saved_by
    save_checkpoint(evil, checkpoint)
    assert_user_error(_evaluate(evil), f"{evil}: holds Python objects", "(posix.system)", "not loaded")
    assert not marker.exists()
    evil.write_bytes(evil.read_bytes()[: evil.stat().st_size // 2])  # cut short: damaged, not "objects"
    assert_user_error(_evaluate(evil), f"{evil}: not a readable checkpoint (damaged")


def test_a_multi_process_checkpoint_whose_metadata_holds_code_is_refused_and_nothing_runs(trained, tmp_path):
    folder = _copy(trained / "dcp" / "step-1", tmp_path / "step-1")
    assert _evaluate(folder).code == 0  # as written, it scores
    marker = tmp_path / "ran"
    (folder / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    assert_user_error(_evaluate(folder), f"{folder / '.metadata'}: names posix.system", "not loaded")
    assert not marker.exists()


def test_a_multi_process_checkpoint_storing_a_tensor_as_pickled_bytes_is_refused(trained, tmp_path):
    """DCP unpickles a bytes entry in full (torch.load(weights_only=False)): its metadata may not declare one."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    folder = _copy(trained / "dcp" / "step-1", tmp_path / "step-1")
    with open(folder / ".metadata", "rb") as f:
        metadata = pickle.load(f)  # the test's own file, as written above
    name = next(k for k in metadata.state_dict_metadata if k.startswith("model/"))
    metadata.state_dict_metadata[name] = BytesStorageMetadata()
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    needle = f"{folder / '.metadata'}: names torch.distributed.checkpoint.metadata.BytesStorageMetadata"
    assert_user_error(_evaluate(folder), needle, "not loaded")


def test_a_checkpoint_with_a_tensor_of_another_shape_names_the_tensor(trained, tmp_path):
    checkpoint = load_checkpoint(trained / "run" / "checkpoints" / "best.pt")
    name = next(k for k in checkpoint["model"] if k.endswith("weight"))
    checkpoint["model"][name] = checkpoint["model"][name][:-1]
    edited = tmp_path / "best.pt"
    save_checkpoint(edited, checkpoint)
    shape = list(checkpoint["model"][name].shape)
    assert_user_error(_evaluate(edited), f"{edited}: tensor {name} has shape {shape}", "damaged or edited")


# ----------------------------------------------------------------------------- export


def test_a_checkpoint_with_a_nan_weight_is_not_exported(trained, tmp_path):
    checkpoint = load_checkpoint(trained / "run" / "checkpoints" / "best.pt")
    name = next(k for k in checkpoint["model"] if k.endswith("weight"))
    checkpoint["model"][name][0, 0] = float("nan")
    broken = tmp_path / "best.pt"
    save_checkpoint(broken, checkpoint)
    result = run_cli("export", "--checkpoint", broken, "--out", tmp_path / "bundle")
    assert_user_error(result, f"{broken}: tensor {name} holds 1 non-finite values", "not exported")
    assert not (tmp_path / "bundle").exists() and not list(tmp_path.glob(".bundle*"))


def test_an_export_that_differs_from_the_eager_model_fails(trained, tmp_path, monkeypatch, capsys):
    from recforge.serving import runtimes

    class Off(runtimes.ProgramRuntime):  # an exporter bug: every probability off by 1e-3
        def __call__(self, arrays):
            return super().__call__(arrays) + np.float32(1e-3)

    monkeypatch.setitem(runtimes.RUNTIMES, "torch-export", Off)
    out = tmp_path / "bundle"
    with pytest.raises(SystemExit):
        main(["export", "--checkpoint", str(trained / "run" / "checkpoints" / "best.pt"), "--out", str(out)]
             + ["--format", "torch-export"])  # fmt: skip
    error = capsys.readouterr().err
    assert "--format torch-export: the exported program's probabilities differ" in error, error
    assert "over the tolerance 0.0001; not exported" in error and not out.exists()


# ----------------------------------------------------------------------------- bundles


def _with_example_inputs(program: Path, source: Path, data: bytes) -> None:
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(program, "w") as target:
        for info in original.infolist():  # torch.export.load unpickles the example inputs in full
            evil = info.filename.endswith("sample_inputs/model.pt")
            target.writestr(info, data if evil else original.read(info))


def test_a_program_holding_code_in_a_rehashed_bundle_is_refused_before_it_loads(trained, tmp_path):
    bundle = _copy(trained / "bundle", tmp_path / "bundle")
    marker = tmp_path / "ran"
    program = bundle / "model.pt2"
    payload = pickle.dumps(_Payload(marker), protocol=2)
    for data, needle in [
        (_pickled(_Payload(marker)), f"{program}: names posix.system"),
        (payload[:-1], f"{program}: names posix.system"),  # cut short after the call: still named
        (pickle.dumps(_Payload(marker), protocol=0), f"{program}: not loadable"),  # no mark to scan for
    ]:
        _with_example_inputs(program, trained / "bundle" / "model.pt2", data)
        _rehash(bundle)
        result = run_cli("serve", bundle, "--runtime", "torch-export", "--port", "1")
        assert_user_error(result, needle)
        assert not marker.exists()
    program.write_bytes(b"PK\x03\x04 not an archive")
    _rehash(bundle)
    args = ["--runtime", "torch-export", "--input", program, "--output", tmp_path / "scores.parquet"]
    result = run_cli("predict", "--bundle", bundle, *args)
    assert_user_error(result, f"{program}: not loadable as a torch.export program")


def test_an_object_array_in_a_rehashed_bundle_is_refused(trained, tmp_path):
    bundle = _copy(trained / "bundle", tmp_path / "bundle")
    with np.load(bundle / "weights.npz") as saved:
        weights = dict(saved)
    weights[next(iter(weights))] = np.array([{"any": "object"}], dtype=object)
    np.savez(bundle / "weights.npz", **weights)
    _rehash(bundle)
    assert_user_error(run_cli("serve", bundle), f"{bundle / 'weights.npz'}: holds Python objects (an object array)")


def test_an_edited_manifest_is_blamed_not_a_flag(trained, tmp_path):
    bundle = _copy(trained / "bundle", tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["model_dims"]["num_items"] = 5
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    result = run_cli("serve", bundle)
    assert_user_error(result, f"{bundle / 'weights.npz'}: tensor", "the model manifest.json describes has [5,")
    manifest["config"]["arch"]["layers"] = [0]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    error = assert_user_error(run_cli("serve", bundle), f"{bundle / 'manifest.json'}: its config and model_dims")
    assert "edited or damaged" in error
    for field in ("task", "files"):  # absent, then of another type: named, never a KeyError
        edited = {k: v for k, v in manifest.items() if k != field}
        (bundle / "manifest.json").write_text(json.dumps(edited))
        assert_user_error(run_cli("serve", bundle), f"{bundle / 'manifest.json'}: lacks field '{field}'")
        (bundle / "manifest.json").write_text(json.dumps(edited | {field: 7}))
        assert_user_error(run_cli("serve", bundle), f"{bundle / 'manifest.json'}: has a int as field '{field}'")


def test_a_bundle_with_a_nan_weight_is_neither_served_nor_used_by_predict(trained, tmp_path):
    bundle = _copy(trained / "bundle", tmp_path / "bundle")
    with np.load(bundle / "weights.npz") as saved:
        weights = dict(saved)
    name = next(k for k in weights if k.endswith("weight"))
    weights[name][0, 0] = np.nan
    np.savez(bundle / "weights.npz", **weights)
    _rehash(bundle)
    needles = (f"{bundle / 'weights.npz'}: tensor {name} holds 1 non-finite values", "the bundle is refused")
    assert_user_error(run_cli("serve", bundle), *needles)
    output = tmp_path / "scores.parquet"
    assert_user_error(run_cli("predict", "--bundle", bundle, "--input", tmp_path, "--output", output), *needles)
    assert not output.exists()


def test_the_server_answers_500_naming_the_model_rather_than_a_nan_probability(trained):
    from fastapi.testclient import TestClient

    from recforge.serving.bundle import Bundle
    from recforge.serving.server import ServeConfig, create_app

    bundle = Bundle(trained / "bundle")
    healthy = bundle.runtime
    bundle.runtime = lambda arrays: np.where(np.arange(len(arrays["user"])) == 3, np.nan, healthy(arrays))
    with TestClient(create_app(bundle, ServeConfig())) as client:
        answer = client.post("/v1/recommend", json={"user": "1", "k": 5})
    assert answer.status_code == 500, answer.text
    assert "the neumf model of" in answer.json()["error"] and "non-finite probability" in answer.json()["error"]


def test_serve_names_a_port_it_cannot_use(trained):
    assert_user_error(run_cli("serve", trained / "bundle", "--port", "99999"), "--port must be 1..65535, got 99999")
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", trained / "bundle", "--port", port)
    assert_user_error(result, f"--port {port}: cannot listen there")


def test_predict_refuses_to_replace_its_output_without_overwrite(trained, tmp_path):
    output = tmp_path / "scores.parquet"
    output.write_bytes(b"yesterday's scores")
    before = snapshot(tmp_path)
    result = run_cli("predict", "--bundle", trained / "bundle", "--input", tmp_path / "x.csv", "--output", output)
    assert_user_error(result, f"--output {output}: exists; replace it with --overwrite")
    assert snapshot(tmp_path) == before
