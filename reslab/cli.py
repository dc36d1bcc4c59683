"""The `reslab` console script: summary, train, probe, sweep, status, report, ui.

Each command imports what it needs when it runs, so `reslab summary` does not pay for Lightning or MLflow. Bad
input ends in one line on stderr that says what is wrong and what is valid, and exit code 2, before any work.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from reslab.cli_options import add_net_arguments, add_train_arguments, net_specs, positive_int, train_values

if TYPE_CHECKING:
    from reslab.train.config import DataConfig

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input from the command line: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (argparse's default prints the whole usage first)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parse_shape(text: str) -> tuple[int, ...]:
    """'3x32x32' -> (3, 32, 32); '1x40' -> (1, 40)."""
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(
            f"malformed input shape {text!r}: give positive sizes joined by 'x', e.g. 3x32x32 or 1x40"
        )
    return shape


def cmd_summary(args: argparse.Namespace) -> int:
    from reslab.models import describe

    (spec,) = net_specs(args)
    summary = describe(spec, args.input, args.classes)
    if args.json:
        print(json.dumps(summary.to_dict()))
    else:
        print(summary.table(f"{spec.family} {spec.name}"))
    return 0


def _format_epoch(epoch: int, total: int | None, m: dict[str, float]) -> str:
    parts = [f"epoch {epoch:>3}" + (f"/{total}" if total else "")]
    parts += [f"{k} {100 * m[k]:6.2f}%" for k in ("train_error", "val_error", "test_error") if k in m]
    parts.append(f"loss {m['train_loss']:.4f}")
    parts += [f"{k} {m[k]:.3f}" for k in ("train_bpc", "val_bpc", "test_bpc") if k in m]
    parts.append(f"lr {m['lr']:.4f}")
    parts.append(f"{m['epoch_time_s']:.1f} s ({m['train_images_per_s']:,.0f} img/s)")
    return "  ".join(parts)


def _data_config(args: argparse.Namespace, family: str) -> DataConfig:
    """The dataset of `reslab train` / `reslab probe`: `--dataset`, else the family's own (the transformer's text);
    UsageError when the family cannot read it."""
    from reslab.data.catalog import pairing_problem
    from reslab.models.catalog import FAMILY_INFO
    from reslab.train.config import DataConfig

    name = args.dataset or FAMILY_INFO[family].default_dataset
    problem = pairing_problem(family, name)
    if problem:
        raise UsageError(problem)
    return DataConfig(name=name, options=dict(args.data_option or []), data_dir=args.data_dir)


def cmd_train(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from reslab.train.config import TrackingConfig, TrainConfig

    (spec,) = net_specs(args)
    try:
        train = TrainConfig(**train_values(args))
        data = _data_config(args, spec.family)
        track = TrackingConfig(uri=args.tracking_uri, experiment=args.experiment)
    except ValidationError as exc:
        raise UsageError("; ".join(_pydantic_messages(exc))) from None
    from reslab.limits import memory_problem, training_device
    from reslab.train.config import optimizer_problem

    problem = optimizer_problem(spec.parametrization, train.optimizer) or memory_problem(
        spec.name, spec, data, train, training_device(train.device)
    )
    if problem:
        raise UsageError(problem)
    from reslab.tracking import TrackingError
    from reslab.train.run import SetupError, is_rank_zero, run_one

    stream = sys.stderr if args.json else sys.stdout
    total = train.epochs if train.max_steps is None else None

    def progress(epoch: int, metrics: dict[str, float]) -> None:
        if stream.isatty() or not args.json:
            print(_format_epoch(epoch, total, metrics), file=stream, flush=True)

    try:
        result = run_one(spec, data, train, None if args.no_tracking else track, on_epoch=progress)
    except (SetupError, TrackingError) as exc:
        raise UsageError(str(exc)) from None
    if not is_rank_zero():  # a DDP helper process: rank 0 reports
        return 0
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        m = result.metrics
        where = f"MLflow run {result.run_id}" if result.run_id else "not tracked"
        bits = "".join(f"  {k} {m[k]:.3f}" for k in ("train_bpc", "test_bpc") if k in m)
        print(
            f"{spec.name}-s{train.seed}: train_error {100 * m['train_error']:.2f}%  test_error "
            f"{100 * m['test_error']:.2f}%{bits}  ({result.params:,} params, {result.wall_s:.1f} s; {where})"
        )
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from reslab.train.config import TrainConfig

    specs = net_specs(args, lists=True)
    try:
        data = _data_config(args, specs[0].family)
        recipe = TrainConfig(batch_size=args.batch, seed=args.seed, device=args.device)
    except ValidationError as exc:
        raise UsageError("; ".join(_pydantic_messages(exc))) from None
    from reslab.limits import memory_problem, training_device

    for spec in specs:  # a probe holds what a training step holds, less the optimizer's state
        problem = memory_problem(spec.name, spec, data, recipe, training_device(recipe.device), verb="probe")
        if problem:
            raise UsageError(problem)
    import time

    from reslab.devices import resolve_device
    from reslab.probe.measure import probe_spec
    from reslab.probe.result import SCHEMA, format_table, table_row

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(recipe.device)
        from reslab.data.registry import load_dataset

        splits = load_dataset(data.name, data.options, data.data_dir)
    except (ValueError, RuntimeError) as exc:
        raise UsageError(str(exc)) from None
    if args.batch > len(splits.train):
        raise UsageError(f"--batch {args.batch} is larger than the {len(splits.train)} training examples of "
                         f"{data.name}")  # fmt: skip
    progress = sys.stderr if args.json else sys.stdout
    results, rows = [], []
    for spec in specs:
        t0 = time.perf_counter()
        probe = probe_spec(spec, splits, args.batch, args.seed, device)
        seconds = time.perf_counter() - t0
        results.append((spec, probe, seconds))
        rows.append(table_row(spec.name, probe, seconds))
        if not args.json or progress.isatty():
            print(f"probed {spec.name} ({len(probe.blocks)} blocks) in {seconds:.1f} s" + "".join(
                  f"; {a.describe()}" for a in probe.anomalies), file=progress, flush=True)  # fmt: skip
    document = {"schema": SCHEMA, "dataset": data.name, "options": data.options, "batch": args.batch,
                "seed": args.seed, "device": device, "probes": [p.to_json(**_probe_labels(s), wall_s=round(t, 3))
                                                                for s, p, t in results]}  # fmt: skip
    if args.out:
        for path in _write_probe_out(args.out, document, results, args.seed):
            print(f"wrote {path}", file=progress)
    if args.json:
        print(json.dumps(document))
        return 0
    print(format_table(rows))
    if args.per_block:
        from reslab.probe.result import block_table

        for spec, probe, _ in results:
            print(f"\n{spec.name}\n{block_table(probe)}")
    return 0


def _write_probe_out(out: str, document: dict, results: list, seed: int) -> list:
    """`reslab probe --out`: the figures of `reslab.report.signal` (PNG) and the JSON document, into `out`."""
    from pathlib import Path

    import matplotlib.pyplot as plt

    from reslab.report.signal import (
        cmap_figure,
        probe_frame,
        shortcut_share_figure,
        signal_gradient_figure,
        weight_gradient_at_init_figure,
    )

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    frame = probe_frame([(dict(_probe_labels(spec), seed=seed), probe) for spec, probe, _ in results])
    written = []
    figures = (("signal_gradient", signal_gradient_figure), ("signal_shortcut", shortcut_share_figure),
               ("signal_cmap", cmap_figure), ("signal_weight_grad", weight_gradient_at_init_figure))  # fmt: skip
    for slug, draw in figures:
        fig = draw(frame)
        if fig is not None:
            fig.savefig(folder / f"{slug}.png", dpi=100, bbox_inches="tight")
            plt.close(fig)
            written.append(folder / f"{slug}.png")
    (folder / "probe.json").write_text(json.dumps(document, indent=1) + "\n")
    return [*written, folder / "probe.json"]


def _probe_labels(spec) -> dict:
    from reslab.models.spec import spec_values, variant

    return {"name": spec.name, **spec_values(spec), "variant": variant(spec)}


def _pydantic_messages(exc) -> list[str]:
    """One 'path: message' per problem of a pydantic ValidationError."""
    out = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        out.append(f"{path}: {msg}" if path else msg)
    return out


def _key_value(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    import yaml

    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def cmd_sweep(args: argparse.Namespace) -> int:
    from reslab.sweep.checks import refuse_impossible
    from reslab.sweep.config import ConfigError, load_config

    assign = {key: value for key, value in (("sweep.workers", args.workers), ("sweep.storage", args.storage),
                                            ("tracking.uri", args.tracking_uri), ("sweep.launcher", args.launcher),
                                            ("sweep.slurm.agents", args.agents)) if value is not None}  # fmt: skip
    try:
        config = load_config(args.config, list(args.set or []), assign)
        source, env_hint = _source(args)
        refuse_impossible(config, source)  # before the runner's imports (Optuna, MLflow, torch): one line, at once
        _check_report_folder(args, config.name, source)
        from reslab.sweep.runner import run_sweep

        if args.detach and config.sweep.launcher != "slurm":
            raise ConfigError(source, ["--detach returns once SLURM has the agents: use it with --launcher slurm"])
        if config.sweep.launcher == "slurm" and not args.dry_run:
            from reslab.sweep.slurm import submit_problem

            problem = submit_problem()
            if problem:
                raise ConfigError(source, [problem])
        code = run_sweep(config, dry_run=args.dry_run, source=source, env_hint=env_hint, detach=args.detach)
        if args.dry_run and code == 0:  # the sweep's projected wall time, if a benchmark measured its nets
            from reslab.report.projection import projection_hint

            hint = projection_hint(config, source)
            if hint:
                print(hint)
        if args.report and code in (0, 1) and not args.dry_run and not args.detach:  # failed cells are listed too
            report_args = argparse.Namespace(sweep=config.name, tracking_uri=config.tracking.uri or args.tracking_uri,
                                             out=None, bench=None, log_scale=False)  # fmt: skip
            return cmd_report(report_args) or code
        return code
    except ConfigError as exc:
        print(f"reslab sweep: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _check_report_folder(args: argparse.Namespace, name: str, source: str) -> None:
    """`reslab sweep --report` writes reports/<name>/ at the end: a folder it cannot write is said before the sweep."""
    from reslab.paths import folder_problem
    from reslab.sweep.config import ConfigError

    problem = folder_problem(f"reports/{name}") if args.report else None
    if problem:
        raise ConfigError(source, [f"--report writes reports/{name}: {problem}"])


def _source(args: argparse.Namespace) -> tuple[str, str]:
    """The arguments to resume with (the same queue, store and workers, or a resume would start another sweep),
    and a note for the stores whose URI holds a password: that URI is left out of the command, which then finds it
    in the environment variable the note names, so the password is never printed or stored."""
    import shlex

    from reslab.redact import STORAGE_ENV, TRACKING_ENV, password_of, redact_uri

    envs = {"sweep.storage": STORAGE_ENV, "tracking.uri": TRACKING_ENV}
    given = [("--set", f"{k.strip()}={v}", envs.get(k.strip())) for k, v in (a.split("=", 1) for a in args.set or [])]
    given += [("--workers", args.workers, None), ("--storage", args.storage, STORAGE_ENV),
              ("--tracking-uri", args.tracking_uri, TRACKING_ENV),
              ("--launcher", getattr(args, "launcher", None), None),
              ("--agents", getattr(args, "agents", None), None)]  # fmt: skip
    parts, hints = [args.config], []
    for flag, value, env in given:
        if value is None:
            continue
        value = str(value)
        if env is not None and password_of(value):
            hints.append(f"{env}={redact_uri(value.split('=', 1)[1] if flag == '--set' else value)}")
        else:
            parts.append(f"{flag} {shlex.quote(value)}")
    env_hint = ""
    if hints:
        env_hint = (f"with {' and '.join(hints)} in the environment (passwords are not shown; for PostgreSQL, "
                    f"PGPASSWORD or ~/.pgpass can hold the password instead)")  # fmt: skip
    return " ".join(parts), env_hint


def cmd_status(args: argparse.Namespace) -> int:
    import os

    from reslab.redact import STORAGE_ENV
    from reslab.sweep.queue import QueueError
    from reslab.sweep.status import sweep_status
    from reslab.tracking import TrackingError, resolve_uri

    storage = args.storage or os.environ.get(STORAGE_ENV) or f"{args.runs_dir}/{args.sweep}/optuna.journal"

    try:
        found = sweep_status(args.sweep, storage, resolve_uri(args.tracking_uri))
    except (QueueError, TrackingError) as exc:
        raise UsageError(str(exc)) from None
    print(json.dumps(found.to_json(), indent=1) if args.json else "\n".join(found.lines()))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import re
    import time

    from reslab.sweep.config import NAME_PATTERN

    if not re.fullmatch(NAME_PATTERN, args.sweep):
        raise UsageError(
            f"{args.sweep!r} is not a sweep name: sweep names are letters, digits, '.', '_' or '-' (the `name` of "
            f"the sweep's config)"
        )
    from reslab.paths import folder_problem

    out = args.out or f"reports/{args.sweep}"
    problem = folder_problem(out)
    if problem:
        raise UsageError(f"report folder {out}: {problem}; choose another with --out")
    from reslab.report import ReportError, collect
    from reslab.report.bench import latest_benchmark
    from reslab.report.render import write_report
    from reslab.tracking import TrackingError, check_server, resolve_uri

    bench = args.bench or latest_benchmark()
    problem = None if args.bench or bench is None else _bench_problem(str(bench))
    if problem:  # the newest of reports/bench/, found rather than given: said before the slow part
        raise UsageError(f"the newest benchmark JSON {bench}: {problem}; or give one with --bench")
    t0 = time.perf_counter()
    uri = resolve_uri(args.tracking_uri)
    try:
        check_server(uri, timeout=10.0)  # a dead server is one line, not minutes of MLflow's HTTP retries
        data = collect(uri, args.sweep)
    except (ReportError, TrackingError) as exc:
        raise UsageError(str(exc)) from None
    paths = write_report(data, out, bench, log_scale=args.log_scale)
    print(paths.verdict.text)
    print(f"report: {paths.html}  ({len(paths.figures)} figures, {time.perf_counter() - t0:.1f} s)")
    return 0


def cmd_bench_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from reslab.paths import folder_problem

    path = Path(args.json)
    problem = _bench_problem(args.json)
    if problem:
        raise UsageError(f"benchmark JSON {path}: {problem}")
    problem = None if args.out else folder_problem(path.parent)  # --out is judged with every command's options
    if problem:
        raise UsageError(f"the figures go beside {path}, but {problem}; choose a folder with --out")
    from reslab.report.bench import load_depth_scaling, load_ratios, render_benchmark, summary

    written = render_benchmark(path, args.out)
    table = summary(path)
    if not table.empty:
        print(table.to_string())
    for row in load_ratios(path).itertuples():
        target = f" (target {'>=' if row.at_least else '<='} {row.target:g})" if row.target else ""
        print(f"{row.benchmark}: ratio {row.ratio:.3f}{target}" + (f"  {row.what}" if row.what else ""))
    scaling = load_depth_scaling(path)
    if scaling is not None:
        t, m = scaling["time_fit"], scaling["memory_fit"]
        print(f"depth scaling: step time +{1e3 * t['slope']:.2f} ms per layer (R² {t['r2']:.3f}); "
              f"{scaling['memory_kind']} +{m['slope']:.2f} MiB per layer (R² {m['r2']:.3f})")  # fmt: skip
    for target in written:
        print(f"wrote {target}")
    for config_path in args.project or []:
        print(_projection(path, config_path, args.set or []))
    return 0


def _projection(bench: object, config_path: str, overrides: list[str]) -> str:
    """`reslab bench-report --project CONFIG`: the sweep's wall time on the benchmark's machine."""
    from reslab.report.projection import ProjectionError, load_train_steps, project
    from reslab.sweep.config import ConfigError, load_config

    try:
        config = load_config(config_path, overrides)
        return project(config, load_train_steps(bench), name=config_path).describe()
    except (ConfigError, ProjectionError) as exc:
        raise UsageError(str(exc)) from None


def ui_environment(uri: str) -> dict[str, str]:
    """The environment of `mlflow ui`: the store (through the environment, not the command line, which `ps` shows
    to everyone), and MLflow's job execution off unless the user set it. The UI starts a dozen job consumers for
    GenAI evaluation and trace roll-ups, which reslab never uses; idle, they took about 2 CPU-seconds per 30 s here,
    stolen from the sweep the UI usually watches on the same machine."""
    import os

    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, MLFLOW_BACKEND_STORE_URI=uri)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return env


def cmd_ui(args: argparse.Namespace) -> int:
    import subprocess

    from reslab.redact import redact_uri
    from reslab.tracking import resolve_uri

    uri = resolve_uri(args.tracking_uri)
    if uri.startswith(("http://", "https://")):
        print(f"{uri} is already a tracking server: open it in a browser")
        return 0
    cmd = [sys.executable, "-m", "mlflow", "ui", "--host", args.host, "--port", str(args.port)]
    print(f"MLflow UI for {redact_uri(uri)} at http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    try:
        return subprocess.call(cmd, env=ui_environment(uri))
    except KeyboardInterrupt:
        return 0


def build_parser() -> argparse.ArgumentParser:
    # The reference lives in docs/ beside README.md; each epilog names the pages a command's user needs next.
    docs = """documentation (in the source tree):
  README.md             what reslab measures, the results, every command
  docs/cli.md           every option of summary and train; what bad input does
  docs/networks.md      families, blocks, shortcuts, depth rules
  docs/remedies.md      --remedy: Fixup, SkipInit, scaled branches, TAT
  docs/signal.md        reslab probe: the signal at initialisation
  docs/sweeps.md        sweep configs, the queue, diverged and failed cells
  docs/reliability.md   many machines, credentials, the chaos drill, the runbook
  docs/reports.md       reports, gradient telemetry, the tables from a notebook
  docs/performance.md   benchmarks, training speed, packing
  docs/architecture.md  what each module holds"""
    raw = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog="reslab", description="Depth-scaling benchmarks for plain and residual networks.",
                     epilog=docs, formatter_class=raw)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("summary", help="Keras-style table of the layers, parameters and MACs of one network")
    add_net_arguments(p)
    p.add_argument("--input", type=parse_shape,
                   help="input shape without batch, e.g. 3x32x32 or 1x40; the transformer's token window, e.g. 64")
    p.add_argument("--classes", type=positive_int,
                   help="outputs of the head (10; 1 for the Keras example's convnet; the transformer's vocabulary, 96)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(func=cmd_summary)

    from reslab.data.catalog import DATASET_INFO

    p = sub.add_parser("train", help="train one network and record it as one MLflow run", formatter_class=raw,
                       epilog="see docs/cli.md (options), docs/remedies.md (--remedy) and\n"
                       "docs/performance.md#training-speed (--compile, --channels-last)")  # fmt: skip
    add_net_arguments(p)
    p.add_argument("--dataset", choices=list(DATASET_INFO),
                   help="dataset (default: the family's, mnist1d; text for the transformer)")
    p.add_argument("--data-option", action="append", type=_key_value, metavar="KEY=VALUE",
                   help="dataset option, e.g. val_size=5000 for cifar10 (repeatable)")  # fmt: skip
    p.add_argument("--data-dir", help="dataset cache (default $RESLAB_DATA_DIR or ~/.cache/reslab)")
    add_train_arguments(p)
    p.add_argument("--tracking-uri", help="MLflow store (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--experiment", default="reslab", help="MLflow experiment (default reslab)")
    p.add_argument("--no-tracking", action="store_true", help="train without recording an MLflow run")
    p.add_argument("--json", action="store_true", help="print one JSON object with the final metrics")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("probe", help="signal propagation at initialisation over depths: activations, gradients, "
                       "the shortcut's share, the C-map, the input-output Jacobian; no training",
                       epilog="see docs/signal.md: what each number is, the JSON schema, measured values",
                       formatter_class=raw)  # fmt: skip
    add_net_arguments(p, lists=True)
    p.add_argument("--dataset", choices=list(DATASET_INFO),
                   help="dataset (default: the family's, mnist1d; text for the transformer)")
    p.add_argument("--data-option", action="append", type=_key_value, metavar="KEY=VALUE",
                   help="dataset option (repeatable)")  # fmt: skip
    p.add_argument("--data-dir", help="dataset cache (default $RESLAB_DATA_DIR or ~/.cache/reslab)")
    p.add_argument("--batch", type=positive_int, default=128, help="examples in the probed batch (default 128)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and of the batch (default 0)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto", help="default auto")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print one JSON object (schema reslab.probe/1)")
    p.add_argument("--per-block", action="store_true", help="print every block's values after the table")
    p.add_argument("--out", help="folder for the figures (gradient, shortcut share, C-map) and probe.json")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("sweep", help="run a sweep config: every cell once, resumable, N workers", formatter_class=raw,
                       epilog="see docs/sweeps.md (configs, resuming, failed cells) and docs/reliability.md\n"
                       "(many machines, credentials, the runbook)")  # fmt: skip
    p.add_argument("config", help="a sweep config, e.g. configs/default.yaml")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=5 --set grid.depths=[8,20]")  # fmt: skip
    p.add_argument("--workers", help="worker processes: a number or auto (one per GPU / CPU cores)")
    p.add_argument("--storage", help="Optuna storage: a journal file or postgresql://... (default $RESLAB_STORAGE, "
                   "else runs/<name>/optuna.journal)")  # fmt: skip
    p.add_argument("--tracking-uri", help="MLflow store (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--launcher", choices=("local", "slurm"),
                   help="who starts the agents: this machine (local, the default) or SLURM, as an array job (see "
                   "docs/cluster.md)")  # fmt: skip
    p.add_argument("--agents", type=positive_int, help="--launcher slurm: array tasks, one agent each (default "
                   "sweep.slurm.agents, 2)")  # fmt: skip
    p.add_argument("--detach", action="store_true", help="--launcher slurm: return once the job is submitted (follow "
                   "it with reslab status NAME)")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="list the runs with params, MACs and status; run nothing "
                   "(--launcher slurm: print the job's script, contact nothing)")  # fmt: skip
    p.add_argument("--report", action="store_true", help="render the sweep's report when it is done")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("status", help="where a sweep stands, from its queue and MLflow, on any machine that reaches "
                       "them: cells done, running (where), waiting, failed (why)")  # fmt: skip
    p.add_argument("sweep", help="the sweep's name (its config's `name`)")
    p.add_argument("--storage", help="the sweep's queue (default $RESLAB_STORAGE, else runs/<name>/optuna.journal)")
    p.add_argument("--tracking-uri", help="MLflow store (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--runs-dir", default="runs", help="where a journal queue is looked for (default runs)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("report", help="render a sweep's report (HTML, Markdown, CSV, figures) from MLflow")
    p.add_argument("sweep", help="the sweep's name (its config's `name`)")
    p.add_argument("--tracking-uri", help="MLflow store (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--out", help="output folder (default reports/<sweep>)")
    p.add_argument("--bench", help="a pytest-benchmark JSON to plot (default: the newest in reports/bench/)")
    p.add_argument("--log-scale", action="store_true", help="error curves on a log scale")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("bench-report", help="figures and a table from a pytest-benchmark JSON (nox -s bench)")
    p.add_argument("json", help="the JSON pytest-benchmark wrote, e.g. reports/bench/20261122-101500.json")
    p.add_argument("--out", help="folder for the figures (default: beside the JSON)")
    p.add_argument("--project", action="append", metavar="CONFIG",
                   help="project the wall time of this sweep config (all cells and seeds) from the JSON's train_step "
                   "benchmarks, e.g. configs/cifar10-he2015.yaml; repeatable")  # fmt: skip
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key of the projected config")
    p.set_defaults(func=cmd_bench_report)

    p = sub.add_parser("ui", help="open the MLflow UI on the tracking store")
    p.add_argument("--tracking-uri", help="MLflow store (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=cmd_ui)
    return parser


def _check_path_options(args: argparse.Namespace) -> None:
    """The options that name a file or folder, the same in every command that has them, judged before the command
    does anything (see `reslab.paths`); a command checks the paths it derives itself (a report's default folder)."""
    import os

    from reslab import paths

    checks = {
        "--out": (paths.folder_problem, "choose another --out"),
        "--data-dir": (lambda v: paths.folder_problem(os.path.expanduser(v), write=False), "choose another --data-dir"),
        "--tracking-uri": (lambda v: paths.store_problem(v, write=args.command != "report"), "give another one"),
        "--bench": (_bench_problem, ""),
    }  # fmt: skip
    for flag, (check, fix) in checks.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        problem = check(value) if isinstance(value, str) else None
        if problem:
            raise UsageError(f"{flag} {value}: {problem}" + (f"; {fix}" if fix else ""))


def _bench_problem(path: str) -> str | None:
    """Why `path` is not a pytest-benchmark JSON that can be read, or None."""
    from reslab.paths import PathError, read_text

    try:
        data = json.loads(read_text(path))
    except PathError as exc:
        return f"{exc}; `nox -s bench` writes one into reports/bench/"
    except json.JSONDecodeError as exc:
        return f"not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); give the JSON `nox -s bench` wrote"
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        return "not a pytest-benchmark JSON (no `benchmarks` list); give the JSON `nox -s bench` wrote"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    import os

    from reslab.models.rules import SpecError
    from reslab.redact import STORAGE_ENV, TRACKING_ENV, guard_streams

    # Secrets are masked in everything this process prints, argument errors included.
    guard_streams(os.environ.get(STORAGE_ENV), os.environ.get(TRACKING_ENV), *(argv if argv is not None else sys.argv))
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _check_path_options(args)
        return args.func(args)
    except (SpecError, UsageError) as exc:
        print(f"reslab {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
