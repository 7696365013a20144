"""A training run's folder and the order its files are written in."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from recforge.config import RunConfig
from recforge.core.checkpoint import save_checkpoint
from recforge.core.errors import RecforgeError
from recforge.core.files import append_jsonl, atomic_link, read_jsonl, remove, write_json, write_text
from recforge.train.state import History


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
            return (
                config.is_file() and (yaml.safe_load(config.read_text()) or {}).get("train", {}).get("mode") == "train"
            )
        except (yaml.YAMLError, AttributeError):
            return False

    def start(self, cfg: RunConfig, resumed_step: int | None = None, changed: dict | None = None) -> None:
        """Write config.yaml; on a fresh run refuse to overwrite an earlier one; on a resumed one
        drop the records after its step and note the settings that changed."""
        self.last_step = resumed_step
        if not self.enabled:
            return
        if not cfg.train.resume and (self.metrics.exists() or self.last.exists()):
            raise RecforgeError(
                f"{self.path}: holds an earlier run; pass --resume to continue it or choose another --output-dir"
            )
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

    def repair_best(self, history: History) -> None:
        """best.pt after a kill between the renames of last.pt and best.pt (see the class)."""
        is_best = self.enabled and history.best_step == history.step and self.last.exists()
        if is_best and not (self.best.exists() and os.path.samefile(self.best, self.last)):
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
