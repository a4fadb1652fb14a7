"""Methods as recipes: each method (``method:`` in the config) is one function that lists its stages in
order over a `dits.context.StageContext`. `run` executes a config's recipe in its run directory
(resuming finished stages)."""

from __future__ import annotations

from collections.abc import Callable

from dits.config import RunConfig
from dits.context import StageContext
from dits.engines.base import Engine
from dits.progress import console
from dits.recipes import optima
from dits.recipes.common import Results
from dits.recipes.dits import dits as dits_recipe

Recipe = Callable[[StageContext], Results]

RECIPES: dict[str, Recipe] = {
    "isft": optima.isft,
    "idpo": optima.idpo,
    "isft-dpo": optima.isft_dpo,
    "dits": dits_recipe,
    "dits-dpo": dits_recipe,  # one iteration (`dits.recipes.common.iterations`): the selection ablation
}


def run(cfg: RunConfig, engine: Engine | None = None) -> Results:
    """The whole pipeline of ``cfg`` (resumes if the run directory has finished stages)."""
    ctx = StageContext(cfg, engine)
    console.rule(f"dits run {cfg.name}: {cfg.method}, {cfg.model}, task {cfg.task.name}")
    try:
        results = RECIPES[cfg.method](ctx)
    finally:
        ctx.close()
    console.rule("results")
    for label, summary in results.items():
        console.print(f"{label:8s} score {summary['score']:.3f}  mean tokens {summary['mean_tokens']:.1f}")
    ctx.store.set_meta("final", {k: v["score"] for k, v in results.items()})
    return results
