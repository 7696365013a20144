"""The `recforge` command line: prepare, download, train, evaluate, recommend.

Commands import what they run when they run (torch and the data readers take seconds to load):
`recforge --help` answers at once."""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import traceback
from importlib.metadata import version
from pathlib import Path

from recforge.config import CHECKPOINT_CONFIG, SECTIONS, DataConfig, RunConfig, add_config_flags, load_yaml
from recforge.core.errors import RecforgeError, one_line, user_message
from recforge.core.shipped import PRESETS, find, names

USAGE = """recforge <command> [options]

commands:
  prepare DATASET --data-dir DIR     preprocess a dataset (ranking: into the cache; click logs: into --out)
  download NAME --data-dir DIR       fetch a MovieLens release from GroupLens (checksum verified)
  train [--config PRESET] [--model M]
                                     train a model; writes config.yaml, metrics.jsonl, summary.json, checkpoints/
  evaluate --checkpoint FILE         evaluate a checkpoint, print and write the metrics as JSON
  recommend --checkpoint FILE --user ID [--k 10]
                                     top items the user has not interacted with
  export --checkpoint FILE --out DIR [--format onnx|torch-export|both]
                                     a self-contained bundle: model, exports, the fitted encoders, manifest
  serve BUNDLE_OR_CHECKPOINT         an HTTP service scoring raw rows (FastAPI + uvicorn; localhost)
  predict --bundle DIR --input FILE --output scores.parquet
                                     score a CSV / Parquet file of raw rows through the bundle's encoders
  report RUN [RUN ...] --out report.html
                                     one HTML page of runs: curves overlaid, metrics, differing settings
  tune --config PRESET --space SPACE --trials N --output-dir DIR
                                     hyperparameter search on the validation split (Optuna); best preset, test once
  presets                            the shipped presets and what each reproduces
  tf-config [--nproc-per-node N]     the torchrun command line of this machine's task in $TF_CONFIG

`recforge <command> --help` lists a command's options; `recforge --version` prints the version."""


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as the CLI's one error line (not usage text and a line)."""

    def error(self, message: str):
        raise RecforgeError(f"{message} (see `{self.prog} --help`)")


def _run_parser(
    prog: str, argv: list[str], extra=None, base: dict | None = None
) -> tuple[RunConfig, argparse.Namespace]:
    """Parse `--config`/`--model` first: the chosen model decides which `arch` flags exist.

    `base` (a checkpoint's config) takes the place of a YAML preset."""
    from recforge.registry import MODELS, OPTIMIZER_SETTINGS, build_config, model_entry

    pre = Parser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    pre.add_argument("--model")
    pre.add_argument("--optimizer")
    known, _ = pre.parse_known_args(argv)
    lines: dict[tuple, int]
    source: str | Path
    file_values, lines, source = base or {}, {}, CHECKPOINT_CONFIG if base else "<defaults>"
    if known.config and base is None:
        source = find(known.config, PRESETS, "preset")
        file_values, lines = load_yaml(source)
    model = known.model or file_values.get("model") or RunConfig.model
    parser = Parser(prog=prog, allow_abbrev=False, usage=f"{prog} [--config PRESET] [--model MODEL] [options]")
    if extra:
        extra(parser)
    else:
        parser.add_argument(
            "--config", help="a preset by name (recforge presets lists them) or a YAML file; flags override it"
        )
        parser.add_argument(
            "--model", choices=list(MODELS), help=f"model to train (default: neumf; the options below are {model}'s)"
        )
        parser.add_argument("--output-dir", help="run directory (default: runs/latest)")
        modes = parser.add_mutually_exclusive_group()  # the replaced Wide & Deep scripts' mode flags
        modes.add_argument("--evaluate", action="store_true", help="= --mode eval")
        modes.add_argument("--predict", action="store_true", help="= --mode inference --write-predictions")
        modes.add_argument("--benchmark", action="store_true", help="training throughput only: = --no-eval")
    own = {action.dest for action in parser._actions} - {"model", "output_dir"}  # the command's own flags
    # The help lists the options of the chosen model's task and optimizer, each with the value it
    # takes when absent (the model's default, or the preset's value).
    chosen = {"model": model} | ({"optimizer": known.optimizer} if known.optimizer else {})
    shown = build_config(file_values, chosen, source=source, lines=lines)
    add_config_flags(
        parser,
        {s: getattr(shown, s) for s in SECTIONS},
        scope=(model_entry(model).task.name, model),
        titles={"arch": f"model: {model}", "optim": "optimizer"},  # beside --optimizer
    )
    # Other optimizers' settings are accepted, unlisted, to be refused by name (--beta1 with sgd).
    listed = {action.dest for action in parser._actions}
    for settings in dict.fromkeys(OPTIMIZER_SETTINGS.values()):
        add_config_flags(parser, {"optim": settings}, exclude=tuple(listed), hidden=True)
        listed |= {action.dest for action in parser._actions}
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k not in own and v is not None}
    if getattr(args, "evaluate", False):
        overrides["mode"] = "eval"
    if getattr(args, "predict", False):
        overrides |= {"mode": "inference", "write_predictions": True}
    if getattr(args, "benchmark", False):
        overrides["no_eval"] = True
    return build_config(file_values, overrides, source=source, lines=lines), args


def _checkpoint_parser(prog: str, argv: list[str], extra) -> tuple[RunConfig, argparse.Namespace, dict]:
    """For commands that use a checkpoint: its config, with any config flags layered on."""
    from recforge.train.distributed_checkpoint import open_checkpoint

    pre = Parser(add_help=False, allow_abbrev=False)
    pre.add_argument("--checkpoint")
    known, _ = pre.parse_known_args(argv)
    checkpoint = open_checkpoint(known.checkpoint) if known.checkpoint else None

    def own_flags(parser):
        parser.add_argument(
            "--checkpoint",
            required=True,
            help="a run's checkpoints/best.pt or last.pt (best.json, last.json or step-N of a multi-process run)",
        )
        extra(parser)

    cfg, args = _run_parser(prog, argv, own_flags, base=checkpoint["config"] if checkpoint else None)
    assert checkpoint is not None  # --checkpoint is required: without it the parser exited
    return cfg, args, checkpoint


def cmd_train(argv: list[str]) -> None:
    from recforge import registry
    from recforge.inference import score_into_run
    from recforge.train.loop import train

    cfg, _ = _run_parser("recforge train", argv)
    if cfg.train.mode == "train":
        train(cfg, registry)
    else:
        score_into_run(cfg)


def cmd_prepare(argv: list[str]) -> None:
    from recforge.data.cache import prepare
    from recforge.data.datasets import DATASETS
    from recforge.prepare.click_logs import CLICK_LOGS
    from recforge.registry import build_config

    parser = Parser(prog="recforge prepare", allow_abbrev=False, usage="recforge prepare DATASET [options]")
    names = [*DATASETS, *CLICK_LOGS]
    parser.add_argument("dataset", choices=names, metavar="DATASET", help=f"one of: {', '.join(names)}")
    # The positional names the dataset; training-only options are accepted but not listed.
    add_config_flags(parser, {"data": DataConfig}, exclude=("dataset",), scope=("prepare", "ranking"))
    args = vars(parser.parse_args(argv))
    cfg = build_config({}, args).data
    if cfg.dataset in CLICK_LOGS:
        if not cfg.out:
            raise RecforgeError(f"recforge prepare {cfg.dataset} needs --out FOLDER (the prepared click log)")
        CLICK_LOGS[cfg.dataset](cfg, print)
        return
    data, path = prepare(cfg)
    print(f"{cfg.dataset}: {data.describe()}")
    print(f"cache: {path}")


def cmd_download(argv: list[str]) -> None:
    from recforge.data.download import MD5, download

    parser = Parser(prog="recforge download", allow_abbrev=False)
    parser.add_argument("name", choices=list(MD5))
    parser.add_argument("--data-dir", default="data")
    args = parser.parse_args(argv)
    print(f"{args.name}: {download(args.name, args.data_dir)}")


def cmd_evaluate(argv: list[str]) -> None:
    from recforge.inference import evaluate

    def extra(parser):
        parser.add_argument("--output", help="JSON file (default: evaluation-PROTOCOL.json in the run directory)")
        parser.add_argument(
            "--split",
            choices=["valid", "test"],
            help="the split to score (default: the one the run's evaluations scored; test after a validation split)",
        )

    cfg, args, checkpoint = _checkpoint_parser("recforge evaluate", argv, extra)
    evaluate(checkpoint, args.checkpoint, cfg, args.output, args.split)


def cmd_recommend(argv: list[str]) -> None:
    from recforge.inference import recommend

    def extra(parser):
        parser.add_argument("--user", required=True, help="raw user id, as in the source data")
        parser.add_argument("--k", type=int, default=10)
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")

    cfg, args, checkpoint = _checkpoint_parser("recforge recommend", argv, extra)
    rows = recommend(checkpoint, args.checkpoint, args.user, args.k, cfg)
    if args.json:
        print(json.dumps({"user": args.user, "items": rows}))
        return
    for row in rows:
        print(f"{row['rank']:>3}  {row['item']!s:>10}  {row['score']:8.4f}  {row.get('title', '')}")


def cmd_export(argv: list[str]) -> None:
    from recforge.serving.bundle import FORMATS, export

    parser = Parser(prog="recforge export", allow_abbrev=False, description="Write a checkpoint's bundle.")
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="a run's checkpoints/best.pt or last.pt (or a multi-process run's best.json)",
    )
    parser.add_argument("--out", required=True, help="the bundle folder to write")
    parser.add_argument(
        "--format",
        choices=[*FORMATS, "aoti", "both", "all", "none"],
        default="both",
        help="exports beside the eager weights: both = onnx and torch-export (the default); aoti "
        "(AOTInductor, compiled with the machine's C++ compiler); all",
    )
    parser.add_argument("--data-dir", help="where the checkpoint's prepared data is now, if it moved")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    args = parser.parse_args(argv)
    formats = {"both": FORMATS, "all": (*FORMATS, "aoti"), "none": ()}.get(args.format, (args.format,))
    export(args.checkpoint, args.out, formats, data_dir=args.data_dir, overwrite=args.overwrite)
    print(f"bundle: {args.out}")


def _open_bundle(path: str, runtime: str, device: str):
    """A bundle folder as it is; a checkpoint exported first (the weights, and the runtime's
    export) into a temporary folder, removed when the command ends (or at once if it fails)."""
    import contextlib
    import tempfile
    from pathlib import Path

    from recforge.serving.bundle import Bundle, export

    if Path(path, "manifest.json").is_file():
        return Bundle(path, runtime, device=device), contextlib.nullcontext()
    if Path(path).is_dir() and not any(Path(path, name).exists() for name in (".metadata", "state.json")):
        raise RecforgeError(f"{path}: not a bundle (no manifest.json; `recforge export` makes one) nor a checkpoint")
    with contextlib.ExitStack() as stack:  # the temporary folder goes at once if the export fails
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="recforge-bundle-"))) / "bundle"
        export(path, folder, formats=() if runtime == "eager" else (runtime,), log=lambda *_: None)
        return Bundle(folder, runtime, device=device), stack.pop_all()


def _runtime_flags(parser) -> None:
    from recforge.serving.runtimes import RUNTIMES

    parser.add_argument(
        "--runtime",
        choices=list(RUNTIMES),
        default="eager",
        help="what runs the model: the rebuilt PyTorch model, the torch.export program, ONNX Runtime or "
        "the AOTInductor library",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="where the model runs: auto (a GPU if torch sees one, else the CPU), cpu, cuda or cuda:N (default: auto)",
    )
    parser.add_argument("--threads", type=int, help="CPU threads for the model (default: torch's)")


def cmd_serve(argv: list[str]) -> None:
    try:
        from recforge.serving.server import ServeConfig, serve
    except ImportError as e:
        raise RecforgeError(f"recforge serve needs {e.name} (pip install 'recforge[serve]')") from None

    defaults = ServeConfig()
    parser = Parser(
        prog="recforge serve", allow_abbrev=False, description="Serve a bundle (or a checkpoint) over HTTP."
    )
    parser.add_argument("bundle", metavar="BUNDLE_OR_CHECKPOINT", help="a folder from recforge export, or a checkpoint")
    parser.add_argument("--host", default=defaults.host, help="address to listen on (default: localhost only)")
    parser.add_argument("--port", type=int, default=defaults.port)
    parser.add_argument(
        "--max-batch-rows", type=int, default=defaults.max_batch_rows, help="rows per forward pass at most"
    )
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=defaults.max_wait_ms,
        help="how long the first request of a batch waits for others",
    )
    parser.add_argument(
        "--max-queue", type=int, default=defaults.max_queue, help="requests waiting at most; more get 503"
    )
    parser.add_argument("--max-request-rows", type=int, default=defaults.max_request_rows)
    parser.add_argument("--max-request-bytes", type=int, default=defaults.max_request_bytes)
    parser.add_argument("--api-key-env", metavar="VAR", help="require the API key held by this environment variable")
    parser.add_argument(
        "--drain-timeout-s",
        type=float,
        default=defaults.drain_timeout_s,
        help="on shutdown, how long requests in flight may take",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=defaults.workers,
        help="server processes on the port, each with the model (memory x N) and --threads / N threads: "
        "more requests/s where one process's event loop is the limit",
    )
    _runtime_flags(parser)
    args = parser.parse_args(argv)
    for flag in ("max_batch_rows", "max_queue", "max_request_rows", "max_request_bytes", "workers"):
        if getattr(args, flag) < 1:
            raise RecforgeError(f"--{flag.replace('_', '-')} must be at least 1")
    for flag in ("max_wait_ms", "drain_timeout_s"):
        if not 0 <= getattr(args, flag) < math.inf:
            raise RecforgeError(f"--{flag.replace('_', '-')} must be a number of at least 0, got {getattr(args, flag)}")
    if not 1 <= args.port <= 65535:
        raise RecforgeError(f"--port must be 1..65535, got {args.port}")
    _check_can_listen(args.host, args.port)
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise RecforgeError(f"--api-key-env {args.api_key_env}: that environment variable is not set")
    _set_threads(args.threads)
    bundle, cleanup = _open_bundle(args.bundle, args.runtime, args.device)
    with cleanup:
        serve(
            bundle,
            ServeConfig(
                args.host,
                args.port,
                args.max_batch_rows,
                args.max_wait_ms,
                args.max_queue,
                args.max_request_rows,
                args.max_request_bytes,
                api_key,
                args.drain_timeout_s,
                workers=args.workers,
            ),
        )


def _check_can_listen(host: str, port: int) -> None:
    """Bind --host:--port once before the model loads: an address in use or not this machine's is
    one line here, not uvicorn's log and exit after the load."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise RecforgeError(f"--host {host}: not an address of this machine ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as e:
            raise RecforgeError(f"--host {host} --port {port}: cannot listen there ({e.strerror})") from None


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def cmd_predict(argv: list[str]) -> None:
    from recforge.serving.predict import predict

    parser = Parser(prog="recforge predict", allow_abbrev=False, description="Score a file of raw click-log rows.")
    parser.add_argument("--bundle", required=True, help="a folder from recforge export, or a checkpoint")
    parser.add_argument("--input", required=True, help="CSV with a header, or Parquet: the raw columns the model takes")
    parser.add_argument("--output", required=True, help="Parquet file of one probability per input row")
    parser.add_argument("--batch-rows", type=int, default=65_536, help="rows read and scored at a time")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    _runtime_flags(parser)
    args = parser.parse_args(argv)
    if args.batch_rows < 1:
        raise RecforgeError(f"--batch-rows must be at least 1, got {args.batch_rows}")
    output = Path(args.output).expanduser()
    if output.exists() and not args.overwrite:
        raise RecforgeError(f"--output {output}: exists; replace it with --overwrite, or choose another name")
    _set_threads(args.threads)
    bundle, cleanup = _open_bundle(args.bundle, args.runtime, args.device)
    with cleanup:
        predict(bundle, args.input, output, args.batch_rows)


def cmd_tune(argv: list[str]) -> None:
    from recforge.core.shipped import SPACES

    def extra(parser):
        parser.description = (
            "Search hyperparameters with Optuna (TPE, median pruning) on the validation split; every trial is "
            "a run folder; the best settings become a preset, and its test metrics are scored once."
        )
        parser.add_argument("--config", help="the preset (or YAML file) every trial starts from; flags override it")
        parser.add_argument("--model", help="the model, if not the preset's")
        parser.add_argument(
            "--space",
            required=True,
            help=f"search-space YAML: section.field: {{low, high[, log, step]}} or {{choices}} (shipped: "
            f"{', '.join(names(SPACES))})",
        )
        parser.add_argument("--trials", type=int, required=True, help="trials in all, across restarts and --jobs")
        parser.add_argument("--metric", help="the validation metric to optimize (default: the task's, e.g. HR@10, AUC)")
        parser.add_argument(
            "--output-dir",
            required=True,
            help="the sweep folder: study.db, trials/NNNN (run folders), best.yaml, tune.json",
        )
        parser.add_argument("--jobs", type=int, default=1, help="trials at once, each with the cores / JOBS threads")
        parser.add_argument("--pruner", choices=["median", "none"], default="median", help="stop weak trials early")
        parser.add_argument(
            "--prune-after",
            type=int,
            default=2,
            help="a trial is pruned only from this evaluation on (earlier ones are noisy)",
        )

    cfg, args = _run_parser("recforge tune", argv, extra)
    for flag in ("trials", "jobs", "prune_after"):
        if getattr(args, flag) < 1:
            raise RecforgeError(f"--{flag.replace('_', '-')} must be at least 1")
    from pathlib import Path

    from recforge import tune

    sweep = tune.Sweep(
        cfg,
        tune.read_space(args.space, cfg),
        Path(cfg.output_dir),
        args.trials,
        args.metric,
        args.jobs,
        args.pruner,
        args.prune_after,
    )
    tune.tune(sweep, resume=cfg.train.resume)


def preset_summary(path) -> str:
    """A preset's first line: the comment that says what it reproduces."""
    return path.read_text().splitlines()[0].lstrip("#").strip()


def cmd_report(argv: list[str]) -> None:
    parser = Parser(
        prog="recforge report",
        allow_abbrev=False,
        description="One self-contained HTML page of run folders (plots embedded, a PNG of each beside it).",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders of `recforge train`")
    parser.add_argument("--out", required=True, help="the page, e.g. report.html (PNGs: report-NAME.png)")
    parser.add_argument("--overwrite", action="store_true", help="replace the page and PNGs if they exist")
    args = parser.parse_args(argv)
    from recforge.report import report

    report(args.runs, args.out, args.overwrite)


def cmd_presets(argv: list[str]) -> None:
    parser = Parser(
        prog="recforge presets",
        allow_abbrev=False,
        description="The presets shipped in the package: `recforge train --config NAME`.",
    )
    parser.parse_args(argv)
    shipped = names(PRESETS)
    width = max(map(len, shipped))
    for name in shipped:
        print(f"{name:<{width}}  {preset_summary(PRESETS / f'{name}.yaml')}")


def cmd_tf_config(argv: list[str]) -> None:
    from recforge.runtime.tf_config import torchrun_flags

    parser = Parser(
        prog="recforge tf-config",
        allow_abbrev=False,
        description="Print the torchrun command line for this machine's task of a TensorFlow cluster "
        "($TF_CONFIG); run it followed by `train ...` on every chief and worker machine.",
    )
    parser.add_argument("--tf-config", help="the cluster spec (default: $TF_CONFIG)")
    parser.add_argument("--nproc-per-node", default="auto", help="processes per machine (auto: a GPU each, else 1)")
    parser.add_argument("--rdzv-id", default="recforge", help="the job's id, the same on every machine")
    args = parser.parse_args(argv)
    spec = args.tf_config if args.tf_config is not None else os.environ.get("TF_CONFIG")
    if spec is None:
        raise RecforgeError("TF_CONFIG is not set (or pass --tf-config JSON)")
    print(shlex.join(torchrun_flags(spec, args.nproc_per_node, args.rdzv_id)))


COMMANDS = {
    "train": cmd_train,
    "prepare": cmd_prepare,
    "download": cmd_download,
    "evaluate": cmd_evaluate,
    "recommend": cmd_recommend,
    "export": cmd_export,
    "serve": cmd_serve,
    "predict": cmd_predict,
    "report": cmd_report,
    "tune": cmd_tune,
    "presets": cmd_presets,
    "tf-config": cmd_tf_config,
}


def main(argv: list[str] | None = None) -> None:
    """Run a command. A user's mistake or a named environment fault (a full disk, a read-only
    folder) prints one line and exits 2; anything else is our bug: one line asking for a report,
    the traceback with RECFORGE_DEBUG=1."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--version"]:
        print(f"recforge {version('recforge')}")
        return
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(USAGE)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    debug = os.environ.get("RECFORGE_DEBUG", "") not in ("", "0")
    code = 0
    try:
        COMMANDS[argv[0]](argv[1:])
    except KeyboardInterrupt:
        code = 130
    except Exception as e:
        if debug:
            traceback.print_exc()
        message, code = user_message(e)
        if message is None:
            message = (
                f"internal error ({type(e).__name__}: {one_line(str(e))}); please report it with the command "
                f"line and RECFORGE_DEBUG=1's traceback"
            )
        print(f"recforge: error: {message}", file=sys.stderr)
    finish(code)


def finish(code: int) -> None:
    """Exit with `code`. A process of a torchrun job ends without the interpreter's teardown: after
    the process group is destroyed, objects of torch's gloo backend that live until the C++ static
    destructors can abort the process there ("terminate called without an active exception", no
    Python frame left: 1 of 50 2-process DLRM runs). Every file is written and closed by then;
    only stdout and stderr are flushed."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if code:
        sys.exit(code)
