"""Depth parametrizations at initialisation: the branch multiplier (L/L0)^(-alpha) on the built net, the residual
stream's RMS against depth (depth-muP: it converges; standard: it grows with every doubling), and the optimiser's
lr and eps factors for AdamW and SGD (Yang et al. 2023; Dey et al. 2025), each computed here from the formulas."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from reslab.models import NetSpec, build_net
from reslab.models.remedy_init import residual_blocks
from reslab.models.rules import SpecError
from reslab.train.config import TrainConfig
from reslab.train.objective import build_optimizer
from tests.helpers import refused

ALPHA = {"depth_mup": 0.5, "completep": 1.0}


def branches(family: str, depth: int) -> int:
    """Residual branches by the families' own depth rules: mlp 2n+2 (n blocks), resnet 6n+2 (3 stages of n), the
    transformer n blocks of two (attention, MLP)."""
    return {"mlp": (depth - 2) // 2, "resnet": 3 * (depth - 2) // 6, "transformer": 2 * depth}[family]


CASES = [("mlp", 34, 4, "none"), ("mlp", 34, 10, "none"), ("resnet", 56, 8, "none"), ("transformer", 8, 2, "layer")]


@pytest.mark.parametrize("parametrization", list(ALPHA))
@pytest.mark.parametrize(("family", "depth", "base", "norm"), CASES)
def test_each_branch_is_scaled_by_the_depth_ratio(parametrization: str, family: str, depth: int, base: int,
                                                  norm: str) -> None:  # fmt: skip
    spec = NetSpec(family, "preact", depth, 8, norm=norm, parametrization=parametrization, base_depth=base)
    ratio = branches(family, depth) / branches(family, base)
    blocks = residual_blocks(build_net(spec))
    assert len(blocks) == branches(family, depth)
    assert [b.scale for b in blocks] == pytest.approx([ratio ** -ALPHA[parametrization]] * len(blocks))
    assert all(b.scale is None for b in residual_blocks(build_net(NetSpec(family, "preact", depth, 8, norm=norm))))


def last_block_rms(spec: NetSpec) -> float:
    """RMS of the residual stream after the last block, over 256 random inputs (seeded), at initialisation."""
    torch.manual_seed(0)
    net = build_net(spec, (40,), 10).eval()
    seen: list[torch.Tensor] = []
    residual_blocks(net)[-1].register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.no_grad():
        net(torch.randn(256, 40))
    return float(seen[0].pow(2).mean().sqrt())


def test_the_residual_stream_converges_with_depth_under_depth_mup_and_grows_under_sp() -> None:
    # Width 256: at width 64 one seed's finite-width noise alone moves the ratio by 15 %.
    def rms(parametrization: str, blocks: int) -> float:  # base depth 4: one block, L0 = 1
        return last_block_rms(NetSpec("mlp", "preact", 2 * blocks + 2, 256, norm="none",
                                      parametrization=parametrization, base_depth=4))  # fmt: skip

    assert rms("depth_mup", 16) / rms("depth_mup", 8) == pytest.approx(1.0, abs=0.1)
    assert rms("sp", 16) / rms("sp", 8) >= 2.0 and rms("sp", 8) / rms("sp", 4) >= 2.0


@pytest.mark.parametrize("parametrization", ["sp", *ALPHA])
def test_adamw_groups_take_the_depth_factors_of_lr_and_eps_and_sgd_keeps_its_lr(parametrization: str) -> None:
    spec = NetSpec("mlp", "preact", 34, 8, norm="none", parametrization=parametrization, base_depth=10)
    net = build_net(spec, (40,), 10)
    hidden = {id(p) for b in residual_blocks(net) for p in b.branch.parameters()}
    ratio, alpha = branches("mlp", 34) / branches("mlp", 10), ALPHA.get(parametrization)
    opt = build_optimizer(net, TrainConfig(optimizer="adamw", lr=1e-3, eps=1e-8), "cpu")
    for group in opt.param_groups:
        inside = {id(p) in hidden for p in group["params"]}
        if alpha is None or inside == {False}:
            assert (group["lr"], group["eps"]) == pytest.approx((1e-3, 1e-8))
        else:
            assert inside == {True}  # a group is all hidden or all depth-free
            assert group["lr"] == pytest.approx(1e-3 * ratio ** (alpha - 1))
            assert group["eps"] == pytest.approx(1e-8 * ratio**-alpha)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(net.parameters()))
    sgd = build_optimizer(net, TrainConfig(lr=0.1), "cpu")
    assert {g["lr"] for g in sgd.param_groups} == {0.1}


@pytest.mark.parametrize(("fields", "message"), [
    ({"block": "residual"}, "is defined for pre-activation residual blocks"),
    ({"norm": "batch"}, "use block preact and norm none"),
    ({"branch_scale": "inv_sqrt_branches"}, "cannot be combined with branch_scale"),
    ({"base_depth": 36}, "base_depth 36 is larger than depth 34"),
    ({"base_depth": 5}, "base_depth 5 is not a valid depth of family 'mlp'"),
])  # fmt: skip
def test_a_parametrization_outside_its_theory_is_refused(fields: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        NetSpec(**{"family": "mlp", "block": "preact", "depth": 34, "norm": "none", "parametrization": "depth_mup",
                   **fields})  # fmt: skip


def test_bad_parametrizations_exit_2_in_one_line_before_anything_trains(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    net = ["--family", "mlp", "--block", "preact", "--norm", "none", "--depth", "10", "--dataset", "synthetic"]
    refused(["train", *net, "--parametrization", "completep"], capsys, "completep is defined for AdamW only")
    refused(["train", *net, "--parametrization", "depth_mup", "--base-depth", "12"], capsys,
            "base_depth 12 is larger than depth 10")  # fmt: skip
    refused(["train", *net[:2], "--depth", "10", "--parametrization", "depth_mup"], capsys,
            "use block preact and norm none")  # fmt: skip
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"name": "c", "dataset": {"name": "mnist1d"},
                                      "grid": {"family": "mlp", "blocks": ["preact"], "norms": ["none"],
                                               "depths": [10], "parametrizations": ["sp", "completep"]}}))  # fmt: skip
    refused(["sweep", str(config), "--dry-run"], capsys, "completep is defined for AdamW only")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_the_summary_shows_each_group_s_lr_and_eps_multipliers() -> None:
    from reslab.models import describe

    spec = NetSpec("mlp", "preact", 34, 8, norm="none", parametrization="completep", base_depth=10)
    summary = describe(spec, (40,), 10)
    rows = {g.name: (g.sgd_lr, g.adamw_lr, g.adamw_eps) for g in summary.groups}
    ratio = branches("mlp", 34) / branches("mlp", 10)  # 4: CompleteP keeps the lr and divides eps by 4
    assert rows == {"the recipe's": (1.0, 1.0, 1.0), "residual branches (depth)": pytest.approx((1.0, 1.0, 1 / ratio))}
    assert "residual branches (depth)" in summary.table() and "eps x0.25" in summary.table()
    assert summary.to_dict()["groups"][1]["adamw_eps"] == pytest.approx(0.25)
    assert describe(NetSpec("mlp", "preact", 34, 8, norm="none"), (40,), 10).groups == ()
