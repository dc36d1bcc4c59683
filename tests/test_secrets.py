"""Passwords stay on the machine: URIs are masked wherever reslab prints or stores them, http credentials go to
MLflow's own variables, the report uploads only its own files and escapes what it quotes. (The end-to-end proof on
password-protected servers is tests/drills/test_secrets.py.)"""

from __future__ import annotations

import base64
import http.server
import threading
from pathlib import Path
from urllib.parse import quote

import pytest

from reslab import redact as R
from reslab import tracking
from tests.helpers import sweep_in_store

PASSWORD = "p@ss:w/rd#?&%+x"
ENCODED = quote(PASSWORD, safe="")


@pytest.fixture(autouse=True)
def _forget(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(R, "_known", set())
    for var in (R.USERNAME_ENV, R.PASSWORD_ENV, "PGPASSWORD", R.TRACKING_ENV, R.STORAGE_ENV):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        (f"postgresql://user:{ENCODED}@db.example:5432/q", "postgresql://user:***@db.example:5432/q"),
        (f"postgresql+psycopg://user:{ENCODED}@h/q?sslmode=require", "postgresql+psycopg://user:***@h/q?sslmode=require"),
        (f"http://admin:{ENCODED}@127.0.0.1:5000", "http://admin:***@127.0.0.1:5000"),
        ("postgresql://user@h/q", "postgresql://user@h/q"),
        ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
        ("http://127.0.0.1:5000/#/experiments", "http://127.0.0.1:5000/#/experiments"),
    ],
)
def test_a_uri_shows_its_password_as_stars(uri: str, shown: str) -> None:
    assert R.redact_uri(uri) == shown
    assert R.redact(f"queue  {uri}  (ok)") == f"queue  {shown}  (ok)"


def test_a_remembered_password_is_masked_in_every_spelling() -> None:
    R.remember(f"postgresql://u:{ENCODED}@h/db")
    for spelling in (PASSWORD, ENCODED, quote(PASSWORD)):
        assert R.redact(f'FATAL: password "{spelling}" rejected') == 'FATAL: password "***" rejected'


def test_pgpassword_is_remembered_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSWORD", "hunter2-long")
    R.remember()
    assert R.redact("the driver said hunter2-long") == "the driver said ***"


def test_a_guarded_stream_masks_what_is_written(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    import sys

    monkeypatch.setattr(sys, "stdout", R.RedactingStream(sys.stdout))
    R.remember(f"postgresql://u:{ENCODED}@h/db")
    print(f"Traceback ... postgresql://u:{ENCODED}@h/db and {PASSWORD}")
    assert capsys.readouterr().out == "Traceback ... postgresql://u:***@h/db and ***\n"


def test_http_userinfo_moves_to_mlflows_own_variables() -> None:
    import os

    bare = tracking.resolve_uri(f"http://admin:{ENCODED}@127.0.0.1:5000/")
    assert bare == "http://127.0.0.1:5000/"
    assert os.environ[R.USERNAME_ENV] == "admin" and os.environ[R.PASSWORD_ENV] == PASSWORD
    assert R.redact(f"echo {PASSWORD}") == "echo ***"


class _AuthServer(http.server.BaseHTTPRequestHandler):
    """An MLflow server with basic auth, as far as `check_server` asks: /health is open, the API needs admin."""

    def do_GET(self) -> None:
        expected = "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
        ok = self.path == "/health" or self.headers.get("Authorization") == expected
        self.send_response(200 if ok else 401)
        self.end_headers()
        self.wfile.write(b"OK" if ok else b"unauthorized")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def auth_server():
    server = http.server.HTTPServer(("127.0.0.1", 0), _AuthServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


def test_the_server_check_sends_the_credentials_and_names_a_refusal_without_them(auth_server: int) -> None:
    tracking.check_server(f"http://admin:{ENCODED}@127.0.0.1:{auth_server}")  # accepted
    with pytest.raises(tracking.TrackingError) as refused:
        tracking.check_server(f"http://admin:wrong-{ENCODED}@127.0.0.1:{auth_server}")
    message = str(refused.value)
    assert "refused the credentials (HTTP 401)" in message and PASSWORD not in message and ENCODED not in message
    import os

    del os.environ[R.USERNAME_ENV], os.environ[R.PASSWORD_ENV]
    with pytest.raises(tracking.TrackingError, match="needs credentials"):
        tracking.check_server(f"http://127.0.0.1:{auth_server}")


def test_an_unreachable_server_with_credentials_is_named_without_them() -> None:
    with pytest.raises(tracking.TrackingError) as exc:
        tracking.check_server(f"http://admin:{ENCODED}@127.0.0.1:1", timeout=2)
    assert "http://127.0.0.1:1 is unreachable" in str(exc.value) and ENCODED not in str(exc.value)


def test_the_store_masks_passwords_in_tags_params_and_texts(tmp_path: Path) -> None:
    store = tracking.store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    uri = f"postgresql://u:{ENCODED}@h/db"
    run = store.start_run("e", "r", {"where": uri}, {"storage": uri})
    store.set_tags(run, {"again": f"--storage {uri}"})
    store.log_text(run, f"sweep:\n  storage: {uri}\n", "config.yaml")
    store.finish_run(run, "FAILED", f"OperationalError: cannot connect to {uri}")
    got = store.get_run(run)
    texts = [*got.data.tags.values(), *got.data.params.values(), store.read_artifact_text(run, "config.yaml")]
    assert not [t for t in texts if ENCODED in t]
    assert got.data.params["storage"] == "postgresql://u:***@h/db"


def test_the_resolved_config_and_the_workers_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from reslab.sweep.config import load_config

    storage, uri = f"postgresql://u:{ENCODED}@h/q", f"postgresql://u:{ENCODED}@h/m"
    config = load_config({"name": "s", "grid": {"depths": [8]}}, assign={"sweep.storage": storage,
                                                                         "tracking.uri": uri})  # fmt: skip
    assert config.storage_url == storage  # assigned as given: a URI is not parsed as YAML
    resolved = config.resolved()
    assert resolved["sweep"]["storage"] == "postgresql://u:***@h/q" and resolved["tracking"]["uri"].endswith("***@h/m")
    worker = load_config(resolved)
    monkeypatch.setenv(R.STORAGE_ENV, storage)
    monkeypatch.setenv(R.TRACKING_ENV, uri)
    real = worker.from_environment()
    assert (real.storage_url, real.tracking.uri) == (storage, uri)


def test_the_storage_comes_from_the_environment_when_nothing_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from reslab.sweep.config import load_config

    monkeypatch.setenv(R.STORAGE_ENV, "postgresql://u@h/q")
    assert load_config({"name": "s", "grid": {"depths": [8]}}).storage_url == "postgresql://u@h/q"
    named = load_config({"name": "s", "grid": {"depths": [8]}, "sweep": {"storage": "postgresql://u@h/other"}})
    assert named.storage_url == "postgresql://u@h/other"


def test_the_report_uploads_only_its_own_files_and_escapes_markdown(tmp_path: Path, monkeypatch) -> None:
    """`reslab report --out .` in a folder that also holds the store, a config and a secret: only the report's files
    reach MLflow; names and reasons from MLflow are literal text in report.md and masked everywhere."""
    from reslab.report import collect
    from reslab.report.render import write_report

    uri, store, _, parent = sweep_in_store(tmp_path, monkeypatch, "x", ["plain"])
    (tmp_path / "queue.yaml").write_text("storage: somewhere\n")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "secret.txt").write_text("do not upload\n")
    tags = {"family": "resnet", "block": "plain", "depth": 8, "width": 4, "shortcut": "A", "norm": "batch",
            "seed": 0, "reslab.cell": "resnet-plain-8-w4-A-batch-s0"}  # fmt: skip
    run = store.start_run("x", "plain-8 *bold* [link](http://evil) <script>|pipe", tags, parent_run_id=parent)
    store.finish_run(run, "FAILED", f"boom at postgresql://u:{ENCODED}@h/db <img src=x>")
    paths = write_report(collect(uri, "x"), tmp_path)
    uploaded = set(store.list_artifacts(parent, "report"))
    assert {"report/index.html", "report/report.md", "report/summary.csv", "report/epochs.csv"} <= uploaded
    assert uploaded.isdisjoint({"report/mlflow.db", "report/queue.yaml", "report/notes"})
    assert set(store.list_artifacts(parent, "report/figures")) == {
        f"report/figures/{p.name}" for p in paths.written if p.parent.name == "figures"
    }
    markdown = paths.markdown.read_text()
    assert r"plain-8 \*bold\* \[link\](http://evil) &lt;script&gt;\|pipe" in markdown
    assert "<script>" not in markdown and "<img" not in markdown
    for path in paths.written:
        assert ENCODED not in path.read_bytes().decode(errors="replace"), path


@pytest.mark.parametrize("name", ["it's", "a' or '1'='1", 'x"y', "tags.`reslab.sweep` = 'x'"])
def test_a_report_name_with_filter_syntax_is_refused_in_one_line(name: str, capsys, tmp_path, monkeypatch) -> None:
    from reslab.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["report", name]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "is not a sweep name" in err and "Traceback" not in err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "reports").exists()


def test_an_experiment_name_with_quotes_is_just_a_name(tmp_path: Path) -> None:
    """Experiments are looked up by name, never through a filter string, so any name MLflow takes works."""
    store = tracking.store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    name = "it's a \"test\" ' or 1=1 --"
    run = store.start_run(name, "r", {"reslab.sweep": "s"})
    assert [r.info.run_id for r in store.search_runs(name, "tags.`reslab.sweep` = 's'")] == [run]
    assert name in store.experiment_names()


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("# heading", r"\# heading"),
        ("- item", r"\- item"),
        ("1. first", r"1\. first"),
        ("0.1 ± 0.2", "0.1 ± 0.2"),
        ("plain-56 (+4.3 points)", "plain-56 (+4.3 points)"),
        ("a|b\nc", r"a\|b c"),
        ("`code` ~~gone~~ _em_", r"\`code\` \~\~gone\~\~ \_em\_"),
    ],
)
def test_markdown_escaping_keeps_text_literal_and_readable(text: str, escaped: str) -> None:
    from reslab.report.render import md_escape

    assert md_escape(text) == escaped
