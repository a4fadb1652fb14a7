"""Small utilities shared across the package, each with exactly one implementation.

* `derive_seed` — the one seed derivation: every random choice of a run (sampling, node selection,
  splits, synthetic instances, trainers) takes its seed from a stable hash of named parts;
* `minmax` — the one min–max rule (ties give the middle, 0.5);
* `pearson`, `spearman` — correlations with NaN where they are undefined;
* `common_prefix_length` — leading items that sequences share;
* `private_path` — temp files and work folders unique to one writer;
* `write_atomic` — replace a file so that readers see the old or the new content, never a mix;
* `write_all` — write bytes to a file descriptor, checking the byte count (a full disk raises);
* `text_lines` — the numbered lines of a UTF-8 text file, a bad byte named by file and line.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from dits.errors import DitsError


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any printable parts (independent of Python's hash randomisation).

    ``repr`` keeps types apart (``derive_seed(1)`` differs from ``derive_seed("1")``) and order matters.
    """
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & ((1 << 63) - 1)


def minmax(values: Mapping[str, float], bounds: tuple[float, float] | None = None) -> dict[str, float]:
    """``values`` rescaled to [0, 1] by their own range, or by ``bounds`` (then clipped to [0, 1]).

    A range of zero width carries no information and maps every value to the middle, 0.5.
    """
    if not values:
        return {}
    low, high = bounds if bounds is not None else (min(values.values()), max(values.values()))
    if high <= low:
        return dict.fromkeys(values, 0.5)
    return {k: min(max((v - low) / (high - low), 0.0), 1.0) for k, v in values.items()}


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties sharing their average rank."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's r; NaN with fewer than 3 points or when either side is constant."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson's r on average ranks (ties share their rank)."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(a) < 3:
        return math.nan
    return pearson(_ranks(a), _ranks(b))


def common_prefix_length(sequences: Sequence[Sequence[object]], limit: int | None = None) -> int:
    """How many leading items all ``sequences`` share (at most ``limit``)."""
    if not sequences:
        return 0
    first = sequences[0]
    bound = min(len(s) for s in sequences)
    if limit is not None:
        bound = min(bound, limit)
    length = 0
    while length < bound and all(s[length] == first[length] for s in sequences):
        length += 1
    return length


PRIVATE_NAME = re.compile(r"^\..+\.(tmp|work|old)-\d+-[0-9a-f]{8}$")
"""The names `private_path` gives (what a killed process may leave behind)."""


def private_path(target: Path, kind: str) -> Path:
    """A path next to ``target`` that only this writer uses, ``.NAME.KIND-PID-RANDOM`` (``kind``: tmp, work
    or old), for temp files and work folders."""
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` durably (temp file of this writer, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = private_path(path, "tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_all(fd: int, data: bytes) -> None:
    """Write ``data`` to ``fd`` whole: a short write (a full disk) raises ``OSError(ENOSPC)``; the caller
    decides what to undo."""
    written = os.write(fd, data)
    if written != len(data):
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (wrote {written} of {len(data)} bytes)")


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a UTF-8 text file; a byte that is not UTF-8 raises `DitsError` naming
    the file and line."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DitsError(
                    f"{path}:{number}: not UTF-8 text (byte {raw[exc.start]:#04x} at column {exc.start + 1}); "
                    "save the file as UTF-8 or delete the line"
                ) from None
