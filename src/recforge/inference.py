"""Using a trained checkpoint: evaluate it, recommend with it."""

from __future__ import annotations

import time
from pathlib import Path

from recforge.config import RunConfig, config_from_dict
from recforge.files import write_json
from recforge.progress import log_to
from recforge.errors import RecforgeError
from recforge.registry import MODELS, TASKS, build_task, model_entry
from recforge.train.checkpoint import check_same_data
from recforge.train.distributed import shutdown
from recforge.train.loop import build_model, data_where, setup


def load_run(checkpoint: dict, path: str | Path, cfg: RunConfig | None = None):
    """Config, device, process group, task and model (with weights) of a loaded checkpoint.

    `cfg` defaults to the checkpoint's own; the CLI passes it with the user's flags layered on
    (other evaluation settings, or where the data moved). Data other than the checkpoint's is refused.
    """
    cfg = cfg or config_from_dict(checkpoint["config"])
    cfg.data.clean = False
    device, dist = setup(cfg)
    try:
        task = build_task(cfg, device, dist, log_to(dist.is_main))
        check_same_data(checkpoint, path, task.data_fingerprint, data_where(cfg))
        model = build_model(cfg, checkpoint["model_dims"], device)
        model.load_state_dict(checkpoint["model"])
    except BaseException:
        shutdown(dist)
        raise
    return cfg, dist, task, model


def evaluate(checkpoint: dict, path: str | Path, cfg: RunConfig | None = None, output: str | Path | None = None) -> dict:
    """Metrics of the checkpoint at `path`; printed, and written as JSON beside the run."""
    cfg, dist, task, model = load_run(checkpoint, path, cfg)
    try:
        begin = time.perf_counter()
        metrics, examples = task.evaluate(model)
        seconds = time.perf_counter() - begin
        result = {
            "checkpoint": str(path), "epoch": checkpoint["epoch"], "model": cfg.model,
            "dataset": cfg.data.dataset, "eval_protocol": cfg.eval.eval_protocol, "metrics": metrics,
            "eval_s": seconds, "eval_samples_per_s": examples / seconds,
        }
        if dist.is_main:
            print(", ".join(f"{k} = {metrics[k]:.4f}" for k in task.metric_names), flush=True)
            if output is None:  # beside the run (RUN/checkpoints/X.pt), else beside the checkpoint
                folder = Path(path).resolve().parent
                output = (folder.parent if folder.name == "checkpoints" else folder) / f"evaluation-{cfg.eval.eval_protocol}.json"
            write_json(output, result)
        return result
    finally:
        shutdown(dist)


def recommend(checkpoint: dict, path: str | Path, user: str, k: int, cfg: RunConfig | None = None) -> list[dict]:
    model_name = checkpoint["config"]["model"]
    if not hasattr(TASKS[model_entry(model_name).task], "recommend"):
        raise RecforgeError(f"{path}: a {model_name} checkpoint scores click logs; recommend takes a ranking model's "
                            f"checkpoint ({', '.join(m for m, e in MODELS.items() if e.task == 'ranking')})")
    if k < 1:
        raise RecforgeError(f"--k: must be at least 1, got {k}")
    cfg, dist, task, model = load_run(checkpoint, path, cfg)
    try:
        return task.recommend(model, user, k)
    finally:
        shutdown(dist)
