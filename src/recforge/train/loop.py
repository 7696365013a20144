"""The one training loop, for every model and task.

A task supplies batches (dicts of tensors with a 0/1 "label"), an evaluation and the model's
dimensions; a model maps a batch to logits. The loop adds what every run needs: precision,
torch.compile, data parallelism, checkpoints that resume exactly, the run directory and the
terminal report. It never branches on a model's name.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from recforge.config import RunConfig
from recforge.errors import RecforgeError
from recforge.files import read_jsonl, append_jsonl, write_json, write_text
from recforge.progress import Progress, log_to
from recforge.registry import build_task, model_entry
from recforge.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from recforge.train.distributed import Dist, init_distributed, pick_device, shutdown
from recforge.train.memory import keep_freed_memory
from recforge.train.precision import autocast, configure_fp32_matmul, grad_scaler

CHECKPOINT_FORMAT = "recforge-checkpoint-1"
MUST_MATCH_ON_RESUME = ("model", "data", "arch")


def setup(cfg: RunConfig) -> tuple[torch.device, Dist]:
    """Device, process group and threads for a run (or an evaluation)."""
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


def make_optimizer(cfg: RunConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    t = cfg.train
    # The fused kernel updates all parameters in one pass (CPU and GPU, torch >= 2.4).
    return torch.optim.Adam(model.parameters(), lr=t.learning_rate, betas=(t.beta1, t.beta2), eps=t.eps,
                            weight_decay=t.weight_decay, fused=True)


class RunDir:
    """The run's output folder: config.yaml, metrics.jsonl, summary.json, checkpoints/."""

    def __init__(self, path: str | Path, enabled: bool):
        self.path, self.enabled = Path(path), enabled
        self.metrics = self.path / "metrics.jsonl"
        self.last, self.best = self.path / "checkpoints" / "last.pt", self.path / "checkpoints" / "best.pt"

    def start(self, cfg: RunConfig, resumed_epoch: int | None) -> None:
        """Write config.yaml; on a fresh run refuse to overwrite an earlier one."""
        if not self.enabled:
            return
        if resumed_epoch is None and (self.metrics.exists() or self.last.exists()):
            raise RecforgeError(f"{self.path}: holds an earlier run; pass --resume to continue it or choose another --output-dir")
        self.path.mkdir(parents=True, exist_ok=True)
        write_text(self.path / "config.yaml", cfg.to_yaml())
        # Evaluations logged after the checkpoint we resume from are repeated: drop them.
        kept = [m for m in read_jsonl(self.metrics) if resumed_epoch and m.get("epoch", 0) <= resumed_epoch]
        write_text(self.metrics, "".join(json.dumps(m) + "\n" for m in kept))

    def log_metrics(self, record: dict) -> None:
        if self.enabled:
            append_jsonl(self.metrics, record)

    def save(self, state: dict, best: bool) -> None:
        if self.enabled:
            save_checkpoint(self.last, state)
            if best:
                save_checkpoint(self.best, state)

    def summary(self, summary: dict) -> None:
        if self.enabled:
            write_json(self.path / "summary.json", summary)


def train(cfg: RunConfig) -> dict:
    device, dist = setup(cfg)
    try:
        return _train(cfg, device, dist)
    finally:
        shutdown(dist)


def _train(cfg: RunConfig, device: torch.device, dist: Dist) -> dict:
    log = log_to(dist.is_main)
    t = cfg.train
    torch.manual_seed(t.seed)
    task = build_task(cfg, device, dist, log)
    model = build_model(cfg, task.model_dims, device)
    optimizer = make_optimizer(cfg, model)
    scaler = grad_scaler(device, t.precision)
    run = RunDir(cfg.output_dir, dist.is_main)
    start_epoch, history = _restore(cfg, run, model, optimizer, scaler, log)

    wrapped = model
    if dist.enabled:
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if t.compile:
        wrapped = torch.compile(wrapped)

    metric, threshold = task.primary_metric, cfg.eval.hr_threshold
    log(f"{cfg.model} on {cfg.data.dataset}: {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{task.samples_per_epoch:,} samples/epoch, batch {t.batch_size:,}, {t.precision}, {device}"
        + (f", {dist.world} processes" if dist.enabled else ""))
    wall_start = time.perf_counter() - history["wall_s"]
    for epoch in range(start_epoch + 1, t.epochs + 1):
        loss_mean, train_s = _train_epoch(wrapped, optimizer, scaler, task, epoch, cfg, device, dist)
        if not torch.isfinite(torch.tensor(loss_mean)):
            raise RecforgeError(f"epoch {epoch}: training loss is not finite; lower --learning-rate (last good checkpoint: {run.last})")
        record = {"epoch": epoch, "train_loss": loss_mean, "train_s": train_s, "train_samples_per_s": task.samples_per_epoch / train_s}
        improved = False
        if epoch > cfg.eval.eval_after or epoch == t.epochs:
            begin = time.perf_counter()
            metrics, pairs = task.evaluate(model)
            record.update(metrics, eval_s=time.perf_counter() - begin)
            history["eval_s"] += record["eval_s"]
            history["eval_pairs"] += pairs * dist.world
            best = history["best_metrics"]
            improved = best is None or metrics[metric] > best[metric]
            if improved:
                history["best_epoch"], history["best_metrics"] = epoch, dict(metrics)
            if threshold is not None and metrics[metric] >= threshold and history["first_epoch_at_threshold"] is None:
                history["first_epoch_at_threshold"] = epoch
        history["train_s"] += train_s
        history["epochs"].append({"epoch": epoch, "train_s": train_s})
        history["wall_s"] = record["time_s"] = time.perf_counter() - wall_start
        run.save(_state(model, optimizer, scaler, epoch, history, cfg, task), best=improved)
        run.log_metrics(record)
        log(_epoch_line(record, improved))
        if history["first_epoch_at_threshold"] is not None:
            log(f"{metric} reached the threshold {threshold} at epoch {epoch}: stopping")
            break

    summary = _summary(cfg, task, history, device, dist)
    run.summary(summary)
    log(_summary_lines(summary, metric))
    return summary


def _restore(cfg: RunConfig, run: RunDir, model, optimizer, scaler, log) -> tuple[int, dict]:
    """(last finished epoch, run history): from checkpoints/last.pt with --resume, else a fresh start."""
    checkpoint = load_checkpoint(run.last) if cfg.train.resume and run.last.exists() else None
    if checkpoint is None:
        if cfg.train.resume:
            log(f"--resume: no checkpoint in {run.last.parent}; starting from scratch")
        if hasattr(model, "warm_start"):
            model.warm_start(cfg.arch)
        run.start(cfg, resumed_epoch=None)
        return 0, {"epochs": [], "best_epoch": None, "best_metrics": None, "first_epoch_at_threshold": None,
                   "train_s": 0.0, "eval_s": 0.0, "wall_s": 0.0, "eval_pairs": 0}
    for key in MUST_MATCH_ON_RESUME:
        if checkpoint["config"][key] != cfg.to_dict()[key]:
            raise RecforgeError(f"--resume: '{key}' differs from the run in {cfg.output_dir}; resume with the same settings")
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scaler.load_state_dict(checkpoint["scaler"])
    set_rng_state(checkpoint["rng"])
    log(f"resuming {cfg.output_dir} after epoch {checkpoint['epoch']}")
    run.start(cfg, resumed_epoch=checkpoint["epoch"])
    return checkpoint["epoch"], checkpoint["history"]


def _train_epoch(wrapped, optimizer, scaler, task, epoch: int, cfg: RunConfig, device, dist: Dist) -> tuple[float, float]:
    """One pass over the task's batches: (mean training loss over all ranks, seconds)."""
    wrapped.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    progress = Progress(task.samples_per_epoch, f"epoch {epoch}", dist.is_main)
    begin = time.perf_counter()
    for batch, global_size in task.train_batches(epoch, cfg.train.batch_size):
        with autocast(device, cfg.train.precision):
            logits = wrapped(batch)
        # Sum over the local slice, scaled so DDP's gradient average equals the global mean.
        loss = F.binary_cross_entropy_with_logits(logits.float(), batch["label"], reduction="sum")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss * (dist.world / global_size)).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_sum += loss.detach()
        progress.update(global_size)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - begin
    progress.close()
    return dist.all_reduce_sum(loss_sum).item() / task.samples_per_epoch, seconds


def _state(model, optimizer, scaler, epoch, history, cfg: RunConfig, task) -> dict:
    return {
        "format": CHECKPOINT_FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(), "rng": rng_state(), "epoch": epoch, "history": history,
        "config": cfg.to_dict(), "model_dims": task.model_dims,
    }


def _epoch_line(record: dict, improved: bool) -> str:
    shown = "".join(f", {k} = {v:.4f}" for k, v in record.items() if "@" in k)
    evaluated = f", eval {record['eval_s']:.1f}s" if "eval_s" in record else ""
    return (f"epoch {record['epoch']}: loss {record['train_loss']:.4f}{shown}, train {record['train_s']:.1f}s "
            f"({record['train_samples_per_s']:,.0f} samples/s){evaluated}" + ("  New Best Epoch" if improved else ""))


def _summary(cfg: RunConfig, task, history: dict, device: torch.device, dist: Dist) -> dict:
    times = [e["train_s"] for e in history["epochs"]]
    samples = task.samples_per_epoch * len(times)
    return {
        "model": cfg.model, "dataset": cfg.data.dataset,
        "metrics": history["best_metrics"] or {}, "best_epoch": history["best_epoch"],
        "epochs_trained": len(times),
        "train_samples_per_s": samples / history["train_s"] if history["train_s"] else None,
        "eval_samples_per_s": history["eval_pairs"] / history["eval_s"] if history["eval_s"] else None,
        "time_to_train_s": history["wall_s"],
        "epoch_time_avg_s": sum(times) / len(times) if times else None,
        "epoch_time_min_s": min(times) if times else None,
        "hr_threshold": cfg.eval.hr_threshold, "first_epoch_at_threshold": history["first_epoch_at_threshold"],
        "precision": cfg.train.precision, "device": str(device), "world_size": dist.world,
    }


def _summary_lines(s: dict, metric: str) -> str:
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    best = ", ".join(f"{k} = {v:.4f}" for k, v in s["metrics"].items() if "@" in k)
    lines = [
        "summary:",
        f"  best: {best or 'n/a'} (epoch {s['best_epoch']})",
        f"  train: {fmt(s['train_samples_per_s'], ',.0f')} samples/s, epoch time avg {fmt(s['epoch_time_avg_s'], '.2f')}s, "
        f"min {fmt(s['epoch_time_min_s'], '.2f')}s",
        f"  eval: {fmt(s['eval_samples_per_s'], ',.0f')} samples/s",
        f"  time to train: {s['time_to_train_s']:.1f}s",
    ]
    if s["hr_threshold"] is not None:
        lines.append(f"  {metric} >= {s['hr_threshold']}: first at epoch {s['first_epoch_at_threshold'] or 'never'}")
    return "\n".join(lines)
