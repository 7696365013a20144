"""What an interrupted preparation had finished, so that the same command continues from there.

A preparation that can take hours builds its output in a folder beside `out` named after its
fingerprint (`resumable_folder`): the inputs' names and contents (`core.content`: a file
rewritten with its old size and modification time is a new input), how they are cut into
chunks, and the options. `journal.json` there says how many tasks of each pass have
finished, in task order, and what they found (rows per chunk, counts so far, saved beside it by
the pass). It is rewritten atomically at most every `JOURNAL_SECONDS` and at the end of each
pass, after what those tasks wrote is on disk (fsync), so a kill or a power loss at any instant
leaves a journal that is true. The same command then finds the folder and continues after the
last task the journal names; tasks write fixed rows at fixed offsets and results are merged in
task order, so the output is byte-identical to an uninterrupted run's.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from recforge.core.content import described
from recforge.core.files import write_json
from recforge.data.ctr_format import CTRMeta, finish, load_meta, resumable_folder
from recforge.prepare.workers import _Workers, peak_memory_of_pool

JOURNAL_SECONDS = 30.0  # the most work a kill loses, beyond the task in progress
NAME = "journal.json"


def fingerprint(files: Iterable[Path], **options) -> str:
    """A short hash of the input files (name and content) and `options` (JSON values)."""
    text = json.dumps({"files": [described(p) for p in files], **options}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Journal:
    """The journal of the preparation building in `folder` (empty when it starts afresh)."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / NAME
        self.state: dict = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.resumed = bool(self.state)
        self._written_at = time.monotonic()

    def done(self, step: str) -> int:
        """Tasks of `step` finished (in task order) by earlier attempts."""
        return self.state.get("done", {}).get(step, 0)

    def get(self, key: str, default=None):
        return self.state.get(key, default)

    def finished(
        self,
        step: str,
        tasks: int,
        values: dict | None = None,
        *,
        durable: Callable[[], None] = lambda: None,
        final: bool = False,
    ) -> None:
        """`tasks` tasks of `step` are done, with `values` (JSON) to keep. Written when `final`
        (the step's end) or JOURNAL_SECONDS after the last write; `durable()` first, which makes
        what the tasks wrote safe on disk (fsync, or saving a step's partial results)."""
        self.state.setdefault("done", {})[step] = tasks
        self.state.update(values or {})
        if final or time.monotonic() - self._written_at >= JOURNAL_SECONDS:
            durable()
            write_json(self.path, self.state)
            self._written_at = time.monotonic()

    def describe(self, steps: dict[str, int]) -> str:
        """Where an earlier attempt stopped, for the log: `steps` maps each step to its task count."""
        return ", ".join(f"{step} {self.done(step):,}/{total:,}" for step, total in steps.items())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def prepare_resumably(
    out: Path,
    key: str,
    overwrite: bool,
    workers: tuple[int, Callable],
    steps: dict[str, int],
    build: Callable[[Path, Journal, _Workers], CTRMeta],
    started: float,
    log: Callable[[str], None],
) -> tuple[CTRMeta, dict | None]:
    """A preparation in the resumable folder of fingerprint `key` beside `out`: `build(folder,
    journal, pool)` runs the passes (`workers`: the pool's processes and task function) and returns
    the meta; then prepare.json (how the run went: seconds since `started`, each pass's rates, peak
    memory), meta.json last, and the folder moves to `out`. An interrupted one is continued
    (`steps`: each step's task count, for the log); folders other preparations left beside `out`
    are named. Returns (meta, prepare.json's content), the latter None when an earlier attempt had
    finished and was interrupted only as its folder moved into place."""
    left = sorted(out.parent.glob(f".{out.name}.partial-*")) + sorted(out.parent.glob(f".{out.name}.resumable-*"))
    for stale in left:  # not this preparation's (same inputs and options): that one is continued
        if not stale.name.endswith(key):
            log(f"  note: {stale} is left by a run of other inputs or options; remove it to free its space")
    pool = None
    try:
        with resumable_folder(out, key, overwrite) as folder:
            journal = Journal(folder)
            if (folder / "meta.json").is_file():
                journal.remove()
                return load_meta(folder), None
            if journal.resumed:
                log(f"  continuing the interrupted preparation in {folder}: done {journal.describe(steps)}")
            pool = _Workers(*workers)
            meta = build(folder, journal, pool)
            pool.close()
            report = {
                "seconds": round(time.perf_counter() - started, 1),
                "processes": pool.processes,
                "resumed": journal.resumed,
                "passes": pool.rates,
                "peak_memory_bytes": peak_memory_of_pool(pool.processes),
            }
            write_json(folder / "prepare.json", report)
            finish(folder, meta)
            journal.remove()
        return meta, report
    except BaseException:
        if pool is not None:
            pool.terminate()
        raise
