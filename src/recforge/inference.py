"""Using a trained checkpoint: score it (evaluate, or predict for throughput and submissions) and
recommend with it.

One scorer, `score`, stands behind `recforge evaluate` and `recforge train --mode eval|inference`:
the same checks (model, data fingerprint), the same model (the checkpoint's architecture, whatever
the flags say) and the same result record. The commands differ only in where the record goes:
`evaluate` writes it as JSON beside the run; `train --mode` writes a run folder of its own
(config.yaml, metrics.jsonl, summary.json), never over a training run's records.
"""

from __future__ import annotations

import time
from pathlib import Path

from recforge.config import RunConfig
from recforge.core.checkpoint import check_same_data, check_same_model
from recforge.core.errors import RecforgeError
from recforge.core.files import write_json, write_text
from recforge.core.progress import log_to
from recforge.registry import MODELS, build_model, build_task, config_from_dict, model_entry
from recforge.runtime.distributed import shutdown
from recforge.train.distributed_checkpoint import load_weights, open_checkpoint
from recforge.train.loop import setup
from recforge.train.resume import data_where
from recforge.train.run_dir import RunDir


def load_run(checkpoint: dict, path: str | Path, cfg: RunConfig | None = None):
    """Config, device, process group, task and model (with weights) of a loaded checkpoint.

    `cfg` defaults to the checkpoint's own; the CLI passes it with the user's flags layered on
    (other evaluation settings, or where the data moved). Another model's checkpoint or data
    other than the checkpoint's is refused; the architecture is always the checkpoint's.
    """
    trained = config_from_dict(checkpoint["config"])
    cfg = cfg or trained
    check_same_model(checkpoint, path, cfg.model)
    cfg.data.clean = False
    device, dist = setup(cfg)
    try:
        task = build_task(cfg, device, dist, log_to(dist.is_main))
        if cfg.train.precision == "auto" and checkpoint.get("precision") == "fp32":
            task.precision = "fp32"  # `auto` measured this model faster in fp32: score it as it trained
        check_same_data(checkpoint, path, task.data_fingerprint, data_where(cfg))
        model = build_model(trained, checkpoint["model_dims"], device)
        load_weights(checkpoint, model, path)
    except BaseException:
        shutdown(dist)
        raise
    return cfg, dist, task, model


def score(
    checkpoint: dict, path: str | Path, cfg: RunConfig | None, mode: str, write, split: str | None = None
) -> dict:
    """The checkpoint's metrics (`mode` "eval") on `split` (by default the one its evaluations
    scored) or its scoring throughput ("inference"), as one record, which
    `write(result, task, probabilities, dist)` stores; returns the record."""
    cfg, dist, task, model = load_run(checkpoint, path, cfg)
    log = log_to(dist.is_main)
    try:
        result = {
            "mode": mode,
            "checkpoint": str(path),
            "model": cfg.model,
            "dataset": cfg.data.dataset,
            "epoch": checkpoint["epoch"],
            "step": checkpoint["step"],
        }
        begin = time.perf_counter()
        probabilities = None
        if mode == "eval":
            metrics, examples = task.evaluate(model, split)
            seconds = time.perf_counter() - begin
            result |= {
                "eval_protocol": cfg.eval.eval_protocol,
                "eval_split": split or task.eval_split,
                "metrics": metrics,
                "eval_s": seconds,
                "eval_samples_per_s": examples / seconds,
            }
            log(", ".join(f"{k} = {metrics[k]:.4f}" for k in task.metric_names))
        else:
            probabilities = task.predict(model)
            seconds = time.perf_counter() - begin
            result |= {
                "examples": int(probabilities.numel()),
                "inference_s": seconds,
                "inference_samples_per_s": probabilities.numel() / seconds,
            }
            log(
                f"scored {probabilities.numel():,} examples in {seconds:.2f}s: "
                f"{result['inference_samples_per_s']:,.0f} samples/s"
            )
        if dist.is_main:
            write(result, task, probabilities, cfg)
        dist.barrier()
        return result
    finally:
        shutdown(dist)


def evaluate(
    checkpoint: dict,
    path: str | Path,
    cfg: RunConfig | None = None,
    output: str | Path | None = None,
    split: str | None = None,
) -> dict:
    """`recforge evaluate`: the metrics printed, and written as JSON beside the run (RUN/checkpoints/X.pt
    -> RUN/evaluation-PROTOCOL.json, or evaluation-PROTOCOL-SPLIT.json for another `split` than its
    evaluations'), beside a loose checkpoint, or at `output`."""

    def write(result, task, probabilities, cfg):
        target = output
        if target is None:
            folder = Path(path).resolve().parent
            target = (
                folder.parent if folder.name == "checkpoints" else folder
            ) / f"evaluation-{cfg.eval.eval_protocol}{'' if split in (None, task.eval_split) else '-' + split}.json"
        write_json(target, result)

    return score(checkpoint, path, cfg, "eval", write, split)


def score_into_run(cfg: RunConfig) -> dict:
    """`recforge train --mode eval|inference --restore-checkpoint FILE`: a run folder of its own at
    --output-dir (RUN/eval or RUN/inference when that folder holds a training run)."""
    if not cfg.train.restore_checkpoint:
        raise RecforgeError(f"--mode {cfg.train.mode} needs --restore-checkpoint FILE")
    path = cfg.train.restore_checkpoint
    checkpoint = open_checkpoint(path)

    def write(result, task, probabilities, cfg):
        run = RunDir(cfg.output_dir, True)
        if run.holds_training_run():  # scoring never rewrites a training run's records
            run = RunDir(run.path / cfg.train.mode, True)
            print(
                f"{cfg.output_dir} holds a training run: writing this {cfg.train.mode} run's records to {run.path}",
                flush=True,
            )
        run.path.mkdir(parents=True, exist_ok=True)
        write_text(run.path / "config.yaml", cfg.to_yaml())
        if "metrics" in result:
            write_text(run.metrics, "")
            run.log_metrics({"step": result["step"], **result["metrics"], "eval_s": result["eval_s"]})
        if probabilities is not None and cfg.train.write_predictions:
            result["predictions"] = [str(p) for p in task.write_predictions(run.path, probabilities)]
        run.summary(result)

    return score(checkpoint, path, cfg, cfg.train.mode, write)


def recommend(checkpoint: dict, path: str | Path, user: str, k: int, cfg: RunConfig | None = None) -> list[dict]:
    model_name = checkpoint["config"]["model"]
    if not model_entry(model_name).task.can_recommend:
        raise RecforgeError(
            f"{path}: a {model_name} checkpoint scores click logs; recommend takes a ranking model's "
            f"checkpoint ({', '.join(m for m, e in MODELS.items() if e.task.can_recommend)})"
        )
    if k < 1:
        raise RecforgeError(f"--k: must be at least 1, got {k}")
    cfg, dist, task, model = load_run(checkpoint, path, cfg)
    try:
        return task.recommend(model, user, k)
    finally:
        shutdown(dist)
