"""What a run resumed from a checkpoint may differ in, and the checks before a checkpoint's
tensors meet a run: the same model, architecture and data; only settings whose option is
`resumable` changed (they take effect from the resumed step and are recorded in metrics.jsonl)."""

from __future__ import annotations

from pathlib import Path

from recforge.config import SECTIONS, RunConfig, changeable_on_resume, upgraded
from recforge.core.checkpoint import check_same_data, check_same_model
from recforge.core.errors import RecforgeError
from recforge.train.distributed_checkpoint import load_weights

# Changes that are not recorded as the run's own (they say how to start it, not how it trains).
NOT_RECORDED = {("train", "resume"), ("train", "restore_checkpoint")}


def _flag(section: str, key: str) -> str:
    return f"--{key.replace('_', '-')}" if section != "top" else key


def config_differences(old: dict, new: dict, sections=SECTIONS) -> dict[tuple[str, str], tuple]:
    """(section, key) -> (old value, new value) of two `RunConfig.to_dict()`s; keys the old one
    lacks (settings newer than it) are not differences."""
    old, new = upgraded(old), upgraded(new)
    found = {("top", "model"): (old["model"], new["model"])} if old["model"] != new["model"] else {}
    for section in sections:
        for key, value in (new.get(section) or {}).items():
            if key in (old.get(section) or {}) and old[section][key] != value:
                found[section, key] = (old[section][key], value)
    return found


def describe_differences(differences: dict) -> str:
    return ", ".join(f"{_flag(*key)} ({a!r} -> {b!r})" for key, (a, b) in differences.items())


def recorded_changes(differences: dict) -> dict:
    """Differences (without NOT_RECORDED's) as a resumed run records them: "section.key" -> from, to."""
    return {f"{section}.{key}": {"from": a, "to": b} for (section, key), (a, b) in differences.items()}


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


def resumable(cfg: RunConfig, run_path: Path, source: Path, checkpoint: dict, task) -> dict:
    """The settings this run changes from the checkpoint's; refuses other data, and changes of
    what shapes the state being resumed."""
    check_same_data(checkpoint, source, task.data_fingerprint, data_where(cfg))
    differences = config_differences(checkpoint["config"], cfg.to_dict())
    changeable = changeable_on_resume(cfg)
    refused = {key: v for key, v in differences.items() if key[1] not in changeable.get(key[0], ())}
    if refused:
        raise RecforgeError(
            f"--resume: {describe_differences(refused)} {'differs' if len(refused) == 1 else 'differ'} from the run in "
            f"{run_path} and cannot change mid-run; "
            f"resume with the run's values, or train into a new --output-dir"
        )
    return differences


def load_optimizers(optimizers, states: list[dict]) -> None:
    """Optimizer state from a checkpoint, with this run's hyperparameters (rates, betas, decay...)."""
    for optimizer, state in zip(optimizers, states):
        configured = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
        optimizer.load_state_dict(state)
        for group, settings in zip(optimizer.param_groups, configured):
            group.update(settings)
