"""What a probe of the signal at initialisation measured, and every form it is written in. Torch-free.

Per block (input to output), with batch norm using the statistics of the probed batch, as the first training step
sees them:
- `act_rms`: the RMS of the block's output (Poole et al. 2016's length q(l), forward);
- `grad_in_rms`, `grad_out_rms`: the RMS of the loss gradient at the block's input and output (Schoenholz et al.
  2017's backward signal; its growth or decay over depth is what vanishes or explodes);
- `shortcut_share`: ||g_shortcut|| / (||g_branch|| + ||g_shortcut||) of the gradient reaching the block's input,
  0 for a plain block (no shortcut), 1 for a block whose branch passes no gradient (a rezero gate at 0);
- `cmap`: the correlation of two different inputs' representations at the block's output, u·v / (|u| |v|) over
  the block's whole output, averaged over every pair of the batch: the empirical C-map of Martens et al. 2021
  (DKS), the c(l) of Schoenholz et al. 2017. Near 1, the net maps every input to the same direction.
- `weight_grad`: the Frobenius norm of the loss gradient of the last weight matrix (or kernel) of the block's
  branch: for a Transformer's MLP sublayer the gradient of its second linear layer, the quantity of Xiong et al.
  2020 (Thm 1, Fig. 3): at the last layer of a post-norm net it does not shrink with depth, while a pre-norm net's
  is about equal across its layers and shrinks as 1/sqrt(L) with its depth L.

For the whole net: the singular values of the Jacobian of the logits with respect to the input of a few examples
(exact, one backward pass per class; with the batch's normalisation statistics held fixed, so it is the Jacobian of
the function the first step applies to each example), reported as their mean over the examples, the condition
number sigma_max / sigma_min (geometric mean over the examples) and the spread (standard deviation) of log10 of
every singular value: 0 and 1 for a net at dynamical isometry (Pennington et al. 2017). Token ids (a language
model's inputs) are not continuous, so a language model is measured from its embeddings: the input C-map is that of
two windows' embeddings, and the Jacobian is that of the last position's logits (the prediction that reads the whole
window) with respect to the window's embeddings.

A value that overflowed float32 (inf or NaN) or underflowed it (below its smallest normal number, 1.2e-38) is an
`Anomaly`, named with the block where it starts in the direction the signal travels (input to output for the
activations, output to input for the gradients); the probe itself never fails on one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

SCHEMA = "reslab.probe/1"
#: The smallest normal float32: a value below it has underflowed the precision the nets train in.
FLOAT32_TINY = 1.1754943508222875e-38
#: Per-block quantities and their telemetry.csv key kinds (`probe_act/b007`, ...).
BLOCK_KINDS = {"act_rms": "probe_act", "grad_in_rms": "probe_grad_in", "grad_out_rms": "probe_grad_out",
               "shortcut_share": "probe_share", "cmap": "probe_cmap", "weight_grad": "probe_wgrad"}  # fmt: skip
#: Whole-net quantities are telemetry.csv rows `probe_net/<name>`; five of them (where finite) are also MLflow
#: metrics, `probe/<name>` (as gradient telemetry's MLflow summaries are `telemetry/...`, never an artifact key).
NET_PREFIX = "probe_net/"
SUMMARY_PREFIX = "probe/"
SUMMARY_METRICS = ("log10_grad_ratio", "shortcut_share_mean", "cmap_last", "log10_jacobian_cond",
                   "jacobian_log_sv_std")  # fmt: skip


@dataclass(frozen=True)
class BlockSignal:
    """One block's values (see the module docstring)."""

    name: str
    act_rms: float
    grad_in_rms: float
    grad_out_rms: float
    shortcut_share: float
    cmap: float
    weight_grad: float = math.nan


@dataclass(frozen=True)
class Anomaly:
    """A quantity that left float32's range: `kind` overflow (inf or NaN) or vanished (below FLOAT32_TINY)."""

    quantity: str  # activation, gradient, loss or jacobian
    kind: str
    block: int | None  # where it starts (None for the loss and the Jacobian)

    def describe(self) -> str:
        where = f" from block {self.block}" if self.block is not None else ""
        return f"{self.quantity} {'overflows' if self.kind == 'overflow' else 'vanishes'}{where}"


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _first_out_of_range(path: list[tuple[int, float]]) -> tuple[str, int] | None:
    """(kind, block) of the first value along `path` ((block, value) in the order the signal travels) that left
    float32's range."""
    for block, value in path:
        if not _finite(value):
            return "overflow", block
        if abs(value) < FLOAT32_TINY:
            return "vanished", block
    return None


def _ratio(a: float, b: float) -> float:
    if not (_finite(a) and _finite(b)):
        return math.nan
    if b == 0:
        return math.inf if a > 0 else math.nan
    return a / b


def _log10(value: float) -> float:
    if not _finite(value):
        return value if value == math.inf else math.nan
    return math.log10(value) if value > 0 else -math.inf


def _mean(values: list[float]) -> float:
    good = [v for v in values if not math.isnan(v)]
    return sum(good) / len(good) if good else math.nan


def json_number(value: float) -> float | None:
    """A value as JSON has it: a non-finite float is null (the `anomalies` say why)."""
    return float(value) if _finite(value) else None


@dataclass(frozen=True)
class SignalProbe:
    """Everything one probe measured. `jacobian_sv`: the singular values, largest first, mean over the examples."""

    blocks: tuple[BlockSignal, ...]
    loss: float
    cmap_input: float
    jacobian_sv: tuple[float, ...]
    jacobian_cond: float
    jacobian_log_sv_std: float
    jacobian_examples: int
    batch: int

    @property
    def summary(self) -> dict[str, float]:
        """The whole-net numbers: the gradient at the first block's input over the one at the last block's output
        (`grad_ratio`, > 1 when gradients grow towards the input), the last block's activation RMS and C-map, the
        mean shortcut share over the blocks, the last block's branch-weight gradient norm (a Transformer's last MLP
        weight), the Jacobian's spectrum, the loss."""
        b = self.blocks
        first_in = b[0].grad_in_rms if b else math.nan
        last_out = b[-1].grad_out_rms if b else math.nan
        ratio = _ratio(first_in, last_out)
        sv = self.jacobian_sv
        return {
            "grad_in_first": first_in,
            "grad_out_last": last_out,
            "grad_ratio": ratio,
            "log10_grad_ratio": _log10(ratio),
            "act_rms_last": b[-1].act_rms if b else math.nan,
            "shortcut_share_mean": _mean([x.shortcut_share for x in b]),
            "cmap_input": self.cmap_input,
            "cmap_last": b[-1].cmap if b else math.nan,
            "weight_grad_last": b[-1].weight_grad if b else math.nan,
            "jacobian_sv_max": sv[0] if sv else math.nan,
            "jacobian_sv_min": sv[-1] if sv else math.nan,
            "jacobian_cond": self.jacobian_cond,
            "log10_jacobian_cond": _log10(self.jacobian_cond),
            "jacobian_log_sv_std": self.jacobian_log_sv_std,
            "loss": self.loss,
        }

    @property
    def anomalies(self) -> list[Anomaly]:
        out = []
        b = self.blocks
        act = _first_out_of_range([(i, x.act_rms) for i, x in enumerate(b)])
        if act:
            out.append(Anomaly("activation", *act))
        backward = [(len(b) - 1, b[-1].grad_out_rms)] if b else []  # from the last block's output to the input
        grad = _first_out_of_range(backward + [(i, b[i].grad_in_rms) for i in reversed(range(len(b)))])
        if grad:
            out.append(Anomaly("gradient", *grad))
        if not _finite(self.loss):
            out.append(Anomaly("loss", "overflow", None))
        sv = self.jacobian_sv
        if not self.jacobian_examples:  # not measured (a probe without examples)
            return out
        if not sv or not all(_finite(s) for s in sv):
            out.append(Anomaly("jacobian", "overflow", None))
        elif sv[-1] < FLOAT32_TINY:  # a direction of the input no longer reaches the logits
            out.append(Anomaly("jacobian", "vanished", None))
        return out

    def telemetry_rows(self, step: int = 0) -> list[tuple[str, float, int]]:
        """(key, value, step) rows for telemetry.csv: `probe_<kind>/bNNN` per block, `probe_net/<name>` for the net."""
        rows = [(f"{kind}/b{i:03d}", float(getattr(b, attr)), step)
                for i, b in enumerate(self.blocks) for attr, kind in BLOCK_KINDS.items()]  # fmt: skip
        rows += [(NET_PREFIX + k, float(v), step) for k, v in self.summary.items()]
        return rows

    def summary_rows(self, step: int = 0) -> list[tuple[str, float, int]]:
        """The MLflow summary metrics: `SUMMARY_METRICS` that are finite (at most five, whatever the depth)."""
        s = self.summary
        return [(SUMMARY_PREFIX + k, float(s[k]), step) for k in SUMMARY_METRICS if _finite(s[k])]

    def to_json(self, **labels: Any) -> dict[str, Any]:
        """One entry of `reslab probe --json`'s `probes` list (the schema is in docs/signal.md)."""
        sv = self.jacobian_sv
        per_block = [{"block": i, "name": b.name, **{k: json_number(getattr(b, k)) for k in BLOCK_KINDS}}
                     for i, b in enumerate(self.blocks)]  # fmt: skip
        return {
            **labels,
            "blocks": len(self.blocks),
            "batch": self.batch,
            "summary": {k: json_number(v) for k, v in self.summary.items()},
            "jacobian": {"examples": self.jacobian_examples, "singular_values": [json_number(v) for v in sv]},
            "anomalies": [{"quantity": a.quantity, "kind": a.kind, "block": a.block} for a in self.anomalies],
            "per_block": per_block,
        }

    def records(self, **labels: Any) -> list[dict[str, Any]]:
        """Tidy rows (kind, index, value and `labels`), the shape of the report's telemetry table."""
        rows = [{**labels, "kind": kind, "index": i, "layer": "", "value": float(getattr(b, attr)), "step": 0}
                for i, b in enumerate(self.blocks) for attr, kind in BLOCK_KINDS.items()]  # fmt: skip
        rows += [{**labels, "kind": "probe_net", "index": -1, "layer": k, "value": float(v), "step": 0}
                 for k, v in self.summary.items()]  # fmt: skip
        return rows


def fmt(value: float, digits: int = 3) -> str:
    """A value for the console: inf/NaN as `overflow`, below float32's range as `vanished`."""
    if not _finite(value):
        return "overflow"
    if value != 0 and abs(value) < FLOAT32_TINY:
        return "vanished"
    return f"{value:.{digits}g}"


def fmt_power(value: float) -> str:
    """A ratio as a power of ten, e.g. 10^+1.27."""
    if not _finite(value) or value <= 0:
        return "overflow" if not _finite(value) else "vanished"
    return f"10^{math.log10(value):+.2f}"


COLUMNS = ("net", "blocks", "act RMS last", "grad in/out", "shortcut share", "last W grad", "C-map in -> last",
           "J max/min", "log10 sv sd", "time")  # fmt: skip


def table_row(name: str, probe: SignalProbe, seconds: float) -> tuple[str, ...]:
    s = probe.summary
    # Behind a zero-initialised classifier (Fixup) no gradient reaches the blocks and the Jacobian is zero: their
    # ratios are 0/0, which the table says as `zero`, not as an overflow.
    zero_grad = s["grad_in_first"] == 0 and s["grad_out_last"] == 0
    zero_jacobian = s["jacobian_sv_max"] == 0
    ratio = "zero" if zero_grad else fmt_power(s["grad_ratio"])
    share = "-" if zero_grad and not _finite(s["shortcut_share_mean"]) else fmt(s["shortcut_share_mean"], 2)
    cond = "zero" if zero_jacobian else fmt(s["jacobian_cond"])
    spread = "-" if zero_jacobian else fmt(s["jacobian_log_sv_std"], 2)
    cmap = f"{fmt(s['cmap_input'], 2)} -> {fmt(s['cmap_last'], 2)}"
    return (name, str(len(probe.blocks)), fmt(s["act_rms_last"]), ratio, share, fmt(s["weight_grad_last"]), cmap,
            cond, spread, f"{seconds:.1f} s")  # fmt: skip


def format_table(rows: list[tuple[str, ...]]) -> str:
    """Columns padded to their widest cell, names left-aligned, numbers right-aligned."""
    cells = [COLUMNS, *rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in cells]  # fmt: skip
    return "\n".join(lines)


def block_table(probe: SignalProbe) -> str:
    """Every block's values, one line each."""
    head = ("block", "name", "act RMS", "grad in RMS", "grad out RMS", "shortcut share", "C-map", "W grad")
    rows = [(str(i), b.name, fmt(b.act_rms), fmt(b.grad_in_rms), fmt(b.grad_out_rms), fmt(b.shortcut_share, 2),
             fmt(b.cmap, 3), fmt(b.weight_grad)) for i, b in enumerate(probe.blocks)]  # fmt: skip
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) if i != 1 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths,
                     strict=True))) for r in (head, *rows))  # fmt: skip
