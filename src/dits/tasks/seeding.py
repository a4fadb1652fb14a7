"""Task-side randomness: private generators and split buckets, both from `dits.utils.derive_seed`."""

from __future__ import annotations

import random

from dits.utils import derive_seed


def seeded_rng(*parts: object) -> random.Random:
    """A private random generator seeded by `derive_seed` of ``parts``."""
    return random.Random(derive_seed(*parts))


def hash_split(key: str, fractions: tuple[float, float] = (0.8, 0.1)) -> str:
    """Deterministic ``train`` / ``validation`` / ``test`` bucket of ``key`` (default 80/10/10)."""
    point = derive_seed("split", key) / 2**63
    train, validation = fractions
    if point < train:
        return "train"
    return "validation" if point < train + validation else "test"
