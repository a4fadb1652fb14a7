"""The run directory: resolved config, manifest of stage status, append-only JSONL artefacts.

Layout (``runs/NAME/``): ``config.yaml`` (resolved), ``manifest.json`` (stage status and summaries),
``iter_K/{sft_samples,trees,pairs,influence,selected}.jsonl``, ``iter_K/{sft,dpo}/`` (HF adapters or
models), ``eval/*.json``, ``report.html``.

Crash safety: a JSONL record is one ``write`` of a whole line followed by ``fsync``; a torn last line
(a kill mid-write) is dropped on the next open. The manifest is replaced atomically, and a stage is
marked done only after its outputs are durable. Re-running skips done stages and, inside a stage,
the ids already written.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from dits import __version__
from dits.errors import DitsError
from dits.utils import write_atomic


def json_line(record: dict[str, Any]) -> str:
    """One JSONL line (UTF-8 kept as is)."""
    return json.dumps(record, ensure_ascii=False) + "\n"


def in_order(records: Iterable[dict[str, Any]], ids: Sequence[str], key: str = "id") -> list[dict[str, Any]]:
    """The records whose ``key`` is in ``ids``, in the order of ``ids`` (resumed stages finish records in
    another order than an uninterrupted run)."""
    by_id = {str(r[key]): r for r in records}
    return [by_id[i] for i in ids if i in by_id]


class JsonlLog:
    """An append-only JSONL file of records keyed by ``key``."""

    def __init__(self, path: Path, key: str = "id") -> None:
        self.path = path
        self.key = key
        self._repair()

    def _repair(self) -> None:
        """Drop a torn trailing line left by a crash mid-write."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as handle:
                handle.truncate(cut)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if not self.path.exists():
            return
        with open(self.path) as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DitsError(
                            f"{self.path}:{number}: corrupt record ({exc}); delete the line"
                        ) from exc

    def read(self) -> list[dict[str, Any]]:
        return list(self)

    def ids(self) -> set[str]:
        return {str(record[self.key]) for record in self}

    def rewrite(self, records: Iterable[dict[str, Any]]) -> None:
        """Replace the whole file with ``records`` (atomically)."""
        write_atomic(self.path, "".join(json_line(r) for r in records))

    def append(self, record: dict[str, Any]) -> None:
        """Append one record durably (one write of a whole line, then fsync)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json_line(record).encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


class RunStore:
    """A run directory and its manifest."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.manifest_path = self.root / "manifest.json"
        if self.manifest_path.exists():
            self.manifest = json.loads(self.manifest_path.read_text())
        else:
            self.manifest = {"version": __version__, "created": time.time(), "stages": {}}
            self._save()

    def _save(self) -> None:
        write_atomic(self.manifest_path, json.dumps(self.manifest, indent=1))

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def log(self, *parts: str, key: str = "id") -> JsonlLog:
        return JsonlLog(self.path(*parts), key=key)

    def is_done(self, stage: str) -> bool:
        return self.manifest["stages"].get(stage, {}).get("status") == "done"

    def summary(self, stage: str) -> dict[str, Any]:
        return dict(self.manifest["stages"].get(stage, {}).get("summary", {}))

    def mark_started(self, stage: str) -> None:
        entry = self.manifest["stages"].setdefault(stage, {})
        entry.update(status="running", started=entry.get("started", time.time()))
        self._save()

    def mark_done(self, stage: str, summary: dict[str, Any]) -> None:
        entry = self.manifest["stages"].setdefault(stage, {})
        entry.update(status="done", finished=time.time(), summary=summary)
        self._save()

    def stages(self) -> dict[str, dict[str, Any]]:
        return dict(self.manifest["stages"])

    def set_meta(self, key: str, value: Any) -> None:
        self.manifest[key] = value
        self._save()
