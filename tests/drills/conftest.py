"""Real servers for the scale-out drills: a PostgreSQL cluster (Debian's packages; `nox -s drills` installs them
when missing) and an `mlflow server` with a PostgreSQL backend and an artifact destination, both on 127.0.0.1,
started once per session and stopped after. Drills run only under `nox -s drills` (RESLAB_DRILLS=1)."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The drills run only where RESLAB_DRILLS=1."""
    drills = [item for item in items if "drills" in item.keywords]
    if os.environ.get("RESLAB_DRILLS") == "1":
        return
    skip = pytest.mark.skip(reason="drills start PostgreSQL and an MLflow server: run them with `nox -s drills`")
    for item in drills:
        item.add_marker(skip)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)
    if found is None:
        pytest.fail(f"{name} not found: install Debian's postgresql package (nox -s drills does)")
    return found


class PgServer:
    """A throwaway PostgreSQL cluster: postgresql://postgres@127.0.0.1:PORT, trust auth, fsync off (a drill, not a
    production server); with `password`, SCRAM authentication and the password percent-encoded in `url`. As root,
    the server runs as the `postgres` user (it refuses root) from a folder of its own outside pytest's private
    tmp."""

    def __init__(self, password: str | None = None) -> None:
        from urllib.parse import quote

        self.root = Path(tempfile.mkdtemp(prefix="reslab-drill-pg-"))
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_postgres:
            shutil.chown(self.root, "postgres")
        self.data, self.port = self.root / "data", free_port()
        auth = ["-A", "trust"]
        if password is not None:
            pwfile = self.root / "pwfile"
            pwfile.write_text(password + "\n")
            if self.as_postgres:
                shutil.chown(pwfile, "postgres")
            auth = ["-A", "scram-sha-256", f"--pwfile={pwfile}"]
        userinfo = "postgres" if password is None else f"postgres:{quote(password, safe='')}"
        self.url = f"postgresql://{userinfo}@127.0.0.1:{self.port}"
        subprocess.run([*self.as_postgres, _pg_bin("initdb"), "-D", str(self.data), *auth, "-U", "postgres",
                        "--no-sync"], check=True, capture_output=True)  # fmt: skip
        if password is not None:
            pwfile.unlink()

    def _ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
        subprocess.run([*self.as_postgres, _pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
                        "-o", options, "-w", *args], check=True, capture_output=True)  # fmt: skip

    def start(self) -> None:
        self._ctl("start")

    def halt(self) -> None:
        """The server goes away (its data stays): `start` brings it back."""
        self._ctl("-m", "fast", "stop")

    def restart(self) -> None:
        """What a database failover or an upgrade does to its clients: every connection is cut."""
        self._ctl("-m", "fast", "restart")

    def stop(self) -> None:
        subprocess.run([*self.as_postgres, _pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "stop"],
                       capture_output=True)  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)


# The servers live as long as the drills, not the session: on a 2-core machine any process that wakes often stalls
# the other tests' 2-thread torch kernels (one OpenMP thread descheduled, the other spinning at the barrier).
@pytest.fixture(scope="package")
def pg_server():
    server = PgServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="package")
def postgres(pg_server: PgServer) -> str:
    return pg_server.url


def create_database(server: str, name: str) -> str:
    import psycopg

    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"


@contextlib.contextmanager
def serving_mlflow(root: Path, backend: str, *options: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`mlflow server` on `backend` with artifacts under `root`, on a free port of 127.0.0.1, until the block ends:
    yields its URL once /health answers. MLflow's job execution (GenAI evaluation, trace roll-ups: a dozen consumer
    processes that poll several times a second) is off, as `reslab ui` runs it: reslab uses none of it."""
    env = {**(os.environ if env is None else env), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    port = free_port()
    log = open(root / "server.log", "w")  # noqa: SIM115 - open for the server's lifetime
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", *options, "--backend-store-uri", backend, "--artifacts-destination",
         str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port)],
        cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"mlflow server did not answer on {url}: {(root / 'server.log').read_text()[-2000:]}")
    try:
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="package")
def mlflow_server(postgres: str, tmp_path_factory: pytest.TempPathFactory):
    """http://127.0.0.1:PORT: `mlflow server` on a PostgreSQL backend store with a local artifact destination."""
    backend = create_database(postgres, "mlflow")
    with serving_mlflow(tmp_path_factory.mktemp("mlflow"), backend, "--workers", "2") as url:
        yield url


def record(figures: dict) -> None:
    """Append a drill's figures (cells, duplicates, lost, retries, wall time) to test-artifacts/drills.jsonl."""
    out = ROOT / "test-artifacts"
    out.mkdir(exist_ok=True)
    with open(out / "drills.jsonl", "a") as fh:
        fh.write(json.dumps(figures) + "\n")
    print(json.dumps(figures))
