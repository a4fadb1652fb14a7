"""Peak memory of a span: its own peak after a reset, nested spans, the fallback without /proc."""

from pathlib import Path

import pytest

from dits import memory
from dits.memory import peak_memory

MB = 2**20
can_reset = memory.CLEAR_REFS.exists() and memory.STATUS.exists()


def allocate(mb: int) -> bytes:
    return b"\x01" * (mb * MB)  # written, so the pages are resident


@pytest.mark.skipif(not can_reset, reason="needs Linux /proc/self/clear_refs")
def test_a_span_reports_its_own_peak_not_an_earlier_one() -> None:
    with peak_memory() as big:
        block = allocate(200)
        del block
    with peak_memory() as small:
        block = allocate(20)
        del block
    assert big()["peak_rss_mb"] - small()["peak_rss_mb"] > 150


@pytest.mark.skipif(not can_reset, reason="needs Linux /proc/self/clear_refs")
def test_an_outer_span_keeps_the_peak_of_an_inner_one() -> None:
    with peak_memory() as outer:
        with peak_memory() as first:
            block = allocate(200)
            del block
        with peak_memory() as second:  # resets the mark; the outer span must not lose the first peak
            pass
    assert first()["peak_rss_mb"] - second()["peak_rss_mb"] > 150
    assert outer()["peak_rss_mb"] >= first()["peak_rss_mb"]


def test_without_proc_the_process_peak_so_far_is_reported(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(memory, "STATUS", tmp_path / "missing-status")
    monkeypatch.setattr(memory, "CLEAR_REFS", tmp_path / "missing-dir" / "clear_refs")
    with peak_memory() as peaks:
        assert peaks() == {}  # nothing until the span ends
    assert peaks()["peak_rss_mb"] > 1
