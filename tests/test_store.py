"""Crash safety of the run directory: torn lines, checked writes, the manifest, output records, redo."""

from __future__ import annotations

import errno
import json

import pytest

from dits.artefacts import describe, problem
from dits.errors import DitsError
from dits.store import JsonlLog, RunStore


def test_a_torn_last_line_is_dropped_by_repair_only_and_appends_continue(tmp_path) -> None:
    log = JsonlLog(tmp_path / "a.jsonl")
    log.append({"id": "1"})
    log.append({"id": "2"})
    with open(log.path, "ab") as handle:
        handle.write(b'{"id": "3", "va')  # killed mid-write
    with pytest.raises(DitsError, match=r"a\.jsonl:3: corrupt record"):
        JsonlLog(log.path).ids()  # opening or reading never repairs
    assert log.repair() == len(b'{"id": "3", "va')
    assert log.ids() == {"1", "2"}
    log.append({"id": "3"})
    assert [r["id"] for r in JsonlLog(log.path)] == ["1", "2", "3"]


def test_a_line_that_is_not_utf8_is_named_by_file_and_line(tmp_path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"id": "1"}\n{"id": "\xff"}\n')
    with pytest.raises(DitsError, match=r"a\.jsonl:2: not UTF-8 text \(byte 0xff"):
        JsonlLog(path).read()


@pytest.mark.parametrize("short", [True, False])
def test_a_failed_or_short_append_leaves_no_torn_line(tmp_path, monkeypatch, short) -> None:
    log = JsonlLog(tmp_path / "a.jsonl")
    log.append({"id": "1"})
    real_write = __import__("os").write

    def full_disk(fd: int, data: bytes) -> int:
        if short:
            return real_write(fd, data[:5])  # the kernel wrote only part of the line
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("os.write", full_disk)
    with pytest.raises(OSError) as raised:
        log.append({"id": "2", "text": "x" * 100})
    monkeypatch.undo()
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(log.path)
    assert log.path.read_text() == '{"id": "1"}\n'


def test_manifest_survives_reopen_and_a_damaged_one_is_named(tmp_path) -> None:
    store = RunStore(tmp_path / "run")
    store.mark_started("iter_0/sft")
    assert not store.is_done("iter_0/sft")
    store.mark_done("iter_0/sft", {"examples": 3})
    again = RunStore(tmp_path / "run")
    assert again.is_done("iter_0/sft")
    assert again.summary("iter_0/sft") == {"examples": 3}
    for damage in (b"", b'{"stages": {"iter_0/sft"', b"\xff\xfe"):
        store.manifest_path.write_bytes(damage)
        with pytest.raises(DitsError, match="manifest.json is damaged"):
            RunStore(tmp_path / "run")


def test_output_records_tell_missing_cut_changed_and_extended_files(tmp_path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"id": 1}\n{"id": 2}\n')
    record = describe(path)
    assert record is not None and record["lines"] == 2
    assert problem(path, record, exact=True) is None
    path.write_text('{"id": 1}\n{"id": 2}\n{"id": 3}\n')
    assert problem(path, record, exact=False) is None  # a later stage appends to a shared file
    assert "bytes more" in str(problem(path, record, exact=True))
    path.write_text('{"id": 1}\n')
    assert problem(path, record, exact=True) == "was cut (1 of its 2 lines are left)"
    path.write_text('{"id": 1}\n{"id": 3}\n')
    assert "changed" in str(problem(path, record, exact=True))
    path.unlink()
    assert problem(path, record, exact=True) == "is missing"
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"\x00" * 10)
    record = describe(folder)
    (folder / "weights.bin").write_bytes(b"\x00" * 9 + b"\x01")
    assert problem(folder, record, exact=True) == "has a changed file weights.bin"


def test_redo_forgets_the_stage_and_later_ones_and_cuts_shared_files_back(tmp_path) -> None:
    store = RunStore(tmp_path / "run")
    shared, own = store.log("influence.jsonl"), store.path("pairs.jsonl")
    for key, records in (("round_0", ["a"]), ("pairs", []), ("final", ["b", "c"])):
        store.mark_started(key, ["influence.jsonl"] if key != "pairs" else ["pairs.jsonl"])
        for record in records:
            shared.append({"id": record})
        if key == "pairs":
            own.write_text("{}\n")
        store.mark_done(key, {})
    assert store.damaged() == []
    assert store.redo("pairs") == ["pairs", "final"]
    assert not own.exists() and shared.ids() == {"a"}  # cut back to round_0's part
    assert list(store.stages()) == ["round_0"] and store.damaged() == []
    assert json.loads(store.manifest_path.read_text())["stages"].keys() == {"round_0"}
    with pytest.raises(DitsError, match="no such stage; its stages: round_0"):
        store.redo("pairs")
