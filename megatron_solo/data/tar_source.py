"""img2dataset-style webdataset tars as a caption source: members grouped by sample key (K.jpg + K.txt)."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

IMAGE_EXTS = {"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"}


def tar_groups(path: Path) -> Iterator[dict]:
    """Samples of a webdataset tar (members grouped by key); a truncated tar ends in a counted skip."""
    current: dict[str, bytes] = {}
    key = None
    try:
        with tarfile.open(path, "r|*") as tf:
            for member in tf:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                prefix = member.name[: len(member.name) - len(base)]
                k, _, ext = base.partition(".")
                k = prefix + k
                data = tf.extractfile(member).read()
                if k != key and key is not None:
                    yield {"key": key, "members": current}
                    current = {}
                key = k
                current[ext.lower()] = data
    except (tarfile.TarError, EOFError, OSError) as err:
        # keep what was read before the damage; the sample being read is lost and counted
        yield {"skip": "truncated_tar", "error": f"{path}: {err}"}
        return
    if key is not None:
        yield {"key": key, "members": current}


def tar_captions(path: Path) -> Iterator[dict]:
    """Caption records of an img2dataset tar (K.jpg + K.txt or K.json {"caption"})."""
    for group in tar_groups(path):
        if "skip" in group:
            yield group
            continue
        members = group["members"]
        image = next((members[e] for e in members if e.rsplit(".", 1)[-1] in IMAGE_EXTS), None)
        caption = members.get("txt", b"").decode("utf-8", "replace")
        if not caption and "json" in members:
            try:
                caption = json.loads(members["json"]).get("caption") or ""
            except (json.JSONDecodeError, AttributeError):
                caption = ""
        if image is None:
            yield {"skip": "missing_image", "error": f"{path}: sample {group['key']} has no image"}
            continue
        yield {"kind": "caption", "image": image, "caption": caption, "id": group["key"],
               "origin": f"{path}:{group['key']}"}
