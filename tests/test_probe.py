"""The probe of the signal at initialisation: what it measures on plain and residual nets over depth, that it is
exact where it claims to be, that it reports values out of float32's range instead of failing, and that it leaves
the net and every RNG as they were."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from reslab.data.registry import load_dataset
from reslab.models import NetSpec, build_net
from reslab.probe.measure import mean_correlation, probe_at_init, probe_batch, probe_net, probe_spec
from reslab.probe.result import FLOAT32_TINY, SUMMARY_METRICS
from reslab.report.collect import parse_telemetry_key


@pytest.fixture(scope="module")
def mnist1d():
    return load_dataset("mnist1d")


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _probe(splits, block: str, depth: int, **fields):
    return probe_spec(NetSpec("resnet", block, depth, 8, **fields), splits, 128, 0)


def test_plain_gradients_change_with_depth_far_more_than_residual_ones(mnist1d) -> None:
    """At 20 and 110 layers (1-D, width 8, MNIST-1D, batch 128): the ratio of the gradient at the first block's
    input to the one at the last block's output grows by a larger factor for the plain net than for the residual
    net, and the shortcut carries most of the residual net's gradient (its share rises with depth: 0.44 averaged
    over the 9 blocks of residual-20 at seed 0, 0.67 over the 54 of residual-110)."""
    probes = {(block, depth): _probe(mnist1d, block, depth) for block in ("plain", "residual") for depth in (20, 110)}
    ratio = {key: p.summary["log10_grad_ratio"] for key, p in probes.items()}
    plain_change = abs(ratio["plain", 110] - ratio["plain", 20])
    residual_change = abs(ratio["residual", 110] - ratio["residual", 20])
    assert plain_change > residual_change + 2, ratio  # orders of magnitude apart, not a close call
    share = {key: p.summary["shortcut_share_mean"] for key, p in probes.items()}
    assert share["residual", 110] > 0.5, share
    assert share["residual", 110] > share["residual", 20] > 0
    assert share["plain", 20] == share["plain", 110] == 0
    for p in probes.values():
        assert p.anomalies == []
        assert len(p.jacobian_sv) == 10 and p.jacobian_examples == 8 and p.jacobian_cond >= 1


def _snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_probing_leaves_running_statistics_parameters_and_every_rng_untouched(mnist1d) -> None:
    torch.manual_seed(3)
    net = build_net(NetSpec("resnet", "residual", 20, 8), mnist1d.input_shape, 10)
    before = _snapshot(net)
    assert any(k.endswith("running_mean") for k in before)
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(4)
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    x, y = probe_batch(mnist1d.train.x, mnist1d.train.y, 128, 0)
    probe_net(net, x, y)
    after = _snapshot(net)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), [k for k in before if not torch.equal(before[k],
                                                                                                          after[k])]
    assert all(p.grad is None for p in net.parameters())
    assert net.training and all(b.tap is None for _, b in net.blocks())
    assert random.getstate() == states[0]
    np_now = np.random.get_state()
    assert np_now[0] == states[1][0] and np.array_equal(np_now[1], states[1][1]) and np_now[2:] == states[1][2:]
    assert torch.equal(torch.get_rng_state(), states[2])
    # the same forward in training mode on the net itself moves its running statistics: the probe ran one
    net(x)
    assert not torch.equal(_snapshot(net)["stem.1.running_mean"], before["stem.1.running_mean"])


def test_the_jacobian_is_exact() -> None:
    """Without batch norm every example's Jacobian is its own: the probe's singular values are those of
    torch.func's Jacobian of each example, averaged."""
    torch.manual_seed(0)
    net = build_net(NetSpec("resnet", "residual", 8, 4, norm="none"), (1, 12), 5)
    x = torch.randn(16, 1, 12)
    y = torch.randint(0, 5, (16,))
    probe = probe_net(net, x, y, jacobian_examples=6)
    jac = torch.stack([torch.func.jacrev(lambda v: net(v[None])[0])(x[i]).reshape(5, 12) for i in range(6)])
    sv = torch.linalg.svdvals(jac.detach().double())
    assert probe.jacobian_sv == pytest.approx(sv.mean(0).tolist(), rel=1e-5)
    cond = float(torch.exp(torch.log(sv[:, 0] / sv[:, -1]).mean()))
    assert probe.jacobian_cond == pytest.approx(cond, rel=1e-5)
    assert probe.jacobian_log_sv_std == pytest.approx(float(sv.log10().flatten().std(correction=0)), rel=1e-5)


def test_the_jacobian_holds_the_batch_statistics_of_the_training_step() -> None:
    """With batch norm, an example's Jacobian is taken with the whole batch's statistics held fixed: that of the
    function the first training step applies to it (an example alone would normalise with its own statistics and
    give another Jacobian altogether)."""
    torch.manual_seed(0)
    net = build_net(NetSpec("resnet", "plain", 8, 4), (1, 12), 5)
    x = torch.randn(32, 1, 12)
    probe = probe_net(net, x, torch.randint(0, 5, (32,)), jacobian_examples=1)
    held = _with_statistics_of(net, x)
    jac = torch.func.jacrev(lambda v: held(v[None])[0])(x[0]).reshape(5, 12)
    assert probe.jacobian_sv == pytest.approx(torch.linalg.svdvals(jac.detach().double()).tolist(), rel=1e-4)


def _with_statistics_of(net: nn.Module, x: torch.Tensor) -> nn.Module:
    """A copy of `net` whose batch norms normalise with the statistics of batch x, by torch's own bookkeeping: with
    momentum None, one training-mode forward leaves each running mean and (unbiased) variance at that batch's;
    training-mode normalisation divides by the biased variance, so it is rescaled by (n - 1) / n."""
    import copy

    held = copy.deepcopy(net)
    norms = [m for m in held.modules() if isinstance(m, nn.BatchNorm1d)]
    sizes: dict[nn.Module, int] = {}
    handles = [m.register_forward_pre_hook(lambda m, args: sizes.__setitem__(m, args[0].numel() // args[0].shape[1]))
               for m in norms]  # fmt: skip
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    held.train()
    with torch.no_grad():
        held(x)
        for m in norms:
            m.running_var.mul_((sizes[m] - 1) / sizes[m])
    for h in handles:
        h.remove()
    return held.eval()


def _scaled(block: str, factor: float) -> nn.Module:
    torch.manual_seed(0)
    net = build_net(NetSpec("resnet", block, 20, 4, norm="none"), (1, 16), 10)
    with torch.no_grad():
        for _, b in net.blocks():
            for m in b.modules():
                if isinstance(m, nn.Conv1d):
                    m.weight.mul_(factor)
    return net


@pytest.mark.parametrize(("factor", "kind"), [(1e3, "overflow"), (1e-3, "vanished")])
def test_values_out_of_float32_range_are_reported_with_the_block_where_they_start(factor: float, kind: str) -> None:
    """Each conv scaled by 1e3 (1e-3): the activations leave float32's range after a few blocks. The probe says so,
    names the block, writes valid JSON (null for what is not a number) and its table, and never fails."""
    net = _scaled("plain", factor)
    x, y = torch.randn(32, 1, 16), torch.randint(0, 10, (32,))
    probe = probe_net(net, x, y)
    acts = [b.act_rms for b in probe.blocks]
    first = next(i for i, a in enumerate(acts) if not math.isfinite(a) or a < FLOAT32_TINY)
    assert 0 < first < len(acts) - 1
    by_quantity = {a.quantity: a for a in probe.anomalies}
    assert by_quantity["activation"].kind == kind and by_quantity["activation"].block == first
    assert by_quantity["jacobian"].kind == by_quantity["gradient"].kind == kind
    assert by_quantity["gradient"].block == len(acts) - 1  # the backward signal starts at the last block
    text = json.dumps(probe.to_json(name="x"), allow_nan=False)
    assert json.loads(text)["anomalies"][0] == {"quantity": "activation", "kind": kind, "block": first}
    assert all(math.isfinite(v) for _, v, _ in probe.summary_rows())


def test_rows_summaries_and_json_agree(mnist1d) -> None:
    probe = _probe(mnist1d, "residual", 20)
    rows = probe.telemetry_rows(step=0)
    assert all(parse_telemetry_key(key) is not None for key, _, _ in rows)
    per_block = [k for k, _, _ in rows if not k.startswith("probe_net/")]
    assert all(parse_telemetry_key(key) is None for key, _, _ in probe.summary_rows())  # MLflow's are summaries
    assert len(per_block) == 6 * len(probe.blocks) == 54
    summary = probe.summary_rows()
    assert [k for k, _, _ in summary] == [f"probe/{k}" for k in SUMMARY_METRICS]
    doc = probe.to_json(name="residual-20-w8")
    assert doc["blocks"] == len(doc["per_block"]) == 9
    assert doc["summary"]["grad_ratio"] == pytest.approx(doc["per_block"][0]["grad_in_rms"]
                                                         / doc["per_block"][-1]["grad_out_rms"])  # fmt: skip
    # a block's output is the next block's input: the two gradients are the same tensor's
    assert [b["grad_out_rms"] for b in doc["per_block"][:-1]] == [b["grad_in_rms"] for b in doc["per_block"][1:]]


def test_mean_correlation() -> None:
    u = torch.tensor([1.0, 0.0, 0.0])
    v = torch.tensor([0.0, 2.0, 0.0])
    assert float(mean_correlation(torch.stack([u, 3 * u, 0.5 * u]))) == pytest.approx(1.0)
    assert float(mean_correlation(torch.stack([u, v]))) == pytest.approx(0.0)
    w = torch.tensor([1.0, 1.0, 0.0])
    assert float(mean_correlation(torch.stack([u, v, w]))) == pytest.approx(2 * (0 + 2**-0.5 + 2**-0.5) / 6)
    # a zero or non-finite example has no direction: it is left out, and one example alone has no pair
    assert float(mean_correlation(torch.stack([u, 3 * u, torch.zeros(3), torch.full((3,), math.inf)]))) == 1.0
    assert math.isnan(float(mean_correlation(u[None])))


def test_a_net_without_a_stem_and_a_one_logit_head() -> None:
    """The Keras example's convnet (no stem, one logit, binary cross-entropy) on 2-D inputs probes like the rest."""
    splits = load_dataset("synthetic", {"shape": [3, 8, 8], "num_classes": 2, "train_size": 64, "test_size": 8})
    spec = NetSpec("convnet", "residual", 7, 4)
    from reslab.models.catalog import output_units

    assert output_units(spec, 2) == 1
    probe = probe_spec(spec, splits, 32, 0)
    assert len(probe.jacobian_sv) == 1 and probe.anomalies == []
    assert probe.blocks[0].grad_in_rms > 0 and 0 < probe.summary["shortcut_share_mean"] < 1
    assert probe_at_init(build_net(spec, (3, 8, 8), 1), splits, 32, 0).batch == 32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_probing_on_cuda_measures_what_the_cpu_does_and_keeps_the_cuda_rng(mnist1d) -> None:
    spec = NetSpec("resnet", "residual", 20, 8)
    torch.cuda.manual_seed_all(5)
    torch.cuda.init()
    states = torch.cuda.get_rng_state_all()
    on_gpu = probe_spec(spec, mnist1d, 128, 0, "cuda")
    assert all(torch.equal(a, b) for a, b in zip(states, torch.cuda.get_rng_state_all(), strict=True))
    on_cpu = probe_spec(spec, mnist1d, 128, 0, "cpu")
    assert on_gpu.summary == pytest.approx(on_cpu.summary, rel=0.02)  # cuDNN convolutions may use TF32


def test_a_zero_classifier_reads_as_zero_not_as_an_overflow(mnist1d) -> None:
    """Fixup starts with a zero classifier: no gradient reaches any block and the Jacobian is zero (0/0 ratios)."""
    from reslab.probe.result import COLUMNS, table_row

    probe = _probe(mnist1d, "residual", 20, norm="none", init="fixup")
    row = dict(zip(COLUMNS, table_row("fixup-20-w8", probe, 0.1), strict=True))
    shown = (row["grad in/out"], row["shortcut share"], row["J max/min"], row["log10 sv sd"])
    assert shown == ("zero", "-", "zero", "-")
