"""The run directory: resolved config, manifest of stage status, append-only JSONL artefacts.

Layout (``runs/NAME/``): ``config.yaml`` (resolved), ``manifest.json`` (stage status, summaries and
the records of what every finished stage produced), ``.lock`` (`dits.lock`),
``iter_K/{sft_samples,trees,pairs,influence,selected}.jsonl``, ``iter_K/{sft,dpo}/`` (HF adapters or
models), ``eval/*.json``, ``report.html``.

Crash safety: a JSONL record is one ``write`` of a whole line (its byte count checked) followed by
``fsync``; a torn last line (a kill mid-write) is dropped only from the log of the stage in progress,
when it restarts (`JsonlLog.repair`). The manifest is replaced atomically, and a stage is marked done
only after its outputs are durable, with their digests (`dits.artefacts`): damage to a finished
stage's output is reported (`RunStore.damaged`), never repaired silently. Re-running skips done stages
and, inside a stage, the ids already written.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from dits import __version__
from dits.artefacts import Record, describe, discard, problem
from dits.errors import DitsError
from dits.utils import text_lines, write_all, write_atomic

Damage = tuple[str, str, str]
"""A damaged output: (stage, output path relative to the run directory, what is wrong)."""


def json_line(record: dict[str, Any]) -> str:
    """One JSONL line (UTF-8 kept as is)."""
    return json.dumps(record, ensure_ascii=False) + "\n"


def in_order(records: Iterable[dict[str, Any]], ids: Sequence[str], key: str = "id") -> list[dict[str, Any]]:
    """The records whose ``key`` is in ``ids``, in the order of ``ids`` (resumed stages finish records in
    another order than an uninterrupted run)."""
    by_id = {str(r[key]): r for r in records}
    return [by_id[i] for i in ids if i in by_id]


class JsonlLog:
    """An append-only JSONL file of records keyed by ``key``; ``on_append`` is called after every record."""

    def __init__(self, path: Path, key: str = "id", on_append: Callable[[], None] | None = None) -> None:
        self.path = path
        self.key = key
        self.on_append = on_append

    def repair(self) -> int:
        """Drop a torn trailing line left by a crash mid-write; returns the bytes dropped. Only for the
        log of a stage that is about to continue (a finished stage's files are verified, not repaired)."""
        if not self.path.exists():
            return 0
        data = self.path.read_bytes()
        if not data or data.endswith(b"\n"):
            return 0
        cut = data.rfind(b"\n") + 1
        with open(self.path, "r+b") as handle:
            handle.truncate(cut)
        return len(data) - cut

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if not self.path.exists():
            return
        for number, line in text_lines(self.path):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DitsError(f"{self.path}:{number}: corrupt record ({exc}); delete the line") from exc

    def read(self) -> list[dict[str, Any]]:
        return list(self)

    def ids(self) -> set[str]:
        return {str(record[self.key]) for record in self}

    def rewrite(self, records: Iterable[dict[str, Any]]) -> None:
        """Replace the whole file with ``records`` (atomically)."""
        write_atomic(self.path, "".join(json_line(r) for r in records))

    def append(self, record: dict[str, Any]) -> None:
        """Append one record durably: one write of a whole line, then fsync. A failed or short write
        (a full disk) is undone before the error propagates, so no torn line is left."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json_line(record).encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            size = os.fstat(fd).st_size
            try:
                write_all(fd, line)
                os.fsync(fd)
            except OSError as exc:
                os.ftruncate(fd, size)
                raise OSError(exc.errno, exc.strerror, str(self.path)) from exc
        finally:
            os.close(fd)
        if self.on_append is not None:
            self.on_append()


def read_manifest(path: Path) -> dict[str, Any]:
    """A run's ``manifest.json``; a damaged one raises `DitsError` naming it."""
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DitsError(
            f"{path} is damaged ({exc}); it holds the status of every stage: restore it from a backup, "
            f"or delete the run directory {path.parent} and start the run again"
        ) from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("stages"), dict):
        raise DitsError(f"{path} is not a dits manifest (no 'stages' mapping); restore it or start again")
    return manifest


class RunStore:
    """A run directory and its manifest. Stage entries: ``status`` (running, done), ``started``,
    ``finished``, ``summary``, ``outputs`` (path → `dits.artefacts.Record`, None until done) and, while
    running, ``partial`` (what earlier attempts of the stage spent: tokens, wall time, attempts)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.manifest_path = self.root / "manifest.json"
        self.on_record: Callable[[], None] | None = None
        """Called after a record is appended to any log of this store (the executor's checkpoint)."""
        if self.manifest_path.exists():
            self.manifest = read_manifest(self.manifest_path)
        else:
            self.manifest = {"version": __version__, "created": time.time(), "stages": {}}
            self._save()

    def _save(self) -> None:
        write_atomic(self.manifest_path, json.dumps(self.manifest, indent=1))

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def relative(self, path: Path) -> str:
        """``path`` (in the run directory) relative to it, as the manifest records outputs."""
        resolved = path.resolve()
        if not resolved.is_relative_to(self.root.resolve()):
            raise ValueError(f"{path} is outside the run directory {self.root}")
        return resolved.relative_to(self.root.resolve()).as_posix()

    def log(self, *parts: str, key: str = "id") -> JsonlLog:
        return JsonlLog(self.path(*parts), key=key, on_append=self._appended)

    def _appended(self) -> None:
        if self.on_record is not None:
            self.on_record()

    def is_done(self, stage: str) -> bool:
        return self.manifest["stages"].get(stage, {}).get("status") == "done"

    def summary(self, stage: str) -> dict[str, Any]:
        return dict(self.manifest["stages"].get(stage, {}).get("summary", {}))

    def mark_started(self, stage: str, outputs: Sequence[str] = ()) -> dict[str, Any]:
        """Record that an attempt at ``stage`` (declaring ``outputs``) starts; returns what the earlier
        attempts spent (``tokens_generated``, ``wall_time``, ``attempts`` including this one)."""
        entry = self.manifest["stages"].setdefault(stage, {})
        spent = {"tokens_generated": 0, "wall_time": 0.0, "attempts": 0, **entry.get("partial", {})}
        spent["attempts"] += 1
        entry.update(
            status="running",
            started=entry.get("started", time.time()),
            outputs=dict.fromkeys(outputs),
            partial=spent,
        )
        self._save()
        return spent

    def set_partial(self, stage: str, spent: dict[str, Any]) -> None:
        """Record what the attempts at running ``stage`` have spent so far."""
        self.manifest["stages"][stage]["partial"] = spent
        self._save()

    def mark_done(self, stage: str, summary: dict[str, Any]) -> None:
        """Mark ``stage`` done with ``summary`` and the records of its declared outputs as they are now."""
        entry = self.manifest["stages"].setdefault(stage, {})
        outputs = {rel: describe(self.path(rel)) for rel in entry.get("outputs", {})}
        entry.pop("partial", None)
        entry.update(status="done", finished=time.time(), summary=summary, outputs=outputs)
        self._save()

    def adopt(self, stage: str, entry: dict[str, Any]) -> None:
        """Take over the finished ``stage`` of another run (its outputs copied here beforehand)."""
        self.manifest["stages"][stage] = json.loads(json.dumps(entry))
        self._save()

    def stages(self) -> dict[str, dict[str, Any]]:
        return dict(self.manifest["stages"])

    def set_meta(self, key: str, value: Any) -> None:
        self.manifest[key] = value
        self._save()

    # ------------------------------------------------------------------ verification and redo
    def _claims(self, stages: Iterable[str]) -> dict[str, str]:
        """Output path → the last of ``stages`` that declares it."""
        entries = self.manifest["stages"]
        return {rel: key for key in stages for rel in entries[key].get("outputs", {})}

    def damaged(self) -> list[Damage]:
        """Every recorded output of a done stage that is missing or differs from its record, in stage
        order."""
        entries = self.manifest["stages"]
        last = self._claims(entries)
        found = []
        for key, entry in entries.items():
            if entry.get("status") != "done":
                continue
            for rel, record in entry.get("outputs", {}).items():
                issue = record and problem(self.path(rel), record, exact=last[rel] == key)
                if issue:
                    found.append((key, rel, issue))
        return found

    def redo(self, stage: str) -> list[str]:
        """Forget ``stage`` and every stage recorded after it, and undo their outputs (a file an earlier
        stage also wrote is cut back to that stage's part). Returns the stages forgotten."""
        entries = self.manifest["stages"]
        keys = list(entries)
        if stage not in entries:
            known = ", ".join(keys) or "none yet"
            raise DitsError(f"--redo {stage}: {self.root} has no such stage; its stages: {known}")
        kept, dropped = keys[: keys.index(stage)], keys[keys.index(stage) :]
        earlier = self._claims(k for k in kept if entries[k].get("status") == "done")
        for key in dropped:
            for rel in entries[key].get("outputs", {}):
                if Path(rel).is_absolute() or ".." in Path(rel).parts:
                    raise DitsError(f"{self.manifest_path} is damaged: stage {key} names an output {rel!r}")
                owner = earlier.get(rel)
                keep: Record | None = entries[owner]["outputs"][rel] if owner else None
                discard(self.path(rel), keep)
        for key in dropped:
            del entries[key]
        self.manifest.pop("final", None)
        self._save()
        return dropped
