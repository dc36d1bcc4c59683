"""nox sessions for reslab. Each session installs what it needs into a venv that later runs reuse.

torch is installed first and pinned (TORCH below): pip then takes the local CPU wheel on machines that carry one
and the CUDA build from PyPI on a GPU machine. Set RESLAB_TORCH to another requirement, or RESLAB_TORCH_INDEX to
an index such as https://download.pytorch.org/whl/cpu (a 200 MB CPU build instead of the multi-GB CUDA one).
A stamp of pyproject.toml and the torch choice in the venv skips pip entirely when nothing changed.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import time
from pathlib import Path

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests"]

ROOT = Path(__file__).parent
TORCH = "torch==2.13.0"


def install(session: nox.Session, extras: str = "dev") -> None:
    """Install torch, then the project (editable) with `extras`, unless the venv already has exactly that."""
    torch_req = os.environ.get("RESLAB_TORCH", TORCH)
    index = os.environ.get("RESLAB_TORCH_INDEX", "")
    key = hashlib.sha256(f"{torch_req}|{index}|{extras}|".encode() + (ROOT / "pyproject.toml").read_bytes())
    stamp = Path(session.virtualenv.location) / ".reslab-install"
    if stamp.exists() and stamp.read_text() == key.hexdigest():
        return
    session.install(torch_req, *(["--index-url", index] if index else []))
    session.install("-e", f".[{extras}]")
    stamp.write_text(key.hexdigest())


#: Under CI (CI=true) the browser test and the drills are the only proof of their features: they must run, so a
#: machine that cannot install chromium or PostgreSQL fails the session instead of skipping them.
STRICT = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def ensure_chromium(session: nox.Session) -> None:
    """The report's browser test needs Debian's chromium and chromedriver: install them where apt can."""
    if shutil.which("chromium") and shutil.which("chromedriver"):
        return
    if not shutil.which("apt-get") or os.geteuid() != 0:
        message = "chromium is missing and cannot be installed here (Debian's chromium and chromium-driver)"
        if STRICT:
            session.error(message)
        session.warn(message + ": the browser test will be skipped")
        return
    session.run("apt-get", "update", "-qq", external=True)
    session.run("apt-get", "install", "-y", "-qq", "chromium", "chromium-driver", external=True)


def parallel() -> list[str]:
    """pytest-xdist workers, one per core (at most 4), each pinned to its own cores by tests/conftest.py: most of
    the suite is processes starting, waiting on leases and servers, and small single-threaded trainings, which a
    second core runs beside the first. A file stays on one worker (`loadfile`), in collection order, where
    tests/conftest.py puts the drills and the slow files first (the longest work starts first). The few tests that
    ask for two torch threads on a worker's one core run with OpenMP's passive wait (`OMP_WAIT_POLICY`, read when
    libgomp loads): a spinning thread at a barrier would wait out whole time slices of its descheduled twin."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = min(cores, 4)
    return ["-n", str(n), "--dist", "loadfile", "--no-loadscope-reorder"] if n > 1 else []


@nox.session
def tests(session: nox.Session) -> None:
    """Lint, then the whole suite: unit tests, slow end-to-end checks, the scale-out drills (PostgreSQL and MLflow
    servers), the browser test, and every benchmark once (timings come from `nox -s bench`), on one pytest worker
    per core. `-- -m "not slow and not drills"` for a quick run, `-- -n 0` for a serial one."""
    install(session)
    ensure_chromium(session)
    drills_ok = ensure_postgres(session, required=STRICT)
    slurm_ok = ensure_slurm(session, required=STRICT)
    session.run("ruff", "check", ".")
    targets = session.posargs or ["tests", "benchmarks", "--benchmark-disable"]
    env = {"SE_OFFLINE": "true", "RESLAB_DRILLS": "1" if drills_ok else "0", "RESLAB_SLURM": "1" if slurm_ok else "0"}
    workers = parallel()
    if workers:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    session.run("pytest", *workers, *targets, env=env)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the whole tree."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".", *session.posargs)


@nox.session
def sweep(session: nox.Session) -> None:
    """The main job: the default sweep (or `-- configs/X.yaml --set k=v ...`), then its report."""
    install(session)
    args = session.posargs or ["configs/default.yaml"]
    session.run("reslab", "sweep", *args, "--report")


@nox.session
def ui(session: nox.Session) -> None:
    """The MLflow UI on the sweep's store (`-- --port 5001` etc. pass through)."""
    install(session)
    session.run("reslab", "ui", *session.posargs)


@nox.session
def report(session: nox.Session) -> None:
    """Render a sweep's report: `nox -s report -- NAME [--out DIR]` (default: the default sweep)."""
    install(session)
    session.run("reslab", "report", *(session.posargs or ["default"]))


@nox.session
def bench(session: nox.Session) -> None:
    """Throughput benchmarks: reports/bench/<timestamp>.json and its figures, and the projected wall time of
    configs/cifar10-he2015.yaml on this machine; `-- --benchmark-compare` compares with the last saved run
    (pytest-benchmark keeps them in .benchmarks/), `-- -k train_step` runs the training-step group alone."""
    install(session)
    out = ROOT / "reports" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    session.run("pytest", "benchmarks", f"--benchmark-json={target}", "--benchmark-autosave", *session.posargs)
    session.run("reslab", "bench-report", str(target), "--project", "configs/cifar10-he2015.yaml")


@nox.session
def profile(session: nox.Session) -> None:
    """Where the training step's time goes: `torch.profiler` traces of ResNet-20/56/110 (eager fp32, and the fast
    bf16 step on CUDA) with one finding per net, in reports/profile/; `-- --depth 56 --steps 50` to choose."""
    install(session)
    session.run("python", "-m", "benchmarks.profile_step", *session.posargs)


def ensure_debian(session: nox.Session, present: bool, packages: list[str], what: str, required: bool) -> bool:
    """Install Debian's `packages` unless `present`, where apt can (as root); else fail (`required`) or warn that
    `what` will be skipped. Whether they are there now."""
    if present:
        return True
    if not shutil.which("apt-get") or os.geteuid() != 0:
        message = f"{what} need Debian's {', '.join(packages)}, which cannot be installed here"
        if required:
            session.error(message)
        session.warn(message + ": they will be skipped")
        return False
    session.run("apt-get", "update", "-qq", external=True)
    session.run("apt-get", "install", "-y", "-qq", *packages, external=True)
    return True


def ensure_postgres(session: nox.Session, required: bool = True) -> bool:
    """The drills run a real PostgreSQL server from Debian's packages: install it where apt can."""
    present = bool(shutil.which("initdb") or glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return ensure_debian(session, present, ["postgresql"], "the drills", required)


def ensure_slurm(session: nox.Session, required: bool = True) -> bool:
    """The cluster drill runs a real one-node SLURM cluster (controller, node daemon, munge) from Debian's packages:
    install them where apt can."""
    present = all(shutil.which(b) for b in ("munged", "slurmctld", "slurmd", "sbatch"))
    return ensure_debian(session, present, ["munge", "slurmctld", "slurmd", "slurm-client"], "the SLURM drills",
                         required)  # fmt: skip


@nox.session
def drills(session: nox.Session) -> None:
    """Scale-out drills: a real PostgreSQL server and `mlflow server` on 127.0.0.1, two machines' coordinators on
    one study, a machine killed mid-cell, unreachable servers, SIGINT; a one-node SLURM cluster's array job with
    tasks cancelled, requeued and SIGTERMed mid-cell. Figures go to test-artifacts/drills.jsonl."""
    install(session)
    ensure_postgres(session)
    slurm_ok = ensure_slurm(session, required=False)
    session.run("pytest", "tests/drills", "-p", "no:cacheprovider", *session.posargs,
                env={"RESLAB_DRILLS": "1", "RESLAB_SLURM": "1" if slurm_ok else "0"})  # fmt: skip


@nox.session
def chaos(session: nox.Session) -> None:
    """The randomized fault drill: sweeps on the journal and on PostgreSQL + `mlflow server` under a seeded schedule
    of faults (killed and paused workers and coordinators, a killed DDP cell, a database restart, a torn journal
    line, a second machine with a skewed clock); fails on any duplicate, lost cell or changed result. `-- N SEED`
    sets the faults per backend (default 20) and the seed (default 7). Figures go to test-artifacts/chaos.jsonl."""
    install(session)
    ensure_postgres(session)
    faults = session.posargs[0] if session.posargs else "20"
    seed = session.posargs[1] if len(session.posargs) > 1 else "7"
    env = {"RESLAB_DRILLS": "1", "RESLAB_CHAOS_FAULTS": faults, "RESLAB_CHAOS_SEED": seed}
    session.run("pytest", "tests/drills/test_chaos.py", "-p", "no:cacheprovider", "-s", env=env)
