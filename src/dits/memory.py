"""Peak memory of a span of work (a stage): resident memory of the process and, on CUDA, GPU memory.

On Linux the kernel's high-water mark of resident memory (``VmHWM``) is reset when a span starts
(``/proc/self/clear_refs``), so a span reports its own peak. Spans may nest: before a reset, the mark
so far is folded into every open span, so an outer span still sees the peaks of the inner ones. Where
the mark cannot be reset (not Linux), a span reports the process's peak so far (`resource`), an upper
bound. GPU memory is the peak of PyTorch's allocator (`torch.cuda.max_memory_allocated`), handled the
same way.
"""

from __future__ import annotations

import re
import resource
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
RESET_PEAK_RSS = "5"  # see proc(5), /proc/pid/clear_refs

_open_spans: list[dict[str, float]] = []
"""Running peaks (MB) of the spans in progress, outermost first."""


def _rss_peak_mb() -> float:
    try:
        match = re.search(r"^VmHWM:\s+(\d+)\s+kB", STATUS.read_text(), re.MULTILINE)
    except OSError:
        match = None
    if match:
        return int(match.group(1)) / 1024
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _reset_rss_peak() -> None:
    with suppress(OSError):  # if it fails, the mark stays the process's peak so far
        CLEAR_REFS.write_text(RESET_PEAK_RSS)


def _cuda() -> Any:
    torch = sys.modules.get("torch")  # never import torch just to ask
    return torch.cuda if torch is not None and torch.cuda.is_available() else None


def _peaks() -> dict[str, float]:
    peaks = {"peak_rss_mb": _rss_peak_mb()}
    cuda = _cuda()
    if cuda is not None:
        peaks["peak_gpu_mb"] = cuda.max_memory_allocated() / 2**20
    return peaks


def _fold() -> None:
    """Record the current marks in every open span."""
    current = _peaks()
    for span in _open_spans:
        for key, value in current.items():
            span[key] = max(span.get(key, 0.0), value)


@contextmanager
def peak_memory() -> Iterator[Callable[[], dict[str, float]]]:
    """``with peak_memory() as peaks: ...; peaks()`` — ``{"peak_rss_mb": …[, "peak_gpu_mb": …]}`` of
    the block, rounded to 0.1 MB (read at its end; empty while it runs)."""
    _fold()
    _reset_rss_peak()
    cuda = _cuda()
    if cuda is not None:
        cuda.reset_peak_memory_stats()
    span: dict[str, float] = {}
    _open_spans.append(span)
    result: dict[str, float] = {}
    try:
        yield lambda: dict(result)
    finally:
        _fold()
        _open_spans.remove(span)
        result.update({key: round(value, 1) for key, value in span.items()})
