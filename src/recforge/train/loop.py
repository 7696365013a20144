"""The one training loop, for every model and task.

A task supplies batches (dicts of tensors with a 0/1 "label"), an evaluation and the model's
dimensions; a model maps a batch to logits. The loop adds what every run needs: precision,
torch.compile, data parallelism, optimizers and schedules, evaluations (per epoch or several per
epoch), checkpoints that resume exactly (also mid-epoch), the run directory, the profiler and the
terminal report. It never branches on a model's name.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from recforge.config import RunConfig, config_from_dict
from recforge.errors import RecforgeError
from recforge.files import append_jsonl, atomic_link, read_jsonl, remove, write_json, write_text
from recforge.progress import Progress, log_to
from recforge.registry import build_task, model_entry
from recforge.train.checkpoint import FORMAT, check_same_data, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from recforge.train.distributed import Dist, init_distributed, pick_device, shutdown
from recforge.train.memory import keep_freed_memory
from recforge.train.optim import make_optimizers, set_learning_rate
from recforge.train.precision import autocast, configure_fp32_matmul, grad_scaler

# Settings that may change on --resume and take effect from the resumed step (recorded in
# metrics.jsonl): rates and their schedule, the run's length, evaluation and logging, where the
# data lives and how the run executes. Every other setting shapes the state being resumed (the
# data and its order, the model, the optimizer's algorithm and state, what the best metric means)
# and is refused.
CHANGEABLE_ON_RESUME = {
    "data": {"data_dir", "data_file", "cache_dir", "clean", "workers", "out", "overwrite"},
    "train": {"epochs", "max_steps", "learning_rate", "beta1", "beta2", "eps", "weight_decay",
              "linear_learning_rate", "linear_l1_regularization", "linear_l2_regularization", "linear_learning_rate_power",
              "deep_learning_rate", "deep_l1_regularization", "deep_l2_regularization", "warmup_steps",
              "decay_start_step", "decay_steps", "decay_power", "print_freq", "save_steps", "keep_checkpoint_max",
              "profile", "profile_start_step", "profile_steps", "device", "threads", "compile", "resume",
              "restore_checkpoint", "mode", "write_predictions"},
    "eval": {"valid_batch_size", "eval_after", "evals_per_epoch", "no_eval", "hr_threshold"},
}
NOT_RECORDED = {("train", "resume"), ("train", "restore_checkpoint")}
# A smoothed training loss this many times its start (or ln 2's, a coin's) means the run diverged.
DIVERGENCE_FACTOR = 10.0


def check_device(requested: str) -> None:
    """A --device that names no device here fails now, in one line, not inside torch."""
    if requested == "auto":
        return
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise RecforgeError(f"--device {requested}: not a device (auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RecforgeError(f"--device {requested}: no CUDA GPU is visible to this torch ({torch.__version__}); use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RecforgeError(f"--device {requested}: only {torch.cuda.device_count()} GPU(s) here")
    if device.type not in ("cpu", "cuda"):
        raise RecforgeError(f"--device {requested}: recforge runs on cpu or cuda")


def setup(cfg: RunConfig) -> tuple[torch.device, Dist]:
    """Device, process group and threads for a run (or an evaluation)."""
    check_device(cfg.train.device)
    device = pick_device(cfg.train.device, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cpu":
        keep_freed_memory()
    dist = init_distributed(device.type)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    configure_fp32_matmul(device)
    return device, dist


def build_model(cfg: RunConfig, dims: dict, device: torch.device) -> torch.nn.Module:
    return model_entry(cfg.model).build(**dims, cfg=cfg.arch).to(device)


class RunDir:
    """The run's output folder: config.yaml, metrics.jsonl, summary.json, checkpoints/.

    Kept consistent through a kill at any instant: a checkpoint is written to a temp file and
    renamed; best.pt is a second name of the last.pt it equals, made after last.pt (a kill in
    between is repaired on --resume, when last.pt's history says it is the best); an
    evaluation's record is appended before its checkpoint (--resume drops records newer than
    last.pt and redoes them); summary.json, written last, exists only for a finished run (a
    resumed run removes it first).
    """

    def __init__(self, path: str | Path, enabled: bool):
        self.path, self.enabled = Path(path).expanduser(), enabled
        self.metrics = self.path / "metrics.jsonl"
        self.checkpoints = self.path / "checkpoints"
        self.last, self.best = self.checkpoints / "last.pt", self.checkpoints / "best.pt"
        self.last_step: int | None = None  # the step of last.pt
        self.resumed: dict = {}

    def holds_training_run(self) -> bool:
        if self.checkpoints.is_dir():
            return True
        config = self.path / "config.yaml"
        try:
            return config.is_file() and (yaml.safe_load(config.read_text()) or {}).get("train", {}).get("mode") == "train"
        except (yaml.YAMLError, AttributeError):
            return False

    def start(self, cfg: RunConfig, resumed_step: int | None = None, changed: dict | None = None) -> None:
        """Write config.yaml; on a fresh run refuse to overwrite an earlier one; on a resumed one
        drop the records after its step and note the settings that changed."""
        self.last_step = resumed_step
        if not self.enabled:
            return
        if not cfg.train.resume and (self.metrics.exists() or self.last.exists()):
            raise RecforgeError(f"{self.path}: holds an earlier run; pass --resume to continue it or choose another --output-dir")
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        for stale in [*self.path.glob(".*.tmp"), *self.checkpoints.glob(".*.tmp"), *self.checkpoints.glob(".*-link")]:
            remove(stale)  # temp files of a killed write (of this run's files, also those not written again)
        remove(self.path / "summary.json")
        write_text(self.path / "config.yaml", cfg.to_yaml())
        # Evaluations logged after the checkpoint we resume from are repeated: drop them.
        kept = [m for m in read_jsonl(self.metrics) if resumed_step and m.get("step", 0) <= resumed_step]
        if resumed_step is not None:  # noted in the first evaluation after the resume
            self.resumed = {"resumed_from_step": resumed_step, "changed_on_resume": changed or {}}
        write_text(self.metrics, "".join(json.dumps(m) + "\n" for m in kept))

    def repair_best(self, history: dict) -> None:
        """best.pt after a kill between the renames of last.pt and best.pt (see the class)."""
        if self.enabled and history["best_step"] == history["step"] and self.last.exists():
            if not (self.best.exists() and os.path.samefile(self.best, self.last)):
                atomic_link(self.last, self.best)

    def log_metrics(self, record: dict) -> None:
        if self.enabled:
            append_jsonl(self.metrics, {**record, **self.resumed})
            self.resumed = {}

    def save(self, state: dict, best: bool = False, keep_steps: int = 0) -> None:
        """last.pt (and best.pt); with `keep_steps`, also step-N.pt, keeping the newest ones."""
        self.last_step = state["step"]
        if not self.enabled:
            return
        save_checkpoint(self.last, state)
        if best:
            atomic_link(self.last, self.best)
        if keep_steps:
            save_checkpoint(self.checkpoints / f"step-{state['step']}.pt", state)
            steps = sorted(self.checkpoints.glob("step-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
            for old in steps[:-keep_steps]:
                remove(old)

    def saved(self) -> str:
        """What a stopped run leaves to continue from, for its message."""
        if self.last_step is None:
            return "no checkpoint was written"
        return f"the last checkpoint, {self.last} (step {self.last_step}), is from before it"

    def summary(self, summary: dict) -> None:
        if self.enabled:
            write_json(self.path / "summary.json", summary)


def train(cfg: RunConfig) -> dict:
    """Train (or, with --mode eval/inference, score a checkpoint); returns the summary."""
    device, dist = setup(cfg)
    try:
        summary = _train(cfg, device, dist) if cfg.train.mode == "train" else _score(cfg, device, dist)
        # Ranks end together: one that tears its process group down while rank 0 still writes
        # the summary can crash gloo's teardown.
        dist.barrier()
        return summary
    finally:
        shutdown(dist)


def _fresh_history() -> dict:
    return {"epoch": 1, "step_in_epoch": 0, "step": 0, "best_step": None, "best_epoch": None, "best_metrics": None,
            "first_epoch_at_threshold": None, "epochs": [], "train_s": 0.0, "eval_s": 0.0, "wall_s": 0.0,
            "eval_examples": 0, "samples": 0}


def _flag(section: str, key: str) -> str:
    return f"--{key.replace('_', '-')}" if section != "top" else key


def _differences(old: dict, new: dict, sections=("data", "arch", "train", "eval")) -> dict[tuple[str, str], tuple]:
    """(section, key) -> (old value, new value) of two `RunConfig.to_dict()`s; keys the old one
    lacks (settings newer than it) are not differences."""
    found = {("top", "model"): (old["model"], new["model"])} if old["model"] != new["model"] else {}
    for section in sections:
        for key, value in new[section].items():
            if key in old[section] and old[section][key] != value:
                found[section, key] = (old[section][key], value)
    return found


def _describe(differences: dict) -> str:
    return ", ".join(f"{_flag(*key)} ({a!r} -> {b!r})" for key, (a, b) in differences.items())


def data_where(cfg: RunConfig) -> str:
    return f"{cfg.data.dataset} in {cfg.data.data_dir}" if cfg.data.data_dir else cfg.data.dataset


def restore_weights(path: str | Path, checkpoint: dict, cfg: RunConfig, model, task) -> None:
    """Load a checkpoint's weights into `model`, refusing another model, architecture or data."""
    trained = checkpoint["config"]
    if trained["model"] != cfg.model:
        raise RecforgeError(f"{path}: a {trained['model']} checkpoint, not {cfg.model} (--model)")
    check_same_data(checkpoint, path, task.data_fingerprint, data_where(cfg))
    different = _differences(trained, cfg.to_dict(), sections=("arch",))
    if different:
        raise RecforgeError(f"{path}: trained with another architecture: {_describe(different)}")
    model.load_state_dict(checkpoint["model"])


def _load_optimizers(optimizers, states: list[dict]) -> None:
    """Optimizer state from a checkpoint, with this run's hyperparameters (rates, betas, decay...)."""
    for optimizer, state in zip(optimizers, states):
        configured = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
        optimizer.load_state_dict(state)
        for group, settings in zip(optimizer.param_groups, configured):
            group.update(settings)


def _restore(cfg: RunConfig, run: RunDir, model, optimizers, scaler, task, log) -> dict:
    """The run history: from checkpoints/last.pt with --resume, else a fresh start (from
    --restore-checkpoint's weights or the model's own warm start, if any)."""
    checkpoint = load_checkpoint(run.last) if cfg.train.resume and run.last.exists() else None
    if checkpoint is None:
        if cfg.train.resume:
            log(f"--resume: no checkpoint in {run.checkpoints}; starting from scratch")
        if cfg.train.restore_checkpoint:
            path = cfg.train.restore_checkpoint
            restore_weights(path, load_checkpoint(path), cfg, model, task)
        elif hasattr(model, "warm_start"):
            model.warm_start(cfg.arch)
        run.start(cfg)
        return _fresh_history()
    check_same_data(checkpoint, run.last, task.data_fingerprint, data_where(cfg))
    differences = _differences(checkpoint["config"], cfg.to_dict())
    refused = {key: v for key, v in differences.items() if key[1] not in CHANGEABLE_ON_RESUME.get(key[0], ())}
    if refused:
        raise RecforgeError(f"--resume: {_describe(refused)} {'differs' if len(refused) == 1 else 'differ'} from the run in "
                            f"{run.path} and cannot change mid-run; "
                            f"resume with the run's values, or train into a new --output-dir")
    model.load_state_dict(checkpoint["model"])
    _load_optimizers(optimizers, checkpoint["optimizers"])
    scaler.load_state_dict(checkpoint["scaler"])
    set_rng_state(checkpoint["rng"])
    history = checkpoint["history"]
    changed = {f"{section}.{key}": {"from": a, "to": b} for (section, key), (a, b) in differences.items()
               if (section, key) not in NOT_RECORDED}
    log(f"resuming {run.path} at epoch {history['epoch']}, step {history['step']}"
        + (f"; from here on: {_describe({k: v for k, v in differences.items() if k not in NOT_RECORDED})}" if changed else ""))
    run.repair_best(history)
    run.start(cfg, resumed_step=history["step"], changed=changed)
    return history


def _profiler(cfg: RunConfig, run: RunDir, enabled: bool):
    """torch.profiler over --profile-steps steps from --profile-start-step; trace in the run dir."""
    if not (cfg.train.profile and enabled):
        return contextlib.nullcontext(None)
    t = cfg.train

    def export(profiler):
        folder = run.path / "profile"
        folder.mkdir(parents=True, exist_ok=True)
        profiler.export_chrome_trace(str(folder / "trace.json"))
        table = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
        write_text(folder / "top_ops.txt", table + "\n")

    schedule = torch.profiler.schedule(wait=max(0, t.profile_start_step - 1), warmup=1, active=t.profile_steps, repeat=1)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return torch.profiler.profile(activities=activities, schedule=schedule, on_trace_ready=export, record_shapes=True)


def _train(cfg: RunConfig, device: torch.device, dist: Dist) -> dict:
    log = log_to(dist.is_main)
    t = cfg.train
    torch.manual_seed(t.seed)
    task = build_task(cfg, device, dist, log)
    model = build_model(cfg, task.model_dims, device)
    optimizers = make_optimizers(t, model)
    scaler = grad_scaler(device, t.precision)
    run = RunDir(cfg.output_dir, dist.is_main)
    history = _restore(cfg, run, model, optimizers, scaler, task, log)

    wrapped = model
    if dist.enabled:
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if t.compile:
        wrapped = torch.compile(wrapped)

    steps_per_epoch = task.steps_per_epoch(t.batch_size)
    eval_every = math.ceil(steps_per_epoch / max(1, cfg.eval.evals_per_epoch))
    metric, threshold = task.primary_metric, cfg.eval.hr_threshold
    log(f"{cfg.model} on {cfg.data.dataset}: {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{task.samples_per_epoch:,} samples/epoch in {steps_per_epoch:,} steps of {t.batch_size:,}, {t.optimizer}, "
        f"{t.precision}, {device}" + (f", {dist.world} processes" if dist.enabled else ""))

    def evaluate_and_save(epoch: int, step_in_epoch: int, window: dict, epoch_train_s: float) -> bool:
        """Evaluate (unless disabled), log, checkpoint; True when the run should stop."""
        # After a mid-epoch resume the window starts at the resumed step: train_loss_from_step says so.
        record = {"epoch": epoch, "step": history["step"], "train_loss": window["loss"] / max(1, window["samples"]),
                  "train_loss_from_step": window["from_step"],
                  "train_samples_per_s": window["samples"] / max(window["seconds"], 1e-9)}
        improved = False
        last_epoch = epoch == t.epochs and step_in_epoch == steps_per_epoch
        if not cfg.eval.no_eval and (epoch > cfg.eval.eval_after or last_epoch):
            begin = time.perf_counter()
            metrics, examples = task.evaluate(model)
            if not math.isfinite(metrics[metric]):
                raise RecforgeError(f"step {history['step']} (epoch {epoch}): {metric} is {metrics[metric]}: the model "
                                    f"diverged; stopped; {run.saved()}; {_advice(t)}")
            record.update(metrics, eval_s=time.perf_counter() - begin)
            history["eval_s"] += record["eval_s"]
            history["eval_examples"] += examples
            best = history["best_metrics"]
            improved = best is None or metrics[metric] > best[metric]
            if improved:
                history["best_epoch"], history["best_step"], history["best_metrics"] = epoch, history["step"], dict(metrics)
            if threshold is not None and metrics[metric] >= threshold and history["first_epoch_at_threshold"] is None:
                history["first_epoch_at_threshold"] = epoch
        if step_in_epoch == steps_per_epoch:
            history["epochs"].append({"epoch": epoch, "train_s": epoch_train_s})
        history["wall_s"] = record["time_s"] = time.perf_counter() - wall_start
        # The record first: a kill before the checkpoint leaves a record that --resume drops and redoes;
        # the other order would leave a checkpoint whose evaluation is never recorded.
        run.log_metrics(record)
        run.save(_state(model, optimizers, scaler, history, cfg, task), best=improved)
        log(_eval_line(record, task.metric_names, improved))
        window.update(loss=0.0, samples=0, seconds=0.0, from_step=history["step"] + 1)
        if history["first_epoch_at_threshold"] is not None:
            log(f"{metric} reached the threshold {threshold} at epoch {epoch}: stopping")
            return True
        return False

    wall_start = time.perf_counter() - history["wall_s"]
    window = {"loss": 0.0, "samples": 0, "seconds": 0.0, "from_step": history["step"] + 1}  # training since the last evaluation
    stop = t.max_steps is not None and history["step"] >= t.max_steps
    start_epoch, start_step = history["epoch"], history["step_in_epoch"]
    if start_step >= steps_per_epoch:  # the checkpoint ended an epoch
        start_epoch, start_step = start_epoch + 1, 0
    with _profiler(cfg, run, dist.is_main) as profiler:
        for epoch in range(start_epoch, t.epochs + 1):
            if stop:
                break
            wrapped.train()
            progress = Progress(task.samples_per_epoch, f"epoch {epoch}", dist.is_main)
            epoch_train_s = 0.0
            begin = time.perf_counter()
            first = start_step if epoch == start_epoch else 0
            for step_in_epoch, (batch, global_size) in enumerate(task.train_batches(epoch, t.batch_size, first), start=first + 1):
                set_learning_rate(optimizers, t, history["step"])
                with autocast(device, t.precision):
                    logits = wrapped(batch)
                # Sum over the local slice, scaled so DDP's gradient average equals the global mean.
                loss = F.binary_cross_entropy_with_logits(logits.float(), batch["label"], reduction="sum")
                for optimizer in optimizers:
                    optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss * (dist.world / global_size)).backward()
                for optimizer in optimizers:
                    scaler.step(optimizer)
                scaler.update()
                history["step"] += 1
                history["epoch"], history["step_in_epoch"] = epoch, step_in_epoch  # where a resume picks up
                loss_value = dist.all_reduce_sum(loss.detach().double()).item()
                _check_loss(history, loss_value / global_size, epoch, run, t, cfg.eval.no_eval, log)
                window["loss"] += loss_value
                window["samples"] += global_size
                history["samples"] += global_size
                progress.update(global_size)
                if profiler is not None:
                    profiler.step()
                if t.print_freq and history["step"] % t.print_freq == 0:
                    seconds = time.perf_counter() - begin
                    log(f"epoch {epoch} step {step_in_epoch}/{steps_per_epoch} (global {history['step']}): "
                        f"loss {window['loss'] / max(1, window['samples']):.4f}, {(window['samples']) / max(window['seconds'] + seconds, 1e-9):,.0f} samples/s")
                stop = t.max_steps is not None and history["step"] >= t.max_steps
                if step_in_epoch % eval_every == 0 or step_in_epoch == steps_per_epoch or stop:
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    seconds = time.perf_counter() - begin
                    window["seconds"] += seconds
                    epoch_train_s += seconds
                    history["train_s"] += seconds
                    progress.close()
                    stop = evaluate_and_save(epoch, step_in_epoch, window, epoch_train_s) or stop
                    begin = time.perf_counter()
                elif t.save_steps and history["step"] % t.save_steps == 0:
                    run.save(_state(model, optimizers, scaler, history, cfg, task), keep_steps=t.keep_checkpoint_max)
                if stop:
                    break

    summary = _summary(cfg, task, history, device, dist)
    run.summary(summary)
    log(_summary_lines(summary, task.metric_names, metric))
    return summary


def _advice(t) -> str:
    rates = "--linear-learning-rate / --deep-learning-rate" if t.optimizer == "ftrl+proximal-adagrad" else "--learning-rate"
    return f"lower {rates} (it takes effect on --resume) or add --warmup-steps"


def _check_loss(history: dict, loss: float, epoch: int, run: RunDir, t, benchmark: bool, log) -> None:
    """Stop a run whose loss is not finite or far above where it started (smoothed over steps),
    before it is evaluated and saved as if it had learned."""
    where = f"step {history['step']} (epoch {epoch})"
    if not math.isfinite(loss):
        raise RecforgeError(f"{where}: the training loss is {loss}; stopped; {run.saved()}; {_advice(t)}")
    if history.get("start_loss") is None:
        history["start_loss"] = history["smoothed_loss"] = loss
    history["smoothed_loss"] = smoothed = 0.9 * history["smoothed_loss"] + 0.1 * loss
    if smoothed > DIVERGENCE_FACTOR * max(history["start_loss"], math.log(2)) and not history.get("divergence_noted"):
        if benchmark:  # a throughput run claims no model: say so once and go on
            history["divergence_noted"] = True
            log(f"warning: {where}: the training loss diverged ({smoothed:.3g} smoothed); a --benchmark run goes on, "
                f"its speed is still measured, its model is not one to use")
            return
        raise RecforgeError(f"{where}: the training loss diverged ({smoothed:.3g} smoothed, {history['start_loss']:.3g} "
                            f"at the start); stopped; {run.saved()}; {_advice(t)}")


def _score(cfg: RunConfig, device: torch.device, dist: Dist) -> dict:
    """--mode eval: metrics of --restore-checkpoint; --mode inference: its scoring throughput."""
    log = log_to(dist.is_main)
    if not cfg.train.restore_checkpoint:
        raise RecforgeError(f"--mode {cfg.train.mode} needs --restore-checkpoint FILE")
    path = cfg.train.restore_checkpoint
    checkpoint = load_checkpoint(path)
    if checkpoint["config"]["model"] != cfg.model:
        raise RecforgeError(f"{path}: a {checkpoint['config']['model']} checkpoint, not {cfg.model} (--model)")
    task = build_task(cfg, device, dist, log)
    check_same_data(checkpoint, path, task.data_fingerprint, data_where(cfg))
    # The architecture is the checkpoint's, whatever the flags of this command say.
    model = build_model(config_from_dict(checkpoint["config"]), checkpoint["model_dims"], device)
    model.load_state_dict(checkpoint["model"])
    run = RunDir(cfg.output_dir, dist.is_main)
    if run.holds_training_run():  # scoring never rewrites a training run's records
        run = RunDir(run.path / cfg.train.mode, dist.is_main)
        log(f"{cfg.output_dir} holds a training run: writing this {cfg.train.mode} run's records to {run.path}")
    if run.enabled:
        run.path.mkdir(parents=True, exist_ok=True)
        write_text(run.path / "config.yaml", cfg.to_yaml())
        write_text(run.metrics, "")
    begin = time.perf_counter()
    if cfg.train.mode == "eval":
        metrics, examples = task.evaluate(model)
        seconds = time.perf_counter() - begin
        summary = {"mode": "eval", "checkpoint": cfg.train.restore_checkpoint, "metrics": metrics,
                   "eval_s": seconds, "eval_samples_per_s": examples / seconds}
        run.log_metrics({"step": checkpoint["history"]["step"], **metrics, "eval_s": seconds})
        log(", ".join(f"{k} = {metrics[k]:.4f}" for k in task.metric_names))
    else:
        probabilities = task.predict(model)
        seconds = time.perf_counter() - begin
        summary = {"mode": "inference", "checkpoint": cfg.train.restore_checkpoint, "examples": int(probabilities.numel()),
                   "inference_s": seconds, "inference_samples_per_s": probabilities.numel() / seconds}
        if cfg.train.write_predictions and run.enabled:
            summary["predictions"] = [str(path) for path in task.write_predictions(run.path, probabilities)]
        log(f"scored {probabilities.numel():,} examples in {seconds:.2f}s: {summary['inference_samples_per_s']:,.0f} samples/s")
    run.summary(summary)
    return summary


def _state(model, optimizers, scaler, history, cfg: RunConfig, task) -> dict:
    return {
        "format": FORMAT, "data": task.data_fingerprint, "model": model.state_dict(), "optimizers": [o.state_dict() for o in optimizers],
        "scaler": scaler.state_dict(), "rng": rng_state(), "epoch": history["epoch"], "step": history["step"],
        "history": history, "config": cfg.to_dict(), "model_dims": task.model_dims,
    }


def _eval_line(record: dict, names: list[str], improved: bool) -> str:
    shown = "".join(f", {k} = {record[k]:.4f}" for k in names if k in record)
    evaluated = f", eval {record['eval_s']:.1f}s" if "eval_s" in record else ""
    return (f"epoch {record['epoch']} (step {record['step']}): loss {record['train_loss']:.4f}{shown}, "
            f"{record['train_samples_per_s']:,.0f} samples/s{evaluated}" + ("  New Best Epoch" if improved else ""))


def _summary(cfg: RunConfig, task, history: dict, device: torch.device, dist: Dist) -> dict:
    times = [e["train_s"] for e in history["epochs"]]
    return {
        "model": cfg.model, "dataset": cfg.data.dataset,
        "metrics": history["best_metrics"] or {}, "best_epoch": history["best_epoch"], "best_step": history["best_step"],
        "epochs_trained": len(times), "steps": history["step"],
        "train_samples_per_s": history["samples"] / history["train_s"] if history["train_s"] else None,
        "eval_samples_per_s": history["eval_examples"] / history["eval_s"] if history["eval_s"] else None,
        "time_to_train_s": history["wall_s"],
        "epoch_time_avg_s": sum(times) / len(times) if times else None,
        "epoch_time_min_s": min(times) if times else None,
        "hr_threshold": cfg.eval.hr_threshold, "first_epoch_at_threshold": history["first_epoch_at_threshold"],
        "precision": cfg.train.precision, "device": str(device), "world_size": dist.world,
    }


def _summary_lines(s: dict, names: list[str], metric: str) -> str:
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    best = ", ".join(f"{k} = {s['metrics'][k]:.4f}" for k in names if k in s["metrics"])
    lines = [
        "summary:",
        f"  best: {best or 'n/a'} (epoch {s['best_epoch']}, step {s['best_step']})",
        f"  train: {fmt(s['train_samples_per_s'], ',.0f')} samples/s, epoch time avg {fmt(s['epoch_time_avg_s'], '.2f')}, "
        f"min {fmt(s['epoch_time_min_s'], '.2f')} (s)",
        f"  eval: {fmt(s['eval_samples_per_s'], ',.0f')} samples/s",
        f"  time to train: {s['time_to_train_s']:.1f}s",
    ]
    if s["hr_threshold"] is not None:
        lines.append(f"  {metric} >= {s['hr_threshold']}: first at epoch {s['first_epoch_at_threshold'] or 'never'}")
    return "\n".join(lines)
