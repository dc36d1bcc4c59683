"""`reslab sweep --report` on a real (tiny) sweep, then the report read back: files, figures, the verdict's numbers
against MLflow, the artifacts on the parent run, and the page in headless Chromium (Debian's chromium, which
`nox -s tests` installs when missing)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest

from tests.helpers import sweep_with_report

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"

CONFIG = {
    "name": "tinyreport",
    "description": "a tiny sweep for the report tests",
    "dataset": {"name": "synthetic", "options": {"shape": [1, 16], "train_size": 512, "test_size": 128}},
    "grid": {
        "family": "resnet",
        "blocks": ["plain", "residual", "rezero"],
        "depths": [8, 14],
        "widths": [4],
        "seeds": [0],
    },
    "train": {"epochs": 3, "batch_size": 64, "warmup_epochs": 0.5, "telemetry_every": 2},
    "tracking": {"system_metrics": False},
    "sweep": {"workers": 2},
}


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("report")
    assert "report: reports/tinyreport/index.html" in sweep_with_report(workdir, CONFIG)
    return workdir


def test_report_files_and_figures(swept: Path) -> None:
    out = swept / "reports" / "tinyreport"
    for name in ("index.html", "report.md", "summary.csv", "epochs.csv"):
        assert (out / name).is_file(), name
    kinds = {p.stem for p in (out / "figures").glob("*.png")}
    assert kinds >= {"curves", "depth", "gradient_flow", "gradient_heatmap", "weight_gradients", "gates", "throughput"}
    assert {p.stem for p in (out / "figures").glob("*.svg")} == kinds
    html = (out / "index.html").read_text()
    assert "http://" not in html and "https://" not in html  # nothing fetched from the network
    assert html.count("data:image/png;base64,") == len(kinds)
    markdown = (out / "report.md").read_text()
    assert all(f"figures/{k}.png" in markdown for k in kinds)
    assert "## Provenance" in markdown and "git commit" in markdown


def test_verdict_numbers_match_mlflow(swept: Path) -> None:
    from mlflow.tracking import MlflowClient

    from reslab.report import collect, verdict

    uri = f"sqlite:///{swept / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tinyreport")
    finals: dict[str, list[float]] = defaultdict(list)
    for run in client.search_runs([exp.experiment_id]):
        if run.data.tags.get("reslab.role") != "sweep" and run.info.status == "FINISHED":
            finals[f"{run.data.tags['block']}-{run.data.tags['depth']}"].append(run.data.metrics["train_error"])
    v = verdict(collect(uri, "tinyreport").cells)
    assert set(v.numbers) == set(finals)
    for key, values in finals.items():
        assert v.numbers[key] == pytest.approx(sum(values) / len(values))
    first_line = (swept / "reports" / "tinyreport" / "report.md").read_text().splitlines()[4]
    assert first_line == f"> {v.text}"


def test_report_is_logged_on_the_parent_run(swept: Path) -> None:
    from reslab import tracking
    from reslab.sweep.parent import find_sweep

    store = tracking.store(f"sqlite:///{swept / 'mlflow.db'}")
    _, parent = find_sweep(store, "tinyreport")
    names = set(store.list_artifacts(parent.info.run_id, "report"))
    assert {"report/index.html", "report/report.md", "report/summary.csv"} <= names


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="Debian's chromium is not installed (nox -s tests installs it)"
)
def test_report_in_headless_chromium(swept: Path) -> None:
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must not look for drivers on the network
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
                "--window-size=1200,1000", f"--user-data-dir={tempfile.mkdtemp()}"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))
    try:
        driver.get((swept / "reports" / "tinyreport" / "index.html").as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])"
        )
        assert len(images) >= 5
        assert all(complete and width > 0 for _, complete, width in images), images
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == []
        assert driver.find_element("id", "verdict").text.startswith("Degradation")
        ARTIFACTS.mkdir(exist_ok=True)
        assert driver.save_screenshot(str(ARTIFACTS / "report-screenshot.png"))
    finally:
        driver.quit()
