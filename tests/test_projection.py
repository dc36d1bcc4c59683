"""`reslab bench-report --project`: a sweep's wall time from the train_step benchmarks, checked by hand arithmetic on
benchmark JSONs written here (the real ones come from `nox -s bench` on the machine to project for)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reslab.cli import main
from reslab.data.catalog import DATASET_INFO
from reslab.report.projection import ProjectionError, cell_work, load_train_steps, project
from reslab.sweep.config import load_config

GPU = "NVIDIA H200"
HE2015 = Path(__file__).resolve().parents[1] / "configs" / "cifar10-he2015.yaml"


def step_row(depth: int, step_s: float, *, block: str = "residual", kind: str = "single", cells: int = 1,
             compile_s: float = 30.0, precision: str = "bf16-mixed", compile: str = "reduce-overhead",
             variant: str = "fast-bf16") -> dict:
    info = {"family": "resnet", "block": block, "depth": depth, "width": 16, "batch": 128, "variant": variant,
            "kind": kind, "cells": cells, "images_per_s": cells * 128 / step_s, "step_s": step_s,
            "compile_s": compile_s, "precision": precision, "compile": compile, "device": GPU, "dtype": "bf16",
            "tflops": 1.0, "peak_tflops": 989.4}  # fmt: skip
    return {"name": f"test_train_step[{block}-{depth}-{kind}{cells}]", "group": "train_step", "extra_info": info}


def write(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"benchmarks": rows}))
    return path


def tiny_config(**grid) -> object:
    return load_config({
        "name": "tiny", "dataset": {"name": "cifar10", "options": {"val_size": 5000}},
        "grid": {"family": "resnet", "blocks": ["residual"], "depths": [20, 56], "widths": [16], "seeds": [0], **grid},
        "train": {"max_steps": 1000, "batch_size": 128, "precision": "bf16-mixed"},
    })  # fmt: skip


@pytest.mark.parametrize("name", [n for n, info in DATASET_INFO.items() if info.offline])
def test_dataset_sizes_are_known_without_loading_and_match_the_loader(name: str) -> None:
    from reslab.data.registry import load_dataset

    splits = load_dataset(name, {})
    val = 0 if splits.val is None else len(splits.val.y)
    assert DATASET_INFO[name].sizes({}) == (len(splits.train.y), val, len(splits.test.y))


def test_cifar_sizes_follow_the_validation_split() -> None:
    assert DATASET_INFO["cifar10"].sizes({"val_size": 5000}) == (45_000, 5000, 10_000)
    assert DATASET_INFO["cifar100"].sizes({}) == (50_000, 0, 10_000)


def test_one_cell_at_a_time_is_the_sum_of_the_cells(tmp_path: Path) -> None:
    rows = load_train_steps(write(tmp_path, [step_row(20, 0.002), step_row(56, 0.005)]))
    config = tiny_config()
    result = project(config, rows)
    (option,) = result.options
    # 1000 steps, 3 epochs of 352 steps -> 3 evaluations of 15k images at a third of a step's per-image cost
    eval_s = {d: 3 * 15_000 * s / 128 / 3 for d, s in ((20, 0.002), (56, 0.005))}
    expected = 1000 * 0.002 + eval_s[20] + 30 + 1000 * 0.005 + eval_s[56] + 30
    assert option.label == "1 cell at a time, fast-bf16" and option.wall_s == pytest.approx(expected)
    assert result.flops == pytest.approx(sum(w.flops for w in cell_work(config)))
    assert result.tflops == pytest.approx(result.flops / expected / 1e12)


def test_depths_between_and_beyond_the_measured_ones_follow_a_line(tmp_path: Path) -> None:
    rows = load_train_steps(write(tmp_path, [step_row(20, 0.002, compile_s=0), step_row(56, 0.005, compile_s=0)]))
    config = tiny_config(depths=[32, 110])
    (option,) = project(config, rows).options
    step = {32: 0.002 + 0.003 * 12 / 36, 110: 0.005 + 0.003 * 54 / 36}
    expected = sum(1000 * s + 3 * 15_000 * s / 128 / 3 for s in step.values())
    assert option.wall_s == pytest.approx(expected)


def test_concurrent_cells_are_scheduled_longest_first(tmp_path: Path) -> None:
    rows = [step_row(20, 0.002, compile_s=0), step_row(56, 0.005, compile_s=0),
            step_row(20, 0.004, kind="concurrent", cells=2, compile_s=0),
            step_row(56, 0.008, kind="concurrent", cells=2, compile_s=0)]  # fmt: skip
    config = tiny_config(seeds=[0, 1])
    result = project(config, load_train_steps(write(tmp_path, rows)))
    by_label = {o.label: o for o in result.options}
    cell = {d: 1000 * s + 3 * 15_000 * s / 128 / 3 for d, s in ((20, 0.004), (56, 0.008))}
    # four cells on two slots, longest first: each slot gets one 56 and one 20
    assert by_label["2 cells at once, fast-bf16"].wall_s == pytest.approx(cell[56] + cell[20])
    # (8 + 4) ms steps on each slot beat 2 x (5 + 2) ms in a row
    assert result.best.label == "2 cells at once, fast-bf16"
    assert "residual-56-w16-s" in by_label["2 cells at once, fast-bf16"].critical


def test_a_pack_trains_seeds_together(tmp_path: Path) -> None:
    rows = [step_row(20, 0.002), step_row(56, 0.005),
            step_row(20, 0.003, kind="pack", cells=4, compile_s=0, compile="off", variant="pack4"),
            step_row(56, 0.006, kind="pack", cells=4, compile_s=0, compile="off", variant="pack4")]  # fmt: skip
    config = tiny_config(seeds=[0, 1, 2, 3, 4])  # a pack of 4 and a pack of 1 (timed as a single cell) per depth
    result = project(config, load_train_steps(write(tmp_path, rows)))
    pack = next(o for o in result.options if o.kind == "pack")
    run = {d: 1000 * s + 3 * 15_000 * s / 128 / 3 for d, s in ((20, 0.003), (56, 0.006))}
    alone = {d: 1000 * s + 3 * 15_000 * s / 128 / 3 + 30 for d, s in ((20, 0.002), (56, 0.005))}
    assert pack.wall_s == pytest.approx(run[20] + run[56] + alone[20] + alone[56])
    assert pack.label == "packs of 4 seeds, pack4"
    one_seed = project(tiny_config(), load_train_steps(write(tmp_path, rows)))
    assert "no two cells differ in the seed alone: packs have one member each, timed as single cells" in one_seed.notes


def test_a_projection_without_the_configs_precision_says_which_step_it_used(tmp_path: Path) -> None:
    rows = [step_row(20, 0.004, precision="32-true", compile="off"), step_row(56, 0.009, precision="32-true",
                                                                          compile="off")]  # fmt: skip
    rows[0]["extra_info"]["variant"] = rows[1]["extra_info"]["variant"] = "eager-fp32"
    result = project(tiny_config(), load_train_steps(write(tmp_path, rows)))
    assert result.best.variant == "eager-fp32"
    assert "the config trains with precision bf16-mixed, not measured on NVIDIA H200: projected with the 32-true " \
           "steps" in result.notes  # fmt: skip


def test_a_projection_needs_rows_of_the_configs_net(tmp_path: Path) -> None:
    with pytest.raises(ProjectionError, match=r"no train_step result for resnet width \[32\] on NVIDIA H200; "
                                              r"measured: resnet w16"):  # fmt: skip
        project(tiny_config(widths=[32]), load_train_steps(write(tmp_path, [step_row(20, 0.002)])))
    with pytest.raises(ProjectionError, match="run `nox -s bench`"):
        project(tiny_config(), load_train_steps(write(tmp_path, [])))


def test_bench_report_prints_the_he2015_projection(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [step_row(d, 0.001 * d / 20, block=b) for d in (20, 56, 110) for b in ("plain", "residual")]
    rows += [step_row(d, 0.003 * d / 20, kind="concurrent", cells=4) for d in (20, 56, 110)]
    path = write(tmp_path, rows)
    assert main(["bench-report", str(path), "--project", str(HE2015)]) == 0
    out = capsys.readouterr().out
    assert f"projected wall time of {HE2015}: 10 cells x 64,000 steps of batch 128" in out
    assert "4 cells at once, fast-bf16" in out and "1 cell at a time, fast-bf16" in out
    assert "% of the 989.4 TFLOP/s peak" in out
    assert main(["bench-report", str(path), "--project", str(HE2015), "--set", "grid.widths=[64]"]) == 2
    assert "no train_step result for resnet width [64] on NVIDIA H200" in capsys.readouterr().err


def test_a_dry_run_shows_the_projection_from_the_newest_benchmark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", str(HE2015), "--dry-run"]) == 0
    assert "projected wall time" not in capsys.readouterr().out  # no benchmark here yet
    (tmp_path / "reports" / "bench").mkdir(parents=True)
    rows = [step_row(d, 0.001 * d / 20) for d in (20, 56, 110)]
    (tmp_path / "reports" / "bench" / "20261201-120000.json").write_text(json.dumps({"benchmarks": rows}))
    (tmp_path / "reports" / "bench" / "20261201-130000.json").write_text(json.dumps({"benchmarks": []}))
    assert main(["sweep", str(HE2015), "--dry-run"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert "projected wall time on NVIDIA H200 (reports/bench/20261201-120000.json):" in out
    assert f"with 1 cell at a time, fast-bf16; `reslab bench-report reports/bench/20261201-120000.json --project " \
           f"{HE2015}` shows every option" in out  # fmt: skip
    assert not (tmp_path / "runs").exists()


def test_benchmark_parts_merge_into_one_json_and_a_missing_part_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks.merge_json import main as merge

    a, b = write(tmp_path, [step_row(20, 0.002)]), tmp_path / "b.json"
    b.write_text(json.dumps({"benchmarks": [step_row(56, 0.005)], "machine_info": {"node": "x"}}))
    out = tmp_path / "merged.json"
    assert merge([str(out), str(a), str(tmp_path / "missing.json"), str(b)]) == 0
    assert "missing.json is missing (its part did not finish): left out" in capsys.readouterr().err
    assert sorted(load_train_steps(out)["depth"]) == [20, 56]
