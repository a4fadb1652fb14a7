"""Small utilities shared across the package, each with exactly one implementation.

* `derive_seed` — the one seed derivation: every random choice of a run (sampling, node selection,
  splits, synthetic instances, trainers) takes its seed from a stable hash of named parts;
* `minmax` — the one min–max rule (ties give the middle, 0.5);
* `pearson`, `spearman` — correlations with NaN where they are undefined;
* `common_prefix_length` — leading items that sequences share;
* `write_atomic` — replace a file so that readers see the old or the new content, never a mix.
"""

from __future__ import annotations

import hashlib
import math
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any printable parts (independent of Python's hash randomisation).

    ``repr`` keeps types apart (``derive_seed(1)`` differs from ``derive_seed("1")``) and order matters.
    """
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & ((1 << 63) - 1)


def minmax(
    values: Mapping[str, float], bounds: tuple[float, float] | None = None
) -> dict[str, float]:
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


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` durably (temp file of this writer, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
