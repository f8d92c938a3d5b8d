"""W&B offline runs read back from their files with W&B's own reader (``wandb leet inspect --json``).

The reader is the wandb-core binary that ``wandb leet`` runs, called directly: a Python process that
imports wandb for each file would cost seconds.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class OfflineRun:
    """One ``offline-run-*`` folder: the run record and its history rows."""

    folder: Path
    run_id: str
    project: str
    name: str
    config: dict
    started: str  # the start time W&B recorded, ISO 8601 to the microsecond (a resume has its own)
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # tag -> (step, value)


def _records(path: Path) -> list[dict]:
    from wandb.util import get_core_path

    command = [get_core_path(), "leet", "inspect", "--no-observability", "--json", "--run-file", str(path),
               str(path.parent.parent)]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def offline_runs(root: str | Path) -> list[OfflineRun]:
    """Every offline run under ``root`` (ROOT/wandb/offline-run-*), oldest first.

    Ordered by the start time in the run record: the folder names hold whole seconds, and two runs
    started within one second would sort by their random ids.
    """
    runs = []
    for folder in sorted(Path(root).glob("wandb/offline-run-*")):
        (path,) = folder.glob("run-*.wandb")
        records = _records(path)
        (run,) = [r["run"] for r in records if r["type"] == "run"]
        config = (run.get("config") or {}).get("update", {})
        found = OfflineRun(folder, run["run_id"], run["project"], run.get("display_name", ""), config,
                           run["start_time"])
        for r in records:
            if r["type"] != "history":
                continue
            step = int(r["history"]["step"]["num"])
            for tag, value in r["history"]["item"].items():
                if not tag.startswith("_"):  # W&B's own _step, _runtime, _timestamp
                    found.history.setdefault(tag, []).append((step, value))
        runs.append(found)
    return sorted(runs, key=lambda r: r.started)
