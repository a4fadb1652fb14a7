"""What a finished stage produced, recorded so that a resume can tell whether it is still intact.

A stage declares its outputs (paths in the run directory). When it is done, the manifest records per
output (`describe`): for a file its size, line count and SHA-256; for a folder (a trained model) every
file in it with its size and SHA-256, the weights included. `problem` says in a few words what has
happened to an output since: missing, cut, changed.

A file that several stages append to (``influence.jsonl``: the probes of guided search rounds, then the
influence stage) is checked as a prefix: a stage's record covers the bytes it left, and only the last
stage that declares the file also checks that nothing follows them (``exact``).
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dits.utils import PRIVATE_NAME

Record = dict[str, Any]
"""A file: ``{"size", "lines", "sha256"}``; a folder: ``{"files": {relative name: {"size", "sha256"}}}``."""

_CHUNK = 1 << 20


def _chunks(path: Path, limit: int | None = None) -> Iterator[bytes]:
    """The bytes of ``path`` in chunks, the first ``limit`` only when given."""
    left = limit
    with open(path, "rb") as handle:
        while left is None or left > 0:
            chunk = handle.read(_CHUNK if left is None else min(_CHUNK, left))
            if not chunk:
                return
            if left is not None:
                left -= len(chunk)
            yield chunk


def _digest(path: Path, limit: int | None = None) -> tuple[str, int]:
    """SHA-256 and line count of ``path`` (of its first ``limit`` bytes when given)."""
    digest, lines = hashlib.sha256(), 0
    for chunk in _chunks(path, limit):
        digest.update(chunk)
        lines += chunk.count(b"\n")
    return digest.hexdigest(), lines


def describe(path: Path) -> Record | None:
    """The record of an output as it is now (None when it does not exist)."""
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file())
        return {
            "files": {
                str(f.relative_to(path)): {"size": f.stat().st_size, "sha256": _digest(f)[0]} for f in files
            }
        }
    if path.is_file():
        sha256, lines = _digest(path)
        return {"size": path.stat().st_size, "lines": lines, "sha256": sha256}
    return None


def problem(path: Path, record: Record, *, exact: bool) -> str | None:
    """What is wrong with the output at ``path`` compared with its ``record`` (None: intact).
    ``exact``: the file must end where the record ends (no later stage appends to it)."""
    if "files" in record:
        if not path.is_dir():
            return "is missing"
        for name, entry in record["files"].items():
            member = path / name
            if not member.is_file():
                return f"has lost its file {name}"
            if member.stat().st_size != entry["size"] or _digest(member)[0] != entry["sha256"]:
                return f"has a changed file {name}"
        return None
    if not path.is_file():
        return "is missing"
    size = path.stat().st_size
    if size < record["size"]:
        return f"was cut ({_digest(path)[1]} of its {record['lines']} lines are left)"
    if exact and size > record["size"]:
        return f"has {size - record['size']} bytes more than its stage wrote"
    if _digest(path, record["size"])[0] != record["sha256"]:
        return "was changed (its content digest differs)"
    return None


def discard(path: Path, keep: Record | None) -> bool:
    """Undo an output for a re-run: cut a shared file back to ``keep`` (the record of an earlier stage that
    also writes it), else delete the file or folder. Whether anything was there."""
    if keep is not None and "size" in keep and path.is_file():
        with open(path, "r+b") as handle:
            handle.truncate(min(keep["size"], path.stat().st_size))
        return True
    if path.is_dir():
        shutil.rmtree(path)
        return True
    if path.exists():
        path.unlink()
        return True
    return False


def remove_leftovers(root: Path) -> list[Path]:
    """Delete the temp files and work folders (`dits.utils.private_path`) that killed processes left in
    ``root``; call it only while holding the run's lock (no live writer then). Returns what it removed."""
    found = sorted(p for p in root.rglob(".*") if PRIVATE_NAME.match(p.name))
    removed = []
    for path in found:
        if not path.exists():  # inside a folder removed just before
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(path)
    return removed
