"""`reslab sweep --launcher slurm`: a sweep's agents as one SLURM array job.

The queue stays the engine of record (each cell claimed atomically, leases judged on the database's clock, a fenced
commit): SLURM only decides where agents run and restarts them. Each array task is one agent
(`reslab.sweep.agent`), which sizes its workers by what the task was given (`reslab.devices`) and claims cells until
none is left, so a preempted, cancelled or requeued task costs at most the cells it held, which go back to the queue.

The job is a generated sbatch script rather than a submitit call: a user can read it, keep it beside the sweep
(runs/<name>/agents.sbatch) and resubmit it by hand; it holds no secret (submitit pickles the function and its
arguments, where a URI with its password would land); and it needs nothing on the cluster but `sbatch`. The URIs
reach the agents through the environment sbatch passes on (`--export=ALL`: RESLAB_STORAGE, MLFLOW_TRACKING_URI), or
through PostgreSQL's own PGPASSWORD / ~/.pgpass.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from reslab.redact import STORAGE_ENV, TRACKING_ENV, redact
from reslab.sweep.config import SlurmConfig, SweepConfig

#: The command that submits the job (a test may put a stand-in first on PATH).
SBATCH = "sbatch"


def describe(slurm: SlurmConfig, agents: int) -> str:
    """What the job asks for, as the sweep's first line says it: '8 SLURM agents (4 CPUs, 1 GPU, 8G memory each)'."""
    gpus = f", {slurm.gpus_per_agent} GPU{'s' * (slurm.gpus_per_agent > 1)}" if slurm.gpus_per_agent else ""
    mem = f", {slurm.mem} memory" if slurm.mem else ""
    return f"{agents} SLURM agent{'s' * (agents > 1)} ({slurm.cpus_per_agent} CPUs{gpus}{mem} each)"


def script(config: SweepConfig, agents: int, resolved: Path) -> str:
    """The array job's script: one task per agent, each running `python -m reslab.sweep.agent` on the resolved
    config (URIs without passwords) from the folder the sweep was started in; agent i logs to
    runs/<name>/agent-i.log (appended to: a requeued agent keeps what it said before)."""
    slurm = config.sweep.slurm
    run_dir = config.run_dir.resolve()
    options = [f"--job-name=reslab-{config.name}", f"--array=0-{agents - 1}", "--ntasks=1",
               f"--cpus-per-task={slurm.cpus_per_agent}", f"--output={run_dir}/agent-%a.log", "--open-mode=append",
               f"--chdir={Path.cwd()}", "--export=ALL"]  # fmt: skip
    named = {"partition": slurm.partition, "account": slurm.account, "time": slurm.time, "mem": slurm.mem}
    options += [f"--{key}={value}" for key, value in named.items() if value]
    if slurm.gpus_per_agent:
        options.append(f"--gpus-per-task={slurm.gpus_per_agent}")
    options += slurm.sbatch
    python = slurm.python or sys.executable
    lines = ["#!/bin/bash", *(f"#SBATCH {o}" for o in options), "",
             f"# reslab sweep {config.name}: {agents} agent{'s' * (agents > 1)}, each claiming cells from the "
             f"sweep's queue until none is left.",
             f"# The queue and the tracking store come from {STORAGE_ENV} and {TRACKING_ENV}, which sbatch passes "
             "on from the", "# environment that submitted this job: no password is written here.",
             *slurm.setup,
             f"exec {shlex.quote(python)} -m reslab.sweep.agent {shlex.quote(str(resolved.resolve()))}"]  # fmt: skip
    return redact("\n".join(lines) + "\n")


def submit_problem() -> str | None:
    """One line when this machine cannot submit the job (no `sbatch` on PATH), before anything is created."""
    if shutil.which(SBATCH) is None:
        return ("--launcher slurm submits with sbatch, which is not on PATH: run it on the cluster's login node (or "
                "load SLURM's module), or use --launcher local")  # fmt: skip
    return None


def submit(path: Path, env: dict[str, str]) -> str:
    """Submit the script; the job's id. The URIs travel in `env` (sbatch's environment), never in the script."""
    out = subprocess.run([SBATCH, "--parsable", str(path)], capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        from reslab.sweep.queue import QueueError

        raise QueueError(f"sbatch refused the job: {redact(out.stderr.strip() or out.stdout.strip())}")
    return out.stdout.strip().split(";")[0]  # --parsable prints "jobid" or "jobid;cluster"


def job_alive(job: str) -> bool:
    """Whether any task of the array job is still pending or running; a controller that does not answer counts as
    alive (the next look asks again)."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=30,
                             check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return True
    if out.returncode != 0:  # an unknown (long finished) job is an error to squeue
        return "Invalid job id" not in out.stderr
    return bool(out.stdout.strip())


def tracking_problem(uri: str) -> str | None:
    """One line when agents on other nodes cannot share the tracking store `uri`: an sqlite file (SQLite over a
    network file system corrupts under concurrent writers) or a local `file:` / plain path store."""
    if uri.startswith("sqlite:") or "://" not in uri or uri.startswith("file:"):
        return (f"--launcher slurm needs a tracking store every node can write at once, and {uri.split('?')[0]} is "
                f"a file on this machine (SQLite over a network file system corrupts under concurrent writers): "
                f"start `mlflow server` and pass --tracking-uri http://HOST:PORT, or use postgresql://")  # fmt: skip
    return None


def storage_problem(url: str) -> str | None:
    """One line when the queue `url` cannot be shared by agents on other nodes: an sqlite database (the journal on a
    shared disk, or PostgreSQL, can)."""
    if url.startswith("sqlite:"):
        return ("--launcher slurm needs a queue every node can use at once, and an sqlite database is not one: use "
                "postgresql://... or a journal file on a shared disk (--storage /shared/path/optuna.journal)")
    return None
