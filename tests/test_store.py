"""Crash safety of the run directory."""

from __future__ import annotations

from dits.store import JsonlLog, RunStore


def test_torn_last_line_is_dropped_and_appends_continue(tmp_path) -> None:
    log = JsonlLog(tmp_path / "a.jsonl")
    log.append({"id": "1"})
    log.append({"id": "2"})
    with open(log.path, "ab") as handle:
        handle.write(b'{"id": "3", "va')  # killed mid-write
    reopened = JsonlLog(log.path)
    assert reopened.ids() == {"1", "2"}
    reopened.append({"id": "3"})
    assert [r["id"] for r in JsonlLog(log.path)] == ["1", "2", "3"]


def test_manifest_survives_reopen(tmp_path) -> None:
    store = RunStore(tmp_path / "run")
    store.mark_started("iter_0/sft")
    assert not store.is_done("iter_0/sft")
    store.mark_done("iter_0/sft", {"examples": 3})
    again = RunStore(tmp_path / "run")
    assert again.is_done("iter_0/sft")
    assert again.summary("iter_0/sft") == {"examples": 3}
