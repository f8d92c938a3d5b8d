"""Two Slurm nodes on one machine for tests, each in a network namespace of its own, joined by veth.

The layout: a Linux bridge in the test's own namespace (address 10.77.S.254) and three network
namespaces hanging on it by veth pairs, each with its own ``eth0``, loopback, host name (a UTS
namespace) and ``/etc/hosts`` (a file of the cluster's folder bound over it in a mount namespace;
``ip netns exec`` is not used, as its fresh /sys has no cgroup mount and slurmd refuses to start):

    ctl  10.77.S.10  slurmctld
    n1   10.77.S.1   slurmd of node n1
    n2   10.77.S.2   slurmd of node n2

A job's processes live in their node's namespaces, so rank 1 on n2 reaches a rendezvous on n1 over
the veth link, and an address that only works on one host (127.0.0.1, this machine's own name) fails
as it would between two machines. Nothing outside the machine is addressed: the bridge has no
uplink and the controller, having no auth, listens only inside its namespace.

What this leaves untested: the nodes still share one kernel, file system (as a shared NFS home
would), process table, users and clock; the link has no latency, bandwidth limit or loss; and the
GPU side (NCCL over InfiniBand/RoCE, GPU binding) does not exist here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

from tests.harness.slurm_cluster import SlurmCluster, common_conf

NODES = ("n1", "n2")
CONTROLLER = "ctl"
_HOST_NUMBER = {"n1": 1, "n2": 2, CONTROLLER: 10}
_PREFIX = "solot"  # namespaces solot<pid>-<host>, bridge solot<pid>, veth ends st<pid><c|1|2>


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be made here (not root, no iproute2, refused), or None."""
    if not all(shutil.which(t) for t in ("ip", "nsenter", "unshare")):
        return "iproute2 (ip) and util-linux (nsenter, unshare) are needed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"{_PREFIX}{os.getpid()}-probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _remove_network(tag: str) -> None:
    """End what still runs in the namespaces of ``tag`` (a killed run's daemons), delete them and the bridge."""
    for host in (CONTROLLER, *NODES):
        ns = f"{_PREFIX}{tag}-{host}"
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    subprocess.run(["ip", "link", "del", f"{_PREFIX}{tag}"], capture_output=True)


def _remove_stale_networks() -> None:
    """Remove what a killed earlier run left behind (its process is gone), so subnets do not run out."""
    for tag in set(re.findall(rf"^{_PREFIX}(\d+)-", _ip("netns", "list"), re.M)):
        if not Path(f"/proc/{tag}").exists():
            _remove_network(tag)


def _free_subnet() -> int:
    """A third octet S such that no interface here has an address in 10.77.S.0/24."""
    used = set(re.findall(r"inet 10\.77\.(\d+)\.", _ip("-4", "-o", "addr")))
    return next(s for s in range(1, 255) if str(s) not in used)


class TwoNodeSlurm(SlurmCluster):
    """slurmctld in namespace ``ctl``, slurmd of nodes n1 and n2 in namespaces of their own."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tag = str(os.getpid())
        _remove_stale_networks()
        self.subnet = _free_subnet()
        self.addr = {h: f"10.77.{self.subnet}.{n}" for h, n in _HOST_NUMBER.items()}
        self.host = NODES[0]  # the first node of an allocation: where the rendezvous is
        for d in ("state", "log", *(f"spool/{n}" for n in NODES)):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        nodes = "".join(f"NodeName={n} NodeAddr={self.addr[n]} NodeHostname={n} CPUs=1 RealMemory=2000\n"
                        for n in NODES)
        conf = f"""{common_conf(self.root, f"{CONTROLLER}({self.addr[CONTROLLER]})")}SlurmctldPort=6817
SlurmdPort=6818
SlurmdSpoolDir={self.root}/spool/%n
SlurmdPidFile={self.root}/slurmd-%n.pid
SlurmdLogFile={self.root}/log/slurmd-%n.log
{nodes}PartitionName=debug Nodes={",".join(NODES)} Default=YES MaxTime=INFINITE State=UP
"""
        self.conf = self.root / "slurm.conf"
        self.conf.write_text(conf)
        inherited = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "HOSTNAME")
        self.env = {k: v for k, v in os.environ.items() if k not in inherited}
        self.env["SLURM_CONF"] = str(self.conf)
        self.procs: list[subprocess.Popen] = []

    def netns(self, host: str) -> str:
        """The network namespace of ``host`` (ctl, n1, n2)."""
        return f"{_PREFIX}{self.tag}-{host}"

    def _make_network(self) -> None:
        bridge = f"{_PREFIX}{self.tag}"
        _ip("link", "add", "name", bridge, "type", "bridge")
        _ip("addr", "add", f"10.77.{self.subnet}.254/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        hosts = "127.0.0.1 localhost\n" + "".join(f"{a} {h}\n" for h, a in self.addr.items())
        for host in (CONTROLLER, *NODES):
            ns, outer, inner = self.netns(host), f"st{self.tag}{host[-1]}", f"st{self.tag}{host[-1]}x"
            _ip("netns", "add", ns)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", outer, "master", bridge, "up")
            _ip("link", "set", inner, "netns", ns)
            _ip("-n", ns, "link", "set", inner, "name", "eth0")
            _ip("-n", ns, "addr", "add", f"{self.addr[host]}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        (self.root / "hosts").write_text(hosts)

    def _in_host(self, host: str, cmd: list[str]) -> list[str]:
        """``cmd`` run as host ``host``: its network namespace, the cluster's /etc/hosts, its host name."""
        return ["nsenter", f"--net=/run/netns/{self.netns(host)}", "unshare", "--mount", "--uts", "sh", "-c",
                f'mount --bind "$0" /etc/hosts && hostname {host} && exec "$@"', str(self.root / "hosts"), *cmd]

    def daemon_commands(self) -> list[list[str]]:
        """slurmctld on host ctl, then one slurmd per node on its own host."""
        return [self._in_host(CONTROLLER, ["slurmctld", "-D", "-i", "-f", str(self.conf)]),
                *(self._in_host(n, ["slurmd", "-D", "-f", str(self.conf), "-N", n]) for n in NODES)]

    def start(self, timeout: float = 30.0) -> None:
        """Make the namespaces and the links, then start the daemons and wait for both nodes to be idle."""
        try:
            self._make_network()
            super().start(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the daemons (SlurmCluster.stop), then remove the namespaces and the bridge."""
        try:
            super().stop()
        finally:
            _remove_network(self.tag)

    def node_states(self) -> dict[str, str]:
        """sinfo's state of each node."""
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], env=self.env, capture_output=True, text=True)
        return dict(line.split() for line in out.stdout.splitlines())

    def task_ranks(self, host: str, marker: str) -> list[int]:
        """SLURM_PROCID of each process on ``host`` whose command line holds ``marker`` (a tool's name)."""
        pids = _ip("netns", "pids", self.netns(host)).split()
        ranks = []
        for pid in pids:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:  # ended meanwhile
                continue
            if any(marker.encode() in part for part in cmdline) and b"srun" not in cmdline[0]:
                ranks += [int(v.split(b"=")[1]) for v in environ if v.startswith(b"SLURM_PROCID=")]
        return sorted(ranks)

    def link_bytes(self, host: str) -> int:
        """Bytes sent plus received on ``host``'s eth0 so far (its side of the veth link)."""
        stats = json.loads(_ip("-n", self.netns(host), "-j", "-s", "link", "show", "dev", "eth0"))[0]["stats64"]
        return int(stats["tx"]["bytes"]) + int(stats["rx"]["bytes"])
