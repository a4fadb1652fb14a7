"""Stable seeds: the same parts give the same seed in every process (unlike the salted built-in ``hash``)."""

from __future__ import annotations

import hashlib
import random


def stable_seed(*parts: object) -> int:
    """A 64-bit seed derived from the string forms of ``parts`` (order matters)."""
    text = "\x1f".join(str(part) for part in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def seeded_rng(*parts: object) -> random.Random:
    """A private random generator seeded by :func:`stable_seed` of ``parts``."""
    return random.Random(stable_seed(*parts))


def hash_split(key: str, fractions: tuple[float, float] = (0.8, 0.1)) -> str:
    """Deterministic ``train`` / ``validation`` / ``test`` bucket of ``key`` (default 80/10/10)."""
    point = stable_seed("split", key) / 2**64
    train, validation = fractions
    if point < train:
        return "train"
    return "validation" if point < train + validation else "test"
