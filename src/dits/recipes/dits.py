"""The DITS recipe (Shi et al., arXiv 2502.00955): iSFT-DPO whose preference data is chosen, and whose
tree search is steered, by measured influence on the validation metric.

Read top to bottom, one iteration is the whole method.
"""

from __future__ import annotations

from dits.context import Policy, StageContext
from dits.evaluate import evaluation_stage
from dits.influence.stages import influence_guide, influence_stage, selection_stage
from dits.isft import sample_stage
from dits.recipes.common import Results, iterations
from dits.search.stages import pairs_stage, search_stage
from dits.train.stages import dpo_stage, sft_stage


def dits(ctx: StageContext) -> Results:
    """Per iteration: sample → SFT → tree search with the SFT model, in rounds steered by the influence
    of the pairs found so far (``search.guidance``) → preference pairs → influence of every group of
    pairs (one θ* and step size per iteration) → selection by Q + γ·minmax(influence) → DPO from the
    SFT model → evaluate."""
    results = {"base": evaluation_stage(ctx, "base", None)}
    policy: Policy | None = None
    for it in iterations(ctx):
        sft = sft_stage(ctx, it, sample_stage(ctx, it, policy, first=it == "iter_0"), policy)
        guide = influence_guide(ctx, it, sft) if ctx.cfg.guided_search else None
        trees = search_stage(ctx, it, sft, guide=guide)
        pairs = pairs_stage(ctx, it, trees)
        influence = influence_stage(ctx, f"{it}/influence", it, sft, pairs)
        policy = dpo_stage(ctx, it, sft, selection_stage(ctx, it, pairs, influence))
        results[it] = evaluation_stage(ctx, it, policy)
    return results
