"""One contract over every registered model: it builds, trains, saves, resumes exactly where an
uninterrupted run would be, evaluates, exports programs equal to eager, and serves a request. A
new model is covered by registering it; a new kind of task adds its tiny data and request here."""

import json

import pytest
import torch
from conftest import tiny_synthetic_args
from fastapi.testclient import TestClient

from recforge import registry
from recforge.cli import main
from recforge.prepare.synthetic_ctr import generate_ctr
from recforge.serving.bundle import Bundle
from recforge.serving.server import ServeConfig, create_app

pytestmark = pytest.mark.slow

# Per model: an architecture small enough for a few-second test (the others' defaults are).
SMALL_ARCH = {
    "dlrm": ["--embedding-dim", "8", "--bottom-mlp", "13-16-8", "--top-mlp", "16-1"],
    "wide-deep": ["--embedding-dim", "8", "--deep-hidden-units", "16,8"],
}


@pytest.fixture(scope="module")
def click_log(tmp_path_factory):
    folder = tmp_path_factory.mktemp("every-model") / "log"
    generate_ctr(folder, rows=6000, seed=5, cardinalities=[40, 300, 9, 1000], log=lambda *_: None)
    return folder


def _data_flags(task: str, root, click_log) -> list[str]:
    if task == "ranking":
        return tiny_synthetic_args(root, epochs=1, batch_size=4096)[:-2]  # its --output-dir is the test's
    return ["--dataset", "criteo-synthetic", "--prepared-dir", str(click_log), "--batch-size", "500", "--epochs", "1"]


def _request(task: str, bundle: Bundle) -> tuple[str, dict, int]:
    """(endpoint, body, the probabilities its answer holds) of one request per kind of task."""
    if task == "ranking":
        return "/v1/recommend", {"user": bundle.assets.user_ids[0].item(), "k": 3}, 3
    row = {c["name"]: (0.5 if c["type"] == "number" else "0000000a") for c in bundle.assets.inputs}
    return "/v1/score", {"rows": [row, row]}, 2


def _records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"train_loss"' in line]


def _outcome(record: dict) -> dict:
    """A record without its times and the resume's own notes."""
    return {
        k: v for k, v in record.items() if not k.endswith("_s") and k not in ("changed_on_resume", "resumed_from_step")
    }


@pytest.mark.parametrize("name", list(registry.MODELS))
def test_every_model_trains_resumes_exactly_exports_and_serves(name, tmp_path, click_log):
    entry = registry.model_entry(name)
    task = entry.task.name
    flags = ["--model", name, *_data_flags(task, tmp_path, click_log), *SMALL_ARCH.get(name, [])]
    flags += ["--threads", "1", "--precision", "fp32", "--no-tensorboard", "--evals-per-epoch", "1000"]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    main(["train", *flags, "--max-steps", "4", "--output-dir", str(straight)])
    main(["train", *flags, "--max-steps", "2", "--output-dir", str(interrupted)])
    main(["train", *flags, "--max-steps", "4", "--output-dir", str(interrupted), "--resume"])
    expected, resumed = _records(straight), _records(interrupted)
    assert [r["step"] for r in expected] == [1, 2, 3, 4] and [r["step"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(expected, resumed):  # every step's loss and evaluation, bit for bit
        assert _outcome(a) == _outcome(b)
    checkpoint = straight / "checkpoints" / "last.pt"
    state = torch.load(checkpoint, weights_only=True)
    assert state["step"] == 4 and state["config"]["model"] == name

    main(["evaluate", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "scored.json")])
    scored = json.loads((tmp_path / "scored.json").read_text())
    metrics = scored["metrics"]
    primary = entry.task.metrics_of(registry.config_from_dict(state["config"]))[0]
    assert metrics[primary] == pytest.approx(expected[-1][primary], abs=1e-6)  # the run's last evaluation

    main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "bundle"), "--format", "torch-export"])
    bundle = Bundle(tmp_path / "bundle")
    assert bundle.manifest["equivalence"]["torch-export"]["max_abs_difference"] <= 1e-5
    path, payload, answered = _request(task, bundle)
    with TestClient(create_app(bundle, ServeConfig())) as client:
        response = client.post(path, json=payload)
    assert response.status_code == 200, response.text
    answer = response.json()
    values = answer.get("probabilities") or [item["score"] for item in answer["items"]]
    assert len(values) == answered and all(0.0 <= v <= 1.0 for v in values)  # probabilities
