"""`recforge tune`: a sweep on the validation split that survives a kill, shares its budget across
processes, never scores test during the trials, and names the line of a bad search space."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from conftest import tiny_synthetic_args

from recforge.cli import main
from recforge.config import SECTIONS, load_yaml
from recforge.core.shipped import SPACES, names
from recforge.registry import MODELS, build_config
from recforge.tune import read_space

optuna = pytest.importorskip("optuna")

SPACE = """\
# a tiny space: the rate and the factors
optim.learning_rate: {low: 0.003, high: 0.03, log: true}
arch.num_factors: {choices: [4, 8]}
arch.layers: {choices: [[16, 8], [32, 16, 8]]}
"""


def tiny_flags(tmp_path, **overrides) -> list[str]:
    """The tiny NeuMF run's flags, without --output-dir (the sweep names each trial's folder)."""
    flags = tiny_synthetic_args(tmp_path, **overrides)
    at = flags.index("--output-dir")
    return flags[:at] + flags[at + 2 :]


def space_file(tmp_path, text=SPACE):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def states(db) -> list[str]:
    """Trial states in the study, read straight from Optuna's SQLite tables (as another process would)."""
    try:
        with sqlite3.connect(db, timeout=5) as connection:
            return [row[0] for row in connection.execute("SELECT state FROM trials ORDER BY number")]
    except sqlite3.OperationalError:  # not created yet
        return []


def tune_command(tmp_path, out, *extra) -> list[str]:
    return [
        sys.executable,
        "-m",
        "recforge",
        "tune",
        *tiny_flags(tmp_path, epochs=4),
        "--space",
        str(space_file(tmp_path)),
        "--trials",
        "4",
        "--pruner",
        "none",
        "--output-dir",
        str(out),
        *extra,
    ]


def test_a_killed_sweep_resumes_its_running_trial_and_runs_exactly_the_budget(tmp_path):
    out = tmp_path / "sweep"
    sweep = subprocess.Popen(tune_command(tmp_path, out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Killed once two trials are complete and the third has a checkpoint (its first evaluation).
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and sweep.poll() is None:
        checkpointed = (out / "trials" / "0002" / "checkpoints" / "last.pt").is_file()
        if checkpointed and states(out / "study.db")[:3] == ["COMPLETE", "COMPLETE", "RUNNING"]:
            sweep.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    sweep.wait()
    assert sweep.returncode == -signal.SIGKILL, sweep.stdout.read()
    assert states(out / "study.db") == ["COMPLETE", "COMPLETE", "RUNNING"]
    assert not (out / "tune.json").exists()

    resumed = subprocess.run(tune_command(tmp_path, out, "--resume"), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "trial 2: taken over from a stopped sweep" in resumed.stdout
    assert states(out / "study.db") == ["COMPLETE"] * 4
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["0000", "0001", "0002", "0003"]
    assert "resuming" in (out / "trials" / "0002" / "train.log").read_text()  # from its checkpoint, not afresh

    record = json.loads((out / "tune.json").read_text())
    assert record["counts"]["complete"] == 4 and record["metric"] == "HR@10"
    values = {t["trial"]: t["value"] for t in record["trials"]}
    settings = [json.dumps(t["settings"], sort_keys=True) for t in record["trials"]]
    assert len(set(settings)) == 4, settings  # the resumed sweep proposed settings not tried before
    best = record["best"]
    assert best["value"] == max(values.values()) == values[best["trial"]]
    for number in range(4):  # the trials chose on validation and never scored test
        summary = json.loads((out / "trials" / f"{number:04d}" / "summary.json").read_text())
        assert summary["eval_split"] == "valid" and "test_metrics" not in summary
        assert summary["metrics"]["HR@10"] == values[number]
    test_files = list((out / "trials").glob("*/evaluation-*-test.json"))
    assert [p.parent.name for p in test_files] == [f"{best['trial']:04d}"]  # scored once, for the best
    scored = json.loads(test_files[0].read_text())
    assert scored["eval_split"] == "test" and best["test_metrics"] == scored["metrics"]

    # The preset holds the base settings with the best trial's.
    values_, lines = load_yaml(out / "best.yaml")
    cfg = build_config(values_, source=out / "best.yaml", lines=lines)
    assert cfg.optim.learning_rate == best["settings"]["optim.learning_rate"]
    assert cfg.arch.layers == best["settings"]["arch.layers"] and cfg.data.synthetic_users == 151
    assert cfg.eval.valid_protocol == "none"  # the user's protocol; only the trials held validation out
    written = {f"{section}.{key}" for section in SECTIONS for key in values_.get(section, {})}
    assert set(best["settings"]) <= written  # every searched setting is spelled out, a default too

    # Run again, the finished sweep reports the same result without scoring test again.
    again = subprocess.run(tune_command(tmp_path, out, "--resume"), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "tune.json").read_text())["best"] == best
    assert states(out / "study.db") == ["COMPLETE"] * 4


def test_parallel_jobs_share_the_budget(tmp_path):
    out = tmp_path / "sweep"
    result = subprocess.run(tune_command(tmp_path, out, "--jobs", "2"), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert states(out / "study.db") == ["COMPLETE"] * 4
    lines = [line for line in result.stdout.splitlines() if line.startswith("trial ")]
    assert sorted(int(line.split()[1].rstrip(":")) for line in lines) == [0, 1, 2, 3]


def test_a_sweep_folder_is_not_restarted_without_resume(tmp_path, capsys):
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "study.db").write_bytes(b"not touched")
    args = [
        "tune",
        *tiny_flags(tmp_path),
        "--space",
        str(space_file(tmp_path)),
        "--trials",
        "2",
        "--output-dir",
        str(out),
    ]
    with pytest.raises(SystemExit) as stopped:
        main(args)
    assert stopped.value.code == 2
    assert "holds a sweep already: --resume continues" in capsys.readouterr().err
    assert (out / "study.db").read_bytes() == b"not touched"


def test_a_metric_the_runs_do_not_report_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "sweep"
    base = [
        "tune",
        *tiny_flags(tmp_path),
        "--space",
        str(space_file(tmp_path)),
        "--trials",
        "1",
        "--output-dir",
        str(out),
    ]
    with pytest.raises(SystemExit):
        main([*base, "--metric", "AUC"])
    assert capsys.readouterr().err == "recforge: error: --metric AUC: the neumf runs report HR@10, NDCG@10\n"
    assert not out.exists()  # no study, lock or trial folder
    main([*base, "--metric", "NDCG@10"])
    record = json.loads((out / "tune.json").read_text())
    assert record["counts"] == {**record["counts"], "complete": 1, "fail": 0} and record["metric"] == "NDCG@10"


@pytest.mark.parametrize(
    "text, line, key, message",
    [
        ("train.learning_rat: {low: 0.1, high: 1}\n", 1, "train.learning_rat", "no such setting of model 'neumf'"),
        ("train.epochs: {low: 5, high: 2}\n", 1, "train.epochs", "low (5) must be below high (2)"),
        ("train.epochs: {low: 1, high: 2.5}\n", 1, "train.epochs", "high must be an integer"),
        ("optim.learning_rate: {low: 0, high: 1, log: true}\n", 1, "optim.learning_rate", "a log scale needs low"),
        ("arch.num_factors:\n  choices: [8, 0]\n", 2, "arch.num_factors", "0: must be at least 1"),
        ("train.optimizer: {choices: [adam, lamb]}\n", 1, "train.optimizer", "'lamb': must be one of"),
        ("train.optimizer: {low: 1, high: 2}\n", 1, "train.optimizer", "is not a number: search it with choices"),
        ("train.optimizer: {value: lamb}\n", 1, "train.optimizer", "'lamb': must be one of"),
        ("train.optimizer: {value: adam, choices: [sgd]}\n", 1, "train.optimizer", "value takes no low, high"),
        ("arch.dropout:\n  low: 0\n  high: 0.5\n  steps: 0.1\n", 4, "arch.dropout", "unknown key 'steps'"),
        ("- optim.learning_rate\n", 1, None, "a search space maps section.field"),
    ],
)
def test_a_bad_search_space_names_its_line_and_key(tmp_path, capsys, text, line, key, message):
    path = space_file(tmp_path, text)
    with pytest.raises(SystemExit):
        main(
            ["tune", *tiny_flags(tmp_path), "--space", str(path), "--trials", "2", "--output-dir", str(tmp_path / "s")]
        )
    err = capsys.readouterr().err
    where = f"recforge: error: {path}:{line}:" + (f" field '{key}':" if key else "")
    assert err.startswith(where) and message in err, err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("space", names(SPACES))
def test_each_shipped_search_space_fits_the_model_it_is_named_after(space):
    assert space in MODELS
    params = read_space(space, build_config({}, {"model": space}))  # every bound and choice a valid setting
    assert len(params) >= 4


def test_an_observer_sees_every_evaluation_and_its_reason_stops_the_run(tmp_path):
    from recforge import registry
    from recforge.train.loop import train

    class StopAtSecond:
        def __init__(self):
            self.seen = []

        def begin(self, primary_metric, metric_names):
            self.begin_args = (primary_metric, metric_names)

        def __call__(self, evaluation, metrics):
            self.seen.append((evaluation, metrics["HR@10"]))
            return "planted stop" if evaluation == 2 else None

    flags = dict(zip(*[iter(tiny_synthetic_args(tmp_path, epochs=4, evals_per_epoch=2))] * 2))
    cfg = build_config({}, {k[2:].replace("-", "_"): v for k, v in flags.items()})
    observer = StopAtSecond()
    summary = train(cfg, registry, observer)
    assert observer.begin_args == ("HR@10", ["HR@10", "NDCG@10"])
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [n for n, _ in observer.seen] == [1, 2] and [v for _, v in observer.seen] == [r["HR@10"] for r in records]
    assert summary["stopped_early"] == "planted stop" and len(records) == 2  # of 8 evaluations
    assert summary["steps"] == records[-1]["step"] and summary["epochs_trained"] == 1
