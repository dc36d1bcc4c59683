"""Render a sweep's report: `reports/<sweep>/index.html` (one self-contained file: figures embedded, no network,
readable from disk), `report.md` with the PNGs beside it, `summary.csv` (one row per cell), `epochs.csv`, and the
figures as PNG and SVG; then the whole folder is logged to the sweep's parent MLflow run under `report/`.
pycls' htmlbook does the same with its figures; the point is a file a reader can mail or attach to a paper.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import html
import io
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import yaml

from reslab import tracking
from reslab.redact import redact, redact_uri
from reslab.report import figures as F
from reslab.report.anchors import anchors_for
from reslab.report.bench import load_benchmark, throughput_for_figure
from reslab.report.collect import SweepData
from reslab.report.coordinate import coordinate_figure, coordinate_points, coordinate_sentence
from reslab.report.leaderboard import Leaderboard, best_lr, is_remedy_sweep, leaderboard
from reslab.report.measure import ERROR, measure_of
from reslab.report.signal import signal_figures
from reslab.report.transfer import Transfer, analyse, has_transfer, transfer_figure, transfer_sentence
from reslab.report.verdict import Verdict, verdict


@dataclass(frozen=True)
class Rendered:
    slug: str
    title: str
    caption: str
    png: bytes
    svg: str


@dataclass(frozen=True)
class ReportPaths:
    directory: Path
    html: Path
    markdown: Path
    summary: Path
    figures: list[str]
    verdict: Verdict
    written: list[Path]


def cell_table(data: SweepData) -> pd.DataFrame:
    """Per network (block or remedy x depth x width x shortcut x norm, x lr where the grid sweeps it): params,
    MACs, final errors (a language model's losses in bits per character) mean ± sd over seeds, epoch time, seeds
    finished of seeds run."""
    cells = data.cells
    if cells.empty:
        return pd.DataFrame()
    m = measure_of(cells)
    named = "variant" if "variant" in cells and (cells["variant"] != cells["block"]).any() else "block"
    keys = [named, "depth", "width", "shortcut", "norm"] + (["lr"] if cells["lr"].nunique() > 1 else [])
    rows = []
    for key, group in cells.groupby(keys, sort=False, dropna=False):
        done = group[group["status"] == "FINISHED"]
        row = dict(zip(keys, key, strict=True))
        first = done.iloc[0] if not done.empty else None
        row["params"] = f"{int(first['params']):,}" if first is not None and pd.notna(first["params"]) else ""
        row["MACs"] = f"{first['macs'] / 1e6:,.2f} M" if first is not None and pd.notna(first["macs"]) else ""
        for metric, split in ((m.train, "train"), (m.held_out, "test")):
            values = m.scale * done[metric].dropna()
            sd = f" ± {values.std():.2f}" if len(values) > 1 else ""
            unit = " %" if m is ERROR else " bits"
            row[f"{split} {m.noun}"] = f"{values.mean():.2f}{sd}{unit}" if len(values) else "-"
        times = done["epoch_time_s"].dropna()
        row["epoch time"] = f"{times.mean():.2f} s" if len(times) else "-"
        row["seeds"] = f"{len(done)}/{len(group)}"
        diverged = int((done["diverged"].fillna("") != "").sum()) if "diverged" in done else 0
        if diverged:
            row["seeds"] += f" ({diverged} diverged)"
        rows.append(row)
    return pd.DataFrame(rows)


def at_best_lr(data: SweepData) -> SweepData:
    """The sweep as its figures and verdict see it: where the grid sweeps the learning rate, each net at its best
    rate only (`reslab.report.leaderboard.best_lr`), so curves of different rates are never averaged together."""
    if not (data.config.get("grid") or {}).get("lr") or data.finished.empty:
        return data
    best = best_lr(data.cells)
    keep = set(best["run_id"])

    def only(df: pd.DataFrame) -> pd.DataFrame:
        return df[df["run_id"].isin(keep)].reset_index(drop=True) if not df.empty else df

    return dataclasses.replace(data, cells=best, epochs=only(data.epochs), telemetry=only(data.telemetry))


def build_figures(
    data: SweepData, bench: pd.DataFrame | None = None, log_scale: bool = False, transfer: list[Transfer] | None = None,
    every_lr: SweepData | None = None, coords: pd.DataFrame | None = None,
) -> list[Rendered]:
    """The report's figures of `data` (each net at its best lr where the grid sweeps it), and with `transfer` (the
    analysis of `every_lr`, the sweep at every lr) the learning-rate transfer figure and the depth coordinate check
    after the depth curve (from `coords`, `coordinate_points` of `every_lr`, when the caller has them already)."""
    finished = data.finished
    dataset = (data.config.get("dataset") or {}).get("name", "")
    m = measure_of(data.cells)
    what = "error" if m is ERROR else "loss (bits per character)"
    out: list[tuple[str, str, str, object]] = []
    if not data.epochs.empty:
        out.append(("curves", f"Training and test {m.noun} vs epoch",
                    f"He et al. 2015 Fig. 6 style: solid = training {what}, dashed = test {what}, one line per depth "
                    "(mean over seeds), one panel per block.", F.curves_figure(data.epochs, log_scale, m)))  # fmt: skip
    out += signal_figures(finished, data.telemetry)  # beside the curves: the cause (step 0) next to the effect
    if not finished.empty:
        anchors = anchors_for(dataset, list(finished["block"].unique()), [int(d) for d in finished["depth"].unique()])
        anchor_note = f" Stars: {', '.join(sorted(anchors['source'].unique()))}." if not anchors.empty else ""
        out.append(("depth", f"Final {m.noun} vs depth",
                    f"The depth-scaling curve: final training and test {what}, mean with 95 % CI over seeds."
                    + anchor_note, F.depth_figure(finished, anchors, m)))  # fmt: skip
    if transfer and every_lr is not None:
        out.append(("transfer", "Does the best learning rate survive depth?",
                    "Final training loss vs log2(learning rate), one line per depth (mean over seeds), one panel per "
                    "parametrization; x: diverged, at the top; dotted: each depth's best rate (a quadratic in "
                    "log2(lr) around the grid's minimum). " + transfer_sentence(transfer),
                    transfer_figure(every_lr.cells, transfer)))  # fmt: skip
        if coords is None:
            coords = coordinate_points(every_lr.telemetry, every_lr.cells)
        out.append(("coordinate_check", "Depth coordinate check",
                    "The residual stream's RMS at the last block vs depth (log-log), one panel per parametrization: "
                    "dashed, at initialisation; solid, after the first probed steps, one line per learning rate "
                    "(thick: the rate tuned at the shallowest depth). Flat lines: features whose size does not "
                    "depend on depth, as depth-muP predicts. " + coordinate_sentence(coords, transfer),
                    coordinate_figure(coords, transfer)))  # fmt: skip
    tele = data.telemetry
    if not tele.empty:
        out.append(("gradient_flow", "Gradient through branch vs shortcut",
                    "The gradient-norm experiment of the \"Residual connection\" explainer: the gradient norm at one "
                    "block's input, through the branch F and through the shortcut, over training (deepest depth, "
                    "first seed).",
                    F.gradient_flow_figure(tele)))  # fmt: skip
        out.append(("gradient_heatmap", "Gradient norm by block and step",
                    "log10 gradient norm at each block's output over training, plain next to residual, one colour "
                    "scale: vanishing gradients show as dark rows at the input side.",
                    F.gradient_heatmap_figure(tele)))  # fmt: skip
        out.append(("weight_gradients", "Per-layer weight-gradient norm",
                    "Weight-gradient norm of every conv/linear layer at the first, middle and last probed step.",
                    F.weight_gradient_figure(tele)))  # fmt: skip
        out.append(("gates", "ReZero gates", "The gates a of y = a·F(x) + x (0 at init) over training.",
                    F.gate_figure(tele)))  # fmt: skip
    if not finished.empty and finished["train_images_per_s"].notna().any():
        out.append(("throughput", "Training throughput vs depth",
                    "Training images/s of the last epoch, as measured inside this sweep (mean over seeds).",
                    F.throughput_figure(finished)))  # fmt: skip
    if bench is not None and not bench.empty:
        out.append(("benchmark", "Benchmarked throughput vs depth",
                    "pytest-benchmark (nox -s bench): forward and forward+backward images/s and achieved TFLOP/s.",
                    F.benchmark_figure(throughput_for_figure(bench))))  # fmt: skip
    rendered = []
    for slug, title, caption, fig in out:
        if fig is None:
            continue
        png, svg = io.BytesIO(), io.StringIO()
        fig.savefig(png, format="png", dpi=100, bbox_inches="tight")
        fig.savefig(svg, format="svg", bbox_inches="tight")
        plt.close(fig)
        rendered.append(Rendered(slug, title, caption, png.getvalue(), svg.getvalue()))
    return rendered


def write_report(
    data: SweepData,
    out_dir: str | Path,
    bench_path: str | Path | None = None,
    log_scale: bool = False,
    log_to_mlflow: bool = True,
) -> ReportPaths:
    """Write the report's files into `out_dir` and upload exactly those files (nothing else the folder holds) to
    the sweep's parent run. Everything that comes from MLflow or the config is masked (`reslab.redact`) first."""
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    bench = load_benchmark(bench_path) if bench_path else None
    view = at_best_lr(data)
    transfer = analyse(data.cells) if has_transfer(data.cells) else []
    coords = coordinate_points(data.telemetry, data.cells) if transfer else pd.DataFrame()
    figures = build_figures(view, bench, log_scale, transfer, data, coords)
    written: list[Path] = []

    def write(path: Path, content: str | bytes) -> None:
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        written.append(path)

    for fig in figures:
        write(out / "figures" / f"{fig.slug}.png", fig.png)
        write(out / "figures" / f"{fig.slug}.svg", fig.svg)
    v = verdict(view.cells, measure_of(view.cells))
    table = cell_table(data)
    write(out / "summary.csv", redact(data.cells.to_csv(index=False)))
    write(out / "epochs.csv", redact(data.epochs.to_csv(index=False)))
    context = _context(data, v, table, bench_path)
    sentences = [transfer_sentence(transfer), coordinate_sentence(coords, transfer)] if transfer else []
    context["transfer"] = " ".join(filter(None, sentences))
    if is_remedy_sweep(data.config) and measure_of(data.cells) is ERROR:  # its claims are the image papers'
        context["leaderboard"] = leaderboard(data.cells, (data.config.get("train") or {}).get("lr"))
    write(out / "index.html", _html(context, figures))
    write(out / "report.md", _markdown(context, figures))
    if log_to_mlflow and data.parent.get("run_id"):
        tracking.store(data.uri).log_files(data.parent["run_id"], out, written, "report")
    return ReportPaths(out, out / "index.html", out / "report.md", out / "summary.csv", [f.slug for f in figures], v,
                       written)  # fmt: skip


def _context(data: SweepData, v: Verdict, table: pd.DataFrame, bench_path: str | Path | None) -> dict:
    cells = data.cells
    unfinished = cells[cells["status"] != "FINISHED"]
    problems = [(r["name"], r["status"].lower(), "" if pd.isna(r.get("failure")) else redact(str(r.get("failure"))))
                for _, r in unfinished.iterrows()]  # fmt: skip
    marked = cells[(cells["status"] == "FINISHED") & (cells.get("diverged", pd.Series(dtype=str)).fillna("") != "")]
    diverged = [(r["name"], str(r["diverged"])) for _, r in marked.iterrows()]
    provenance = {
        "sweep": data.name,
        "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "tracking": redact_uri(data.uri),
        "experiment": data.experiment,
        "parent run": data.parent.get("run_id", ""),
        "sweep status": data.parent.get("status", ""),
        **data.provenance,
    }
    if bench_path:
        provenance["benchmark"] = str(bench_path)
    provenance = {k: redact(str(val)) for k, val in provenance.items()}
    n_done = int((cells["status"] == "FINISHED").sum())
    return {
        "name": data.name,
        "description": data.config.get("description", ""),
        "verdict": v,
        "progress": f"{n_done} of {len(cells)} cells finished",
        "table": table,
        "problems": problems,
        "diverged": diverged,
        "config": redact(yaml.safe_dump(data.config, sort_keys=False)) if data.config else "(no config recorded)",
        "provenance": provenance,
    }


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#1f2328;line-height:1.45}
h1{margin-bottom:.2em}.lead{color:#57606a;margin-top:0}
.verdict{padding:.9em 1.1em;border-radius:6px;border-left:6px solid #999;background:#f6f8fa;font-size:1.08em}
.verdict.yes{border-color:#1a7f37;background:#dafbe1}.verdict.no{border-color:#cf222e;background:#ffebe9}
figure{margin:1.6em 0}figure img{max-width:100%;height:auto;border:1px solid #d0d7de}
figcaption{color:#57606a;font-size:.93em}
table{border-collapse:collapse;font-size:.9em;margin:.6em 0}th,td{border:1px solid #d0d7de;padding:.25em .6em}
th{background:#f6f8fa;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f6f8fa;padding:1em;overflow-x:auto;font-size:.85em}
"""


def _html(ctx: dict, figures: list[Rendered]) -> str:
    e = html.escape
    v: Verdict = ctx["verdict"]
    klass = {True: "yes", False: "no", None: ""}[v.reproduced]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>reslab report: {e(ctx['name'])}</title><style>{CSS}</style></head><body>",
        f"<h1>reslab report: {e(ctx['name'])}</h1>",
        f"<p class='lead'>{e(ctx['description'])} — {e(ctx['progress'])}</p>",
        f"<div class='verdict {klass}' id='verdict'>{e(v.text)}</div>",
    ]
    if ctx.get("transfer"):
        parts.append(f"<div class='verdict' id='lr-transfer'><b>Learning-rate transfer.</b> {e(ctx['transfer'])}</div>")
    board: Leaderboard | None = ctx.get("leaderboard")
    if board is not None and not board.table.empty:
        parts.append(f"<h2 id='leaderboard'>Remedies leaderboard</h2><p>{e(_board_intro(board))}</p>")
        parts.append(_html_table(board.table))
        parts.append(f"<h3>Per remedy at depth {board.deepest}</h3><p>{e(BOARD_NOTE)}</p>"
                     + _html_table(board.remedies))  # fmt: skip
    for fig in figures:
        data = base64.b64encode(fig.png).decode()
        parts.append(f"<figure id='{fig.slug}'><h2>{e(fig.title)}</h2>"
                     f"<img alt='{e(fig.title)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{e(fig.caption)}</figcaption></figure>")  # fmt: skip
    parts.append("<h2>Cells</h2>" + _html_table(ctx["table"]))
    if ctx["diverged"]:
        parts.append("<h2>Diverged</h2><p>Finished runs whose training loss became NaN or infinite: a result of the "
                     "recipe at this depth, not a failure.</p><ul>")
        parts += [f"<li><b>{e(n)}</b>: {e(r)}</li>" for n, r in ctx["diverged"]]
        parts.append("</ul>")
    if ctx["problems"]:
        parts.append("<h2>Not finished</h2><ul>")
        parts += [f"<li><b>{e(n)}</b>: {e(s)}{(' — ' + e(r)) if r else ''}</li>" for n, s, r in ctx["problems"]]
        parts.append("</ul>")
    parts.append(f"<h2>Configuration</h2><pre>{e(ctx['config'])}</pre>")
    prov = "".join(f"<tr><th>{e(k)}</th><td>{e(str(val))}</td></tr>" for k, val in ctx["provenance"].items())
    parts.append(f"<h2>Provenance</h2><table>{prov}</table></body></html>")
    return "\n".join(parts)


BOARD_NOTE = (
    "A remedy trains at a depth when its best final training error there is within 5 points of the residual net "
    "with batch norm. The papers report CIFAR or ImageNet with their own recipes, so they are compared "
    "qualitatively; a disagreement is stated only when two or more seeds agree on it."
)


def _board_intro(board: Leaderboard) -> str:
    shared = f" at the shared recipe's lr {board.recipe_lr:g} and" if board.recipe_lr is not None else ""
    return (f"Final training and test error per remedy and depth{shared} at each remedy's best learning rate of the "
            "sweep (lowest mean final training error; which one is shown). Mean ± sd over seeds.")  # fmt: skip


def _html_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "<p>No cells.</p>"
    e = html.escape
    head = "".join(f"<th>{e(str(c))}</th>" for c in df.columns)
    rows = []
    for _, row in df.iterrows():
        cells = "".join(
            f"<td class='{'num' if isinstance(v, (int, float)) or str(v)[:1].isdigit() else ''}'>{e(str(v))}</td>"
            for v in row
        )
        rows.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


# What changes the meaning of inline Markdown text: emphasis, code, links and images ([...]), table pipes,
# strikethrough, the escape itself. Parentheses, '+' or '#' only matter at the start of a line or after ']'.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def md_escape(value: object) -> str:
    """Text from run names, tags and the config as literal Markdown, as `html.escape` does for the HTML: emphasis,
    links, table pipes and raw HTML (which Markdown renderers pass through) lose their meaning; a line break
    becomes a space and a leading block marker is escaped, so a value cannot start a heading, a list or a quote,
    or end a table row."""
    text = " ".join(str(value).splitlines())
    text = _MD_SPECIAL.sub(r"\\\1", text)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = re.sub(r"^(\d+)([.)])(?=\s|$)", r"\1\\\2", text)  # "1. x" would start an ordered list
    return "\\" + text if text[:1] in ("-", "+", "=", "#") else text


def _fence(text: str) -> str:
    """A code fence longer than any run of backticks in `text`, so the text cannot close it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _markdown(ctx: dict, figures: list[Rendered]) -> str:
    e = md_escape
    v: Verdict = ctx["verdict"]
    lines = [f"# reslab report: {e(ctx['name'])}", "", f"{e(ctx['description'])} — {e(ctx['progress'])}", "",
             f"> {e(v.text)}", ""]  # fmt: skip
    if ctx.get("transfer"):
        lines += [f"> **Learning-rate transfer.** {e(ctx['transfer'])}", ""]
    board: Leaderboard | None = ctx.get("leaderboard")
    if board is not None and not board.table.empty:
        lines += ["## Remedies leaderboard", "", e(_board_intro(board)), "", _md_table(board.table), "",
                  f"### Per remedy at depth {board.deepest}", "", e(BOARD_NOTE), "", _md_table(board.remedies), ""]
    for fig in figures:
        lines += [f"## {e(fig.title)}", "", f"![{e(fig.title)}](figures/{fig.slug}.png)", "", e(fig.caption), ""]
    lines += ["## Cells", "", _md_table(ctx["table"]), ""]
    if ctx["diverged"]:
        lines += ["## Diverged", "", "Finished runs whose training loss became NaN or infinite: a result of the recipe "
                  "at this depth, not a failure.", ""] + [f"- **{e(n)}**: {e(r)}" for n, r in ctx["diverged"]]
        lines.append("")
    if ctx["problems"]:
        lines += ["## Not finished", ""]
        lines += [f"- **{e(n)}**: {e(s)}{(' — ' + e(r)) if r else ''}" for n, s, r in ctx["problems"]]
        lines.append("")
    fence = _fence(ctx["config"])
    lines += ["## Configuration", "", f"{fence}yaml", ctx["config"].rstrip(), fence, "", "## Provenance", ""]
    lines += ["| | |", "|---|---|"] + [f"| {e(k)} | {e(val)} |" for k, val in ctx["provenance"].items()]
    return "\n".join(lines) + "\n"


def _md_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "No cells."
    head = "| " + " | ".join(md_escape(c) for c in df.columns) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(md_escape(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body])
