"""The vocabulary of tasks: families, splits, metrics and answer formats."""

from __future__ import annotations

from typing import Literal

Family = Literal["qa", "debate"]
"""``qa``: information exchange (each agent holds part of the evidence); ``debate``: solver and critic."""
Split = Literal["train", "validation", "test"]
"""``train`` feeds synthesis; ``validation`` is the influence set (disjoint from train); ``test`` is held out."""
MetricName = Literal["f1", "em", "numeric", "math"]
AnswerFormat = Literal["tag", "boxed"]
"""``tag``: the answer is wrapped as ``<A>...</A>``; ``boxed``: LaTeX ``\\boxed{...}``."""

SPLITS: tuple[Split, ...] = ("train", "validation", "test")
AGENTS: tuple[str, str] = ("alice", "bob")
