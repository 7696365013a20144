"""`recforge report RUN [RUN ...] --out report.html`: one self-contained HTML page of runs.

From each run folder's own records (metrics.jsonl, summary.json, config.yaml; profile/ if the run
was profiled): the curves of every evaluation's numbers overlaid across the runs, the best
metrics and speed per run, the settings in which the runs differ, and for a single profiled run
where its time went. Figures are drawn with matplotlib (Agg: no display), embedded in the page as
PNG data and also written beside it (`report-NAME.png`), so the page needs no network and no
other file. Every file is written to a temp file and renamed.
"""

from __future__ import annotations

import base64
import collections
import html
import io
import json
import re
from pathlib import Path

import yaml

from recforge.core.errors import RecforgeError
from recforge.core.files import atomic_write, read_jsonl, write_text
from recforge.train.curves import INSTALL_HINT

NOT_CURVES = {"epoch", "step", "train_loss_from_step", "resumed_from_step", "eval_users"}
TOP_OPS = 12  # operators shown in a profiled run's time figure


class Run:
    """One run folder's records."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).expanduser()
        metrics = self.folder / "metrics.jsonl"
        if not metrics.is_file():
            raise RecforgeError(f"{self.folder}: no metrics.jsonl (not a run folder of `recforge train`)")
        self.records = [r for r in read_jsonl(metrics) if "step" in r]
        self.summary = _json(self.folder / "summary.json")  # absent while a run is unfinished
        try:
            self.config = yaml.safe_load((self.folder / "config.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise RecforgeError(f"{self.folder / 'config.yaml'}: not readable ({e})") from None
        self.name = self.folder.name

    def settings(self) -> dict[str, object]:
        """config.yaml flattened to section.name -> value."""
        flat = {}
        for section, values in self.config.items():
            if isinstance(values, dict):
                flat.update({f"{section}.{k}": v for k, v in values.items()})
            else:
                flat[section] = values
        return flat

    def curves(self) -> dict[str, tuple[list[int], list[float]]]:
        """Each number the evaluations recorded: name -> (steps, values)."""
        found: dict[str, tuple[list[int], list[float]]] = {}
        for record in self.records:
            for name, value in record.items():
                if name in NOT_CURVES or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                steps, values = found.setdefault(name, ([], []))
                steps.append(record["step"])
                values.append(value)
        return found


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _names(runs: list[Run]) -> None:
    """Runs named by their folders; folders of the same name by their paths."""
    counts = collections.Counter(run.name for run in runs)
    for run in runs:
        if counts[run.name] > 1:
            run.name = str(run.folder)


def _figure_png(draw) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 3.6), dpi=110)
    try:
        draw(axes)
        axes.grid(alpha=0.3)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        return buffer.getvalue()
    finally:
        plt.close(figure)


def _curve_figures(runs: list[Run]) -> dict[str, bytes]:
    """One figure per recorded number (loss, each metric, speed), every run that has it overlaid."""
    names: list[str] = []
    for run in runs:
        names += [n for n in run.curves() if n not in names]
    order = sorted(names, key=lambda n: (n != "train_loss", n.startswith("train_") or n.endswith("_s"), n))
    figures = {}
    for name in order:

        def draw(axes, name=name):
            for run in runs:
                if name in (curves := run.curves()):
                    steps, values = curves[name]
                    axes.plot(steps, values, marker="o", markersize=3, label=run.name)
            axes.set_xlabel("step")
            axes.set_title(name)
            axes.legend(fontsize="small")

        figures[name] = _figure_png(draw)
    return figures


def _profile_figure(run: Run) -> tuple[bytes, str] | None:
    """A profiled run: its operators' total time (torch.profiler's trace) and the profiler's table."""
    trace, table = run.folder / "profile" / "trace.json", run.folder / "profile" / "top_ops.txt"
    if not trace.is_file():
        return None
    events = _json(trace).get("traceEvents", [])
    spent: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("ph") == "X" and event.get("cat") in ("cpu_op", "kernel", "gpu_op"):
            # ms, floats: typeshed's Counter counts ints only
            spent[event.get("name", "?")] += float(event.get("dur", 0)) / 1000  # type: ignore[assignment]
    if not spent:
        return None
    top = spent.most_common(TOP_OPS)[::-1]

    def draw(axes):
        axes.barh([name[:48] for name, _ in top], [ms for _, ms in top])
        axes.set_xlabel("ms in the profiled steps (children included)")
        axes.set_title(f"{run.name}: where the profiled steps' time went")

    text = table.read_text() if table.is_file() else ""
    return _figure_png(draw), text


def _number(value) -> str:
    if isinstance(value, float):
        return f"{value:,.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    return html.escape(str(value))


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_number(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _metrics_table(runs: list[Run]) -> str:
    metric_names: list[str] = []
    for run in runs:
        metric_names += [m for m in run.summary.get("metrics", {}) if m not in metric_names and m != "eval_users"]
    header = ["run", "model", *metric_names, "best step", "train samples/s", "time to train (s)", "finished"]
    rows = []
    for run in runs:
        s = run.summary
        metrics = s.get("metrics", {})
        rows.append(
            [run.name, run.config.get("model", "?")]
            + [metrics.get(m, "") for m in metric_names]
            + [s.get("best_step", ""), s.get("train_samples_per_s", ""), s.get("time_to_train_s", ""), bool(s)]
        )
    return _table(header, rows)


def _differences(runs: list[Run]) -> str:
    settings = [run.settings() for run in runs]
    keys = sorted({k for s in settings for k in s})
    differing = [k for k in keys if len({json.dumps(s.get(k), sort_keys=True, default=str) for s in settings}) > 1]
    if len(runs) == 1:
        return "<p>One run: no differences to show.</p>"
    if not differing:
        return "<p>The runs have the same settings.</p>"
    rows = [[k, *(_setting(s.get(k)) for s in settings)] for k in differing]
    return _table(["setting", *(run.name for run in runs)], rows)


def _setting(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


STYLE = """body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}th{background:#f3f3f3}img{max-width:100%}
pre{background:#f7f7f7;padding:1em;overflow-x:auto;font-size:small}"""


def report(folders: list[str], out: str | Path, overwrite: bool = False, log=print) -> list[Path]:
    """Write the page and its PNGs (replacing files of those names only with `overwrite`); returns
    the files written."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise RecforgeError(f"recforge report draws with matplotlib, which is not installed ({INSTALL_HINT})") from None
    out = Path(out).expanduser()
    if out.suffix.lower() not in (".html", ".htm"):
        raise RecforgeError(f"--out {out}: give the page's file name, ending in .html")
    runs = [Run(folder) for folder in folders]
    _names(runs)
    figures = _curve_figures(runs)
    profile = _profile_figure(runs[0]) if len(runs) == 1 else None
    if profile is not None:
        figures["profile"] = profile[0]
    pngs = {name: out.with_name(f"{out.stem}-{re.sub(r'[^A-Za-z0-9@._-]+', '_', name)}.png") for name in figures}
    existing = [p for p in [out, *pngs.values()] if p.exists()]
    if existing and not overwrite:
        raise RecforgeError(f"--out {out}: {existing[0]} exists; replace it with --overwrite, or choose another name")
    written = []
    images = []
    for name, png in figures.items():
        path = pngs[name]
        atomic_write(path, lambda f, png=png: f.write(png), mode="wb")  # type: ignore[misc]  # mypy types no lambda default
        written.append(path)
        encoded = base64.b64encode(png).decode()
        images.append(
            f'<h3>{html.escape(name)}</h3><img alt="{html.escape(name)}" src="data:image/png;base64,{encoded}">'
        )
    title = "recforge report: " + ", ".join(run.name for run in runs)
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
        "<h2>Runs</h2>" + _table(["run", "folder"], [[run.name, str(run.folder)] for run in runs]),
        "<h2>Best metrics and speed</h2>" + _metrics_table(runs),
        "<h2>Settings that differ</h2>" + _differences(runs),
        "<h2>Curves (each evaluation)</h2>" + "".join(i for n, i in zip(figures, images) if n != "profile"),
    ]
    if profile is not None:
        parts.append("<h2>Where the time went (torch.profiler)</h2>" + images[-1])
        parts.append(f"<pre>{html.escape(profile[1])}</pre>")
    parts.append("</body></html>\n")
    write_text(out, "".join(parts))
    log(f"report of {len(runs)} run(s): {out} and {len(figures)} figure(s) beside it")
    return [out, *written]
