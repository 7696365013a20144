"""`recforge tune`: a hyperparameter search on a validation split, with Optuna.

Optuna samples (TPE), prunes (the median rule over each trial's validation metric after every
evaluation) and stores the study (SQLite, through its RDB storage). What it has no notion of is
here: trials that are ordinary recforge runs (a run folder each, its output in train.log), a
budget of exactly N trials across processes and restarts, taking over the trials of a killed sweep
(each resumed from its run's checkpoints), trials that never see the test split, and the best
trial's test metrics scored once, at the end.

A sweep folder (--output-dir) holds study.db, trials/NNNN/ (run folders), best.yaml (the best settings as
a preset) and tune.json (every trial, the best and its test metrics).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fcntl
import json
import multiprocessing
import os
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any, TextIO

import yaml

from recforge import registry
from recforge.config import SECTIONS, RunConfig, field_types, section_classes
from recforge.core.errors import DataError, RecforgeError, user_message
from recforge.core.files import write_json, write_text
from recforge.core.progress import Progress
from recforge.core.shipped import SPACES, find
from recforge.core.yaml_file import read_yaml
from recforge.inference import evaluate
from recforge.train.distributed_checkpoint import open_checkpoint
from recforge.train.loop import Stopped, train
from recforge.train.resume import config_differences, describe_differences

LOWER_IS_BETTER = {"logloss"}
STUDY_NAME = "recforge"
# Settings a resumed sweep may give differently from the one that started it: how it executes.
EXECUTION = {("train", "threads"), ("train", "resume"), ("top", "output_dir")}


def _optuna():
    try:
        import optuna
    except ImportError:
        raise RecforgeError("recforge tune needs optuna (pip install 'recforge[experiments]')") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


@dataclasses.dataclass(frozen=True)
class Param:
    """One searched setting: a range of numbers (`low`..`high`, on a log scale or in `step`s) or
    a list of `choices`; or one `fixed` value every trial uses, for a space whose ranges assume it
    (Adam's learning rates). Lists (MLP widths) are handed to Optuna as their JSON text."""

    name: str  # section.field, as in a preset: optim.learning_rate
    kind: str  # int, float, categorical or fixed
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()

    @property
    def as_text(self) -> bool:
        return any(isinstance(c, list) for c in self.choices)

    def suggest(self, trial) -> Any:
        if self.kind == "fixed":
            return self.choices[0]
        if self.kind == "categorical":
            labels = [json.dumps(c) for c in self.choices] if self.as_text else list(self.choices)
            value = trial.suggest_categorical(self.name, labels)
            return json.loads(value) if self.as_text else value
        suggest = trial.suggest_int if self.kind == "int" else trial.suggest_float
        step = {"step": self.step} if self.step is not None else {}
        return suggest(self.name, self.low, self.high, log=self.log, **step)


def with_settings(cfg: RunConfig, settings: dict[str, Any]) -> RunConfig:
    """`cfg` with settings given as {"section.field": value}, checked as a preset's would be."""
    values = cfg.to_dict()
    for name, value in settings.items():
        section, field = name.split(".", 1)
        values[section][field] = value
    return registry.config_from_dict(values)


def read_space(path: str | Path, cfg: RunConfig) -> list[Param]:
    """A search-space file: `section.field: {low: A, high: B[, log: true][, step: S]}` or
    `section.field: {choices: [...]}` per searched setting, `section.field: {value: V}` for one
    every trial uses; every end of a range, choice and value must be a valid value of the setting
    for `cfg`'s model (the error names the file, line and key)."""
    path = find(path, SPACES, "search space")
    data, lines = read_yaml(path, "a search-space file")
    usage = "{low: A, high: B[, log: true][, step: S]}, {choices: [...]} or {value: V}"
    if not isinstance(data, dict) or not data:
        raise DataError(path, 1, None, f"a search space maps section.field to {usage}")
    # The settings that exist are those of the model and of the optimizer every trial uses.
    fixed = {str(n): spec["value"] for n, spec in data.items() if isinstance(spec, dict) and set(spec) == {"value"}}
    with contextlib.suppress(RecforgeError):  # a bad fixed value is named below, at its key
        cfg = with_settings(cfg, {n: v for n, v in fixed.items() if n.partition(".")[0] in SECTIONS})
    types = {section: field_types(cls) for section, cls in section_classes(type(cfg.arch), type(cfg.optim)).items()}
    searched = data.get("train.optimizer")
    space = []
    for name, spec in data.items():
        name = str(name)

        def fail(message: str, key: tuple = ()) -> DataError:
            return DataError(path, lines.get((name, *key)) or lines.get((name,)), name, message)  # noqa: B023

        section, _, field = name.partition(".")
        if section == "train" and field in types["optim"]:
            raise fail(f"now optim.{field}: the optimizer's settings have a section of their own")
        if field not in types.get(section, {}):
            raise fail(
                f"no such setting of model '{cfg.model}' with --optimizer {cfg.train.optimizer} "
                "(SECTION.FIELD, e.g. optim.learning_rate)"
            )
        if section == "optim" and isinstance(searched, dict) and "choices" in searched:
            settings = registry.OPTIMIZER_SETTINGS
            lacking = [o for o in searched["choices"] if o in settings and field not in field_types(settings[o])]
            if lacking:
                raise fail(f"not a setting of --optimizer {', '.join(map(str, lacking))}, which train.optimizer tries")
        if not isinstance(spec, dict) or not spec:
            raise fail(f"must be {usage}")
        unknown = sorted(set(map(str, spec)) - {"low", "high", "log", "step", "choices", "value"})
        if unknown:
            raise fail(f"unknown key '{unknown[0]}' (expected {usage})", (unknown[0],))
        if "value" in spec:
            if set(spec) != {"value"}:
                raise fail("value takes no low, high, log, step or choices")
            param = Param(name, "fixed", choices=(spec["value"],))
            values: list[tuple[Any, tuple[str | int, ...]]] = [(spec["value"], ("value",))]
        elif "choices" in spec:
            if set(spec) != {"choices"}:
                raise fail("choices takes no low, high, log or step")
            if not isinstance(spec["choices"], list) or len(spec["choices"]) < 2:
                raise fail("choices must be a list of at least two values", ("choices",))
            param = Param(name, "categorical", choices=tuple(spec["choices"]))
            values = [(v, ("choices", i)) for i, v in enumerate(param.choices)]
        else:
            kind = {int: "int", float: "float"}.get(types[section][field])
            if kind is None:
                raise fail(f"{name} is not a number: search it with choices")
            if "low" not in spec or "high" not in spec:
                raise fail("a range needs low and high")
            bounds = {}
            for key in ("low", "high", "step"):
                if key in spec:
                    number = spec[key]
                    if isinstance(number, bool) or not isinstance(number, (int, float)):
                        raise fail(f"{key} must be a number, got {number!r}", (key,))
                    if kind == "int" and number != int(number):
                        raise fail(f"{key} must be an integer ({name} is one), got {number!r}", (key,))
                    bounds[key] = int(number) if kind == "int" else float(number)
            log = spec.get("log", False)
            if not isinstance(log, bool):
                raise fail(f"log must be true or false, got {log!r}", ("log",))
            if not bounds["low"] < bounds["high"]:
                raise fail(f"low ({bounds['low']}) must be below high ({bounds['high']})", ("low",))
            if log and bounds["low"] <= 0:
                raise fail("a log scale needs low above 0", ("low",))
            if log and "step" in bounds:
                raise fail("a log scale takes no step", ("step",))
            param = Param(name, kind, bounds["low"], bounds["high"], log, bounds.get("step"))
            values = [(bounds["low"], ("low",)), (bounds["high"], ("high",))]
        for value, at in values:
            try:
                with_settings(cfg, {name: value})
            except DataError as error:
                raise fail(f"{value!r}: {error.message}", at) from None
        space.append(param)
    return space


@dataclasses.dataclass
class Sweep:
    """A search: the settings every trial starts from, what it searches, for what, how long."""

    base: RunConfig  # the preset with the command line's flags
    space: list[Param]
    out: Path
    trials: int
    metric: str | None  # None: the task's own (HR@K, AUC, MAP@12), which a higher value is better of
    jobs: int = 1
    pruner: str = "median"
    prune_after: int = 2  # evaluations a trial is safe from pruning before

    @property
    def direction(self) -> str:
        return "minimize" if self.metric in LOWER_IS_BETTER else "maximize"

    @property
    def task(self):
        return registry.model_entry(self.base.model).task

    def fingerprint(self) -> dict:
        """What a resumed sweep must share with the one it continues (JSON, as stored)."""
        values = self.base.to_dict()
        for section, key in EXECUTION:
            (values if section == "top" else values[section]).pop(key, None)
        return json.loads(json.dumps({"config": values, "space": [dataclasses.asdict(p) for p in self.space]}))

    def trial_folder(self, number: int) -> Path:
        return self.out / "trials" / f"{number:04d}"

    def trial_config(self, settings: dict, number: int, threads: int, resume: bool) -> RunConfig:
        """A trial's run: the base with its settings, choosing on validation (its task's) and never
        scoring test."""
        cfg = with_settings(self.base, settings)
        cfg.output_dir = str(self.trial_folder(number))
        cfg.train.resume, cfg.train.threads = resume, threads
        cfg.eval.final_test = False
        self.task.choose_on_validation(cfg)
        return cfg

    # --- the study ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self):
        """The sweep's lock: choosing the next trial (and Optuna's writes) one process at a time."""
        with open(self.out / "study.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def sampler(self, number: int):
        """TPE seeded by the trial's number: its random draws are new to the study whichever process
        or restart proposes it (one seed per process would propose the first trials again after a
        restart; the history it models is in the study, so nothing else is lost)."""
        return _optuna().samplers.TPESampler(seed=self.base.train.seed * 1_000_003 + number)

    def study(self, create: bool = False):
        optuna = _optuna()
        storage = optuna.storages.RDBStorage(
            f"sqlite:///{self.out.resolve() / 'study.db'}",
            engine_kwargs={"connect_args": {"timeout": 60}},  # processes take turns at the SQLite file
        )
        pruner = (
            optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=self.prune_after)
            if self.pruner == "median"
            else optuna.pruners.NopPruner()
        )
        sampler = self.sampler(0)  # replaced before each new trial (next_trial)
        with self.locked():
            if create:
                study = optuna.create_study(
                    storage=storage, study_name=STUDY_NAME, direction=self.direction, sampler=sampler, pruner=pruner
                )
                study.set_user_attr("sweep", self.fingerprint())
                study.set_user_attr("metric", self.metric)
                return study
            return optuna.load_study(storage=storage, study_name=STUDY_NAME, sampler=sampler, pruner=pruner)

    def next_trial(self, study) -> tuple[Any, TextIO, bool] | None:
        """(trial, its owner lock, taken over) of the next trial this process runs: first any trial
        a killed process left running (its owner lock is free), else a new one while fewer than
        --trials exist; None when the budget is spent."""
        optuna = _optuna()
        with self.locked():
            for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                owner = self._claim(frozen.number)
                if owner is not None:
                    # Optuna makes this object for its own optimize(); here it reattaches a trial.
                    return optuna.trial.Trial(study, frozen._trial_id), owner, True
            if sum(not t.user_attrs.get("aborted") for t in study.get_trials(deepcopy=False)) >= self.trials:
                return None
            study.sampler = self.sampler(len(study.get_trials(deepcopy=False)))  # the number ask() gives
            trial = study.ask()
            owner = self._claim(trial.number)
            assert owner is not None, "a new trial's folder is nobody's"
            return trial, owner, False

    def _claim(self, number: int) -> TextIO | None:
        """An exclusive lock on the trial's owner file, held while this process runs it (the kernel
        drops it when the process dies, however it dies); None if a live process holds it."""
        folder = self.trial_folder(number)
        folder.mkdir(parents=True, exist_ok=True)
        owner = open(folder / ".owner", "a")  # noqa: SIM115 (held open while the trial runs)
        try:
            fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner.close()
            return None
        return owner

    # --- trials ------------------------------------------------------------------------------

    def run_trial(self, study, trial, taken_over: bool, threads: int, say) -> None:
        """Train one trial, reporting each evaluation to the pruner; tell the study how it ended."""
        optuna = _optuna()
        settings = {p.name: p.suggest(trial) for p in self.space}
        cfg = self.trial_config(settings, trial.number, threads, resume=taken_over)
        with self.locked():
            trial.set_user_attr("settings", settings)
        begin = time.perf_counter()
        if taken_over:
            say(f"trial {trial.number}: taken over from a stopped sweep; its run resumes from its last checkpoint")
        log, pruning = cfg.output_dir + "/train.log", Pruning(self, trial)
        try:
            with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                summary = train(cfg, registry, pruning)
        except Stopped:  # the sweep is being stopped: the trial stays running, for a resumed sweep to take over
            raise
        except Exception as error:
            message, _ = user_message(error)
            with self.locked():
                trial.set_user_attr("error", message or repr(error))
                if isinstance(error, WrongMetric):  # not the settings' fault: not a trial of the budget
                    trial.set_user_attr("aborted", True)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            if message is None or isinstance(error, WrongMetric):
                raise
            say(f"trial {trial.number}: failed: {message} ({log})")
            return
        assert pruning.metric is not None  # set when the run began (`Pruning.begin`)
        with self.locked():
            if summary["stopped_early"]:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial, summary["metrics"][pruning.metric])
        say(self._trial_line(study, trial.number, settings, summary, pruning.metric, time.perf_counter() - begin))

    def _trial_line(self, study, number: int, settings: dict, summary: dict, metric: str, seconds: float) -> str:
        shown = " ".join(f"{name.split('.', 1)[1]}={_short(v)}" for name, v in settings.items())
        outcome = "pruned" if summary["stopped_early"] else f"{metric} {summary['metrics'][metric]:.4f}"
        try:
            best = study.best_trial
            lead = f" (best {best.value:.4f}, trial {best.number})"
        except ValueError:  # none completed yet
            lead = ""
        return f"trial {number}: {outcome}{lead} after {summary['epochs_trained']} epochs, {seconds:.0f}s; {shown}"


class WrongMetric(RecforgeError):
    """--metric names no metric of the runs: every trial would fail the same way."""


class Pruning:
    """The training loop's observer in a trial: --metric's value after each evaluation goes to the
    study, whose pruner may stop the run there."""

    def __init__(self, sweep: Sweep, trial):
        self.sweep, self.trial, self.metric = sweep, trial, sweep.metric

    def begin(self, primary_metric: str, metric_names: list[str]) -> None:
        self.metric = self.metric or primary_metric
        if self.metric not in metric_names:
            raise WrongMetric(
                f"--metric {self.metric}: the {self.sweep.base.model} runs report {', '.join(metric_names)}"
            )
        with self.sweep.locked():
            self.trial.set_user_attr("metric", self.metric)

    def __call__(self, evaluation: int, metrics: dict) -> str | None:
        value = metrics[self.metric]
        with self.sweep.locked():
            self.trial.report(value, evaluation)
            pruned = self.trial.should_prune()
        return f"pruned: {self.metric} {value:.4f} at evaluation {evaluation} is below the median" if pruned else None


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return "-".join(map(str, value))
    return str(value)


def work(sweep: Sweep, worker: int, threads: int) -> None:
    """One process's share of the sweep: trials until the budget is spent."""
    study = sweep.study()
    progress = Progress(sweep.trials, "sweep", enabled=worker == 0, unit="trials")
    say = lambda line: print(line, flush=True)  # noqa: E731
    while (chosen := sweep.next_trial(study)) is not None:
        trial, owner, taken_over = chosen
        with owner:
            sweep.run_trial(study, trial, taken_over, threads, say)
        trials = study.get_trials(deepcopy=False)
        done = sum(t.state.is_finished() and not t.user_attrs.get("aborted") for t in trials)
        progress.update(done - progress.done)
    progress.close()


def _worker_main(sweep: Sweep, worker: int, threads: int) -> None:
    """A spawned worker process: errors as the CLI prints them, then a non-zero exit."""
    try:
        work(sweep, worker, threads)
    except Exception as error:
        message, code = user_message(error)
        print(f"recforge: error: worker {worker}: {message or repr(error)}", file=sys.stderr, flush=True)
        sys.exit(code)


def tune(sweep: Sweep, resume: bool, log=print) -> dict:
    """Run (or continue) the sweep in `sweep.out`, then write best.yaml and tune.json; returns tune.json's record."""
    out = sweep.out
    reported = registry.model_entry(sweep.base.model).task.metrics_of(sweep.base)
    if sweep.metric is not None and sweep.metric not in reported:  # before anything is written
        raise WrongMetric(f"--metric {sweep.metric}: the {sweep.base.model} runs report {', '.join(reported)}")
    held_out = sweep.task.choose_on_validation(copy.deepcopy(sweep.base))  # refuses before anything is written
    exists = (out / "study.db").is_file()
    if exists and not resume:
        raise RecforgeError(
            f"{out} holds a sweep already: --resume continues it (or joins it), or choose another --output-dir"
        )
    out.mkdir(parents=True, exist_ok=True)
    if exists:
        study = sweep.study()
        _check_same_sweep(sweep, study)
    else:
        study = sweep.study(create=True)
    done, searched = len(study.get_trials(deepcopy=False)), sum(p.kind != "fixed" for p in sweep.space)
    log(
        f"sweep {out}: {sweep.trials} trials of {sweep.base.model} ({searched} settings searched), "
        f"{sweep.direction} {sweep.metric or 'the task metric'} on validation"
        + (f", {done} trials already in the study" if done else "")
        + f" ({held_out})"
    )
    threads = sweep.base.train.threads or max(1, len(os.sched_getaffinity(0)) // sweep.jobs)
    if sweep.jobs == 1:
        work(sweep, 0, threads)
    else:
        context = multiprocessing.get_context("spawn")
        workers = [context.Process(target=_worker_main, args=(sweep, i, threads)) for i in range(sweep.jobs)]
        for process in workers:
            process.start()

        def stopped(signum, frame):  # the workers stop too: their trials stay running, for --resume
            raise Stopped(f"stopped by {signal.Signals(signum).name}; --resume continues the sweep")

        previous = signal.signal(signal.SIGTERM, stopped)
        try:
            for process in workers:
                process.join()
        finally:
            signal.signal(signal.SIGTERM, previous)
            for process in workers:
                process.terminate()
                process.join()
        failed = [i for i, p in enumerate(workers) if p.exitcode]
        if failed:
            raise RecforgeError(
                f"worker(s) {', '.join(map(str, failed))} stopped with an error (above); --resume continues"
            )
    return finish(sweep, sweep.study(), log)


def _check_same_sweep(sweep: Sweep, study) -> None:
    saved = study.user_attrs.get("sweep")
    current = sweep.fingerprint()
    if saved is not None and saved["space"] != current["space"]:
        raise RecforgeError(f"--resume: --space differs from the sweep's in {sweep.out}; start another --output-dir")
    changed = config_differences(saved["config"], current["config"]) if saved is not None else {}
    if changed:
        raise RecforgeError(
            f"--resume: {describe_differences(changed)} {'differs' if len(changed) == 1 else 'differ'} from the "
            f"sweep's settings in {sweep.out}; resume with its preset and flags, or start another --output-dir"
        )
    if study.user_attrs.get("metric") != sweep.metric:
        scored = any(t.value is not None or t.intermediate_values for t in study.get_trials(deepcopy=False))
        if scored or study.direction.name.lower() != sweep.direction:
            raise RecforgeError(
                f"--resume: the sweep in {sweep.out} optimizes {study.user_attrs.get('metric')}, not {sweep.metric}"
            )
        study.set_user_attr("metric", sweep.metric)  # no trial has scored one yet


def finish(sweep: Sweep, study, log) -> dict:
    """best.yaml (the base preset with the best trial's settings), the best trial's test metrics
    (scored once: a later call reuses them), tune.json."""
    optuna = _optuna()
    trials = study.get_trials(deepcopy=False)
    counts = {state.name.lower(): sum(t.state == state for t in trials) for state in optuna.trial.TrialState}
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise RecforgeError(
            f"no trial of {sweep.out} completed ({', '.join(f'{n} {k}' for k, n in counts.items() if n)}): "
            "their train.log files say why"
        )
    best = study.best_trial
    settings, metric = best.user_attrs["settings"], best.user_attrs["metric"]
    folder = sweep.trial_folder(best.number)
    record_path = sweep.out / "tune.json"
    earlier = json.loads(record_path.read_text()) if record_path.is_file() else {}
    write_text(sweep.out / "best.yaml", _preset(sweep, settings, best, metric, len(trials)))
    record = {
        "metric": metric,
        "direction": sweep.direction,
        "counts": counts,
        "best": {
            "trial": best.number,
            "value": best.value,
            "settings": settings,
            "run_folder": str(folder),
            "valid_metrics": _summary_metrics(folder),
            "test_metrics": earlier.get("best", {}).get("test_metrics")
            if earlier.get("best", {}).get("trial") == best.number
            else None,
        },
        "trials": [
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                "value": t.value,
                "evaluations": {str(k): v for k, v in sorted(t.intermediate_values.items())},
                "settings": t.user_attrs.get("settings"),
                "error": t.user_attrs.get("error"),
            }
            for t in trials
        ],
    }
    write_json(record_path, record)  # the sweep's record stands even if scoring test fails
    test = record["best"]["test_metrics"]
    if test is None:  # scored once: a finished sweep run again reuses them
        checkpoint = folder / "checkpoints" / "best.pt"
        with open(folder / "train.log", "a") as f, contextlib.redirect_stdout(f):
            test = record["best"]["test_metrics"] = evaluate(open_checkpoint(checkpoint), checkpoint, split="test")[
                "metrics"
            ]
        write_json(record_path, record)
    shown = ", ".join(f"{k} = {v:.4f}" for k, v in test.items() if isinstance(v, float))
    log(
        f"best: trial {best.number}, {metric} {best.value:.4f} on validation; test (once, its best "
        f"checkpoint): {shown}\n  settings: {json.dumps(settings)}\n  preset: {sweep.out / 'best.yaml'} "
        f"(recforge train --config {sweep.out / 'best.yaml'})\n  {counts['complete']} complete, "
        f"{counts['pruned']} pruned, {counts['fail']} failed; every trial: {record_path}"
    )
    return record


def _summary_metrics(folder: Path) -> dict:
    summary = folder / "summary.json"
    return json.loads(summary.read_text())["metrics"] if summary.is_file() else {}


def _preset(sweep: Sweep, settings: dict, best, metric: str, trials: int) -> str:
    """The base settings with the best trial's, as a preset: the settings searched and those that
    differ from the model's defaults (and the model), under a first line saying where it comes from."""
    cfg = with_settings(sweep.base, settings).to_dict()
    defaults = registry.build_config({"model": cfg["model"]}).to_dict()
    # (the optimizer's settings against that optimizer's defaults)
    defaults["optim"] = registry.build_config(
        {"model": cfg["model"], "train": {"optimizer": cfg["train"]["optimizer"]}}
    ).to_dict()["optim"]
    values: dict = {"model": cfg["model"]}
    for section in SECTIONS:
        differ = {
            k: v
            for k, v in cfg[section].items()
            if (v != defaults[section][k] or f"{section}.{k}" in settings) and k not in ("resume", "threads")
        }
        if differ:
            values[section] = differ
    head = (
        f"# {cfg['model']} on {cfg['data']['dataset']}: tuned by recforge tune, trial {best.number} of {trials}, "
        f"{metric} {best.value:.4f} on validation\n"
        f"# searched: {', '.join(p.name for p in sweep.space)}\n"
    )
    return head + yaml.safe_dump(values, sort_keys=False)
