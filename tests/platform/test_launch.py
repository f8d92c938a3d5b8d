"""platform.spawn: ranks forked from one fork server that preloaded torch and megatron-core, each taking
the caller's environment, working folder and output as they are at the call."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from megatron_solo.platform import spawn

pytestmark = pytest.mark.multiprocess


def report(out_dir: str, tag: str) -> None:
    """Worker: what this rank started with, written to a file and printed to stdout and stderr."""
    import torch

    rank = torch.distributed.get_rank()
    seen = {"preloaded": "megatron.core" in sys.modules, "parent": os.getppid(), "cwd": os.getcwd(),
            "tag": os.environ.get("SOLO_LAUNCH_TAG"), "world": torch.distributed.get_world_size()}
    Path(out_dir, f"{tag}_rank{rank}.json").write_text(json.dumps(seen))
    print(f"stdout of {tag} rank {rank}", flush=True)
    print(f"stderr of {tag} rank {rank}", file=sys.stderr, flush=True)


def test_ranks_take_the_callers_context_and_share_one_preloaded_server(tmp_path, monkeypatch, capfd):
    seen = {}
    for tag, cwd in (("first", tmp_path), ("second", Path("/"))):
        monkeypatch.setenv("SOLO_LAUNCH_TAG", tag)
        monkeypatch.chdir(cwd)
        spawn(report, 2, str(tmp_path), tag)
        seen[tag] = [json.loads((tmp_path / f"{tag}_rank{r}.json").read_text()) for r in range(2)]
        assert all(s["cwd"] == str(cwd) and s["tag"] == tag and s["world"] == 2 for s in seen[tag]), seen
    out, err = capfd.readouterr()
    for tag in seen:
        for rank in range(2):
            assert f"stdout of {tag} rank {rank}" in out and f"stderr of {tag} rank {rank}" in err, (out, err)
    ranks = seen["first"] + seen["second"]
    # megatron-core was imported before the worker function ran: by the server the ranks are forked from,
    # one process (not this one) for both worlds
    assert all(s["preloaded"] for s in ranks), ranks
    assert len({s["parent"] for s in ranks}) == 1 and ranks[0]["parent"] != os.getpid(), ranks
