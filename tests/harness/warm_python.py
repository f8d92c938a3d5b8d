"""A ``python`` for the example scripts' tests whose processes start with the heavy packages already imported.

examples/quickstart.sh and examples/recipe.sh start a process per step (``python tools/<name>.py ...``,
``python - ARGS <<'PY'``), and each spends seconds importing torch, megatron-core and transformers before its
first line runs. :func:`shared_server` starts, once per test session, a server that imports those
third-party packages (:data:`PRELOAD`); :meth:`WarmPython.env` is a script's environment with a ``python``
first on PATH that hands each command to the server. The server forks, and the child takes the command's
arguments, environment, working folder and standard input, output and error, runs the script as
``__main__`` and exits as the interpreter would (exit code, traceback, ``atexit``, a hang at exit too).
Each command is still a process of its own that the script starts, waits for and reads the exit status of;
a signal sent to it is passed on to the child, and it dies of the signal the child died of.

Nothing of this project is imported before the fork: each process imports the library and the tool as a
user's does. A command with interpreter options runs the real interpreter; so does one (``exec``-ed in the
child) whose environment differs from the server's in more than the shell's variables, ``OMP_NUM_THREADS``
(set in the child) and the script's own variables named to :meth:`WarmPython.env`, since a package may read
a variable at import. The children share the server's string hash seed; what a tool starts with ``spawn``
or ``forkserver`` (checkpoint writers' queue, worker worlds) runs the real interpreter, as for a user.
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
import types
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.paths import user_env

# Imported once by the server: the third-party packages the tools import, with the modules that cost their
# first importer the most.
PRELOAD = (
    "numpy", "PIL.Image", "torch", "torch.distributed.checkpoint", "megatron.core", "megatron.core.tensor_parallel",
    "megatron.core.transformer.spec_utils", "megatron.core.models.gpt", "megatron.core.dist_checkpointing",
    "megatron.core.optimizer", "megatron.core.pipeline_parallel", "transformers", "transformers.modeling_utils",
    "transformers.masking_utils", "transformers.generation", "safetensors.torch", "sentencepiece",
    "matplotlib.figure", "matplotlib.backends.backend_agg", "sklearn.datasets", "sklearn.linear_model",
    "sklearn.pipeline", "sklearn.preprocessing",
)
SOCKET_VARIABLE = "SOLO_TEST_WARM_PYTHON"
SCRIPT_VARIABLES = "SOLO_TEST_WARM_PYTHON_SCRIPT_VARIABLES"
ONE_RANK_WORLDS_HERE = "SOLO_TEST_WARM_PYTHON_ONE_RANK_WORLDS_HERE"
# Variables a command may have other than the server: the shell's own, the thread count (set in the child) and
# this harness's own.
TAKEN_OVER = frozenset({"PWD", "OLDPWD", "SHLVL", "_", "OMP_NUM_THREADS", SCRIPT_VARIABLES, ONE_RANK_WORLDS_HERE})
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
_PR_SET_PDEATHSIG = 1

_CLIENT = '''#!{python} -IS
"""``python`` on a script test's PATH: the command runs in a child of the warm server (tests/harness/warm_python.py)."""
import json, os, signal, socket, struct, sys

REAL, FORWARDED = {python!r}, {forwarded!r}
args = sys.argv[1:]
if not args or (args[0].startswith("-") and args[0] != "-"):
    os.execv(REAL, [REAL, *args])  # an interpreter option: the real interpreter
sock = socket.socket(socket.AF_UNIX)
try:
    sock.connect(os.environ[{variable!r}])
except (KeyError, OSError) as err:
    sys.exit(f"python: the warm interpreter server is not reachable ({{err}})")
body = json.dumps({{"argv": args, "cwd": os.getcwd(), "env": dict(os.environ)}}).encode()
socket.send_fds(sock, [struct.pack("!I", len(body)) + body], [0, 1, 2])
reader = sock.makefile("r")
child = int(reader.readline())
for sig in FORWARDED:
    signal.signal(sig, lambda sig, _: os.kill(child, sig))
line = reader.readline()
if not line:
    sys.exit("python: the warm interpreter server went away")
code = os.waitstatus_to_exitcode(int(line))
if code < 0:
    signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
sys.exit(code & 0xFF)
'''


class WarmPython:
    """The server process, the ``python`` that reaches it and its log (one line per command: warm or cold)."""

    def __init__(self, folder: Path, base_env: dict[str, str]):
        bin_dir = folder / "bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        client = bin_dir / "python"
        client.write_text(_CLIENT.format(python=sys.executable, forwarded=tuple(int(s) for s in FORWARDED),
                                         variable=SOCKET_VARIABLE))
        client.chmod(0o755)
        self.socket, self.log = folder / "server.sock", folder / "server.log"
        self.base_env = {**base_env, "PATH": f"{bin_dir}{os.pathsep}{base_env.get('PATH', '')}",
                         SOCKET_VARIABLE: str(self.socket)}
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.harness.warm_python", str(self.socket), str(os.getpid())],
                cwd=Path(__file__).resolve().parents[2], env=self.base_env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)

    @contextlib.contextmanager
    def env(self, *, one_rank_worlds_here: bool = False, **script_variables: str) -> Iterator[dict[str, str]]:
        """The server's environment plus ``script_variables`` (the script's own, which no package reads).

        ``one_rank_worlds_here``: a conversion's one-rank worker world (hf/workers.py: export, import) runs in
        the tool's own process, as the library's tests run it (tests/harness/ckpt_workers.py); the tool's
        outputs are the same, without a world process that imports torch and megatron-core anew. (A tool's
        spawned world stays covered: tests/hf/test_export_target.py runs export_to_hf.py at TP2, and
        tests/tools/test_errors.py spawns one-rank worlds.)
        A command that ran cold (an environment the server cannot take over) is named in a warning: it was
        right, only slower.
        """
        deadline = time.monotonic() + 300
        while not self.socket.exists():  # the server is importing PRELOAD
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the warm interpreter server did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)
        start = self.log.stat().st_size
        env = {**self.base_env, **script_variables, SCRIPT_VARIABLES: ",".join(script_variables)}
        yield {**env, ONE_RANK_WORLDS_HERE: "1"} if one_rank_worlds_here else env
        with open(self.log) as f:
            f.seek(start)
            cold = [line for line in f.read().splitlines() if line.startswith("cold ")]
        if cold:
            warnings.warn("commands that ran cold (a new interpreter): " + "; ".join(cold), stacklevel=3)

    def stop(self) -> None:
        """End the server (and any command still running in it)."""
        self.process.terminate()
        self.process.wait(timeout=60)


_SERVER = pytest.StashKey[WarmPython]()


def shared_server(config: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> WarmPython:
    """The test session's server, started on first use in the user's environment (:func:`user_env`)."""
    server = config.stash.get(_SERVER, None)
    if server is None:
        server = config.stash[_SERVER] = WarmPython(tmp_path_factory.mktemp("warm_python"), user_env())
        config.add_cleanup(server.stop)
    return server


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    size = struct.unpack("!I", data[:4])[0]
    body = data[4:]
    while len(body) < size:
        more = conn.recv(size - len(body))
        if not more:
            raise ConnectionError("the client went away")
        body += more
    return json.loads(body), fds


def _cold_reason(env: dict[str, str], base_env: dict[str, str]) -> str | None:
    allowed = TAKEN_OVER | set(filter(None, env.get(SCRIPT_VARIABLES, "").split(",")))
    differ = sorted(k for k in env.keys() | base_env.keys() if env.get(k) != base_env.get(k) and k not in allowed)
    return f"environment differs in {', '.join(differ)}" if differ else None


class _OneRankWorldsHere(importlib.abc.MetaPathFinder):
    """Imports hf/workers.py with its ``spawn`` running a one-rank world in this process (larger ones spawned)."""

    def find_spec(self, name, path=None, target=None):
        if name != "megatron_solo.hf.workers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            from tests.harness.worlds import run_world

            module.spawn = run_world

        spec.loader.exec_module = exec_module
        return spec


def _run_child(request: dict, fds: list[int], server: dict, reason: str | None):
    """In the forked child: become the requested ``python`` command; ends by raising SystemExit (or its error)."""
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    sys.stdout.flush()
    sys.stderr.flush()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    argv = request["argv"]
    if reason is not None:
        os.execv(sys.executable, [sys.executable, *argv])
    os.environ.update(server["set_by_imports"])
    # what a new interpreter has of its own: thread count, random state, start folder, authentication key
    import multiprocessing.process

    import numpy
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", server["threads"])))
    numpy.random.seed()
    multiprocessing.process.ORIGINAL_DIR = os.path.abspath(request["cwd"])
    multiprocessing.current_process().authkey = os.urandom(32)
    main = types.ModuleType("__main__")
    main.__builtins__ = builtins
    if argv[0] == "-":
        source, filename, sys.path[:] = sys.stdin.read(), "<stdin>", ["", *server["path"]]
    else:
        filename = os.path.abspath(argv[0])
        source = Path(filename).read_bytes()
        sys.path[:] = [os.path.dirname(os.path.realpath(filename)), *server["path"]]
        main.__file__ = filename
        main.__loader__ = importlib.machinery.SourceFileLoader("__main__", filename)
    sys.argv = list(argv)
    sys.modules["__main__"] = main
    if os.environ.get(ONE_RANK_WORLDS_HERE):
        sys.meta_path.insert(0, _OneRankWorldsHere())
    exec(compile(source, filename, "exec", dont_inherit=True), main.__dict__)
    raise SystemExit(0)


def serve(path: str, parent: int) -> None:
    """The server: import :data:`PRELOAD`, then fork a child per request and send back its wait status."""
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)  # ends with the test session
    if os.getppid() != parent:
        return
    base_env = dict(os.environ)
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    import gc

    import torch

    # what a child takes from here: the imports' own environment variables, torch's default thread count and
    # the module path without -m's working folder
    server = {"set_by_imports": {k: v for k, v in os.environ.items() if base_env.get(k) != v},
              "threads": torch.get_num_threads(), "path": sys.path[1:]}
    gc.freeze()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path + ".tmp")
    listener.listen(64)
    os.rename(path + ".tmp", path)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    children: dict[int, tuple[socket.socket, float, str]] = {}
    me = os.getpid()
    try:
        while True:
            for key, _ in selector.select():
                if key.fileobj is listener:
                    conn, _ = listener.accept()
                    request, fds = _receive(conn)
                    reason = _cold_reason(request["env"], base_env)
                    pid = os.fork()
                    if pid == 0:
                        selector.close()
                        for sock in (listener, conn, *(c for c, _, _ in children.values())):
                            sock.close()
                        os.close(wake_r)
                        os.close(wake_w)
                        _run_child(request, fds, server, reason)
                    for fd in fds:
                        os.close(fd)
                    conn.sendall(f"{pid}\n".encode())
                    what = f"{'cold' if reason else 'warm'} {' '.join(request['argv'][:3])}"
                    children[pid] = (conn, time.monotonic(), what + (f" ({reason})" if reason else ""))
                    selector.register(conn, selectors.EVENT_READ, pid)
                elif key.fileobj == wake_r:
                    os.read(wake_r, 4096)
                elif not key.fileobj.recv(1):  # the caller died: so does its command
                    selector.unregister(key.fileobj)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(key.data, signal.SIGKILL)
            while children:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                if pid not in children:
                    continue
                conn, start, what = children.pop(pid)
                print(f"{what}: {time.monotonic() - start:.1f} s", flush=True)
                with contextlib.suppress(OSError):
                    conn.sendall(f"{status}\n".encode())
                with contextlib.suppress(KeyError, ValueError):
                    selector.unregister(conn)
                conn.close()
    except SystemExit:
        if os.getpid() == me:
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        raise


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
