"""The one training loop, for every model and task.

A task supplies batches (dicts of tensors), their loss, an evaluation and the model's
dimensions; a model maps a batch to what the loss takes. The loop adds what every run needs:
precision, torch.compile, data parallelism, optimizers and schedules, evaluations (per epoch or
several per epoch), checkpoints that resume exactly (also mid-epoch), the run directory, the
profiler and the terminal report. It names no model, no kind of task and no optimizer (a test
checks): `Run` is its phases.
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

from recforge.config import RunConfig
from recforge.core.checkpoint import FORMAT, load_checkpoint, rng_state, set_rng_state
from recforge.core.errors import RecforgeError, one_line
from recforge.core.files import remove, write_text
from recforge.core.progress import Progress, log_to
from recforge.models.layers import materialize_tables, tables_on_meta
from recforge.optim.build import OPTIMIZERS, make_optimizers, set_learning_rate, with_initial_rates
from recforge.runtime.distributed import Dist, init_distributed, pick_device, restart_count, restarts_left, shutdown
from recforge.runtime.memory import keep_freed_memory
from recforge.runtime.precision import autocast, configure_fp32_matmul, grad_scaler, warning
from recforge.tasks.base import Task
from recforge.train.curves import Curves
from recforge.train.distributed_checkpoint import from_one_process, load_model_state, load_weights, open_checkpoint
from recforge.train.distributed_checkpoint import load as load_distributed
from recforge.train.distributed_checkpoint import read_state as read_distributed_state
from recforge.train.distributed_checkpoint import save as save_distributed
from recforge.train.gemms import choose_gemms, choose_precision
from recforge.train.resume import (
    NOT_RECORDED,
    describe_differences,
    load_optimizers,
    recorded_changes,
    restore_weights,
    resumable,
)
from recforge.train.run_dir import RunDir
from recforge.train.sharding import choose as choose_sharding
from recforge.train.sharding import pad_rows, shard
from recforge.train.state import History, Window
from recforge.train.summary import eval_line, metrics_text, summary, summary_lines

# A smoothed training loss this many times its start (or ln 2's, a coin's) means the run diverged.
DIVERGENCE_FACTOR = 10.0
# A checkpoint is sound when the training loss on its weights (the next step's) is at most this
# many times the reference: the one to set a diverged run back to (RunDir.stopped_diverging).
SOUND_FACTOR = 2.0


def setup(cfg: RunConfig) -> tuple[torch.device, Dist]:
    """Device, process group and threads for a run (or an evaluation)."""
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
        summary = Run(cfg, parts, device, dist, observe).train()
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


CONVERTED = "converted"  # the folder a one-process checkpoint is rewritten into for a sharded run


class Run:
    """One training run, in phases: `build` (task, model, precision, sharding), `restore` (a fresh
    start or the last checkpoint, the parallel wrapping and the optimizers), `announce`, then
    epochs of `step`s, each evaluation window closed by `evaluate_and_save`, and `finish` (the
    test split with the best checkpoint, summary.json). `train` runs them in that order."""

    def __init__(self, cfg: RunConfig, parts: RunParts, device: torch.device, dist: Dist, observe: Observer | None):
        self.cfg, self.parts, self.device, self.dist, self.observe = cfg, parts, device, dist, observe
        self.t = cfg.train
        self.log = log_to(dist.is_main)
        self.rates = OPTIMIZERS[cfg.train.optimizer].rates  # a diverged run's advice names them

    def train(self) -> dict:
        self.build()
        self.restore()
        self.announce()
        self.wall_start = time.perf_counter() - self.history.wall_s  # the run's time across resumes
        resumed_step = None if self.source is None else self.history.step
        curves = Curves(self.run.path, self.dist.is_main and self.t.tensorboard, resumed_step, self.log)
        with _profiler(self.cfg, self.run, self.dist.is_main) as self.profiler, curves:
            self.curves = curves
            self.train_epochs()
            test = self.final_test()
            scores = (self.history.best_metrics or {}) | {
                f"{self.task.final_split}/{k}": v for k, v in (test or {}).items()
            }
            curves.hyperparameters(self.cfg, scores, self.history.step)
        return self.finish(test)

    # --- build ---------------------------------------------------------------------------------

    def build(self) -> None:
        """The task, the model (tables made once it is known whether this process holds them
        whole), the precision and the run folder."""
        cfg, t, device, dist = self.cfg, self.t, self.device, self.dist
        torch.manual_seed(t.seed)
        self.task = task = self.parts.build_task(cfg, device, dist, self.log)
        if self.observe is not None:
            self.observe.begin(task.primary_metric, task.metric_names)
        with tables_on_meta():
            self.model = self.parts.build_model(cfg, task.model_dims, device)
        self.sharding = choose_sharding(t, self.model, device, dist, self.log)
        if not self.sharding or t.restore_checkpoint:  # whole in this process, or whole to start the shards from
            materialize_tables(self.model, device)
        self.precision, self.precision_reason = choose_precision(self.model, t, device, dist)
        task.precision = self.precision  # its evaluations compute as training does
        self.scaler = grad_scaler(device, self.precision)
        self.run = RunDir(cfg.output_dir, dist.is_main)
        self.source = self.run.latest() if t.resume else None

    # --- restore -------------------------------------------------------------------------------

    def restore(self) -> None:
        """A fresh start (before sharding: the tables' start values are the model's) or the last
        checkpoint; the model wrapped for its processes, with its optimizers."""
        t, dist = self.t, self.dist
        if restart_count():
            self.log(f"torchrun restarted the workers ({restart_count()}x): resuming from the last complete checkpoint")
        if self.source is None:
            self.history = self.start_fresh()
        elif self.sharding and not self.source.is_dir():
            self.source = self.one_process_checkpoint_for_shards()
        self.wrapped, self.equal_batches = self.model, False
        if self.sharding:
            self.wrapped, placement = shard(self.model, self.sharding, self.cfg, self.device, dist, self.log)
            self.equal_batches = placement.equal_batches
            self.optimizers = make_optimizers(self.cfg, self.wrapped, placement.parameters(self.wrapped))
            self.optimizers += with_initial_rates([self.wrapped.fused_optimizer])
        else:
            self.optimizers = make_optimizers(self.cfg, self.model)
            if dist.enabled:
                self.wrapped = torch.nn.parallel.DistributedDataParallel(
                    self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
                )
        if self.source is not None:
            self.history = self.resume()
            if self.source.name == CONVERTED:
                dist.barrier()  # every rank has read it
                if dist.is_main:
                    remove(self.source)
        # What a checkpoint's weights load into, and the model the steps run.
        self.checkpointed = self.wrapped if dist.enabled or self.sharding else self.model
        if t.compile:
            # A module compiles to a module (OptimizedModule); torch's stubs say a callable.
            self.wrapped = torch.compile(self.wrapped)  # type: ignore[assignment]
        self.saved_at = time.monotonic()  # for --save-every-minutes

    def start_fresh(self) -> History:
        """A new run (from --restore-checkpoint's weights or the model's own warm start, if any)."""
        cfg = self.cfg
        if cfg.train.resume:
            self.log(f"--resume: no checkpoint in {self.run.checkpoints}; starting from scratch")
        if cfg.train.restore_checkpoint:
            path = cfg.train.restore_checkpoint
            restore_weights(path, open_checkpoint(path), cfg, self.model, self.task)
        else:
            self.model.warm_start(cfg.arch)  # type: ignore[operator]  # a recforge Model: the registry checks it
        self.run.start(cfg)
        return History()

    def resume(self) -> History:
        """The run history, and every tensor of the run, from its last checkpoint: last.pt (one
        process wrote it) or a distributed checkpoint's folder (several did), into this run's layout."""
        source, run = self.source, self.run
        assert source is not None  # a resume has a checkpoint (`restore`)
        distributed = source.is_dir()
        checkpoint = read_distributed_state(source) if distributed else load_checkpoint(source)
        differences = resumable(self.cfg, run.path, source, checkpoint, self.task)
        if distributed:
            load_distributed(source, self.wrapped, self.optimizers)
        else:
            load_model_state(self.model, checkpoint["model"], source)
            load_optimizers(self.optimizers, checkpoint["optimizers"])
            set_rng_state(checkpoint["rng"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        history = History.from_dict(checkpoint["history"])
        kept = {key: change for key, change in differences.items() if key not in NOT_RECORDED}
        self.log(
            f"resuming {run.path} at epoch {history.epoch}, step {history.step}"
            + (f"; from here on: {describe_differences(kept)}" if kept else "")
        )
        run.repair_best(history)
        run.start(self.cfg, resumed_step=history.step, changed=recorded_changes(kept))
        return history

    def one_process_checkpoint_for_shards(self) -> Path:
        """last.pt of a one-process run, for a sharded run to resume: rank 0 rewrites it as a
        distributed checkpoint (its tables fit one process: one wrote them), the others wait; the
        folder goes once loaded (the file stays until this run's first checkpoint replaces it)."""
        cfg, run, source = self.cfg, self.run, self.source
        assert source is not None  # a resume has a checkpoint (`restore`)
        folder = run.checkpoints / CONVERTED
        if self.dist.is_main:
            checkpoint = load_checkpoint(source)
            resumable(cfg, run.path, source, checkpoint, self.task)  # before its tensors meet this run's model
            remove(folder)  # left by a kill during an earlier conversion
            model = self.parts.build_model(cfg, self.task.model_dims, self.device)
            load_model_state(model, checkpoint["model"], source)
            from_one_process(checkpoint, run.checkpoints, CONVERTED, model, make_optimizers(cfg, model))
        self.dist.barrier()
        return folder

    # --- announce ------------------------------------------------------------------------------

    def announce(self) -> None:
        """The run's first lines: what trains on what, how; the choices `auto` made; the baseline."""
        cfg, t, task, dist, log = self.cfg, self.t, self.task, self.dist, self.log
        self.steps_per_epoch = task.steps_per_epoch(t.batch_size)
        self.eval_every = math.ceil(self.steps_per_epoch / max(1, cfg.eval.evals_per_epoch))
        log(
            f"{cfg.model} on {cfg.data.dataset}: {sum(p.numel() for p in self.model.parameters()):,} parameters, "
            f"{task.samples_per_epoch:,} samples/epoch in {self.steps_per_epoch:,} steps of {t.batch_size:,}, "
            f"{t.optimizer}, {self.precision} ({self.precision_reason}), {self.device}"
            + (f", {dist.world} processes" if dist.enabled else "")
        )
        for name, decided in task.resolved.items():  # what an `auto` setting became on this data
            log(f"--{name.replace('_', '-')} auto: {str(decided['value']).lower()} ({decided['why']})")
        if emulated := warning(self.device, t.precision):
            log(emulated)
        self.gemms = choose_gemms(self.model, t, self.precision, self.device, dist, log)
        history = self.history
        if not cfg.eval.no_eval and not history.baseline_measured:  # once per run, kept through --resume
            found = task.baseline()
            history.baseline, history.baseline_measured = found and {"model": found[0], "metrics": found[1]}, True
        if history.baseline:
            baseline = history.baseline
            log(f"baseline ({baseline['model']}): {metrics_text(baseline['metrics'], task.metric_names)}")

    # --- steps ---------------------------------------------------------------------------------

    def train_epochs(self) -> None:
        """Epochs of steps from where the history stands, to --epochs or --max-steps, or until an
        evaluation stops the run."""
        t, history = self.t, self.history
        self.window = Window(from_step=history.step + 1)
        stop = t.max_steps is not None and history.step >= t.max_steps
        start_epoch, start_step = history.epoch, history.step_in_epoch
        if start_step >= self.steps_per_epoch:  # the checkpoint ended an epoch
            start_epoch, start_step = start_epoch + 1, 0
        for epoch in range(start_epoch, t.epochs + 1):
            if stop:
                break
            stop = self.train_epoch(epoch, start_step if epoch == start_epoch else 0)

    def train_epoch(self, epoch: int, first: int) -> bool:
        """One epoch's steps from step `first`; True when the run should stop."""
        t, history = self.t, self.history
        self.wrapped.train()
        progress = Progress(self.task.samples_per_epoch, f"epoch {epoch}", self.dist.is_main)
        self.epoch_train_s = 0.0
        self.begin = time.perf_counter()
        for step_in_epoch, (batch, global_size, largest_part) in enumerate(
            self.task.train_batches(epoch, t.batch_size, first), start=first + 1
        ):
            step_begin = time.perf_counter()
            loss_sum, count, save_due = self.step(batch, global_size, largest_part)
            history.step += 1
            history.epoch, history.step_in_epoch = epoch, step_in_epoch  # where a resume picks up
            self.check_loss(loss_sum / count, epoch)
            self.curves.step(
                history.step, loss_sum / count, global_size / (time.perf_counter() - step_begin), self.optimizers
            )
            self.window.loss += loss_sum
            self.window.samples += global_size
            self.window.terms += count
            history.samples += global_size
            progress.update(global_size)
            if self.profiler is not None:
                self.profiler.step()
            if t.print_freq and history.step % t.print_freq == 0:
                self.log_progress(epoch, step_in_epoch)
            stop = t.max_steps is not None and history.step >= t.max_steps
            if step_in_epoch % self.eval_every == 0 or step_in_epoch == self.steps_per_epoch or stop:
                progress.close()
                stop = self.close_window(epoch, step_in_epoch) or stop
            elif t.save_steps and history.step % t.save_steps == 0:
                self.save(keep_steps=t.keep_checkpoint_max)
            elif save_due:
                self.save()
            if stop:
                return True
        return False

    def step(self, batch: dict, global_size: int, largest_part: int) -> tuple[float, float, bool]:
        """One optimizer step on this rank's part of a global batch: (the global batch's loss sum,
        its number of terms, whether a timed checkpoint is due), the same on every rank."""
        dist = self.dist
        set_learning_rate(self.optimizers, self.t, self.history.step)
        if self.equal_batches:
            batch = pad_rows(batch, largest_part)
        with autocast(self.device, self.precision):
            outputs = self.wrapped(batch)
        # Sum over the local slice, scaled so the ranks' averaged gradient (DDP's, and TorchRec's
        # for sharded tables) is the global mean's.
        loss, count = self.task.loss(outputs, batch)
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss * (dist.world / global_size)).backward()
        for optimizer in self.optimizers:
            self.scaler.step(optimizer)
        self.scaler.update()
        # Rank 0's clock decides a timed checkpoint (a collective: every rank must save at the
        # same step); the flag rides on the loss's all-reduce.
        minutes = self.t.save_every_minutes
        due = dist.is_main and minutes and time.monotonic() - self.saved_at >= minutes * 60
        totals = dist.all_reduce_sum(
            torch.stack(
                [
                    loss.detach().double(),
                    torch.as_tensor(count, dtype=torch.float64, device=loss.device),
                    loss.new_tensor(float(due), dtype=torch.float64),
                ]
            )
        )
        loss_sum, terms, save_due = totals.tolist()
        return loss_sum, terms, save_due > 0

    def log_progress(self, epoch: int, step_in_epoch: int) -> None:
        seconds = time.perf_counter() - self.begin
        self.log(
            f"epoch {epoch} step {step_in_epoch}/{self.steps_per_epoch} (global {self.history.step}): "
            f"loss {self.window.mean_loss():.4f}, "
            f"{self.window.samples_per_s(seconds):,.0f} samples/s"
        )

    def check_loss(self, loss: float, epoch: int) -> None:
        """Stop a run whose loss is not finite or far above where it started (smoothed over steps),
        before it is evaluated and saved as if it had learned."""
        history, run, rates = self.history, self.run, self.rates
        where = f"step {history.step} (epoch {epoch})"
        if history.start_loss is None and math.isfinite(loss):
            history.start_loss = history.smoothed_loss = loss
        reference = max(history.start_loss or 0.0, math.log(2))
        run.confirm(history.step, math.isfinite(loss) and loss <= SOUND_FACTOR * reference)
        if not math.isfinite(loss):
            raise RecforgeError(f"{where}: the training loss is {loss}; stopped; {run.stopped_diverging(rates)}")
        assert history.smoothed_loss is not None  # set with start_loss, above
        history.smoothed_loss = smoothed = 0.9 * history.smoothed_loss + 0.1 * loss
        if smoothed > DIVERGENCE_FACTOR * reference and not history.divergence_noted:
            if self.cfg.eval.no_eval:  # a throughput run claims no model: say so once and go on
                history.divergence_noted = True
                self.log(
                    f"warning: {where}: the training loss diverged ({smoothed:.3g} smoothed); a --benchmark run goes "
                    f"on, its speed is still measured, its model is not one to use"
                )
                return
            raise RecforgeError(
                f"{where}: the training loss diverged ({smoothed:.3g} smoothed, {history.start_loss:.3g} "
                f"at the start); stopped; {run.stopped_diverging(rates)}"
            )

    # --- evaluate and checkpoint ---------------------------------------------------------------

    def close_window(self, epoch: int, step_in_epoch: int) -> bool:
        """The steps since the last evaluation timed, then evaluated and saved; True to stop."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - self.begin
        self.window.seconds += seconds
        self.epoch_train_s += seconds
        self.history.train_s += seconds
        stop = self.evaluate_and_save(epoch, step_in_epoch)
        self.begin = time.perf_counter()
        return stop

    def evaluate_and_save(self, epoch: int, step_in_epoch: int) -> bool:
        """Evaluate (unless disabled), log, checkpoint; True when the run should stop."""
        cfg, history, window = self.cfg, self.history, self.window
        # After a mid-epoch resume the window starts at the resumed step: train_loss_from_step says so.
        record = {
            "epoch": epoch,
            "step": history.step,
            "train_loss": window.mean_loss(),
            "train_loss_from_step": window.from_step,
            "train_samples_per_s": window.samples_per_s(),
        }
        improved, metrics = False, None
        last_epoch = epoch == self.t.epochs and step_in_epoch == self.steps_per_epoch
        if not cfg.eval.no_eval and (epoch > cfg.eval.eval_after or last_epoch):
            metrics, improved = self.evaluate(epoch, record)
        if step_in_epoch == self.steps_per_epoch:
            history.epochs.append({"epoch": epoch, "train_s": self.epoch_train_s})
        history.wall_s = record["time_s"] = time.perf_counter() - self.wall_start
        # The record first: a kill before the checkpoint leaves a record that --resume drops and redoes;
        # the other order would leave a checkpoint whose evaluation is never recorded.
        self.run.log_metrics(record)
        self.curves.evaluation(history.step, record)
        self.save(best=improved)
        self.log(eval_line(record, self.task.metric_names, improved))
        window.reset(from_step=history.step + 1)
        if history.first_epoch_at_target is not None:
            target = cfg.eval.quality_target
            self.log(f"{self.task.primary_metric} reached the target {target} at epoch {epoch}: stopping")
            return True
        if self.observe is not None and metrics is not None:
            evaluation = (epoch - 1) * cfg.eval.evals_per_epoch + math.ceil(step_in_epoch / self.eval_every)
            history.stopped_early = self.observe(evaluation, metrics)
            if history.stopped_early:
                self.log(f"stopping: {history.stopped_early}")
                return True
        return False

    def evaluate(self, epoch: int, record: dict) -> tuple[dict, bool]:
        """The task's evaluation, into `record` and the history (the best so far, the target);
        whether it is the best so far."""
        history, metric, threshold = self.history, self.task.primary_metric, self.cfg.eval.quality_target
        begin = time.perf_counter()
        metrics, examples = self.task.evaluate(self.model)
        if not math.isfinite(metrics[metric]):
            raise RecforgeError(
                f"step {history.step} (epoch {epoch}): {metric} is {metrics[metric]}: the model "
                f"diverged; stopped; {self.run.stopped_diverging(self.rates)}"
            )
        record.update(metrics, eval_s=time.perf_counter() - begin)
        history.eval_s += record["eval_s"]
        history.eval_examples += examples
        best = history.best_metrics
        improved = best is None or metrics[metric] > best[metric]
        if improved:
            history.best_epoch, history.best_step, history.best_metrics = epoch, history.step, dict(metrics)
        if threshold is not None and metrics[metric] >= threshold and history.first_epoch_at_target is None:
            history.first_epoch_at_target = epoch
        return metrics, improved

    def save(self, best: bool = False, keep_steps: int = 0) -> None:
        """A checkpoint of every tensor and the metadata: last.pt from one process, a distributed
        checkpoint's folder from several."""
        self.saved_at = time.monotonic()
        meta = self.checkpoint_meta()
        if not (self.dist.enabled or self.sharding):
            tensors = {
                "model": self.model.state_dict(),
                "optimizers": [o.state_dict() for o in self.optimizers],
                "rng": rng_state(),
            }
            self.run.save(tensors | meta, best=best, keep_steps=keep_steps)
            return
        self.run.save_distributed(
            lambda folder, name: save_distributed(folder, name, self.wrapped, self.optimizers, meta, self.dist.is_main),
            self.history.step,
            best=best,
            keep_steps=self.t.keep_checkpoint_max if self.t.save_steps else 0,
        )

    def checkpoint_meta(self) -> dict:
        """What a checkpoint holds besides the model's, optimizers' and generators' tensors."""
        return {
            "format": FORMAT,
            "data": self.task.data_fingerprint,
            "scaler": self.scaler.state_dict(),
            "epoch": self.history.epoch,
            "step": self.history.step,
            "history": self.history.to_dict(),
            "config": self.cfg.to_dict(),
            "model_dims": self.task.model_dims,
            "precision": self.task.precision,  # what it computed in: `auto` decides by measurement
        }

    # --- finish --------------------------------------------------------------------------------

    def final_test(self) -> dict | None:
        """The test split's metrics, scored once with the best checkpoint, when evaluations scored a
        validation split (which chose that checkpoint); None otherwise."""
        cfg, task, history, run = self.cfg, self.task, self.history, self.run
        if task.final_split is None or not cfg.eval.final_test or cfg.eval.no_eval or history.best_metrics is None:
            return None
        if history.best_step != history.step:  # the model in memory is the last, not the best
            self.dist.barrier()  # rank 0 has named the best checkpoint
            best = run.best_pointer if self.checkpointed is not self.model else run.best
            load_weights(open_checkpoint(best), self.checkpointed, best)
        begin = time.perf_counter()
        metrics, _ = task.evaluate(self.model, task.final_split)
        self.log(
            f"{task.final_split} (the best checkpoint, epoch {history.best_epoch}, step {history.best_step}): "
            f"{metrics_text(metrics, task.metric_names)}, {time.perf_counter() - begin:.1f}s"
        )
        return metrics

    def finish(self, test: dict | None) -> dict:
        """summary.json and the summary's lines."""
        task = self.task
        result = summary(self.cfg, task, self.history, self.device, self.dist) | {
            "precision": self.precision,
            "precision_reason": self.precision_reason,
            "gemm": self.gemms,
        }
        if test is not None:
            result |= {"test_split": task.final_split, "test_metrics": test}
        self.run.summary(result)
        self.log(summary_lines(result, task.metric_names, task.primary_metric))
        return result
