"""Bundles, the HTTP service and file scoring: the exports give the eager model's probabilities,
the real server (a process on a free loopback port, spoken to over HTTP) scores raw rows as
in-process inference scores the prepared rows, answers every bad request with its status and
field, sheds load with 503 and stays healthy, and drains requests in flight on SIGTERM."""

import csv
import json
import math
import pickle
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import free_port, tiny_synthetic_args
from test_wide_deep import _grouped_log

from recforge.cli import main
from recforge.core.errors import RecforgeError
from recforge.data.ctr_format import load_split
from recforge.serving.bundle import MAX_BATCH, Bundle
from recforge.serving.runtimes import RUNTIMES

DENSE = [f"I{i}" for i in range(1, 14)]
SPARSE = [f"C{i}" for i in range(1, 27)]
KAGGLE_TINY = Path(__file__).resolve().parents[2] / "shared" / "data" / "criteo-kaggle-tiny" / "train.tiny.csv"


def criteo_row(line: list[str]) -> dict:
    """A Criteo line (label, 13 counts, 26 hex values) as a request row: missing counts are null."""
    return {n: int(v) if v else None for n, v in zip(DENSE, line[1:14])} | dict(zip(SPARSE, line[14:]))


@pytest.fixture(scope="module")
def dlrm(tmp_path_factory):
    """DLRM trained on the real Kaggle sample; its bundle with both exports; the raw lines."""
    root = tmp_path_factory.mktemp("dlrm")
    with open(KAGGLE_TINY, newline="") as f:
        lines = [row[1:] for row in list(csv.reader(f))[1:]]  # without the Id column
    (root / "raw").mkdir()
    (root / "raw" / "train.txt").write_text("".join("\t".join(line) + "\n" for line in lines))
    main(["prepare", "criteo-kaggle", "--data-dir", str(root / "raw"), "--out", str(root / "prepared")])
    flags = ["--model", "dlrm", "--dataset", "criteo-kaggle", "--data-dir", str(root / "prepared"), "--threads", "1"]
    flags += ["--embedding-dim", "8", "--bottom-mlp", "13-32-8", "--top-mlp", "32-1", "--batch-size", "128"]
    main(["train", *flags, "--output-dir", str(root / "run"), "--epochs", "2"])
    checkpoint = root / "run" / "checkpoints" / "best.pt"
    main(["export", "--checkpoint", str(checkpoint), "--out", str(root / "bundle")])
    return root, checkpoint, lines, flags


@pytest.fixture(scope="module")
def wide_deep(tmp_path_factory):
    """Wide & Deep on a grouped log with a multi-hot list and a cross; its bundle (eager + ONNX)."""
    root = tmp_path_factory.mktemp("wide_deep")
    _grouped_log(root / "raw", displays=1500)
    spec = root / "raw" / "spec.yaml"
    main(
        [
            "prepare",
            "ctr",
            "--feature-spec",
            str(spec),
            "--data-dir",
            str(root / "raw"),
            "--out",
            str(root / "prepared"),
        ]
    )
    main(["train", "--model", "wide-deep", "--dataset", "ctr", "--data-dir", str(root / "prepared"), "--threads", "1"]
         + ["--output-dir", str(root / "run"), "--deep-hidden-units", "32,16", "--epochs", "1"])  # fmt: skip
    checkpoint = root / "run" / "checkpoints" / "best.pt"
    main(["export", "--checkpoint", str(checkpoint), "--out", str(root / "bundle"), "--format", "onnx"])
    return root, checkpoint


@pytest.fixture(scope="module")
def neumf(tmp_path_factory):
    root = tmp_path_factory.mktemp("neumf")
    main(["train", *tiny_synthetic_args(root, epochs=2)])
    checkpoint = root / "run" / "checkpoints" / "best.pt"
    # all: torch-export, ONNX and AOTInductor (compiled here: ~25 s)
    main(["export", "--checkpoint", str(checkpoint), "--out", str(root / "bundle"), "--format", "all"])
    return root, checkpoint


class Server:
    """`recforge serve` in a process of its own on a free loopback port."""

    def __init__(self, bundle, *flags: str, env=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "recforge", "serve", str(bundle), "--port", str(self.port), "--threads", "1"]
        self.process = subprocess.Popen(
            [*command, *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.process.stdout.read()
            try:
                if httpx.get(self.url + "/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise AssertionError("the server did not become ready")

    def post(self, path: str, body, **kwargs) -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=60, **kwargs)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        finally:
            self.process.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
            self.process.stdout.close()


# ----------------------------------------------------------------------------- bundles


@pytest.mark.parametrize("fixture", ["dlrm", "wide_deep", "neumf"])
def test_exports_give_the_eager_probabilities_at_every_batch_size(fixture, request, monkeypatch):
    root = request.getfixturevalue(fixture)[0]
    manifest = json.loads((root / "bundle" / "manifest.json").read_text())
    exports = [name for name in RUNTIMES if name != "eager" and name in manifest["equivalence"]]
    assert fixture != "neumf" or len(exports) == len(RUNTIMES) - 1  # every runtime there is
    assert {RUNTIMES[name].file for name in ["eager", *exports]} <= set(manifest["files"])
    assert exports and manifest["equivalence"]["batch sizes"][::2] == [1, MAX_BATCH]
    for name in exports:
        assert manifest["equivalence"][name]["max_abs_difference"] <= 1e-5
    assert manifest["versions"]["torch"] == torch.__version__.split("+")[0]
    assert manifest["checkpoint"]["best_metrics"] and manifest["data"]
    assert manifest["inputs"]
    # Loading runs no pickle: every unpickling path fails, and each runtime still scores.
    monkeypatch.setattr(pickle, "loads", _no_pickle)
    monkeypatch.setattr(pickle, "load", _no_pickle)
    monkeypatch.setattr(pickle, "Unpickler", _no_pickle)
    monkeypatch.setattr(torch, "load", _no_pickle)
    scores = {}
    for runtime in ["eager", *exports]:
        bundle = Bundle(root / "bundle", runtime)
        arrays = _sample(bundle, root)
        scores[runtime] = bundle.probabilities(arrays)
    for runtime in exports:
        np.testing.assert_allclose(scores[runtime], scores["eager"], atol=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without a GPU")
def test_a_device_this_machine_lacks_is_refused_in_one_line(neumf):
    folder = neumf[0] / "bundle"
    assert Bundle(folder, "eager", device="auto").device == torch.device("cpu")
    for device, message in (
        ("cuda", "--device cuda: no CUDA GPU is visible to this torch"),
        ("cuda:3", "--device cuda:3: no CUDA GPU is visible to this torch"),
        ("mps", "--device mps: recforge runs on cpu or cuda"),
        ("gpu0", "--device gpu0: not a device (auto, cpu, cuda or cuda:N)"),
    ):
        with pytest.raises(RecforgeError, match=re.escape(message)):
            Bundle(folder, "eager", device=device)


def _no_pickle(*args, **kwargs):
    raise AssertionError("a bundle was unpickled")


def _sample(bundle: Bundle, root: Path) -> dict:
    if bundle.manifest["task"] == "ranking":
        return {"user": np.arange(7), "item": np.arange(7) * 3}
    split = load_split(root / "prepared", "valid")
    return {k: np.array(split[k][:300]) for k in bundle.manifest["model_inputs"]}


def test_a_damaged_bundle_is_refused_by_name(neumf, tmp_path):
    import shutil

    shutil.copytree(neumf[0] / "bundle", tmp_path / "bundle")
    (tmp_path / "bundle" / "item_ids.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(Exception, match=r"item_ids.npy: damaged"):
        Bundle(tmp_path / "bundle")


# ----------------------------------------------------------------------------- the server


def test_served_scores_of_raw_rows_equal_inference_on_the_prepared_split(dlrm, tmp_path):
    root, checkpoint, lines, flags = dlrm
    main(["train", *flags, "--restore-checkpoint", str(checkpoint), "--mode", "inference", "--write-predictions"]
         + ["--precision", "fp32", "--output-dir", str(tmp_path / "inference")])  # fmt: skip
    expected = np.load(tmp_path / "inference" / "predictions.npy")
    valid = [criteo_row(line) for line in lines[-len(expected) :]]  # the split's rows: the file's last
    with Server(root / "bundle", "--max-wait-ms", "20") as server:
        # Concurrent requests of 1-9 rows, merged by the batcher, each answered with its own rows.
        chunks = [valid[lo:hi] for lo, hi in _cuts(len(valid))]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda rows: server.post("/v1/score", {"rows": rows}), chunks))
        assert all(a.status_code == 200 for a in answers)
        served = np.concatenate([a.json()["probabilities"] for a in answers])
        np.testing.assert_allclose(served, expected, atol=1e-6)
        # The columnar form gives the same.
        columns = {n: [row[n] for row in valid] for n in DENSE + SPARSE}
        np.testing.assert_allclose(
            server.post("/v1/score", {"columns": columns}).json()["probabilities"], expected, atol=1e-6
        )
        # And an Arrow IPC stream of the columns (Criteo's counts as integers with nulls).
        sink = pa.BufferOutputStream()
        table = pa.table(columns)
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        headers = {"content-type": "application/vnd.apache.arrow.stream"}
        arrow = httpx.post(server.url + "/v1/score", content=sink.getvalue().to_pybytes(), headers=headers)
        np.testing.assert_allclose(arrow.json()["probabilities"], expected, atol=1e-6)
        metrics = httpx.get(server.url + "/metrics").text
        assert 'recforge_requests_total{endpoint="/v1/score",status="200"}' in metrics
        batches = float(
            next(line.split()[-1] for line in metrics.splitlines() if line.startswith("recforge_batch_rows_count"))
        )
        assert batches < len(chunks)  # of len(chunks) + 2 requests: some shared a forward pass
        assert httpx.get(server.url + "/v1/metadata").json()["model"] == "dlrm"
        assert server.stop() == 0


def _cuts(rows: int):
    lo = 0
    for size in [1, 3, 9, 2, 7, 1, 5] * 100:
        if lo >= rows:
            return
        yield lo, min(rows, lo + size)
        lo += size


def test_bad_requests_are_answered_with_their_status_and_field(dlrm, wide_deep, neumf):
    lines = dlrm[2]
    good = criteo_row(lines[0])
    with Server(dlrm[0] / "bundle", "--max-request-rows", "50", "--max-request-bytes", "200000") as server:
        cases = [
            ({"rows": [good, {k: v for k, v in good.items() if k != "C7"}]}, 422, "rows[1].C7", "missing column"),
            ({"rows": [good | {"I3": "seven"}]}, 422, "rows[0].I3", "must be a number"),
            ({"rows": [good | {"C3": "not-hex"}]}, 422, "rows[0].C3", "8 hex digits"),
            ({"rows": []}, 422, "rows", "non-empty"),
            ({"columns": {"I1": [1, 2], "I2": [1]}}, 422, "columns", "same length"),
            ({"rows": [good] * 51}, 413, "rows", "--max-request-rows 50"),
        ]
        for body, status, field, message in cases:
            answer = server.post("/v1/score", body)
            assert answer.status_code == status, (body, answer.text)
            assert answer.json()["field"] == field and message in answer.json()["error"]
        not_json = httpx.post(server.url + "/v1/score", content=b"{rows", headers={"content-type": "application/json"})
        assert not_json.status_code == 400 and not_json.json()["field"] == "body"
        huge = server.post("/v1/score", {"rows": [good] * 40, "padding": "x" * 300_000})
        assert huge.status_code == 413
        # Unseen categorical values take the out-of-vocabulary id, as in training: a score, no error.
        unseen = server.post("/v1/score", {"rows": [good | dict.fromkeys(SPARSE, "0badf00d")]})
        assert unseen.status_code == 200 and 0 < unseen.json()["probabilities"][0] < 1
        assert server.post("/v1/recommend", {"candidates": "x"}).json()["field"] == "candidates"
        errors = httpx.get(server.url + "/metrics").text
        assert 'recforge_errors_total{kind="invalid"}' in errors and 'recforge_errors_total{kind="too_large"}' in errors
    topics = _wide_deep_rows(wide_deep[0])[0] | {"page_topics": ["1", "2", "3", "4"]}
    with Server(wide_deep[0] / "bundle") as server:
        answer = server.post("/v1/score", {"rows": [topics]})
        assert answer.status_code == 422 and answer.json()["field"] == "rows[0].page_topics"
        assert "longer than training's 3" in answer.json()["error"]
    with Server(neumf[0] / "bundle", "--api-key-env", "TEST_KEY", env=_env(TEST_KEY="s3cret")) as server:
        assert server.post("/v1/recommend", {"user": 1}).status_code == 401
        key = {"Authorization": "Bearer s3cret"}
        unknown = server.post("/v1/recommend", {"user": "nobody"}, headers=key)
        assert unknown.status_code == 422 and unknown.json()["field"] == "user"
        assert server.post("/v1/recommend", {"user": 1, "k": 0}, headers=key).json()["field"] == "k"
        assert server.post("/v1/score", {"rows": [{}]}, headers=key).status_code == 404  # not a click-log model
        assert httpx.get(server.url + "/health").status_code == 200  # no key needed


def _env(**extra) -> dict:
    import os

    return os.environ | extra


def _wide_deep_rows(root: Path) -> list[dict]:
    """The raw rows of the grouped log's valid split (its last 20% of lines), lists as JSON lists."""
    with open(root / "raw" / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    valid = rows[len(rows) - load_split(root / "prepared", "valid")["label"].shape[0] :]
    return [
        {
            "ad_id": int(r["ad_id"]),
            "platform": int(r["platform"]),
            "x": float(r["x"]),
            "ad_topic": r["ad_topic"],
            "page_topics": r["page_topics"].split("|") if r["page_topics"] else [],
        }
        for r in valid
    ]


def test_wide_deep_scores_multi_hot_rows_and_ranks_candidates(wide_deep):
    root = wide_deep[0]
    rows = _wide_deep_rows(root)
    bundle = Bundle(root / "bundle")
    split = load_split(root / "prepared", "valid")
    expected = bundle.probabilities({k: np.array(split[k]) for k in bundle.manifest["model_inputs"]})
    with Server(root / "bundle", "--runtime", "onnx") as server:
        served = server.post("/v1/score", {"rows": rows}).json()["probabilities"]
        np.testing.assert_allclose(served, expected, atol=1e-5)
        # A display's ads as candidates of one request: ranked by probability.
        context = {k: rows[0][k] for k in ("platform", "page_topics")}
        candidates = [{k: r[k] for k in ("ad_id", "x", "ad_topic")} for r in rows[:5]]
        ranked = server.post("/v1/recommend", {"context": context, "candidates": candidates, "k": 5}).json()["ranked"]
        alone = server.post("/v1/score", {"rows": [context | c for c in candidates]}).json()["probabilities"]
        assert [r["candidate"] for r in ranked] == list(np.argsort(-np.array(alone), kind="stable"))
        assert ranked[0]["probability"] == pytest.approx(max(alone))


def test_neumf_recommends_as_the_command_line_does(neumf, capsys):
    root, checkpoint = neumf
    main(["recommend", "--checkpoint", str(checkpoint), "--user", "3", "--k", "5", "--json", "--precision", "fp32"])
    expected = json.loads(capsys.readouterr().out)["items"]
    with Server(root / "bundle", "--runtime", "torch-export") as server:
        answer = server.post("/v1/recommend", {"user": 3, "k": 5}).json()
    assert [i["item"] for i in answer["items"]] == [i["item"] for i in expected]
    for served, cli in zip(answer["items"], expected):
        assert served["score"] == pytest.approx(1 / (1 + math.exp(-cli["score"])), abs=1e-6)  # the probability
    with Server(checkpoint) as server:  # a checkpoint is served as its bundle, made at start
        assert server.post("/v1/recommend", {"user": "3", "k": 5}).json() == answer | {"user": "3"}


def test_overload_answers_503_and_the_server_stays_healthy(tmp_path):
    # A model that takes ~20 ms per request (a NeuMF with 1024-wide layers scoring 300 items), one
    # request per forward pass and one waiting: 16 requests at once overflow the queue.
    main(["train", *tiny_synthetic_args(tmp_path, layers="2048,1024,1024", max_steps=1)])
    main(["export", "--checkpoint", str(tmp_path / "run" / "checkpoints" / "last.pt")]
         + ["--out", str(tmp_path / "bundle"), "--format", "none"])  # fmt: skip
    with Server(tmp_path / "bundle", "--max-queue", "1", "--max-batch-rows", "300") as server:
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda _: server.post("/v1/recommend", {"user": 1}), range(16)))
        statuses = [a.status_code for a in answers]
        assert 503 in statuses and 200 in statuses and set(statuses) <= {200, 503}
        shed = next(a for a in answers if a.status_code == 503)
        assert shed.headers["retry-after"] == "1" and shed.json()["error"].startswith("the queue is full")
        assert httpx.get(server.url + "/health").status_code == 200
        assert server.post("/v1/recommend", {"user": 1}).status_code == 200
        assert 'recforge_errors_total{kind="overloaded"}' in httpx.get(server.url + "/metrics").text


def test_sigterm_drains_the_requests_in_flight(dlrm):
    row = criteo_row(dlrm[2][0])
    with Server(dlrm[0] / "bundle", "--max-wait-ms", "1500") as server:
        answers = []
        thread = threading.Thread(target=lambda: answers.append(server.post("/v1/score", {"rows": [row]})))
        thread.start()
        time.sleep(0.5)  # the request is in the batcher, waiting for others
        assert server.stop() == 0
        thread.join()
    assert answers[0].status_code == 200 and len(answers[0].json()["probabilities"]) == 1


def _children(pid: int) -> dict[int, str]:
    """A process's children (Linux /proc): pid -> command line."""
    found = {}
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(status.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found[int(status.parent.name)] = (status.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            pass  # a process that ended while read
    return found


def test_workers_share_the_port_score_alike_and_sum_their_metrics(dlrm):
    root, _, lines, _ = dlrm
    rows = [criteo_row(line) for line in lines[:300]]
    bundle = Bundle(root / "bundle")
    expected = bundle.probabilities(bundle.assets.encode(bundle.assets.table({"rows": rows})))
    chunks = [rows[lo:hi] for lo, hi in _cuts(len(rows))]
    with Server(root / "bundle", "--workers", "2", "--max-wait-ms", "5") as server:
        workers = [p for p, c in _children(server.process.pid).items() if "spawn_main" in c]
        assert len(workers) == 2, workers
        # A new connection per request: the two processes take turns accepting them.
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda part: server.post("/v1/score", {"rows": part}), chunks))
        assert all(a.status_code == 200 for a in answers)
        np.testing.assert_allclose(np.concatenate([a.json()["probabilities"] for a in answers]), expected, atol=1e-6)
        # /metrics, whichever process answers it, counts the requests of both.
        for _ in range(3):
            metrics = httpx.get(server.url + "/metrics").text
            served = next(
                line for line in metrics.splitlines() if line.startswith('recforge_requests_total{endpoint="/v1/score"')
            )
            assert float(served.split()[-1]) == len(chunks)
        assert server.stop() == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)  # the supervisor stopped them


# ----------------------------------------------------------------------------- files


def test_predict_scores_a_csv_through_the_encoders_and_names_a_bad_line(wide_deep, tmp_path, capsys):
    root = wide_deep[0]
    bundle = Bundle(root / "bundle")
    split = load_split(root / "prepared", "valid")
    expected = bundle.probabilities({k: np.array(split[k]) for k in bundle.manifest["model_inputs"]})
    with open(root / "raw" / "log.csv", newline="") as f:
        lines = f.read().splitlines()
    (tmp_path / "valid.csv").write_text("\n".join([lines[0], *lines[-len(expected) :]]) + "\n")
    main(["predict", "--bundle", str(root / "bundle"), "--input", str(tmp_path / "valid.csv")]
         + ["--output", str(tmp_path / "scores.parquet"), "--batch-rows", "1000"])  # fmt: skip
    scores = pq.read_table(tmp_path / "scores.parquet").column("probability").to_numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    bad = lines[-1].split(",")
    bad[4] = "abc"  # x, a numeric column
    (tmp_path / "bad.csv").write_text("\n".join([lines[0], lines[-2], ",".join(bad)]) + "\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--bundle", str(root / "bundle"), "--input", str(tmp_path / "bad.csv")]
             + ["--output", str(tmp_path / "bad.parquet")])  # fmt: skip
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"{tmp_path / 'bad.csv'}:3: field 'x'" in error and error.count("\n") == 1
    assert not (tmp_path / "bad.parquet").exists()
    # Lines of too few or too many fields, and bytes that are not text: the line, not a traceback.
    for name, text, needle in [
        ("short.csv", "\n".join([lines[0], lines[-2], ",".join(bad[:3])]) + "\n", ":3: expected"),
        ("long.csv", "\n".join([lines[0], lines[-2] + ",1,2", lines[-1]]) + "\n", ":2: expected"),
        ("binary.csv", lines[0] + "\n" + lines[-2] + "\n\xff\xfe\x00\x01\n", ":3: binary data"),
    ]:
        (tmp_path / name).write_bytes(text.encode("latin-1"))
        with pytest.raises(SystemExit) as exit_info:
            main(["predict", "--bundle", str(root / "bundle"), "--input", str(tmp_path / name)]
                 + ["--output", str(tmp_path / "bad.parquet")])  # fmt: skip
        error = capsys.readouterr().err
        assert exit_info.value.code == 2 and f"{tmp_path / name}{needle}" in error and error.count("\n") == 1, error
        assert not (tmp_path / "bad.parquet").exists()


def test_predict_reads_empty_criteo_counts_as_missing_in_csv_and_parquet(dlrm, tmp_path):
    root, lines = dlrm[0], dlrm[2]
    bundle = Bundle(root / "bundle")
    split = load_split(root / "prepared", "valid")
    expected = bundle.probabilities({k: np.array(split[k]) for k in bundle.manifest["model_inputs"]})
    valid = lines[-len(expected) :]
    assert any(v == "" for line in valid for v in line[1:14])  # the sample has missing counts
    with open(tmp_path / "valid.csv", "w", newline="") as f:
        csv.writer(f).writerows([["label", *DENSE, *SPARSE], *valid])
    rows = [criteo_row(line) for line in valid]
    pq.write_table(pa.table({n: [r[n] for r in rows] for n in DENSE + SPARSE}), tmp_path / "valid.parquet")
    for suffix in ("csv", "parquet"):
        main(["predict", "--bundle", str(root / "bundle"), "--input", str(tmp_path / f"valid.{suffix}")]
             + ["--output", str(tmp_path / f"{suffix}.parquet")])  # fmt: skip
        scores = pq.read_table(tmp_path / f"{suffix}.parquet").column("probability").to_numpy()
        np.testing.assert_allclose(scores, expected, atol=1e-6)


def test_export_refuses_to_replace_a_bundle_and_names_a_missing_checkpoint(neumf, tmp_path, capsys):
    root, checkpoint = neumf
    before = (root / "bundle" / "manifest.json").read_bytes()
    for argv, message in [
        (["export", "--checkpoint", str(checkpoint), "--out", str(root / "bundle")], "--overwrite"),
        (["export", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "b")], "none.pt"),
        (["serve", str(tmp_path)], "not a bundle (no manifest.json"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        error = capsys.readouterr().err
        assert error.startswith("recforge: error: ") and message in error and error.count("\n") == 1, error
    assert (root / "bundle" / "manifest.json").read_bytes() == before
    assert not (tmp_path / "b").exists()
