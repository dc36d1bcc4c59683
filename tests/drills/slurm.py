"""A real one-node SLURM cluster for the drills, from Debian's packages (`munge`, `slurmctld`, `slurmd`,
`slurm-client`; `nox -s tests` installs them where apt can): munged with a fresh key, the controller and the node
daemon on 127.0.0.1, all state, logs and sockets under one temporary folder, ports free on this machine. Clients
(sbatch, squeue, scancel, scontrol) find it through `SLURM_CONF` in `env`."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.drills.conftest import free_port

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol")


def missing() -> list[str]:
    return [name for name in DAEMONS if shutil.which(name) is None]


class SlurmCluster:
    """One node (`localhost`, as many CPUs as this process may use) in one partition, CPUs as the consumable
    resource, no accounting; KillWait 10 s (SIGTERM, then SIGKILL 10 s later: a preemption's grace)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="reslab-drill-slurm-"))
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir()
        self.cpus = len(os.sched_getaffinity(0))
        self.conf = self.root / "slurm.conf"
        socket_path = self.root / "munge.socket"
        self.conf.write_text("\n".join([
            "ClusterName=reslabdrill", "SlurmctldHost=localhost(127.0.0.1)", "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", f"AuthInfo=socket={socket_path}", "CredType=cred/munge",
            f"StateSaveLocation={self.root / 'state'}", f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}", f"SlurmdPidFile={self.root / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={self.root / 'log' / 'slurmd.log'}",
            f"SlurmctldPort={free_port()}", f"SlurmdPort={free_port()}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU", "ReturnToService=2",
            "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
            "MpiDefault=none", "KillWait=10", "MinJobAge=300", "SlurmdParameters=config_overrides",
            f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory=4000 State=UNKNOWN",
            "PartitionName=drill Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
        ]) + "\n")  # fmt: skip
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self._munge = ["munged", "-f", f"--socket={socket_path}", f"--key-file={key}",
                       f"--log-file={self.root / 'log' / 'munged.log'}", f"--pid-file={self.root / 'munged.pid'}",
                       f"--seed-file={self.root / 'munged.seed'}"]  # fmt: skip

    def start(self) -> None:
        subprocess.run(self._munge, check=True, capture_output=True)
        subprocess.run(["slurmctld", "-i"], env=self.env, check=True, capture_output=True)
        subprocess.run(["slurmd", "-N", "localhost"], env=self.env, check=True, capture_output=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True, text=True)
            if out.stdout.strip() == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(f"the drill's SLURM node did not come up: {self.logs()}")

    def logs(self) -> str:
        return "\n".join(p.read_text()[-1500:] for p in sorted((self.root / "log").glob("*.log")))

    def run(self, *cmd: str) -> str:
        return subprocess.run(cmd, env=self.env, check=True, capture_output=True, text=True).stdout

    def stop(self) -> None:
        subprocess.run(["scontrol", "shutdown"], env=self.env, capture_output=True)
        for name in ("slurmd.pid", "slurmctld.pid", "munged.pid"):
            pid = self.root / name
            if pid.exists():
                with contextlib.suppress(OSError, ValueError):
                    os.kill(int(pid.read_text().strip()), 9)
        shutil.rmtree(self.root, ignore_errors=True)
