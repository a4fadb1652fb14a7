"""What every recipe shares: its result type and the iterations it runs."""

from __future__ import annotations

from typing import Any

from dits.context import StageContext

Results = dict[str, dict[str, Any]]
"""Evaluation label (``base``, ``iter_0``, ...) → the summary of that evaluation."""


def iterations(ctx: StageContext) -> list[str]:
    """The iteration labels of the run: ``iter_0`` … (one for ``dits-dpo``, the single-round ablation)."""
    count = 1 if ctx.cfg.method == "dits-dpo" else ctx.cfg.loop.iterations
    return [f"iter_{k}" for k in range(count)]
