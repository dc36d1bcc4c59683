"""The report's "Signal at initialisation": the probe's rows go from telemetry.csv through collect into three
figures beside the training curves, and one sentence that ties the gradient at step 0 to the final training error."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from reslab.probe.result import BlockSignal, SignalProbe
from reslab.report.collect import CELL_COLUMNS, SweepData, _telemetry
from reslab.report.signal import (
    cmap_figure,
    gradient_ratios,
    probe_frame,
    shortcut_share_figure,
    signal_gradient_figure,
    signal_sentence,
)
from reslab.train.telemetry import telemetry_csv


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def fake_probe(blocks: int, growth: float, share: float, overflow_from: int | None = None) -> SignalProbe:
    """Gradients that grow by `growth` per block towards the input, from 1e-3 at the last block's output."""
    signals = []
    for i in range(blocks):
        grad_out = 1e-3 * growth ** (blocks - 1 - i)
        grad_in = grad_out * growth
        if overflow_from is not None and i <= overflow_from:
            grad_in = grad_out = math.inf
        signals.append(BlockSignal(f"stages.0.{i}", 1.0, grad_in, grad_out, share, 0.3 + 0.01 * i))
    return SignalProbe(tuple(signals), 2.3, 0.0, (2.0, 1.0), 2.0, 0.15, 8, 128)


class _Store:
    def __init__(self, texts: dict[str, str]) -> None:
        self.texts = texts

    def read_artifact_text(self, run_id: str, path: str) -> str | None:
        return self.texts[run_id] if path == "telemetry.csv" else None


def _sweep() -> SweepData:
    """A sweep of plain and residual at depths 8 and 56 whose runs' telemetry.csv hold the probe (and one step of
    training telemetry, which the signal figures leave alone)."""
    probes = {("plain", 8): fake_probe(3, 2.0, 0.0), ("plain", 56): fake_probe(27, 10 ** (4 / 27), 0.0),
              ("residual", 8): fake_probe(3, 1.2, 0.6), ("residual", 56): fake_probe(27, 10 ** (1.5 / 27), 0.7)}
    errors = {("plain", 8): 0.004, ("plain", 56): 0.62, ("residual", 8): 0.004, ("residual", 56): 0.001}
    texts, cells, frames = {}, [], []
    for (block, depth), probe in probes.items():
        run_id = f"{block}{depth}"
        training = [("grad_out/b000", 0.5, 0), ("grad_out/b000", 0.4, 10)]
        texts[run_id] = telemetry_csv([*probe.telemetry_rows(), *training])
        cell = {"cell": run_id, "name": f"{block}-{depth}-w8-s0", "family": "resnet", "block": block,
                "depth": depth, "width": 8, "shortcut": "A", "norm": "batch", "seed": 0, "remedy": "none",
                "stages": "none", "heads": "none", "context": "none", "init": "kaiming", "activation": "relu",
                "branch_scale": "none", "parametrization": "sp", "base_depth": 8, "branch_layers": "none",
                "variant": block}  # fmt: skip
        assert set(cell) == set(CELL_COLUMNS)
        cells.append({**cell, "run_id": run_id, "status": "FINISHED", "train_error": errors[block, depth],
                      "test_error": errors[block, depth] + 0.02, "lr": 0.1, "train_images_per_s": None,
                      "params": 1000, "macs": 10**6, "epoch_time_s": 1.0, "diverged": ""})  # fmt: skip
        frames.append(_telemetry(_Store(texts), {"run_id": run_id, **cell}))
    empty = pd.DataFrame()
    return SweepData("s", "sqlite://", "s", {}, {"dataset": {"name": "mnist1d"}}, empty, pd.DataFrame(cells), empty,
                     pd.concat(frames, ignore_index=True))  # fmt: skip


def test_collect_reads_the_probe_rows_of_telemetry_csv() -> None:
    tele = _sweep().telemetry
    kinds = set(tele["kind"])
    assert {"probe_act", "probe_grad_in", "probe_grad_out", "probe_share", "probe_cmap", "probe_net"} < kinds
    whole = tele[(tele["kind"] == "probe_net") & (tele["cell"] == "plain56")].set_index("layer")["value"]
    assert whole["log10_grad_ratio"] == pytest.approx(4.0)
    assert (tele[tele["kind"] == "probe_net"]["index"] == -1).all()


def test_the_sentence_ties_the_gradient_at_step_0_to_the_final_error() -> None:
    data = _sweep()
    assert signal_sentence(data.cells, data.telemetry) == (
        "At initialisation, plain-56's gradient at its first block's input is 10^4.0 times the one at its last "
        "block's output, residual-56's 10^1.5; their final training errors are 62.0 % and 0.1 %."
    )


def test_a_gradient_that_overflows_is_said_so() -> None:
    frame = probe_frame([({"variant": "plain", "block": "plain", "depth": 1202, "seed": 0},
                          fake_probe(600, 1.2, 0.0, overflow_from=300))])  # fmt: skip
    assert bool(gradient_ratios(frame)["overflow"].iloc[0])
    sentence = signal_sentence(pd.DataFrame(), frame)
    assert sentence == ("At initialisation, plain-1202's gradient at its first block's input is beyond float32's "
                        "range (it overflows) times the one at its last block's output.")  # fmt: skip


def test_the_figures_have_a_panel_per_variant_and_a_line_per_depth() -> None:
    probe = _sweep().telemetry
    for draw in (signal_gradient_figure, shortcut_share_figure, cmap_figure):
        fig = draw(probe)
        assert [ax.get_title() for ax in fig.axes] == ["plain", "residual"], draw.__name__
        labels = [line.get_label() for line in fig.axes[0].get_lines()]
        assert {"depth 8", "depth 56"} <= set(labels), (draw.__name__, labels)
    lines = signal_gradient_figure(probe).axes[0].get_lines()
    deep = next(line for line in lines if line.get_label() == "depth 56")
    assert deep.get_ydata()[0] == pytest.approx(1e4)  # the first block's input over the last block's output
    assert deep.get_ydata()[-1] == pytest.approx(10 ** (4 / 27))  # the last block's own input over its output
    assert signal_gradient_figure(probe[probe["kind"] == "grad_out"]) is None


def test_the_report_shows_them_beside_the_training_curves(tmp_path) -> None:
    from reslab.report.render import build_figures, write_report

    data = _sweep()
    figures = build_figures(data)
    slugs = [f.slug for f in figures]
    assert slugs[:3] == ["signal_gradient", "signal_shortcut", "signal_cmap"]  # no epochs here: first
    assert figures[0].title.startswith("Signal at initialisation")
    assert "plain-56's gradient at its first block's input is 10^4.0 times" in figures[0].caption
    paths = write_report(data, tmp_path / "report", log_to_mlflow=False)
    markdown = paths.markdown.read_text()
    assert "## Signal at initialisation: gradient by block" in markdown
    assert (tmp_path / "report" / "figures" / "signal_cmap.png").is_file()
