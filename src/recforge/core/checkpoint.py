"""Checkpoints: model, optimizer, scaler and RNG state plus plain metadata, written atomically
and loadable with `torch.load(weights_only=True)` (no pickled code).

A checkpoint also carries the fingerprint of the data it was trained on (the task's id spaces:
sizes and a hash of the id maps, or a prepared click log's layout): evaluating, recommending
with, resuming or restoring it on other data would silently mix up ids, so it is refused.
"""

from __future__ import annotations

from pathlib import Path

import torch

from recforge.core.errors import RecforgeError
from recforge.core.files import atomic_write
from recforge.core.pickles import foreign_objects

FORMAT = "recforge-checkpoint-2"  # 2: adds "data" (the fingerprint)
READABLE = ("recforge-checkpoint-1", FORMAT)


def save_checkpoint(path: str | Path, state: dict) -> None:
    atomic_write(path, lambda f: torch.save(state, f), mode="wb")


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path).expanduser()
    if not path.is_file():
        raise RecforgeError(f"{path}: checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001  why, from the file itself: torch's wording changes between versions
        foreign = foreign_objects(path)
        if foreign:
            raise RecforgeError(
                f"{path}: holds Python objects that a recforge checkpoint never holds ({foreign[0]}); not loaded "
                f"(it was not written by recforge, or was altered)"
            ) from None
        raise RecforgeError(f"{path}: not a readable checkpoint (damaged, or not a torch file)") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") not in READABLE:
        raise RecforgeError(f"{path}: a torch file but not a recforge checkpoint (no recforge format marker)")
    return checkpoint


def check_same_model(checkpoint: dict, path: str | Path, model: str) -> None:
    """Refuse another model's checkpoint."""
    trained = checkpoint["config"]["model"]
    if trained != model:
        raise RecforgeError(f"{path}: a {trained} checkpoint, not {model} (--model)")


def check_same_data(checkpoint: dict, path: str | Path, fingerprint: dict, where: str) -> None:
    """Refuse data whose fingerprint differs from the one the checkpoint was trained on."""
    trained = checkpoint.get("data")
    if trained is None:  # format 1 predates fingerprints
        return
    if trained != fingerprint:
        shown = lambda v: f"{v:,}" if isinstance(v, int) else str(v)  # noqa: E731
        differences = "; ".join(
            f"{key} {shown(trained.get(key))} in it, {shown(value)} here"
            for key, value in fingerprint.items()
            if trained.get(key) != value
        )
        raise RecforgeError(
            f"{path}: trained on other data than {where} ({differences}): its ids would not mean "
            f"the same; pass the data it was trained on"
        )


def rng_state() -> dict:
    state: dict[str, torch.Tensor | list[torch.Tensor]] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
