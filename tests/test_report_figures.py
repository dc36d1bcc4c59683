"""Report pieces on small hand-built data: each figure function, the verdict, the anchors, collect on a partial
sweep (no training)."""

from __future__ import annotations

import itertools

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from matplotlib.image import AxesImage

from reslab.report import figures as F
from reslab.report.anchors import anchors_for
from reslab.report.verdict import verdict
from tests.helpers import sweep_in_store


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def epochs_frame() -> pd.DataFrame:
    rows = []
    for block, depth, seed, epoch in itertools.product(["plain", "residual"], [8, 20], [0, 1], [1, 2, 3]):
        base = 0.5 / epoch + (0.3 if block == "plain" and depth == 20 else 0)
        rows.append({"block": block, "depth": depth, "seed": seed, "epoch": epoch, "width": 8,
                     "train_error": base, "test_error": base + 0.05})  # fmt: skip
    return pd.DataFrame(rows)


def cells_frame(plain_deep: float = 0.6, residual_deep: float = 0.001, widths=(8,)) -> pd.DataFrame:
    values = {("plain", 8): 0.01, ("plain", 56): plain_deep, ("residual", 8): 0.004, ("residual", 56): residual_deep}
    rows = []
    for (block, depth), err in values.items():
        for width, seed in itertools.product(widths, [0, 1]):
            rows.append({"block": block, "depth": depth, "width": width, "seed": seed, "status": "FINISHED",
                         "train_error": err + 0.002 * seed, "test_error": err + 0.03,
                         "train_images_per_s": 5000 / depth})  # fmt: skip
    return pd.DataFrame(rows)


def telemetry_frame(gates: bool = False) -> pd.DataFrame:
    rows = []
    blocks = ["plain", "residual"] + (["rezero"] if gates else [])
    for block, step, index in itertools.product(blocks, [0, 10, 20, 30], range(3)):
        common = {"block": block, "depth": 20, "seed": 0, "step": step, "index": index, "layer": "", "width": 8}
        rows.append({**common, "kind": "grad_branch", "value": 0.1 * (index + 1) / (step + 1)})
        rows.append({**common, "kind": "grad_out", "value": 0.2 * (index + 1)})
        if block != "plain":
            rows.append({**common, "kind": "grad_shortcut", "value": 0.5})
        if block == "rezero":
            rows.append({**common, "kind": "gate", "value": 0.01 * step * (index + 1)})
        rows.append({**common, "kind": "grad_weight", "value": 1.0 / (index + 1), "layer": f"l{index}"})
    return pd.DataFrame(rows)


def _data_axes(fig):
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def test_curves_figure_has_a_panel_per_block_and_solid_train_dashed_test() -> None:
    fig = F.curves_figure(epochs_frame())
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["plain", "residual"]
    assert axes[0].get_xlabel() == "epoch" and axes[0].get_ylabel() == "error (%)"
    for ax in axes:
        lines = ax.get_lines()
        assert len(lines) == 4  # 2 depths x (train, test)
        styles = {line.get_label().rsplit(" ", 1)[1]: line.get_linestyle() for line in lines}
        assert styles["training"] == "-" and styles["test"] == "--"
    plain_20_train = next(line for line in axes[0].get_lines() if line.get_label() == "plain-20 training")
    assert list(plain_20_train.get_ydata()) == pytest.approx([80.0, 55.0, 46.666666])  # % means over seeds
    assert F.curves_figure(epochs_frame(), log_scale=True).axes[0].get_yscale() == "log"


def test_depth_figure_and_paper_anchors() -> None:
    fig = F.depth_figure(cells_frame())
    assert [ax.get_title() for ax in fig.axes] == ["training error", "test error"]
    assert fig.axes[0].get_xlabel() == "depth (weighted layers)"
    legend = [t.get_text() for t in fig.legends[0].get_texts()]  # beside the panels, not over them
    assert legend == ["plain", "residual"]
    anchors = anchors_for("cifar10", ["residual"])
    with_anchors = F.depth_figure(cells_frame(), anchors)
    stars = [c for c in with_anchors.axes[1].collections if c.get_label() == "He et al. 2015, Table 6"]
    assert len(stars) == 1 and len(stars[0].get_offsets()) == 6
    two_widths = F.depth_figure(cells_frame(widths=(4, 8)))
    assert len(two_widths.axes) == 4 and two_widths.axes[2].get_title() == "training error, width 8"


def test_gradient_flow_figure() -> None:
    fig = F.gradient_flow_figure(telemetry_frame(), block_index=1)
    assert [ax.get_title() for ax in fig.axes] == ["plain-20, block 1", "residual-20, block 1"]
    assert len(fig.axes[0].get_lines()) == 1 and len(fig.axes[1].get_lines()) == 2  # plain has no shortcut
    assert fig.axes[0].get_yscale() == "log"
    assert F.gradient_flow_figure(telemetry_frame().iloc[0:0]) is None


def test_gradient_heatmap_figure() -> None:
    fig = F.gradient_heatmap_figure(telemetry_frame())
    axes = _data_axes(fig)
    assert [ax.get_title() for ax in axes] == ["plain-20", "residual-20"]
    images = [im for ax in axes for im in ax.get_images() if isinstance(im, AxesImage)]
    assert len(images) == 2 and images[0].get_array().shape == (3, 4)  # blocks x probed steps


def test_weight_gradient_and_gate_and_throughput_figures() -> None:
    fig = F.weight_gradient_figure(telemetry_frame())
    assert all(len(ax.get_lines()) == 3 for ax in fig.axes)  # first, middle, last probed step
    assert F.gate_figure(telemetry_frame()) is None
    gates = F.gate_figure(telemetry_frame(gates=True))
    assert len(gates.axes[0].get_lines()) == 3 + 1  # a line per gate + the zero line
    throughput = F.throughput_figure(cells_frame())
    assert throughput.axes[0].get_ylabel() == "training images/s (last epoch)"


def test_benchmark_figure() -> None:
    bench = pd.DataFrame([
        {"block": b, "depth": d, "phase": p, "images_per_s": 1000 / d, "tflops": 0.01 * d, "device": "cpu"}
        for b, d, p in itertools.product(["plain", "residual"], [20, 56], ["forward", "forward_backward"])
    ])  # fmt: skip
    fig = F.benchmark_figure(bench)
    assert [ax.get_ylabel() for ax in fig.axes] == ["images/s", "achieved TFLOP/s"]
    assert len([line for line in fig.axes[0].get_lines() if len(line.get_xdata()) == 2]) == 4


def test_benchmark_figure_draws_fp32_resnets_only_when_the_run_has_them() -> None:
    from reslab.report.bench import throughput_for_figure

    rows = [{"family": f, "variant": v, "block": "residual", "depth": d}
            for f, v, d in [("resnet", "fp32", 20), ("resnet", "bf16", 20), ("mlp", "fp32", 10)]]  # fmt: skip
    df = pd.DataFrame(rows)
    assert throughput_for_figure(df)[["family", "variant"]].values.tolist() == [["resnet", "fp32"]]
    only_mlp = df[df["family"] == "mlp"]
    assert throughput_for_figure(only_mlp).equals(only_mlp)


def test_verdict_when_the_effect_is_present() -> None:
    v = verdict(cells_frame())
    assert v.reproduced is True
    assert v.text.startswith("Degradation reproduced: plain-56 ends at 60.1 % training error, plain-8 at 1.1 %")
    assert "residual-56 at 0.20 % (residual-8: 0.50 %)" in v.text and "mean over 2 seeds" in v.text
    assert v.numbers["plain-56"] == pytest.approx(0.601)


def test_verdict_when_it_is_not() -> None:
    small = verdict(cells_frame(plain_deep=0.015))
    assert small.reproduced is False and small.text.startswith("Degradation not reproduced")
    assert "under the 2-point threshold" in small.text
    both = verdict(cells_frame(residual_deep=0.3))
    assert both.reproduced is False and "residual-56 at 30.1 %" in both.text and "degrades as well" in both.text
    no_plain = verdict(cells_frame()[lambda d: d["block"] != "plain"])
    assert no_plain.reproduced is None and "no plain nets" in no_plain.text
    assert verdict(cells_frame().iloc[0:0]).reproduced is None


def test_verdict_per_width() -> None:
    v = verdict(cells_frame(widths=(4, 8)))
    assert v.text.count("Degradation reproduced at width") == 2


def test_anchors() -> None:
    table6 = anchors_for("cifar10", ["residual"])
    assert dict(zip(table6["depth"], table6["test_error"], strict=True))[56] == 6.97
    assert anchors_for("mnist1d").empty
    in_sweep = anchors_for("cifar10", ["residual", "preact"], [20, 110, 164])
    assert sorted(zip(in_sweep["block"], in_sweep["depth"], in_sweep["test_error"], strict=True)) == [
        ("preact", 164, 5.46), ("residual", 20, 8.75), ("residual", 110, 6.43), ("residual", 164, 5.93)]
    assert set(anchors_for("cifar10")["source"]) == {"He et al. 2015, Table 6", "He et al. 2016, Table 3"}


def test_collect_lists_failed_and_missing_cells(tmp_path, monkeypatch) -> None:
    """A partial sweep written straight to a store: one finished cell, one failed, one never run."""
    import yaml

    from reslab.report import collect
    from reslab.sweep.parent import ensure_sweep_run

    uri, store, config, parent = sweep_in_store(tmp_path, monkeypatch, "p", ["plain", "residual"])
    for name, block, status in (("plain-8-w4-s0", "plain", "FINISHED"), ("residual-8-w4-s0", "residual", "FAILED")):
        tags = {"family": "resnet", "block": block, "depth": 8, "width": 4, "shortcut": "A", "norm": "batch",
                "seed": 0, "reslab.cell": f"resnet-{block}-8-w4-A-batch-s0"}  # fmt: skip
        run = store.start_run("p", name, tags, {"net.params": 100}, parent_run_id=parent)
        store.log_metrics(run, [("train_error", 0.5, 1), ("train_error", 0.25, 2), ("test_error", 0.3, 2)])
        store.finish_run(run, status, None if status == "FINISHED" else "DivergedError: nan")
    data = collect(uri, "p")
    by_name = dict(zip(data.cells["name"], data.cells["status"], strict=True))
    assert by_name == {"plain-8-w4-s0": "FINISHED", "residual-8-w4-s0": "FAILED"}
    assert len(data.epochs) == 2 and data.epochs["train_error"].tolist() == [0.5, 0.25]
    config["grid"]["depths"] = [8, 14]
    assert ensure_sweep_run(store, "p", "p", yaml.safe_dump(config), {}) == (parent, [])
    cells = collect(uri, "p").cells
    assert sorted(cells.loc[cells["status"] == "missing", "name"]) == ["plain-14-w4-s0", "residual-14-w4-s0"]
    assert cells.loc[cells["name"] == "residual-8-w4-s0", "failure"].item() == "DivergedError: nan"
    # a partial sweep renders: the failed and the missing cells are listed, with the failure's reason
    from reslab.report.render import write_report

    paths = write_report(collect(uri, "p"), tmp_path / "report", log_to_mlflow=False)
    page, markdown = paths.html.read_text(), paths.markdown.read_text()
    assert "<b>plain-14-w4-s0</b>: missing</li>" in page and "DivergedError: nan" in page
    assert "- **residual-14-w4-s0**: missing" in markdown


def test_report_on_an_unreachable_tracking_server_is_one_line(capsys) -> None:
    from reslab.cli import main

    assert main(["report", "default", "--tracking-uri", "http://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "MLflow tracking server http://127.0.0.1:1 is unreachable" in err and len(err.strip().splitlines()) == 1


def test_report_shows_diverged_cells_and_ignores_superseded_runs(tmp_path, monkeypatch) -> None:
    """A diverged run is a finished result, listed as diverged; a run superseded by a retry is no attempt at all."""
    from reslab.report import collect
    from reslab.report.render import write_report

    uri, store, _, parent = sweep_in_store(tmp_path, monkeypatch, "d", ["plain"])
    tags = {"family": "resnet", "block": "plain", "depth": 8, "width": 4, "shortcut": "A", "norm": "batch",
            "seed": 0, "reslab.cell": "resnet-plain-8-w4-A-batch-s0"}  # fmt: skip
    stale = store.start_run("d", "plain-8-w4-s0", {**tags, "reslab.superseded": "its lease was lost"},
                            parent_run_id=parent)  # fmt: skip
    store.finish_run(stale, "KILLED", "its lease was lost")
    diverged = {"reslab.attempt": 2, "reslab.diverged": "training loss became nan in epoch 3"}
    run = store.start_run("d", "plain-8-w4-s0", {**tags, **diverged}, parent_run_id=parent)
    store.log_metrics(run, [("train_error", 0.9, 3)])
    store.finish_run(run, "FINISHED")
    data = collect(uri, "d")
    assert data.runs["run_id"].tolist() == [run]
    (cell,) = data.cells.to_dict("records")
    assert cell["status"] == "FINISHED" and cell["attempts"] == 1 and cell["diverged"].startswith("training loss")
    paths = write_report(data, tmp_path / "report", log_to_mlflow=False)
    page, markdown = paths.html.read_text(), paths.markdown.read_text()
    assert "<h2>Diverged</h2>" in page and "<b>plain-8-w4-s0</b>: training loss became nan in epoch 3" in page
    assert "- **plain-8-w4-s0**: training loss became nan in epoch 3" in markdown
    assert "1/1 (1 diverged)" in page


def test_load_sweep_gives_a_notebook_the_reports_tables(tmp_path, monkeypatch) -> None:
    import reslab
    from reslab.report import ReportError

    uri, store, _, parent = sweep_in_store(tmp_path, monkeypatch, "nb", ["plain", "residual"])
    tags = {"family": "resnet", "block": "plain", "depth": 8, "width": 4, "shortcut": "A", "norm": "batch",
            "seed": 0, "reslab.cell": "resnet-plain-8-w4-A-batch-s0"}  # fmt: skip
    run = store.start_run("nb", "plain-8-w4-s0", tags, {"net.params": 100}, parent_run_id=parent)
    store.log_metrics(run, [("train_error", 0.5, 1), ("train_error", 0.25, 2), ("test_error", 0.3, 2)])
    store.finish_run(run, "FINISHED")
    sweep = reslab.load_sweep("nb", tracking_uri=uri)
    assert isinstance(sweep.cells, pd.DataFrame) and isinstance(sweep.epochs, pd.DataFrame)
    assert dict(zip(sweep.cells["name"], sweep.cells["status"], strict=True)) == {
        "plain-8-w4-s0": "FINISHED", "residual-8-w4-s0": "missing"}  # fmt: skip
    assert sweep.epochs["train_error"].tolist() == [0.5, 0.25]
    # the README's notebook example
    assert sweep.cells[["name", "status", "train_error", "test_error"]].shape == (2, 4)
    curves = sweep.epochs.pivot_table(index="epoch", columns="name", values="train_error")
    assert curves["plain-8-w4-s0"].tolist() == [0.5, 0.25]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the same store as the CLI finds it
    assert len(reslab.load_sweep("nb").runs) == 1
    with pytest.raises(ReportError, match="no sweep named 'other'"):
        reslab.load_sweep("other", tracking_uri=uri)


def test_bench_report_prints_every_ratio_with_its_target(tmp_path, capsys) -> None:
    import json

    from reslab.cli import main

    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"benchmarks": [
        {"name": "test_reslab_step_vs_hand_written[channels_last]",
         "extra_info": {"ratio": 1.0012, "target_ratio": 1.02, "what": "reslab / hand-written"}},
        {"name": "test_data_path", "extra_info": {"data_images_per_s": 5e5}},
    ]}))  # fmt: skip
    assert main(["bench-report", str(path)]) == 0
    out = capsys.readouterr().out
    assert "test_reslab_step_vs_hand_written[channels_last]: ratio 1.001 (target <= 1.02)  reslab / hand-written" in out
    assert "test_data_path" not in out


def bits_frame() -> pd.DataFrame:
    """A language-model sweep: losses in bits per character (the prototype's numbers at depths 2 and 12)."""
    values = {("plain", 2): 3.84, ("plain", 12): 4.68, ("residual", 2): 3.18, ("residual", 12): 4.68,
              ("preact", 2): 3.22, ("preact", 12): 2.90, ("rezero", 2): 3.47, ("rezero", 12): 3.12}  # fmt: skip
    rows = []
    for (block, depth), bits in values.items():
        for seed in (0, 1):
            rows.append({"block": block, "depth": depth, "width": 64, "seed": seed, "status": "FINISHED",
                         "family": "transformer", "train_error": 0.5, "test_error": 0.55,
                         "train_bpc": bits + 0.02 * seed, "test_bpc": bits + 0.1})  # fmt: skip
    return pd.DataFrame(rows)


def test_a_language_model_sweep_is_judged_by_its_training_loss_in_bits() -> None:
    from reslab.report.measure import BITS, ERROR, measure_of

    cells = bits_frame()
    assert measure_of(cells) is BITS and measure_of(cells_frame()) is ERROR
    v = verdict(cells, BITS)
    assert v.reproduced is False  # post-norm, the first residual recipe, degrades as much as no shortcut
    assert v.text.startswith("Degradation not removed: plain-12 ends at 4.69 bits training loss, plain-2 at 3.85 bits "
                             "(+0.84 bits)")  # fmt: skip
    assert "residual-12 at 4.69 bits (residual-2: 3.19 bits) degrades as well" in v.text
    assert "preact-2 3.23 bits → preact-12 2.91 bits;" in v.text and "plain-12 4.69 bits (degrades)" in v.text
    assert "training loss in bits per character, mean over 2 seeds" in v.text
    shallow = cells[cells["depth"] == 2]
    small = verdict(pd.concat([shallow, shallow.assign(depth=4, train_bpc=shallow["train_bpc"] + 0.05)]), BITS)
    assert small.reproduced is False and "(+0.05 bits), under the 0.1-bit threshold" in small.text


def test_the_depth_figures_plot_bits_for_a_language_model() -> None:
    from reslab.report.measure import BITS

    fig = F.depth_figure(bits_frame(), measure=BITS)
    train_ax = fig.axes[0]
    assert train_ax.get_ylabel() == "final loss (bits per character)" and train_ax.get_xlabel() == "depth (blocks)"
    plotted = [y for line in train_ax.get_lines() for y in line.get_ydata() if y == y]
    assert min(plotted) == pytest.approx(2.91, abs=0.02) and max(plotted) == pytest.approx(4.69, abs=0.02)
    epochs = bits_frame().assign(epoch=1)
    curves = F.curves_figure(epochs, measure=BITS)
    assert curves.axes[0].get_ylabel() == "loss (bits per character)"


def test_a_residual_net_that_improves_with_depth_but_ends_above_plain_does_not_degrade() -> None:
    v = verdict(cells_frame(plain_deep=0.05, residual_deep=0.06).assign(
        train_error=lambda d: d["train_error"].where(~((d["block"] == "residual") & (d["depth"] == 8)), 0.07)))
    assert v.reproduced is False and "residual-56 at 6.1 % (residual-8: 7.0 %) ends no better than plain-56" in v.text
