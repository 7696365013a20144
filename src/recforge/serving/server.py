"""`recforge serve`: a bundle behind HTTP (FastAPI on uvicorn).

    POST /v1/score       raw rows -> click probabilities            (models that score rows: click logs)
    POST /v1/recommend   what the bundle's task recommends from:
                         a raw user id -> top k unseen items        (ranking)
                         a context + candidate rows -> candidates ranked   (click logs)
Requests become model inputs through the bundle's serving assets (`recforge.tasks.serving`): the
server names no kind of task.
    GET  /health  /ready  /v1/metadata (the manifest)  /metrics (Prometheus)

Requests are validated and turned into Arrow columns on the event loop; the model runs on one
thread of its own (`Batcher`), which merges the requests waiting into one forward pass of at most
`max_batch_rows` rows, waiting at most `max_wait_ms` for more after the first. Waiting requests
are bounded (`max_queue`, each at most `max_request_bytes`): a full queue answers 503 with
Retry-After instead of growing. SIGTERM or Ctrl-C stops accepting, answers the requests in
flight, then stops the batcher (uvicorn's graceful shutdown, then the app's lifespan).

`workers` > 1 runs that many such processes on one socket (uvicorn's supervisor): the event
loop's Python work (HTTP, a request's checks) is the limit of one process on a CPU, as the model
runs in torch off the GIL, so a second process on a second core serves more rows/s
(docs/benchmarks.md, Serving).
Their Prometheus series are summed across the processes (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import queue
import signal
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from uvicorn.supervisors import Multiprocess

from recforge.serving.bundle import Bundle, ModelFault
from recforge.tasks import serving
from recforge.tasks.serving import RequestError


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_rows: int = 8192
    max_wait_ms: float = 0.0  # requests that come during a forward pass wait for the next (measured best here)
    max_queue: int = 1024
    max_request_rows: int = 65_536
    max_request_bytes: int = 16 << 20
    api_key: str | None = None
    drain_timeout_s: float = 30.0
    log_level: str = "warning"
    workers: int = 1  # server processes sharing the socket, each with the model


@dataclass
class _Job:
    """One request's rows (its assets' `Request`), waiting for the model's thread."""

    request: serving.Request
    future: asyncio.Future | None = None
    loop: asyncio.AbstractEventLoop | None = None

    @property
    def rows(self) -> int:
        return self.request.rows


class Metrics:
    """Prometheus series of one server (its own registry, so several apps in a process never clash);
    with several worker processes (PROMETHEUS_MULTIPROC_DIR set), those of all of them, summed."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "recforge_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "recforge_request_seconds",
            "request latency by endpoint",
            ["endpoint"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            "recforge_batch_rows",
            "rows per forward pass",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "recforge_queue_depth",
            "requests waiting for the model",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.errors = Counter("recforge_errors", "failed requests by kind", ["kind"], registry=self.registry)

    def text(self) -> bytes:
        if os.environ.get(_PROMETHEUS_DIR):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


class Overloaded(Exception):
    pass


class Batcher:
    """The model's thread: takes the waiting jobs, runs them as one batch, answers each."""

    def __init__(self, bundle: Bundle, cfg: ServeConfig, metrics: Metrics):
        self.bundle, self.cfg, self.metrics = bundle, cfg, metrics
        self.jobs: queue.Queue[_Job | None] = queue.Queue(maxsize=cfg.max_queue)
        self.thread = threading.Thread(target=self._run, name="recforge-batcher", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join()

    def submit(self, job: _Job) -> asyncio.Future:
        job.loop = asyncio.get_running_loop()
        job.future = job.loop.create_future()
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise Overloaded from None
        self.metrics.queue_depth.set(self.jobs.qsize())
        return job.future

    def _run(self) -> None:
        pending: _Job | None = None  # a job that did not fit in the last batch
        stopping = False  # `stop`'s None came; answer what was taken, then end
        while True:
            first = pending or self.jobs.get()
            pending = None
            if first is None:
                return
            batch, rows = [first], first.rows
            deadline = time.perf_counter() + self.cfg.max_wait_ms / 1000
            while rows < self.cfg.max_batch_rows:
                try:
                    job = self.jobs.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                if rows + job.rows > self.cfg.max_batch_rows:
                    pending = job
                    break
                batch.append(job)
                rows += job.rows
            self.metrics.queue_depth.set(self.jobs.qsize())
            self._answer(batch, rows)
            if stopping and pending is None:
                return

    def _answer(self, batch: list[_Job], rows: int) -> None:
        try:
            arrays = self.bundle.assets.model_inputs_of([job.request.payload for job in batch])
            probabilities = self.bundle.unchecked_probabilities(arrays)
            self.metrics.batch_rows.observe(rows)
            bounds = np.cumsum([0] + [job.rows for job in batch])
            results = [_checked(self.bundle, probabilities[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:])]
        except Exception as e:  # a bug or a broken bundle: every request of the batch fails
            results = [e] * len(batch)
        for job, result in zip(batch, results):
            assert job.loop is not None and job.future is not None  # set by `submit`, before the job is queued
            job.loop.call_soon_threadsafe(_settle, job.future, result)


def _checked(bundle: Bundle, probabilities: np.ndarray):
    """One request's probabilities, or the ModelFault it is answered with (its rows alone: one
    client's rows do not fail the others' requests of the batch)."""
    try:
        return bundle.checked(probabilities)
    except ModelFault as fault:
        return fault


def _settle(future: asyncio.Future, result) -> None:
    if future.done():  # the client went away
        return
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)


class _Handlers:
    """What every endpoint shares: the API key check, the body's reading, the answer's metrics,
    and the model's batcher behind the two POST endpoints."""

    def __init__(self, bundle: Bundle, cfg: ServeConfig):
        self.bundle, self.cfg = bundle, cfg
        self.metrics = Metrics()
        self.batcher = Batcher(bundle, cfg, self.metrics)
        self.ready = False

    def error(self, status: int, kind: str, message: str, field: str | None = None, headers=None) -> JSONResponse:
        self.metrics.errors.labels(kind).inc()
        body = {"error": message} | ({"field": field} if field else {})
        return JSONResponse(body, status_code=status, headers=headers)

    def record(self, endpoint: str, response: Response, begin: float) -> Response:
        self.metrics.requests.labels(endpoint, str(response.status_code)).inc()
        self.metrics.latency.labels(endpoint).observe(time.perf_counter() - begin)
        return response

    def refused(self, request: Request) -> Response | None:
        """The API key check (for /v1/* and /metrics), when one is set."""
        if self.cfg.api_key and not _authorized(request.headers, self.cfg.api_key):
            return self.error(401, "unauthorized", "missing or wrong API key (Authorization: Bearer KEY or X-API-Key)")
        return None

    async def body(self, request: Request) -> dict:
        limit = self.cfg.max_request_bytes
        if int(request.headers.get("content-length") or 0) > limit:
            raise RequestError("body", f"request body over {limit:,} bytes", 413)
        raw = await request.body()
        if len(raw) > limit:
            raise RequestError("body", f"request body over {limit:,} bytes", 413)
        if request.headers.get("content-type", "").startswith(ARROW_STREAM):
            # Columns as an Arrow IPC stream: no text to parse (JSON rows cost ~8 us a row).
            try:
                table = pa.ipc.open_stream(raw).read_all()
            except (pa.ArrowInvalid, OSError) as e:
                raise RequestError("body", f"not an Arrow IPC stream ({e})", 400) from None
            return {"columns": {name: table.column(name) for name in table.column_names}}
        try:
            payload = orjson.loads(raw)  # ~2.6x json's speed on a request of rows
        except orjson.JSONDecodeError as e:
            raise RequestError("body", f"not JSON ({e})", 400) from None
        if not isinstance(payload, dict):
            raise RequestError("body", "must be a JSON object", 400)
        return payload

    async def run(self, request: serving.Request) -> dict:
        most = self.cfg.max_request_rows
        if request.rows > most:
            raise RequestError("rows", f"{request.rows:,} rows, more than --max-request-rows {most:,}", 413)
        probabilities = await self.batcher.submit(_Job(request))  # a full queue raises Overloaded: 503 (`answer`)
        return request.answer(probabilities)

    async def answer(self, handler, request: Request) -> Response:
        # Checks and metrics here, not in an HTTP middleware: Starlette's costs ~1 ms a request.
        begin = time.perf_counter()
        response = self.refused(request)
        if response is None:
            try:
                result = await handler(await self.body(request))
                response = Response(orjson.dumps(result), media_type=JSON)
            except RequestError as e:
                kind = {400: "bad_request", 413: "too_large", 404: "not_found"}.get(e.status, "invalid")
                response = self.error(e.status, kind, e.message, e.field)
            except Overloaded:
                response = self.error(
                    503, "overloaded", "the queue is full; retry shortly", headers={"Retry-After": "1"}
                )
            except ModelFault as e:
                response = self.error(500, "model", str(e))
            except Exception as e:  # noqa: BLE001  the server stays up; the client learns it failed
                response = self.error(500, "internal", f"{type(e).__name__}: {e}")
        return self.record(request.url.path, response, begin)

    async def score(self, payload: dict):
        return await self.run(self.bundle.assets.score_request(payload))

    async def recommend(self, payload: dict):
        k = payload.get("k", 10)
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise RequestError("k", "must be a positive integer")
        return await self.run(self.bundle.assets.recommend_request(payload, k))


def create_app(bundle: Bundle, cfg: ServeConfig) -> FastAPI:
    handlers = _Handlers(bundle, cfg)
    record, refused, metrics = handlers.record, handlers.refused, handlers.metrics

    @contextlib.asynccontextmanager
    async def lifespan(app):
        handlers.batcher.start()
        handlers.ready = True
        yield
        handlers.ready = False
        handlers.batcher.stop()  # after uvicorn answered the requests in flight

    app = FastAPI(title="recforge", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/v1/score")
    async def score_endpoint(request: Request):
        return await handlers.answer(handlers.score, request)

    @app.post("/v1/recommend")
    async def recommend_endpoint(request: Request):
        return await handlers.answer(handlers.recommend, request)

    @app.get("/health")
    async def health():
        return record("/health", JSONResponse({"status": "ok"}), time.perf_counter())

    @app.get("/ready")
    async def ready():
        begin = time.perf_counter()
        if not handlers.ready:
            return record("/ready", JSONResponse({"status": "not ready"}, status_code=503), begin)
        return record(
            "/ready",
            JSONResponse({"status": "ready", "runtime": bundle.runtime_name, "device": str(bundle.device)}),
            begin,
        )

    @app.get("/v1/metadata")
    async def metadata(request: Request):
        begin = time.perf_counter()
        manifest = {k: v for k, v in bundle.manifest.items() if k != "files"} | {
            "runtime": bundle.runtime_name,
            "device": str(bundle.device),
        }
        return record("/v1/metadata", refused(request) or JSONResponse(manifest), begin)

    @app.get("/metrics")
    async def prometheus(request: Request):
        begin = time.perf_counter()
        metrics.queue_depth.set(handlers.batcher.jobs.qsize())
        answer = refused(request) or Response(metrics.text(), media_type="text/plain; version=0.0.4")
        return record("/metrics", answer, begin)

    return app


JSON = "application/json"
ARROW_STREAM = "application/vnd.apache.arrow.stream"


def _authorized(headers, key: str) -> bool:
    given = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ").strip()
    return hmac.compare_digest(given.encode(), key.encode())


_PROMETHEUS_DIR = "PROMETHEUS_MULTIPROC_DIR"
_WORKER_SETTINGS = "RECFORGE_SERVE_WORKER"  # a worker process's bundle and settings, from `serve`


def worker_app() -> FastAPI:
    """The app of one of several worker processes (uvicorn starts each and calls this): the bundle,
    runtime and settings that `serve` put in the environment."""
    import torch

    settings = json.loads(os.environ[_WORKER_SETTINGS])
    torch.set_num_threads(settings["threads"])
    bundle = Bundle(settings["folder"], settings["runtime"], verify=False, device=settings["device"])  # verified
    return create_app(bundle, ServeConfig(**settings["config"]))


def serve(bundle: Bundle, cfg: ServeConfig, log=print) -> None:
    """Run until SIGTERM / Ctrl-C; the requests in flight are answered first."""
    options: dict[str, Any] = {
        "host": cfg.host,
        "port": cfg.port,
        "log_level": cfg.log_level,
        "timeout_graceful_shutdown": cfg.drain_timeout_s,
        "access_log": False,
        "lifespan": "on",
    }
    manifest = bundle.manifest
    log(
        f"serving {manifest['model']} ({manifest['task']}, {bundle.runtime_name} on {bundle.device}) "
        f"on http://{cfg.host}:{cfg.port} "
        f"(batches of up to {cfg.max_batch_rows:,} rows, {cfg.max_wait_ms:g} ms wait, queue {cfg.max_queue:,}"
        + (f", {cfg.workers} worker processes)" if cfg.workers > 1 else ")")
    )
    if cfg.workers == 1:
        # uvicorn raises the signal again once its graceful shutdown is done; with this handler that
        # ends nothing, a drained server's `recforge serve` exits 0.
        signal.signal(signal.SIGTERM, lambda *_: None)
        uvicorn.Server(uvicorn.Config(create_app(bundle, cfg), **options)).run()
        return
    import torch

    settings = {
        "folder": str(bundle.folder),
        "runtime": bundle.runtime_name,
        "device": str(bundle.device),
        "config": asdict(cfg),
        "threads": max(1, torch.get_num_threads() // cfg.workers),  # the cores, shared
    }
    with tempfile.TemporaryDirectory(prefix="recforge-metrics-") as metrics_dir:
        # Set before the workers start (and import prometheus_client): their series go to files there.
        os.environ |= {_WORKER_SETTINGS: json.dumps(settings), _PROMETHEUS_DIR: metrics_dir}
        try:
            config = uvicorn.Config(f"{__name__}:worker_app", factory=True, workers=cfg.workers, **options)
            # On SIGTERM the supervisor stops each worker, which drains its requests, then returns.
            Multiprocess(config, sockets=[config.bind_socket()]).run()
        finally:
            for name in (_WORKER_SETTINGS, _PROMETHEUS_DIR):
                os.environ.pop(name, None)
