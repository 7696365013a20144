"""What a run reports: its evaluation lines, summary.json's record and the summary's lines."""

from __future__ import annotations

from pathlib import Path

import torch

from recforge.config import RunConfig
from recforge.runtime.distributed import Dist
from recforge.runtime.memory import peak_memory
from recforge.train.state import History


def eval_line(record: dict, names: list[str], improved: bool) -> str:
    shown = "".join(f", {k} = {record[k]:.4f}" for k in names if k in record)
    evaluated = f", eval {record['eval_s']:.1f}s" if "eval_s" in record else ""
    return (
        f"epoch {record['epoch']} (step {record['step']}): loss {record['train_loss']:.4f}{shown}, "
        f"{record['train_samples_per_s']:,.0f} samples/s{evaluated}" + ("  New Best Epoch" if improved else "")
    )


def summary(cfg: RunConfig, task, history: History, device: torch.device, dist: Dist) -> dict:
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


def metrics_text(metrics: dict, names: list[str]) -> str:
    return ", ".join(f"{k} = {metrics[k]:.4f}" for k in names if k in metrics)


def summary_lines(s: dict, names: list[str], metric: str) -> str:
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    lines = [
        "summary:",
        f"  best ({s['eval_split']}): {metrics_text(s['metrics'], names) or 'n/a'} "
        f"(epoch {s['best_epoch']}, step {s['best_step']})",
        f"  train: {fmt(s['train_samples_per_s'], ',.0f')} samples/s, "
        f"epoch time avg {fmt(s['epoch_time_avg_s'], '.2f')}, "
        f"min {fmt(s['epoch_time_min_s'], '.2f')} (s)",
        f"  eval: {fmt(s['eval_samples_per_s'], ',.0f')} samples/s",
        f"  time to train: {s['time_to_train_s']:.1f}s",
    ]
    if "test_metrics" in s:
        lines.append(f"  {s['test_split']} (best checkpoint): {metrics_text(s['test_metrics'], names)}")
    if s["baseline"]:
        lines.append(f"  baseline ({s['baseline']['model']}): {metrics_text(s['baseline']['metrics'], names)}")
    if s["quality_target"] is not None:
        lines.append(f"  {metric} >= {s['quality_target']}: first at epoch {s['first_epoch_at_target'] or 'never'}")
    if s["stopped_early"]:
        lines.append(f"  stopped early: {s['stopped_early']}")
    lines.append(f"  run folder: {s['run_folder']}")
    return "\n".join(lines)
