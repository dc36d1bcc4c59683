"""No password leaves the machine: a sweep and its report on a PostgreSQL queue and tracking store that need a
password (with URL-special characters), and a sweep against an `mlflow server` with HTTP basic authentication and
the credentials in its URI. Every console line, every file under the working directory and the report folder,
every worker log, every MLflow param, tag and artifact, every queue attribute and every other process's command
line is searched for the password, raw and percent-encoded: none may hold it."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

from tests.drills.conftest import PgServer, create_database, serving_mlflow

pytestmark = pytest.mark.drills

PASSWORD = "s3:cr@t/p#w?&%x+y'z"
NEEDLES = sorted({PASSWORD, quote(PASSWORD, safe=""), quote(PASSWORD)}, key=len, reverse=True)


@pytest.fixture(scope="module")
def locked_pg():
    server = PgServer(password=PASSWORD)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def tiny_config(workdir: Path, name: str) -> Path:
    data = {
        "name": name,
        "dataset": {"name": "synthetic", "options": {"shape": [1, 16], "train_size": 256, "test_size": 64}},
        "grid": {"family": "resnet", "blocks": ["plain", "residual"], "depths": [8], "widths": [4]},
        "train": {"epochs": 1, "batch_size": 64, "warmup_epochs": 0},
        "tracking": {"system_metrics": False},
        "sweep": {"workers": 1, "heartbeat_s": 1, "grace_s": 8},
    }
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class CommandLines:
    """Samples every process's command line while a command runs (what `ps` shows to every user), but the command's
    own: the user typed that one."""

    def __init__(self, own: int) -> None:
        self.own, self.seen, self._stop = own, {}, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit() or int(proc.name) in (self.own, os.getpid()):
                    continue
                try:
                    line = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if "reslab" in line or "mlflow" in line:
                    self.seen[proc.name] = line
            time.sleep(0.1)

    def stop(self) -> dict[str, str]:
        self._stop.set()
        self._thread.join()
        return self.seen


def run(cmd: list[str], cwd: Path, console: Path, env: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    """Run a reslab command with its console captured outside `cwd`; return its exit code and the command lines
    of the processes that ran meanwhile."""
    env = env or {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RESLAB_STORAGE")}
    with open(console, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        sampler = CommandLines(proc.pid)
        try:
            code = proc.wait(timeout=400)
        finally:
            lines = sampler.stop()
    return code, lines


def leaks(where: str, data: bytes | str) -> list[str]:
    text = data.decode(errors="replace") if isinstance(data, bytes) else str(data)
    return [f"{where}: {needle!r}" for needle in NEEDLES if needle in text]


def files_leaks(root: Path) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            found += leaks(str(path.relative_to(root)), path.read_bytes())
    return found


def mlflow_leaks(tracking: str, download_to: Path) -> list[str]:
    """Every experiment, run name, param and tag of the store, and every artifact of every run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking)
    found = []
    for exp in client.search_experiments():
        found += leaks(f"experiment {exp.name}", f"{exp.name} {exp.tags} {exp.artifact_location}")
        for run in client.search_runs([exp.experiment_id], max_results=1000):
            rid = run.info.run_id
            found += leaks(f"run {rid} name", run.info.run_name or "")
            found += leaks(f"run {rid} params", repr(run.data.params))
            found += leaks(f"run {rid} tags", repr(run.data.tags))
            if client.list_artifacts(rid):
                target = download_to / rid
                target.mkdir(parents=True)
                client.download_artifacts(rid, "", str(target))
                found += [f"run {rid} artifact {hit}" for hit in files_leaks(target)]
    return found


def queue_leaks(storage: str) -> list[str]:
    import optuna

    st = optuna.storages.RDBStorage(storage)
    found = []
    for study in st.get_all_studies():
        found += leaks(f"study {study.study_name}", repr((study.user_attrs, study.system_attrs)))
        for trial in st.get_all_trials(study._study_id):
            found += leaks(f"trial {trial.number}", repr((trial.user_attrs, trial.system_attrs)))
    return found


def test_a_sweep_and_its_report_on_password_protected_postgresql_leak_no_password(
    tmp_path: Path, locked_pg: PgServer
) -> None:
    storage = create_database(locked_pg.url, "secret_queue")
    tracking = create_database(locked_pg.url, "secret_mlflow")
    work, consoles = tmp_path / "work", tmp_path / "consoles"
    work.mkdir()
    consoles.mkdir()
    cfg = tiny_config(work, "secret")
    cli = [sys.executable, "-m", "reslab.cli"]

    code, lines = run([*cli, "sweep", str(cfg), "--storage", storage, "--tracking-uri", tracking, "--report"],
                      work, consoles / "sweep.txt")  # fmt: skip
    sweep_out = (consoles / "sweep.txt").read_text()
    assert code == 0, sweep_out[-3000:]
    code2, lines2 = run([*cli, "report", "secret", "--tracking-uri", tracking, "--out", str(work / "again")], work,
                        consoles / "report.txt")  # fmt: skip
    assert code2 == 0, (consoles / "report.txt").read_text()[-3000:]

    # The way docs/reliability.md gives: the URIs from the environment without the password, the password in PGPASSWORD.
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    bare = f":{quote(PASSWORD, safe='')}@"
    env.update(RESLAB_STORAGE=storage.replace(bare, "@"), MLFLOW_TRACKING_URI=tracking.replace(bare, "@"),
               PGPASSWORD=PASSWORD)  # fmt: skip
    code3, lines3 = run([*cli, "sweep", str(cfg), "--dry-run"], work, consoles / "dry-run.txt", env=env)
    dry = (consoles / "dry-run.txt").read_text()
    assert code3 == 0 and "2 of 2 done" in dry, dry[-3000:]

    # The sweep did its work, and said where its stores are, masked.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name("secret").experiment_id], "tags.`reslab.cell` != ''")
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]
    assert "postgres:***@127.0.0.1" in sweep_out
    assert "postgres:***@127.0.0.1" in (work / "runs" / "secret" / "config.resolved.yaml").read_text()
    assert (work / "reports" / "secret" / "index.html").is_file() and (work / "again" / "report.md").is_file()
    assert any("reslab.sweep.worker" in line for line in lines.values()), "no worker command line was sampled"

    found = leaks("sweep console", sweep_out) + leaks("report console", (consoles / "report.txt").read_text())
    found += leaks("dry-run console", dry)
    found += files_leaks(work)
    found += mlflow_leaks(tracking, tmp_path / "artifacts")
    found += queue_leaks(storage)
    found += [f"command line of pid {pid}" for pid, line in {**lines, **lines2, **lines3}.items() if leaks("", line)]
    assert found == []


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory):
    """`mlflow server --app-name basic-auth`: every REST call needs a user; the admin's password is PASSWORD."""
    root = tmp_path_factory.mktemp("auth-mlflow")
    env = dict(os.environ, MLFLOW_AUTH_ADMIN_PASSWORD=PASSWORD, MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16))
    env.pop("MLFLOW_TRACKING_URI", None)
    with serving_mlflow(root, f"sqlite:///{root / 'mlflow.db'}", "--app-name", "basic-auth", "--workers", "1",
                        env=env) as url:  # fmt: skip
        yield int(url.rsplit(":", 1)[1])


def test_credentials_in_an_http_tracking_uri_reach_the_server_not_the_logs(tmp_path: Path, auth_server: int) -> None:
    work, consoles = tmp_path / "work", tmp_path / "consoles"
    work.mkdir()
    consoles.mkdir()
    cfg = tiny_config(work, "authsweep")
    uri = f"http://admin:{quote(PASSWORD, safe='')}@127.0.0.1:{auth_server}"
    code, lines = run([sys.executable, "-m", "reslab.cli", "sweep", str(cfg), "--tracking-uri", uri], work,
                      consoles / "sweep.txt")  # fmt: skip
    out = (consoles / "sweep.txt").read_text()
    assert code == 0, out[-3000:]
    # what to run next names the variables that hold the credentials, not the credentials
    assert "(with MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD set)" in " ".join(out.split())

    env = dict(os.environ, MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=PASSWORD)
    check = subprocess.run(
        [sys.executable, "-c", "import sys; from mlflow.tracking import MlflowClient; c = MlflowClient(sys.argv[1]); "
         "e = c.get_experiment_by_name('authsweep'); "
         "print(sorted(r.info.status for r in c.search_runs([e.experiment_id], \"tags.`reslab.cell` != ''\")))",
         f"http://127.0.0.1:{auth_server}"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert check.stdout.strip() == "['FINISHED', 'FINISHED']", check.stderr[-2000:]
    found = leaks("console", out) + files_leaks(work)
    found += [f"command line of pid {pid}" for pid, line in lines.items() if leaks("", line)]
    assert found == []

    wrong = uri.replace(quote(PASSWORD, safe=""), "not-the-password")
    refused = subprocess.run(
        [sys.executable, "-m", "reslab.cli", "report", "authsweep", "--tracking-uri", wrong, "--out", str(tmp_path)],
        cwd=work, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "Traceback" not in refused.stderr and "not-the-password" not in refused.stdout + refused.stderr
    assert "admin:***@" in refused.stderr or "credentials" in refused.stderr, refused.stderr
