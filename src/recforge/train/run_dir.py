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
from recforge.train.distributed_checkpoint import prune
from recforge.train.state import History


class RunDir:
    """The run's output folder: config.yaml, metrics.jsonl, summary.json, checkpoints/.

    Kept consistent through a kill at any instant: a checkpoint is written to a temp file and
    renamed; best.pt is a second name of the last.pt it equals, made after last.pt (a kill in
    between is repaired on --resume, when last.pt's history says it is the best); an
    evaluation's record is appended before its checkpoint (--resume drops records newer than
    last.pt and redoes them); summary.json, written last, exists only for a finished run (a
    resumed run removes it first).

    A multi-process run writes a folder per checkpoint instead (`step-N/`, with torch's
    distributed checkpoint; see `distributed_checkpoint`), and `last.json` / `best.json` name
    the complete ones: each is replaced after its folder is complete.

    A checkpoint is known sound once the training loss of the step after it, computed on its
    weights, was (`confirm`); before a sound last checkpoint is replaced it is kept as sound.pt
    (sound.json), so that a run found diverging later (whose last checkpoint may already hold the
    diverged weights) is set back to it (`stopped_diverging`) and --resume trains on from there.
    """

    def __init__(self, path: str | Path, enabled: bool):
        self.path, self.enabled = Path(path).expanduser(), enabled
        self.metrics = self.path / "metrics.jsonl"
        self.checkpoints = self.path / "checkpoints"
        self.last, self.best = self.checkpoints / "last.pt", self.checkpoints / "best.pt"
        self.last_pointer, self.best_pointer = self.checkpoints / "last.json", self.checkpoints / "best.json"
        self.sound, self.sound_pointer = self.checkpoints / "sound.pt", self.checkpoints / "sound.json"
        self.last_step: int | None = None  # the step of last.pt
        self.last_sound = False  # whether the loss on last.pt's weights was seen to be sound
        self.sound_step: int | None = None  # the step of sound.pt (sound.json)
        self.keep_steps = 0  # multi-process runs: the newest step folders --save-steps keeps
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
        if not cfg.train.resume and (self.metrics.exists() or self.last.exists() or self.last_pointer.exists()):
            raise RecforgeError(
                f"{self.path}: holds an earlier run; pass --resume to continue it or choose another --output-dir"
            )
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        for stale in [*self.path.glob(".*.tmp"), *self.checkpoints.glob(".*.tmp"), *self.checkpoints.glob(".*-link")]:
            remove(stale)  # temp files of a killed write (of this run's files, also those not written again)
        remove(self.path / "summary.json")
        for sound in (self.sound, self.sound_pointer):  # the resumed checkpoint is this run's start now
            remove(sound)
        write_text(self.path / "config.yaml", cfg.to_yaml())
        # Evaluations logged after the checkpoint we resume from are repeated: drop them.
        kept = [m for m in read_jsonl(self.metrics) if resumed_step and m.get("step", 0) <= resumed_step]
        if resumed_step is not None:  # noted in the first evaluation after the resume
            self.resumed = {"resumed_from_step": resumed_step, "changed_on_resume": changed or {}}
        write_text(self.metrics, "".join(json.dumps(m) + "\n" for m in kept))

    def latest(self) -> Path | None:
        """The checkpoint to resume from: last.pt, or the folder last.json names (a multi-process run's)."""
        newer_file = self.last.exists() and (
            not self.last_pointer.exists() or self.last.stat().st_mtime_ns > self.last_pointer.stat().st_mtime_ns
        )  # both: a kill came between writing one and removing the other
        if self.last_pointer.exists() and not newer_file:
            return self.checkpoints / json.loads(self.last_pointer.read_text())["checkpoint"]
        return self.last if self.last.exists() else None

    def repair_best(self, history: History) -> None:
        """best.pt (best.json) after a kill between the renames of last.pt and best.pt (see the class)."""
        if not (self.enabled and history.best_step == history.step):
            return
        if self.last_pointer.exists():
            if not self.best_pointer.exists() or self.best_pointer.read_text() != self.last_pointer.read_text():
                write_text(self.best_pointer, self.last_pointer.read_text())
        elif self.last.exists() and not (self.best.exists() and os.path.samefile(self.best, self.last)):
            atomic_link(self.last, self.best)

    def log_metrics(self, record: dict) -> None:
        if self.enabled:
            append_jsonl(self.metrics, {**record, **self.resumed})
            self.resumed = {}

    def confirm(self, step: int, sound: bool) -> None:
        """The training loss of `step` was `sound` or not: when the step follows the last
        checkpoint, the loss was computed on its weights."""
        if self.last_step is not None and step == self.last_step + 1:
            self.last_sound = sound

    def _keep_sound(self) -> None:
        """Before the last checkpoint is replaced: keep it if it is known sound."""
        if not self.last_sound:
            return
        self.sound_step = self.last_step  # on every rank: each says the same when the run stops
        latest = self.latest() if self.enabled else None
        if latest == self.last:
            atomic_link(self.last, self.sound)
            remove(self.sound_pointer)
        elif latest is not None:  # a multi-process checkpoint's folder, named by last.json
            write_text(self.sound_pointer, self.last_pointer.read_text())
            remove(self.sound)

    def save(self, state: dict, best: bool = False, keep_steps: int = 0) -> None:
        """last.pt (and best.pt); with `keep_steps`, also step-N.pt, keeping the newest ones."""
        self._keep_sound()
        self.last_step, self.last_sound = state["step"], False
        if not self.enabled:
            return
        save_checkpoint(self.last, state)
        if best:
            atomic_link(self.last, self.best)
        self._drop_pointers(best)
        if keep_steps:
            save_checkpoint(self.checkpoints / f"step-{state['step']}.pt", state)
            steps = sorted(self.checkpoints.glob("step-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
            for old in steps[:-keep_steps]:
                remove(old)

    def save_distributed(self, save, step: int, best: bool = False, keep_steps: int = 0) -> None:
        """A multi-process run's checkpoint: `save(folder, name)` writes it from every rank; then
        rank 0 points last.json (and best.json) at it and removes the folders none of them (nor
        sound.json) names, but the newest `keep_steps` (with --save-steps)."""
        self._keep_sound()
        self.last_step, self.last_sound, self.keep_steps = step, False, keep_steps
        name = f"step-{step}"
        save(self.checkpoints, name)
        if not self.enabled:
            return
        pointer = json.dumps({"checkpoint": name, "step": step}) + "\n"
        write_text(self.last_pointer, pointer)
        if best:
            write_text(self.best_pointer, pointer)
        remove(self.last)  # a run resumed with more processes than wrote last.pt (best.pt is its own link)
        if best:
            remove(self.best)
        pointers = (self.last_pointer, self.best_pointer, self.sound_pointer)
        kept = {json.loads(p.read_text())["checkpoint"] for p in pointers if p.exists()}
        steps = sorted((p for p in self.checkpoints.glob("step-*") if p.is_dir()), key=lambda p: int(p.name[5:]))
        prune(self.checkpoints, kept | {p.name for p in steps[len(steps) - keep_steps :]} if keep_steps else kept)

    def _drop_pointers(self, best: bool) -> None:
        """After last.pt (best.pt): the pointers and folders of the multi-process checkpoints it
        replaces (a run resumed with fewer processes than wrote them)."""
        if not self.last_pointer.exists():
            return
        remove(self.last_pointer)
        if best:
            remove(self.best_pointer)
        pointers = [p for p in (self.best_pointer, self.sound_pointer) if p.exists()]
        prune(self.checkpoints, {json.loads(p.read_text())["checkpoint"] for p in pointers})

    def stopped_diverging(self, rates: str) -> str:
        """What a run found diverging leaves to continue from, for its message (lower `rates`):
        the last checkpoint if its weights trained soundly on, else the kept sound one, which
        becomes the last again (later ones may hold the diverged weights), else none."""
        fresh = f"train afresh (a new --output-dir) with lower {rates} or --warmup-steps"
        if self.last_step is None:
            return f"no checkpoint was written; {fresh}"
        last = self.latest() or self.last
        if not self.last_sound and self.sound_step is None:
            return (
                f"no checkpoint is known to be from before it (the last, {last} at step {self.last_step}, "
                f"may hold the diverged weights); {fresh}"
            )
        resume = f"--resume with lower {rates} (or --warmup-steps) continues from it"
        if self.last_sound:
            return f"the last checkpoint, {last} (step {self.last_step}), is from before it: {resume}"
        if self.enabled:
            if self.sound_pointer.exists():
                write_text(self.last_pointer, self.sound_pointer.read_text())
            else:  # last.json of a diverged multi-process checkpoint would be the newer one
                atomic_link(self.sound, self.last)
                remove(self.last_pointer)
        self.last_step, last = self.sound_step, self.latest() or self.last
        return (
            f"the run is set back to {last} (step {self.last_step}), its last checkpoint whose weights trained on "
            f"soundly (later ones may hold the diverged weights): {resume}"
        )

    def summary(self, summary: dict) -> None:
        """summary.json, last; the sound checkpoint kept for a divergence goes first (a finished run
        needs it no more)."""
        if self.enabled:
            remove(self.sound)
            if self.sound_pointer.exists():
                folder = json.loads(self.sound_pointer.read_text())["checkpoint"]
                remove(self.sound_pointer)
                pointers = [p for p in (self.last_pointer, self.best_pointer) if p.exists()]
                steps = sorted(
                    (p for p in self.checkpoints.glob("step-*") if p.is_dir()), key=lambda p: int(p.name[5:])
                )
                kept = {json.loads(p.read_text())["checkpoint"] for p in pointers}
                kept |= {p.name for p in steps[len(steps) - self.keep_steps :]} if self.keep_steps else set()
                if folder not in kept:
                    remove(self.checkpoints / folder)
            write_json(self.path / "summary.json", summary)
