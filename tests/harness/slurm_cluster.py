"""A real one-node Slurm cluster on loopback for tests.

Its settings: auth/none, no cgroups (they fail in containers and silently drain the node), daemons
run in the foreground as our children, state in a private folder. A requeued job waits
``cred_expire`` seconds before it may start again (120 by default, 5 here, so the
requeue tests take seconds rather than minutes).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

SLURM_BINARIES = ("slurmctld", "slurmd", "sbatch", "sinfo", "scontrol", "scancel")


def slurm_available() -> bool:
    """Whether the Slurm daemons and clients are installed."""
    return all(shutil.which(b) for b in SLURM_BINARIES)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def common_conf(root: Path, controller: str) -> str:
    """The slurm.conf lines every test cluster shares: no auth, no cgroups, state under ``root``."""
    return f"""ClusterName=solotest
SlurmctldHost={controller}
AuthType=auth/none
CredType=cred/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmctldPidFile={root}/slurmctld.pid
SlurmctldLogFile={root}/log/slurmctld.log
MinJobAge=4
KillWait=60
JobRequeue=1
AuthInfo=cred_expire=5
SchedulerParameters=sched_interval=2
"""


class SlurmCluster:
    """slurmctld + slurmd on this machine; ``env`` is what clients need (SLURM_CONF)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.host = host = socket.gethostname().split(".")[0]
        node = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
        node = re.sub(r"\s*UpTime=\S+", "", node)
        for d in ("state", "spool", "log"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        conf = f"""{common_conf(self.root, host)}SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmdSpoolDir={self.root}/spool
SlurmdPidFile={self.root}/slurmd.pid
SlurmdLogFile={self.root}/log/slurmd.log
{node} NodeAddr=127.0.0.1
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
        self.conf = self.root / "slurm.conf"
        self.conf.write_text(conf)
        # Jobs inherit the submitting environment; drop what an in-process test world set.
        inherited = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
        self.env = {k: v for k, v in os.environ.items() if k not in inherited}
        self.env["SLURM_CONF"] = str(self.conf)
        self.procs: list[subprocess.Popen] = []

    def daemon_commands(self) -> list[list[str]]:
        """The daemons to start, the controller first."""
        return [["slurmctld", "-D", "-i", "-f", str(self.conf)], ["slurmd", "-D", "-f", str(self.conf)]]

    def start(self, timeout: float = 30.0) -> None:
        """Start the daemons and wait for every node to be idle."""
        log = open(self.root / "log" / "daemons.out", "w")
        for i, cmd in enumerate(self.daemon_commands()):
            if i == 1:
                time.sleep(0.5)  # the controller listening before a node registers saves a retry
            self.procs.append(subprocess.Popen(cmd, env=self.env, stdout=log, stderr=log))
        deadline = time.time() + timeout
        while time.time() < deadline:
            if set(self.node_state().split()) == {"idle"}:
                return
            time.sleep(0.5)
        raise RuntimeError(f"Slurm nodes not idle after {timeout} s: {self.node_state()!r}; see {self.root}/log")

    def node_state(self) -> str:
        """sinfo's state of the node (idle, allocated, drained, ...), one line per node."""
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env, capture_output=True, text=True)
        return out.stdout.strip()

    def sbatch(self, script: str, *args: str, cwd: str | Path, output: Path | None = None,
               options: tuple[str, ...] = (), env: dict[str, str] | None = None) -> str:
        """Submit a batch job (sbatch ``options``, the script's ``args``, extra ``env``); returns its id.

        Without ``output`` the script's own ``--output`` applies (relative to ``cwd``).
        """
        cmd = ["sbatch", "--parsable", *options, *([f"--output={output}"] if output else []), script, *args]
        out = subprocess.run(cmd, env={**self.env, **(env or {})}, cwd=cwd, capture_output=True, text=True,
                             check=True)
        return out.stdout.strip().split(";")[0]

    def job_field(self, job: str, field: str) -> str:
        """One field of ``scontrol show job`` (JobState, Restarts, ExitCode, ...); GONE once purged."""
        out = subprocess.run(["scontrol", "show", "job", job], env=self.env, capture_output=True, text=True)
        match = re.search(rf"\b{field}=(\S+)", out.stdout)
        return match.group(1) if match else "GONE"

    def job_state(self, job: str) -> str:
        """JobState of a job (COMPLETED, RUNNING, FAILED, ...)."""
        return self.job_field(job, "JobState")

    def wait(self, job: str, timeout: float) -> str:
        """Wait for a job to leave PENDING/RUNNING (a requeue passes through both); returns its final state."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = self.job_state(job)
            if state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED"):
                return state
            time.sleep(1)
        raise TimeoutError(f"job {job} still {self.job_state(job)} after {timeout} s")

    def signal(self, job: str, sig: str) -> None:
        """Send a signal to the job's steps (what Slurm does ahead of a time limit or preemption)."""
        subprocess.run(["scancel", f"--signal={sig}", job], env=self.env, check=True)

    def stop(self) -> None:
        """Cancel leftover jobs and stop slurmd, then slurmctld."""
        subprocess.run(["scancel", "--user=root"], env=self.env, capture_output=True)
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
