"""Optima's self-training recipes (Chen et al., arXiv 2410.08115): iSFT, iDPO, iSFT-DPO.

Each recipe lists its stages once, in order; every stage is resumable and memoised by the run's
executor. Results map an evaluation label (``base``, ``iter_0``, ...) to its summary.
"""

from __future__ import annotations

from dits.context import Policy, StageContext
from dits.evaluate import evaluation_stage
from dits.isft import sample_stage
from dits.recipes.common import Results, iterations
from dits.search.stages import pairs_stage, search_stage
from dits.train.stages import dpo_stage, sft_stage


def isft(ctx: StageContext) -> Results:
    """Per iteration: sample dialogues with the current model → SFT on the best → evaluate."""
    results = {"base": evaluation_stage(ctx, "base", None)}
    policy: Policy | None = None
    for it in iterations(ctx):
        samples = sample_stage(ctx, it, policy, first=it == "iter_0")
        policy = sft_stage(ctx, it, samples, policy)
        results[it] = evaluation_stage(ctx, it, policy)
    return results


def idpo(ctx: StageContext) -> Results:
    """Once: sample → SFT. Per iteration: tree search with the current model → preference pairs →
    DPO (with ``dpo.nll_weight``) continuing from the current model → evaluate."""
    results = {"base": evaluation_stage(ctx, "base", None)}
    policy = sft_stage(ctx, "init", sample_stage(ctx, "init", None, first=True), None)
    for it in iterations(ctx):
        trees = search_stage(ctx, it, policy)
        pairs = pairs_stage(ctx, it, trees)
        policy = dpo_stage(ctx, it, policy, pairs)
        results[it] = evaluation_stage(ctx, it, policy)
    return results


def isft_dpo(ctx: StageContext) -> Results:
    """Per iteration: sample with the current model → SFT → tree search with the SFT model →
    preference pairs → DPO from the SFT model → evaluate."""
    results = {"base": evaluation_stage(ctx, "base", None)}
    policy: Policy | None = None
    for it in iterations(ctx):
        sft = sft_stage(ctx, it, sample_stage(ctx, it, policy, first=it == "iter_0"), policy)
        trees = search_stage(ctx, it, sft)
        pairs = pairs_stage(ctx, it, trees)
        policy = dpo_stage(ctx, it, sft, pairs)
        results[it] = evaluation_stage(ctx, it, policy)
    return results
