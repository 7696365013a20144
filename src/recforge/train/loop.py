"""The one training loop, for every model and task.

A task supplies batches (dicts of tensors with a 0/1 "label"), an evaluation and the model's
dimensions; a model maps a batch to logits. The loop adds what every run needs: precision,
torch.compile, data parallelism, optimizers and schedules, evaluations (per epoch or several per
epoch), checkpoints that resume exactly (also mid-epoch), the run directory, the profiler and the
terminal report. It never branches on a model's name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from recforge.config import RunConfig
from recforge.core.checkpoint import (
    FORMAT,
    check_same_data,
    check_same_model,
    load_checkpoint,
    rng_state,
    set_rng_state,
)
from recforge.core.errors import RecforgeError, one_line
from recforge.core.files import remove, write_text
from recforge.core.progress import Progress, log_to
from recforge.models.layers import materialize_tables, tables_on_meta
from recforge.optim.build import make_optimizers, set_learning_rate, with_initial_rates
from recforge.runtime.distributed import Dist, init_distributed, pick_device, restart_count, restarts_left, shutdown
from recforge.runtime.memory import keep_freed_memory, peak_memory
from recforge.runtime.precision import autocast, configure_fp32_matmul, grad_scaler, warning
from recforge.tasks.base import Task
from recforge.train.curves import Curves
from recforge.train.distributed_checkpoint import from_one_process, load_model_state, load_weights, open_checkpoint
from recforge.train.distributed_checkpoint import load as load_distributed
from recforge.train.distributed_checkpoint import read_state as read_distributed_state
from recforge.train.distributed_checkpoint import save as save_distributed
from recforge.train.gemms import choose_gemms, choose_precision
from recforge.train.run_dir import RunDir
from recforge.train.sharding import choose as choose_sharding
from recforge.train.sharding import pad_rows, shard
from recforge.train.state import History, Window

# Settings that may change on --resume and take effect from the resumed step (recorded in
# metrics.jsonl): rates and their schedule, the run's length, evaluation and logging, where the
# data lives and how the run executes. Every other setting shapes the state being resumed (the
# data and its order, the model, the optimizer's algorithm and state, what the best metric means)
# and is refused.
CHANGEABLE_ON_RESUME = {
    "data": {"data_dir", "prepared_dir", "data_file", "cache_dir", "clean", "workers", "out", "overwrite"},
    "train": {
        "epochs",
        "max_steps",
        "learning_rate",
        "beta1",
        "beta2",
        "eps",
        "weight_decay",
        "linear_learning_rate",
        "linear_l1_regularization",
        "linear_l2_regularization",
        "linear_learning_rate_power",
        "deep_learning_rate",
        "deep_l1_regularization",
        "deep_l2_regularization",
        "warmup_steps",
        "decay_start_step",
        "decay_steps",
        "decay_power",
        "print_freq",
        "tensorboard",
        "save_steps",
        "save_every_minutes",
        "keep_checkpoint_max",
        "profile",
        "profile_start_step",
        "profile_steps",
        "device",
        "threads",
        "collective_timeout_s",
        "compile",
        "gemm",
        "embedding_sharding",
        "embedding_memory_per_rank",
        "resume",
        "restore_checkpoint",
        "mode",
        "write_predictions",
    },
    "eval": {"valid_batch_size", "eval_after", "evals_per_epoch", "no_eval", "quality_target"},
}
NOT_RECORDED = {("train", "resume"), ("train", "restore_checkpoint")}
# A smoothed training loss this many times its start (or ln 2's, a coin's) means the run diverged.
DIVERGENCE_FACTOR = 10.0
# A checkpoint is sound when the training loss on its weights (the next step's) is at most this
# many times the reference: the one to set a diverged run back to (RunDir.stopped_diverging).
SOUND_FACTOR = 2.0


def check_device(requested: str) -> None:
    """A --device that names no device here fails now, in one line, not inside torch."""
    if requested == "auto":
        return
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise RecforgeError(f"--device {requested}: not a device (auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RecforgeError(
            f"--device {requested}: no CUDA GPU is visible to this torch ({torch.__version__}); "
            "use --device cpu or auto"
        )
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
    dist = init_distributed(device.type, cfg.train.collective_timeout_s)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    configure_fp32_matmul(device)
    return device, dist


class RunParts(Protocol):
    """What the loop is given to build a run's task and model (the registry's functions)."""

    def build_task(self, cfg: RunConfig, device: torch.device, dist: Dist, log) -> Task: ...

    def build_model(self, cfg: RunConfig, dims: dict, device: torch.device) -> torch.nn.Module: ...


class Observer(Protocol):
    """What watches a run from outside (a hyperparameter search's pruner)."""

    def begin(self, primary_metric: str, metric_names: list[str]) -> None:
        """Before training: the metric that chooses the best checkpoint, and all its evaluations report."""

    def __call__(self, evaluation: int, metrics: dict) -> str | None:
        """After each evaluation, numbered 1, 2, ... (the same number for the same point of training,
        whatever the batch size), with its metrics: a reason to stop the run there, or None."""


class Stopped(RecforgeError):
    """The run was stopped by a signal; its last checkpoint stands."""


def train(cfg: RunConfig, parts: RunParts, observe: Observer | None = None) -> dict:
    """Train the configured model on its task; returns the summary. Workers that torchrun
    restarted (--max-restarts) resume from the run's last complete checkpoint by themselves.
    `observe` (a hyperparameter search's pruner) may stop the run after an evaluation."""
    if restart_count() and not cfg.train.resume:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, resume=True))
    device, dist = setup(cfg)

    def stopped(signum, frame):  # torchrun stops the other workers with SIGTERM when one fails
        raise Stopped(f"rank {dist.rank}: stopped by {signal.Signals(signum).name}; {_resumable_from(cfg)}")

    main_thread = threading.current_thread() is threading.main_thread()  # where Python takes signals
    previous = signal.signal(signal.SIGTERM, stopped) if main_thread else None
    try:
        summary = _train(cfg, parts, device, dist, observe)
        # Ranks end together: one that tears its process group down while rank 0 still writes
        # the summary can crash gloo's teardown.
        dist.barrier()
        return summary
    except Exception as error:
        if not _lost_peer(error):
            raise
        raise RecforgeError(
            f"rank {dist.rank}: lost another process of the run ({_without_source_place(str(error))}); "
            f"{_resumable_from(cfg)}"
        ) from None
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # ending anyway: a SIGTERM now would cut the teardown
        shutdown(dist)
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _without_source_place(message: str) -> str:
    """gloo's message without its leading [file.cc:line], on one line, shortened."""
    return re.sub(r"^\[[^\]]*\]\s*", "", one_line(message))[:160]


def _lost_peer(error: Exception) -> bool:
    """A collective that failed because a peer process died (its sockets closed) or went silent
    past --collective-timeout-s: torch's DistError (NCCL, timeouts), gloo's transport errors."""
    return isinstance(error, torch.distributed.DistError) or (
        isinstance(error, RuntimeError) and "gloo" in str(error).lower()
    )


def _resumable_from(cfg: RunConfig) -> str:
    """Where a stopped run can continue from, for its last words."""
    latest = RunDir(cfg.output_dir, enabled=False).latest()
    if latest is None:
        return "it has no checkpoint yet"
    restarts = " (torchrun --max-restarts does it by itself)" if restarts_left() > 0 else ""
    return f"its last complete checkpoint is {latest}: continue with --resume{restarts}"


def _flag(section: str, key: str) -> str:
    return f"--{key.replace('_', '-')}" if section != "top" else key


def config_differences(
    old: dict, new: dict, sections=("data", "arch", "train", "eval")
) -> dict[tuple[str, str], tuple]:
    """(section, key) -> (old value, new value) of two `RunConfig.to_dict()`s; keys the old one
    lacks (settings newer than it) are not differences."""
    found = {("top", "model"): (old["model"], new["model"])} if old["model"] != new["model"] else {}
    for section in sections:
        for key, value in new[section].items():
            if key in old[section] and old[section][key] != value:
                found[section, key] = (old[section][key], value)
    return found


def describe_differences(differences: dict) -> str:
    return ", ".join(f"{_flag(*key)} ({a!r} -> {b!r})" for key, (a, b) in differences.items())


def data_where(cfg: RunConfig) -> str:
    folder = cfg.data.prepared_dir or cfg.data.data_dir
    return f"{cfg.data.dataset} in {folder}" if folder else cfg.data.dataset


def restore_weights(path: str | Path, checkpoint: dict, cfg: RunConfig, model, task) -> None:
    """Load a checkpoint's weights into `model`, refusing another model, architecture or data."""
    check_same_model(checkpoint, path, cfg.model)
    check_same_data(checkpoint, path, task.data_fingerprint, data_where(cfg))
    different = config_differences(checkpoint["config"], cfg.to_dict(), sections=("arch",))
    if different:
        raise RecforgeError(f"{path}: trained with another architecture: {describe_differences(different)}")
    load_weights(checkpoint, model, path)


def _load_optimizers(optimizers, states: list[dict]) -> None:
    """Optimizer state from a checkpoint, with this run's hyperparameters (rates, betas, decay...)."""
    for optimizer, state in zip(optimizers, states):
        configured = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
        optimizer.load_state_dict(state)
        for group, settings in zip(optimizer.param_groups, configured):
            group.update(settings)


def _start_fresh(cfg: RunConfig, run: RunDir, model, task, log) -> History:
    """A new run (from --restore-checkpoint's weights or the model's own warm start, if any)."""
    if cfg.train.resume:
        log(f"--resume: no checkpoint in {run.checkpoints}; starting from scratch")
    if cfg.train.restore_checkpoint:
        path = cfg.train.restore_checkpoint
        restore_weights(path, open_checkpoint(path), cfg, model, task)
    else:
        model.warm_start(cfg.arch)
    run.start(cfg)
    return History()


def _resumable(cfg: RunConfig, run: RunDir, source: Path, checkpoint: dict, task) -> dict:
    """The settings this run changes from the checkpoint's; refuses other data, and changes of
    what shapes the state being resumed."""
    check_same_data(checkpoint, source, task.data_fingerprint, data_where(cfg))
    differences = config_differences(checkpoint["config"], cfg.to_dict())
    refused = {key: v for key, v in differences.items() if key[1] not in CHANGEABLE_ON_RESUME.get(key[0], ())}
    if refused:
        raise RecforgeError(
            f"--resume: {describe_differences(refused)} {'differs' if len(refused) == 1 else 'differ'} from the run in "
            f"{run.path} and cannot change mid-run; "
            f"resume with the run's values, or train into a new --output-dir"
        )
    return differences


def _resume(cfg: RunConfig, run: RunDir, source: Path, wrapped, model, optimizers, scaler, task, log) -> History:
    """The run history, and every tensor of the run, from its last checkpoint: last.pt (one
    process wrote it) or a distributed checkpoint's folder (several did), into this run's layout."""
    distributed = source.is_dir()
    checkpoint = read_distributed_state(source) if distributed else load_checkpoint(source)
    differences = _resumable(cfg, run, source, checkpoint, task)
    if distributed:
        load_distributed(source, wrapped, optimizers)
    else:
        load_model_state(model, checkpoint["model"], source)
        _load_optimizers(optimizers, checkpoint["optimizers"])
        set_rng_state(checkpoint["rng"])
    scaler.load_state_dict(checkpoint["scaler"])
    history = History.from_dict(checkpoint["history"])
    changed = {
        f"{section}.{key}": {"from": a, "to": b}
        for (section, key), (a, b) in differences.items()
        if (section, key) not in NOT_RECORDED
    }
    log(
        f"resuming {run.path} at epoch {history.epoch}, step {history.step}"
        + (
            f"; from here on: {describe_differences({k: v for k, v in differences.items() if k not in NOT_RECORDED})}"
            if changed
            else ""
        )
    )
    run.repair_best(history)
    run.start(cfg, resumed_step=history.step, changed=changed)
    return history


CONVERTED = "converted"  # the folder a one-process checkpoint is rewritten into for a sharded run


def _one_process_checkpoint_for_shards(cfg: RunConfig, parts: RunParts, task, run: RunDir, source: Path, device, dist):
    """last.pt of a one-process run, for a sharded run to resume: rank 0 rewrites it as a
    distributed checkpoint (its tables fit one process: one wrote them), the others wait; the
    folder goes once loaded (the file stays until this run's first checkpoint replaces it)."""
    folder = run.checkpoints / CONVERTED
    if dist.is_main:
        checkpoint = load_checkpoint(source)
        _resumable(cfg, run, source, checkpoint, task)  # before its tensors meet this run's model
        remove(folder)  # left by a kill during an earlier conversion
        model = parts.build_model(cfg, task.model_dims, device)
        load_model_state(model, checkpoint["model"], source)
        from_one_process(checkpoint, run.checkpoints, CONVERTED, model, make_optimizers(cfg.train, model))
    dist.barrier()
    return folder


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

    schedule = torch.profiler.schedule(
        wait=max(0, t.profile_start_step - 1), warmup=1, active=t.profile_steps, repeat=1
    )
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return torch.profiler.profile(activities=activities, schedule=schedule, on_trace_ready=export, record_shapes=True)


def _train(cfg: RunConfig, parts: RunParts, device: torch.device, dist: Dist, observe: Observer | None) -> dict:
    log = log_to(dist.is_main)
    t = cfg.train
    torch.manual_seed(t.seed)
    task = parts.build_task(cfg, device, dist, log)
    if observe is not None:
        observe.begin(task.primary_metric, task.metric_names)
    with tables_on_meta():  # made once it is known whether this process holds them whole
        model = parts.build_model(cfg, task.model_dims, device)
    sharding = choose_sharding(t, model, device, dist, log)
    if not sharding or t.restore_checkpoint:  # whole in this process, or whole to start the shards from
        materialize_tables(model, device)
    precision, precision_reason = choose_precision(model, t, device, dist)
    task.precision = precision  # its evaluations compute as training does
    scaler = grad_scaler(device, precision)
    run = RunDir(cfg.output_dir, dist.is_main)
    source = run.latest() if t.resume else None
    if restart_count():
        log(f"torchrun restarted the workers ({restart_count()}x): resuming from the last complete checkpoint")
    if source is None:  # before sharding: the tables' start values are the model's
        history = _start_fresh(cfg, run, model, task, log)
    elif sharding and not source.is_dir():
        source = _one_process_checkpoint_for_shards(cfg, parts, task, run, source, device, dist)

    wrapped, equal_batches = model, False
    if sharding:
        wrapped, placement = shard(model, sharding, t, device, dist, log)
        equal_batches = placement.equal_batches
        optimizers = make_optimizers(t, wrapped, placement.parameters(wrapped))
        optimizers += with_initial_rates([wrapped.fused_optimizer])
    else:
        optimizers = make_optimizers(t, model)
        if dist.enabled:
            wrapped = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
    if source is not None:
        history = _resume(cfg, run, source, wrapped, model, optimizers, scaler, task, log)
        if source.name == CONVERTED:
            dist.barrier()  # every rank has read it
            if dist.is_main:
                remove(source)

    saved_at = [time.monotonic()]  # for --save-every-minutes

    def save(best: bool = False, keep_steps: int = 0) -> None:
        saved_at[0] = time.monotonic()
        if not (dist.enabled or sharding):
            run.save(_state(model, optimizers, scaler, history, cfg, task), best=best, keep_steps=keep_steps)
            return
        meta = _meta(scaler, history, cfg, task)
        run.save_distributed(
            lambda folder, name: save_distributed(folder, name, wrapped, optimizers, meta, dist.is_main),
            history.step,
            best=best,
            keep_steps=t.keep_checkpoint_max if t.save_steps else 0,
        )

    checkpointed = wrapped if dist.enabled or sharding else model  # what a checkpoint's weights load into
    if t.compile:
        wrapped = torch.compile(wrapped)

    steps_per_epoch = task.steps_per_epoch(t.batch_size)
    eval_every = math.ceil(steps_per_epoch / max(1, cfg.eval.evals_per_epoch))
    metric, threshold = task.primary_metric, cfg.eval.quality_target
    log(
        f"{cfg.model} on {cfg.data.dataset}: {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{task.samples_per_epoch:,} samples/epoch in {steps_per_epoch:,} steps of {t.batch_size:,}, {t.optimizer}, "
        f"{precision} ({precision_reason}), {device}" + (f", {dist.world} processes" if dist.enabled else "")
    )
    for name, decided in task.resolved.items():  # what an `auto` setting became on this data
        log(f"--{name.replace('_', '-')} auto: {str(decided['value']).lower()} ({decided['why']})")
    if emulated := warning(device, t.precision):
        log(emulated)
    gemms = choose_gemms(model, t, precision, device, dist, log)
    if not cfg.eval.no_eval and not history.baseline_measured:  # once per run, kept through --resume
        found = task.baseline()
        history.baseline, history.baseline_measured = found and {"model": found[0], "metrics": found[1]}, True
    if history.baseline:
        baseline = history.baseline
        log(f"baseline ({baseline['model']}): {_metrics_text(baseline['metrics'], task.metric_names)}")

    wall_start = time.perf_counter() - history.wall_s  # the run's time across resumes

    def evaluate_and_save(epoch: int, step_in_epoch: int, window: Window, epoch_train_s: float) -> bool:
        """Evaluate (unless disabled), log, checkpoint; True when the run should stop."""
        # After a mid-epoch resume the window starts at the resumed step: train_loss_from_step says so.
        record = {
            "epoch": epoch,
            "step": history.step,
            "train_loss": window.mean_loss(),
            "train_loss_from_step": window.from_step,
            "train_samples_per_s": window.samples_per_s(),
        }
        improved = False
        last_epoch = epoch == t.epochs and step_in_epoch == steps_per_epoch
        if not cfg.eval.no_eval and (epoch > cfg.eval.eval_after or last_epoch):
            begin = time.perf_counter()
            metrics, examples = task.evaluate(model)
            if not math.isfinite(metrics[metric]):
                raise RecforgeError(
                    f"step {history.step} (epoch {epoch}): {metric} is {metrics[metric]}: the model "
                    f"diverged; stopped; {run.stopped_diverging(_rates(t))}"
                )
            record.update(metrics, eval_s=time.perf_counter() - begin)
            history.eval_s += record["eval_s"]
            history.eval_examples += examples
            best = history.best_metrics
            improved = best is None or metrics[metric] > best[metric]
            if improved:
                history.best_epoch, history.best_step, history.best_metrics = (
                    epoch,
                    history.step,
                    dict(metrics),
                )
            if threshold is not None and metrics[metric] >= threshold and history.first_epoch_at_target is None:
                history.first_epoch_at_target = epoch
        if step_in_epoch == steps_per_epoch:
            history.epochs.append({"epoch": epoch, "train_s": epoch_train_s})
        history.wall_s = record["time_s"] = time.perf_counter() - wall_start
        # The record first: a kill before the checkpoint leaves a record that --resume drops and redoes;
        # the other order would leave a checkpoint whose evaluation is never recorded.
        run.log_metrics(record)
        curves.evaluation(history.step, record)
        save(best=improved)
        log(_eval_line(record, task.metric_names, improved))
        window.reset(from_step=history.step + 1)
        if history.first_epoch_at_target is not None:
            log(f"{metric} reached the target {threshold} at epoch {epoch}: stopping")
            return True
        if observe is not None and "eval_s" in record:
            evaluation = (epoch - 1) * cfg.eval.evals_per_epoch + math.ceil(step_in_epoch / eval_every)
            history.stopped_early = observe(evaluation, metrics)
            if history.stopped_early:
                log(f"stopping: {history.stopped_early}")
                return True
        return False

    window = Window(from_step=history.step + 1)
    stop = t.max_steps is not None and history.step >= t.max_steps
    start_epoch, start_step = history.epoch, history.step_in_epoch
    if start_step >= steps_per_epoch:  # the checkpoint ended an epoch
        start_epoch, start_step = start_epoch + 1, 0
    resumed_step = None if source is None else history.step
    curves = Curves(run.path, dist.is_main and t.tensorboard, resumed_step, log)
    with _profiler(cfg, run, dist.is_main) as profiler, curves:
        for epoch in range(start_epoch, t.epochs + 1):
            if stop:
                break
            wrapped.train()
            progress = Progress(task.samples_per_epoch, f"epoch {epoch}", dist.is_main)
            epoch_train_s = 0.0
            begin = time.perf_counter()
            first = start_step if epoch == start_epoch else 0
            for step_in_epoch, (batch, global_size, largest_part) in enumerate(
                task.train_batches(epoch, t.batch_size, first), start=first + 1
            ):
                step_begin = time.perf_counter()
                set_learning_rate(optimizers, t, history.step)
                if equal_batches:
                    batch = pad_rows(batch, largest_part)
                with autocast(device, precision):
                    logits = wrapped(batch)
                # Sum over the local slice, scaled so the ranks' averaged gradient (DDP's, and TorchRec's
                # for sharded tables) is the global mean's.
                loss = F.binary_cross_entropy_with_logits(
                    logits.float(), batch["label"], weight=batch.get("weight"), reduction="sum"
                )
                for optimizer in optimizers:
                    optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss * (dist.world / global_size)).backward()
                for optimizer in optimizers:
                    scaler.step(optimizer)
                scaler.update()
                history.step += 1
                history.epoch, history.step_in_epoch = epoch, step_in_epoch  # where a resume picks up
                # Rank 0's clock decides a timed checkpoint (a collective: every rank must save at the
                # same step); the flag rides on the loss's all-reduce.
                due = (
                    dist.is_main
                    and t.save_every_minutes
                    and time.monotonic() - saved_at[0] >= t.save_every_minutes * 60
                )
                totals = dist.all_reduce_sum(
                    torch.stack([loss.detach().double(), loss.new_tensor(float(due), dtype=torch.float64)])
                )
                loss_value, save_due = totals[0].item(), totals[1].item() > 0
                _check_loss(history, loss_value / global_size, epoch, run, t, cfg.eval.no_eval, log)
                curves.step(
                    history.step, loss_value / global_size, global_size / (time.perf_counter() - step_begin), optimizers
                )
                window.loss += loss_value
                window.samples += global_size
                history.samples += global_size
                progress.update(global_size)
                if profiler is not None:
                    profiler.step()
                if t.print_freq and history.step % t.print_freq == 0:
                    seconds = time.perf_counter() - begin
                    log(
                        f"epoch {epoch} step {step_in_epoch}/{steps_per_epoch} (global {history.step}): "
                        f"loss {window.mean_loss():.4f}, "
                        f"{window.samples_per_s(seconds):,.0f} samples/s"
                    )
                stop = t.max_steps is not None and history.step >= t.max_steps
                if step_in_epoch % eval_every == 0 or step_in_epoch == steps_per_epoch or stop:
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    seconds = time.perf_counter() - begin
                    window.seconds += seconds
                    epoch_train_s += seconds
                    history.train_s += seconds
                    progress.close()
                    stop = evaluate_and_save(epoch, step_in_epoch, window, epoch_train_s) or stop
                    begin = time.perf_counter()
                elif t.save_steps and history.step % t.save_steps == 0:
                    save(keep_steps=t.keep_checkpoint_max)
                elif save_due:
                    save()
                if stop:
                    break
        test = _final_test(cfg, task, run, history, model, checkpointed, dist, log)
        scores = (history.best_metrics or {}) | {f"{task.final_split}/{k}": v for k, v in (test or {}).items()}
        curves.hyperparameters(cfg, scores, history.step)

    summary = _summary(cfg, task, history, device, dist) | {
        "precision": precision,
        "precision_reason": precision_reason,
        "gemm": gemms,
    }
    if test is not None:
        summary |= {"test_split": task.final_split, "test_metrics": test}
    run.summary(summary)
    log(_summary_lines(summary, task.metric_names, metric))
    return summary


def _final_test(cfg: RunConfig, task, run: RunDir, history: History, model, checkpointed, dist: Dist, log):
    """The test split's metrics, scored once with the best checkpoint, when evaluations scored a
    validation split (which chose that checkpoint); None otherwise."""
    if task.final_split is None or not cfg.eval.final_test or cfg.eval.no_eval or history.best_metrics is None:
        return None
    if history.best_step != history.step:  # the model in memory is the last, not the best
        dist.barrier()  # rank 0 has named the best checkpoint
        best = run.best_pointer if checkpointed is not model else run.best
        load_weights(open_checkpoint(best), checkpointed, best)
    begin = time.perf_counter()
    metrics, _ = task.evaluate(model, task.final_split)
    log(
        f"{task.final_split} (the best checkpoint, epoch {history.best_epoch}, step {history.best_step}): "
        f"{_metrics_text(metrics, task.metric_names)}, {time.perf_counter() - begin:.1f}s"
    )
    return metrics


def _rates(t) -> str:
    return (
        "--linear-learning-rate / --deep-learning-rate" if t.optimizer == "ftrl+proximal-adagrad" else "--learning-rate"
    )


def _check_loss(history: History, loss: float, epoch: int, run: RunDir, t, benchmark: bool, log) -> None:
    """Stop a run whose loss is not finite or far above where it started (smoothed over steps),
    before it is evaluated and saved as if it had learned."""
    where = f"step {history.step} (epoch {epoch})"
    if history.start_loss is None and math.isfinite(loss):
        history.start_loss = history.smoothed_loss = loss
    reference = max(history.start_loss or 0.0, math.log(2))
    run.confirm(history.step, math.isfinite(loss) and loss <= SOUND_FACTOR * reference)
    if not math.isfinite(loss):
        raise RecforgeError(f"{where}: the training loss is {loss}; stopped; {run.stopped_diverging(_rates(t))}")
    history.smoothed_loss = smoothed = 0.9 * history.smoothed_loss + 0.1 * loss
    if smoothed > DIVERGENCE_FACTOR * reference and not history.divergence_noted:
        if benchmark:  # a throughput run claims no model: say so once and go on
            history.divergence_noted = True
            log(
                f"warning: {where}: the training loss diverged ({smoothed:.3g} smoothed); a --benchmark run goes on, "
                f"its speed is still measured, its model is not one to use"
            )
            return
        raise RecforgeError(
            f"{where}: the training loss diverged ({smoothed:.3g} smoothed, {history.start_loss:.3g} "
            f"at the start); stopped; {run.stopped_diverging(_rates(t))}"
        )


def _state(model, optimizers, scaler, history, cfg: RunConfig, task) -> dict:
    """A one-process checkpoint: every tensor and the metadata."""
    tensors = {"model": model.state_dict(), "optimizers": [o.state_dict() for o in optimizers], "rng": rng_state()}
    return tensors | _meta(scaler, history, cfg, task)


def _meta(scaler, history, cfg: RunConfig, task) -> dict:
    """What a checkpoint holds besides the model's, optimizers' and generators' tensors."""
    return {
        "format": FORMAT,
        "data": task.data_fingerprint,
        "scaler": scaler.state_dict(),
        "epoch": history.epoch,
        "step": history.step,
        "history": history.to_dict(),
        "config": cfg.to_dict(),
        "model_dims": task.model_dims,
        "precision": task.precision,  # what it computed in: `auto` decides by measurement
    }


def _eval_line(record: dict, names: list[str], improved: bool) -> str:
    shown = "".join(f", {k} = {record[k]:.4f}" for k in names if k in record)
    evaluated = f", eval {record['eval_s']:.1f}s" if "eval_s" in record else ""
    return (
        f"epoch {record['epoch']} (step {record['step']}): loss {record['train_loss']:.4f}{shown}, "
        f"{record['train_samples_per_s']:,.0f} samples/s{evaluated}" + ("  New Best Epoch" if improved else "")
    )


def _summary(cfg: RunConfig, task, history: History, device: torch.device, dist: Dist) -> dict:
    times = [e["train_s"] for e in history.epochs]
    peaks = dist.gather_cat(torch.tensor(peak_memory(device), dtype=torch.int64, device=device)).view(-1, 2)
    return {
        "model": cfg.model,
        "dataset": cfg.data.dataset,
        "metrics": history.best_metrics or {},
        "eval_split": task.eval_split,
        "best_epoch": history.best_epoch,
        "best_step": history.best_step,
        "epochs_trained": len(times),
        "steps": history.step,
        "train_samples_per_s": history.samples / history.train_s if history.train_s else None,
        "eval_samples_per_s": history.eval_examples / history.eval_s if history.eval_s else None,
        "time_to_train_s": history.wall_s,
        "epoch_time_avg_s": sum(times) / len(times) if times else None,
        "epoch_time_min_s": min(times) if times else None,
        "baseline": history.baseline,
        "quality_target": cfg.eval.quality_target,
        "first_epoch_at_target": history.first_epoch_at_target,
        "stopped_early": history.stopped_early,
        "device": str(device),
        "world_size": dist.world,
        "peak_memory_bytes_per_rank": peaks[:, 0].tolist(),
        **({"peak_gpu_memory_bytes_per_rank": peaks[:, 1].tolist()} if device.type == "cuda" else {}),
        "run_folder": str(Path(cfg.output_dir).expanduser().resolve()),
        "resolved": task.resolved,
    }


def _metrics_text(metrics: dict, names: list[str]) -> str:
    return ", ".join(f"{k} = {metrics[k]:.4f}" for k in names if k in metrics)


def _summary_lines(s: dict, names: list[str], metric: str) -> str:
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    lines = [
        "summary:",
        f"  best ({s['eval_split']}): {_metrics_text(s['metrics'], names) or 'n/a'} "
        f"(epoch {s['best_epoch']}, step {s['best_step']})",
        f"  train: {fmt(s['train_samples_per_s'], ',.0f')} samples/s, "
        f"epoch time avg {fmt(s['epoch_time_avg_s'], '.2f')}, "
        f"min {fmt(s['epoch_time_min_s'], '.2f')} (s)",
        f"  eval: {fmt(s['eval_samples_per_s'], ',.0f')} samples/s",
        f"  time to train: {s['time_to_train_s']:.1f}s",
    ]
    if "test_metrics" in s:
        lines.append(f"  {s['test_split']} (best checkpoint): {_metrics_text(s['test_metrics'], names)}")
    if s["baseline"]:
        lines.append(f"  baseline ({s['baseline']['model']}): {_metrics_text(s['baseline']['metrics'], names)}")
    if s["quality_target"] is not None:
        lines.append(f"  {metric} >= {s['quality_target']}: first at epoch {s['first_epoch_at_target'] or 'never'}")
    if s["stopped_early"]:
        lines.append(f"  stopped early: {s['stopped_early']}")
    lines.append(f"  run folder: {s['run_folder']}")
    return "\n".join(lines)
