"""`reslab probe`: bad input is one line and exit 2 before anything heavy is imported; the table, the JSON document
and the figures of a depth sweep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reslab.cli import main
from tests.test_cli_imports import probe as run_cli


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["probe", "--depth", "20,57"], "depth 57 is not valid for family 'resnet' (depth = 6n+2, n >= 1); nearest "
         "valid depths: 56 or 62"),
        (["probe", "--family", "banana", "--depth", "20"], "invalid choice: 'banana'"),
        (["probe", "--block", "plain,banana", "--depth", "20"], "invalid choice: 'banana'"),
        (["probe", "--depth", "20,,56"], "expected comma-separated depths"),
        (["probe", "--depth", "20,x"], "'x' is not an integer"),
        (["probe"], "the following arguments are required: --depth"),
        (["probe", "--depth", "20", "--width", "100000"], "to probe"),
        (["probe", "--depth", "20", "--remedy", "fixup", "--block", "plain"], "remedy fixup"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2_without_torch(argv: list[str], message: str) -> None:
    result = run_cli(*argv)
    assert result["code"] == 2, result
    assert message in result["err"], result["err"]
    assert result["err"].count("\n") == 1, result["err"]
    assert result["loaded"] == [], result["loaded"]


def test_help_imports_nothing_heavy() -> None:
    result = run_cli("probe", "--help")
    assert result["code"] == 0 and result["loaded"] == []


def test_a_depth_sweep_as_json_with_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "figures"
    code = main(["probe", "--block", "plain,residual", "--depth", "8,20", "--batch", "64", "--threads", "1", "--json",
                 "--out", str(out)])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    doc = json.loads(captured.out)
    assert doc["schema"] == "reslab.probe/1" and doc["dataset"] == "mnist1d" and doc["batch"] == 64
    assert [(p["block"], p["depth"], p["width"], p["blocks"]) for p in doc["probes"]] == [
        ("plain", 8, 8, 3), ("plain", 20, 8, 9), ("residual", 8, 8, 3), ("residual", 20, 8, 9)]  # fmt: skip
    for p in doc["probes"]:
        assert len(p["per_block"]) == p["blocks"] and p["anomalies"] == [] and p["wall_s"] > 0
        assert set(p["per_block"][0]) == {"block", "name", "act_rms", "grad_in_rms", "grad_out_rms",
                                          "shortcut_share", "cmap", "weight_grad"}  # fmt: skip
        assert len(p["jacobian"]["singular_values"]) == 10 and p["jacobian"]["examples"] == 8
        assert (p["summary"]["shortcut_share_mean"] == 0) == (p["block"] == "plain")
    assert sorted(f.name for f in out.iterdir()) == ["probe.json", "signal_cmap.png", "signal_gradient.png",
                                                     "signal_shortcut.png", "signal_weight_grad.png"]  # fmt: skip
    assert json.loads((out / "probe.json").read_text()) == doc


def test_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", "--block", "plain", "--depth", "8", "--norm", "none", "--threads", "1", "--per-block"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("net "))
    assert lines[header + 1].startswith("plain-8-w8")
    assert "grad in/out" in lines[header] and "10^" in lines[header + 1]
    assert any(line.split()[:2] == ["block", "name"] for line in lines[header + 2 :])
