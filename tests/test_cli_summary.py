"""`reslab summary`: the table, the JSON contract and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from reslab.cli import main


def test_summary_json_resnet56(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "--family", "resnet", "--block", "residual", "--depth", "56", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["params"] == data["trainable_params"] == 853_018
    assert data["macs"] == 125_485_696
    assert set(data) >= {"params", "trainable_params", "macs", "layers"}
    assert all(set(row) >= {"name", "type", "output_shape", "params"} for row in data["layers"])
    assert sum(row["params"] for row in data["layers"]) == 853_018
    assert data["layers"][-1]["output_shape"] == [None, 10]


def test_summary_convnet_defaults_print_the_seed_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "--family", "convnet"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 297,697" in out
    assert "Trainable params: 297,697" in out
    assert "(None, 128, 8, 8)" in out


def test_summary_one_dimensional_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "--depth", "20", "--width", "8", "--input", "1x40", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["input_shape"] == [1, 40]
    assert data["layers"][0]["output_shape"] == [None, 8, 40]


def test_summary_transformer_prints_macs_per_token(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "--family", "transformer", "--depth", "12", "--width", "64"]) == 0
    out = capsys.readouterr().out
    # 12 blocks x 12 d^2 + the 64 x 96 head, per token of the default window of 64 tokens
    assert "MACs per token: 595,968 (a window of 64)" in out
    assert "Total params: 616,288" in out and "(None, 64, 96)" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--family", "transformer", "--input", "65"], "the data's window 65 exceeds the net's context 64"),
        (["--family", "transformer", "--width", "30"], "width 30 is not a multiple of heads 4"),
        (["--depth", "57"], "nearest valid depths: 56 or 62"),
        (["--width", "0"], "must be a positive integer"),
        (["--family", "vgg"], "invalid choice: 'vgg'"),
        (["--block", "dense"], "invalid choice: 'dense'"),
        (["--shortcut", "D"], "invalid choice: 'D'"),
        (["--input", "3by32"], "malformed input shape '3by32'"),
        (["--input", "32"], "takes inputs"),
    ],
)
def test_bad_input_exits_2_with_one_line(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        sys.exit(main(["summary", *args]))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_console_script_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "reslab.cli", "summary", "--depth", "57"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "reslab summary: error: depth 57 is not valid for family 'resnet' (depth = 6n+2, n >= 1); "
        "nearest valid depths: 56 or 62"
    ]
