"""Stress test of 2-process CPU training (torchrun, gloo): each model N times, with and without
sparse embedding gradients, failures counted by kind.

    nice -n 10 python benchmarks/stress_multiprocess.py --runs 50

Cells: neumf on the synthetic ranking dataset (its tables have dense gradients only), dlrm on a
synthetic Criteo-shaped click log and wide-deep on a synthetic Outbrain log, each with
`--sparse-embeddings` and `--no-sparse-embeddings`. Every run is a fresh
`torchrun --standalone --nproc-per-node 2 -m recforge train ...` of a few seconds, with its own
output folder; a run fails when torchrun exits non-zero or does not end in `--timeout` seconds.
A failure's kind is the signal or exit code of the first rank to fail plus the first known
signature in stderr (a glibc heap check, "terminate called ...", "Fatal Python error: ...", the
last exception line). The table goes to stdout, the counts and each failure's stderr tail to
`--out` (default benchmarks/results-stress-YYYY-MM-DD.json). It measures robustness, not speed:
the seconds per run are recorded only to show that the runs stay short.

Written for issue 8 (heap corruption in 2-process runs with sparse tables: torch's gloo process
group with two worker threads races on a string after each collective; see
`recforge.runtime.distributed`). Run it with the checkout to test on the import path (the
editable install, or PYTHONPATH=path/to/src).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RECFORGE = [sys.executable, "-m", "recforge"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "recforge"]

# First match wins, in this order: glibc's heap checks, C++ aborts, Python's fatal errors, exceptions.
SIGNATURES = [
    re.compile(
        r"^((?:malloc|free|realloc|calloc|malloc_consolidate|_int_malloc|_int_free|munmap_chunk|double free"
        r"|corrupted)[^\n]*)$",
        re.M,
    ),
    re.compile(r"^(terminate called[^\n]*)$", re.M),
    re.compile(r"^(Fatal Python error: [^\n]*)$", re.M),
    re.compile(r"^((?:[A-Za-z_.]+(?:Error|Exception)|recforge: error)[^\n]*)$", re.M),
]


def ranking_data(data: dict[str, Path]) -> list[str]:
    """The synthetic ranking dataset's flags: the same for preparing it and training on it."""
    return [
        "--synthetic-users",
        "400",
        "--synthetic-items",
        "600",
        "--synthetic-interactions",
        "20000",
        "--cache-dir",
        str(data["ranking"]),
    ]


def prepare(work: Path) -> dict[str, Path]:
    """The three small datasets, prepared once (seconds)."""
    data = {"ranking": work / "cache", "criteo": work / "criteo", "outbrain": work / "outbrain"}
    steps = [
        ["prepare", "synthetic", *ranking_data(data)],
        ["prepare", "criteo-synthetic", "--synthetic-rows", "20000", "--out", str(data["criteo"])],
        ["prepare", "outbrain-synthetic", "--synthetic-displays", "3000", "--out", str(data["outbrain"])],
    ]
    for args in steps:
        result = subprocess.run([*RECFORGE, *args], capture_output=True, text=True)
        if result.returncode:
            sys.exit(f"recforge {' '.join(args)} failed:\n{result.stderr[-2000:]}")
    return data


def cells(data: dict[str, Path], models: list[str], tables: list[str]) -> list[tuple[str, str, list[str]]]:
    """(model, tables, train flags) per cell; each run adds --output-dir."""
    ncf = [
        "--model",
        "neumf",
        "--dataset",
        "synthetic",
        *ranking_data(data),
        "--epochs",
        "2",
        "--batch-size",
        "1024",
        "--num-factors",
        "8",
        "--layers",
        "32,16,8",
        "--learning-rate",
        "0.01",
    ]
    # DLRM's own default towers (13-512-256-64-16, 512-256-1) and 26 tables; SGD as its registry entry.
    # Before the fix one such run in three crashed; one epoch (67 steps) rarely did.
    dlrm = [
        "--model",
        "dlrm",
        "--dataset",
        "criteo-synthetic",
        "--prepared-dir",
        str(data["criteo"]),
        "--epochs",
        "3",
        "--batch-size",
        "256",
        "--valid-batch-size",
        "8192",
    ]
    # FTRL + Proximal Adagrad at rates for this batch size (the defaults, for 131072, diverge here).
    wide_deep = [
        "--model",
        "wide-deep",
        "--prepared-dir",
        str(data["outbrain"]),
        "--epochs",
        "2",
        "--batch-size",
        "256",
        "--deep-hidden-units",
        "256,128",
        "--embedding-dim",
        "16",
        "--valid-batch-size",
        "8192",
        "--linear-learning-rate",
        "0.02",
        "--deep-learning-rate",
        "0.01",
    ]
    table = [("neumf", "dense (its only kind)", ncf)]
    # Wide & Deep's dense tables (87M wide weights for the Outbrain spec's buckets) make every step
    # an all-reduce and an FTRL update of all of them, about 3 s at 2 x 1 thread: 6 steps, not 2 epochs.
    dense_length = {"dlrm": [], "wide-deep": ["--max-steps", "6"]}
    for name, flags in (("dlrm", dlrm), ("wide-deep", wide_deep)):
        table += [
            (name, "sparse", [*flags, "--sparse-embeddings"]),
            (name, "dense", [*flags, "--no-sparse-embeddings", *dense_length[name]]),
        ]
    return [cell for cell in table if cell[0] in models and (cell[0] == "neumf" or cell[1] in tables)]


def classify(returncode: int | None, stderr: str) -> str:
    """'ok', or the failure's kind: 'timeout' / 'SIGSEGV' / 'exit 1', then a stderr signature."""
    if returncode == 0:
        return "ok"
    if returncode is None:
        head = "timeout"
    else:
        # torchrun exits 1 whatever happened; its report names the rank that failed first.
        root = stderr[stderr.find("Root Cause") :] if "Root Cause" in stderr else stderr
        code = re.search(r"exitcode\s*:\s*(-?\d+)", root)
        rank_code = int(code.group(1)) if code else returncode
        if rank_code < 0:
            try:
                head = signal.Signals(-rank_code).name
            except ValueError:
                head = f"signal {-rank_code}"
        else:
            head = f"exit {rank_code}"
    for pattern in SIGNATURES:
        found = pattern.findall(stderr)
        if found:
            line = found[-1] if pattern is SIGNATURES[-1] else found[0]
            return f"{head}: {line.strip()[:120]}"
    return head


def run_once(flags: list[str], out: Path, timeout: float, threads: int | None) -> tuple[str, float, str]:
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    begin = time.perf_counter()
    # Its own process group: on a timeout the ranks are killed with torchrun (killing torchrun
    # alone leaves them running, and they slow every later run).
    launcher = subprocess.Popen(
        [*TORCHRUN, "train", *flags, "--output-dir", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        _, stderr = launcher.communicate(timeout=timeout)
        returncode = launcher.returncode
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        _, stderr = launcher.communicate()
        returncode = None
    return classify(returncode, stderr), time.perf_counter() - begin, stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="runs per cell")
    parser.add_argument(
        "--models", nargs="+", default=["neumf", "dlrm", "wide-deep"], choices=["neumf", "dlrm", "wide-deep"]
    )
    parser.add_argument(
        "--tables",
        nargs="+",
        default=["sparse", "dense"],
        choices=["sparse", "dense"],
        help="dlrm / wide-deep cells to run (neumf has one)",
    )
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds before a run counts as hung")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS per rank (torchrun's default: 1)")
    parser.add_argument(
        "--work-dir", default=None, help="datasets, runs and failed runs' logs (default: a new temporary folder)"
    )
    parser.add_argument("--out", default=None, help="JSON results (default: benchmarks/results-stress-YYYY-MM-DD.json)")
    args = parser.parse_args()
    today = datetime.date.today().isoformat()
    out_json = Path(args.out) if args.out else Path(__file__).resolve().parent / f"results-stress-{today}.json"
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="recforge-stress-"))
    work.mkdir(parents=True, exist_ok=True)
    data = prepare(work)
    print(f"torch {torch.__version__}, {args.runs} runs per cell, work folder {work}", flush=True)

    results, failures = [], []
    for model, tables, flags in cells(data, args.models, args.tables):
        kinds: dict[str, int] = {}
        seconds = []
        for i in range(1, args.runs + 1):
            run_dir = work / "runs" / f"{model}-{tables.split()[0]}-{i}"
            kind, elapsed, stderr = run_once(flags, run_dir, args.timeout, args.threads)
            seconds.append(elapsed)
            kinds[kind] = kinds.get(kind, 0) + 1
            if kind != "ok":
                log = work / "failed" / f"{model}-{tables.split()[0]}-{i}.stderr"
                log.parent.mkdir(parents=True, exist_ok=True)
                log.write_text(stderr)
                failures.append(
                    {
                        "model": model,
                        "tables": tables,
                        "run": i,
                        "kind": kind,
                        "log": str(log),
                        "stderr_tail": stderr[-3000:],
                    }
                )
                print(f"  {model} {tables} run {i}: {kind}", flush=True)
            subprocess.run(["rm", "-rf", str(run_dir)], check=False)
        ok = kinds.pop("ok", 0)
        results.append(
            {
                "model": model,
                "tables": tables,
                "runs": args.runs,
                "ok": ok,
                "failed": args.runs - ok,
                "failures_by_kind": kinds,
                "median_run_s": round(statistics.median(seconds), 1),
                "flags": flags,
            }
        )
        print(f"{model:10s} {tables:22s} {ok}/{args.runs} ok" + (f", failures: {kinds}" if kinds else ""), flush=True)

    print()
    print("| model | tables | runs | ok | failed | failures by kind | median s/run |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        by_kind = "; ".join(f"{k} x{v}" for k, v in r["failures_by_kind"].items()) or "-"
        print(
            f"| {r['model']} | {r['tables']} | {r['runs']} | {r['ok']} | {r['failed']} | {by_kind} "
            f"| {r['median_run_s']} |"
        )
    report = {
        "date": today,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "runs_per_cell": args.runs,
        "threads": args.threads,
        "cells": results,
        "failures": failures,
        "note": "robustness counts; run times are not a benchmark (shared machine, nice -n 10)",
    }
    out_json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten {out_json}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
