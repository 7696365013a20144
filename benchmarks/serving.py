"""Serving speed: in-process inference of a bundle per runtime, then the HTTP service under load.

    python benchmarks/serving.py --bundle W2_BUNDLE --raw W2_TRAIN_TXT [--runtime eager]
    python benchmarks/serving.py --bundle W1_BUNDLE --in-process-only

1. In-process: samples/s of each runtime in the bundle (eager, torch.export program, ONNX
   Runtime) on batches of `--batch` rows of its evaluation data (click logs: the prepared valid
   split; ranking: (user, item) pairs), median of `--reps` timed passes after a warm-up. Click
   logs also: raw rows -> probabilities (encoding included), the work the server does.
2. Served (click logs): `recforge serve` in its own process; a load generator (asyncio,
   keep-alive HTTP/1.1 connections, requests prepared in advance so the generator costs little)
   at concurrency 1, 8 and 64 with 1-row and 256-row requests of raw Criteo rows, `--seconds`
   each, per request format (JSON rows, JSON columns, an Arrow IPC stream): requests/s, rows/s,
   p50 / p99 latency. Both share this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from recforge.data.ctr_format import load_split
from recforge.runtime.precision import cpu_flags, cpu_info
from recforge.serving.bundle import Bundle

DENSE = [f"I{i}" for i in range(1, 14)]
SPARSE = [f"C{i}" for i in range(1, 27)]


def timed(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        begin = time.perf_counter()
        fn()
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def model_arrays(bundle: Bundle, rows: int) -> dict[str, np.ndarray]:
    if bundle.assets.kind == "ranking":
        rng = np.random.default_rng(0)
        users = len(bundle.assets.user_ids)
        return {"user": rng.integers(0, users, rows), "item": rng.integers(0, bundle.assets.num_items, rows)}
    data = bundle.manifest["config"]["data"]
    prepared = Path(data["prepared_dir"] or data["data_dir"])
    split = load_split(prepared, "valid")
    return {
        k: np.resize(np.array(split[k][:rows]), (rows, *split[k].shape[1:])) for k in bundle.manifest["model_inputs"]
    }


def raw_rows(path: Path, rows: int) -> list[dict]:
    out = []
    with open(path) as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            out.append({n: int(v) if v else None for n, v in zip(DENSE, fields[1:14])} | dict(zip(SPARSE, fields[14:])))
            if len(out) == rows:
                break
    return out


def measure_runtime(bundle: Bundle, batch: int, reps: int, raw: list[dict] | None) -> dict:
    arrays = model_arrays(bundle, batch)
    row = {"runtime": bundle.runtime_name, "batch": batch}
    row["samples_per_s"] = batch / timed(lambda: bundle.probabilities(arrays), reps)
    if raw is not None:
        assets, rows = bundle.assets, (raw * (batch // len(raw) + 1))[:batch]
        encoded_rows = lambda: bundle.probabilities(assets.encode(assets.table({"rows": rows})))  # noqa: E731
        row["raw_rows_per_s"] = batch / timed(encoded_rows, reps)
    return row


def in_process(bundle_dir: Path, batch: int, reps: int, raw: list[dict] | None) -> list[dict]:
    results = []
    for runtime in ["eager", "torch-export", "onnx", "aoti"]:
        try:
            bundle = Bundle(bundle_dir, runtime)
        except Exception as e:  # noqa: BLE001  a bundle without that export
            print(f"{runtime}: skipped ({e})")
            continue
        results.append(measure_runtime(bundle, batch, reps, raw))
        print(json.dumps(results[-1]))
    return results


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _client(port: int, request: bytes, until: float, latencies: list[float], statuses: dict) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < until:
            begin = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = next(int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - begin)
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


def encoded(rows: list[dict], body: str) -> tuple[bytes, str]:
    """A request body of `rows`: JSON rows, JSON columns or an Arrow IPC stream of the columns."""
    if body == "rows":
        return json.dumps({"rows": rows}).encode(), "application/json"
    columns = {name: [row[name] for row in rows] for name in rows[0]}
    if body == "columns":
        return json.dumps({"columns": columns}).encode(), "application/json"
    table = pa.table(columns)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes(), "application/vnd.apache.arrow.stream"


def load(port: int, rows: list[dict], concurrency: int, seconds: float, body_format: str = "rows") -> dict:
    body, content_type = encoded(rows, body_format)
    request = (
        f"POST /v1/score HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\n".encode()
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def run():
        until = time.perf_counter() + seconds
        await asyncio.gather(*(_client(port, request, until, latencies, statuses) for _ in range(concurrency)))

    begin = time.perf_counter()
    asyncio.run(run())
    wall = time.perf_counter() - begin
    ok = statuses.get(200, 0)
    ms = np.array(latencies) * 1000
    return {
        "body": body_format,
        "concurrency": concurrency,
        "rows_per_request": len(rows),
        "requests_per_s": ok / wall,
        "rows_per_s": ok * len(rows) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "statuses": statuses,
    }


def served(
    bundle_dir: Path, raw: list[dict], runtime: str, seconds: float, server_flags: list[str], bodies: list[str]
) -> list[dict]:
    port = free_port()
    command = [sys.executable, "-m", "recforge", "serve", str(bundle_dir), "--port", str(port), "--runtime", runtime]
    server = subprocess.Popen([*command, *server_flags], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        import httpx

        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        load(port, raw[:1], 1, 1.0)  # warm-up
        results = []
        for body in bodies:
            for rows in (1, 256):
                for concurrency in (1, 8, 64):
                    row = {"runtime": runtime} | load(port, raw[:rows], concurrency, seconds, body)
                    print(json.dumps(row))
                    results.append(row)
        return results
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True, type=Path)
    parser.add_argument("--raw", type=Path, help="Criteo TSV of raw rows for the served requests")
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--runtime", default="eager")
    parser.add_argument("--in-process-only", action="store_true")
    parser.add_argument("--server-flag", action="append", default=[], help="passed to recforge serve")
    parser.add_argument("--out", type=Path, help="JSON file for the rows")
    parser.add_argument("--bodies", default="rows,columns,arrow", help="request formats: rows, columns, arrow")
    args = parser.parse_args()
    raw = raw_rows(args.raw, 256) if args.raw else None
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_info("model name"),
        "cpu_flags": sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}),
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "in_process": in_process(args.bundle, args.batch, args.reps, raw),
    }
    if raw is not None and not args.in_process_only:
        report["served"] = served(
            args.bundle, raw, args.runtime, args.seconds, args.server_flag, args.bodies.split(",")
        )
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    pa.set_cpu_count(os.cpu_count() or 1)
    main()
