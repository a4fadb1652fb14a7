"""The DITS stages of a run: probe candidate pairs, guide the tree search, select the DPO data.

Artefacts: ``iter_K/influence.jsonl`` (one record per probed group: its influence, the pairs in it, the
mean chosen Q of those pairs, the proxies), ``iter_K/influence_report*.json`` (F(θ*), the probe step
size and calibration table, ties, budget) and ``iter_K/selected.jsonl`` (the pairs DPO trains on).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from statistics import fmean
from typing import Any

from dits.config import RunConfig
from dits.context import Policy, StageContext
from dits.errors import DitsError
from dits.influence.estimator import estimate, split_holdout
from dits.influence.report import GroupInfluence, pair_influence
from dits.influence.selection import assign_influence, influence_bounds, select_pairs
from dits.search.pairs import PreferencePair
from dits.search.policy import InfluencePolicy, NodePolicy
from dits.search.stages import RoundGuide, tree_pairs
from dits.search.tree import Tree
from dits.store import JsonlLog
from dits.utils import write_atomic


def pairs_per_batch(cfg: RunConfig) -> int:
    """Preference pairs per forward pass of a probe step (half the engine's generation batch: a pair
    is two sequences)."""
    return max(1, cfg.engine.batch_size // 2)


def influence_log(ctx: StageContext, iteration: str) -> JsonlLog:
    return ctx.store.log(iteration, "influence.jsonl")


def probed_influence(ctx: StageContext, iteration: str, *, except_stage: str | None = None) -> dict[str, float]:
    """Pair id → influence of its group, for every pair probed so far in ``iteration`` (optionally
    leaving out the groups of one stage)."""
    records = [r for r in influence_log(ctx, iteration) if r["stage"] != except_stage]
    return pair_influence([GroupInfluence.from_dict(_strip(r)) for r in records])


def influence_stage(
    ctx: StageContext, key: str, iteration: str, policy: Policy | None, pairs: Sequence[PreferencePair]
) -> dict[str, float]:
    """Stage ``key``: the influence of every not-yet-probed pair of ``pairs``, measured from ``policy``
    (groups appended as they finish; a resumed stage skips finished groups). Returns pair id →
    influence for every pair probed so far in the iteration."""
    cfg = ctx.cfg
    log = influence_log(ctx, iteration)
    report_path = ctx.store.path(iteration, f"{key.split('/', 1)[1].replace('/', '_')}_report.json")

    def work() -> dict[str, Any]:
        # Pairs probed by earlier stages (search rounds) keep their value; this stage's own finished
        # groups are skipped by id below, so a resumed stage forms exactly the same groups.
        probed = probed_influence(ctx, iteration, except_stage=key)
        fresh = [p for p in pairs if p.id not in probed]
        if not fresh:
            return {"groups": 0, "note": "every pair already probed"}
        holdout_count = round(cfg.influence.proxy_holdout_fraction * len(fresh))
        pool, holdout = (
            split_holdout(fresh, holdout_count, seed=ctx.seed(key, "holdout"))
            if holdout_count
            else (fresh, [])
        )
        validation = ctx.tasks("validation", cfg.influence.validation_tasks)
        q_of = {p.id: p.chosen_value for p in pairs}
        done = {r["group"] for r in log if r["stage"] == key}

        def record(group: GroupInfluence) -> None:
            q_mean = fmean(q_of[i] for i in group.pair_ids)
            log.append({"id": group.group, "stage": key, **group.to_dict(), "q_mean": q_mean})

        start = ctx.serve(policy)  # first: serving a fully fine-tuned policy replaces the engine
        report = estimate(
            ctx.engine,
            ctx.system,
            pool,
            validation,
            cfg.influence,
            cfg.dpo,
            policy=start,
            seed=ctx.seed(key),
            lora=cfg.dpo.lora_settings,
            holdout=holdout,
            done=done,
            on_group_done=record,
            first_order=cfg.influence.first_order_proxy,
            pairs_per_batch=pairs_per_batch(cfg),
        )
        write_atomic(report_path, json.dumps(report.to_dict(), indent=1))
        agreement = {k: v.__dict__ for k, v in report.proxy_agreement().items()}
        return {
            "groups": len(report.groups),
            "pairs_scored": sum(len(g.pair_ids) for g in report.groups),
            "heldout_pairs": len(holdout),
            "base_score": report.base_score,
            "probe_lr": report.lr,
            "calibration": report.calibration_note,
            "distinct_values": report.distinct_values,
            "tie_fraction": round(report.tie_fraction, 3),
            "probe_steps": report.probe_steps,
            "validation_dialogues": report.dialogues,
            "tokens_generated": report.validation_tokens,
            "proxy_agreement": agreement,
        }

    ctx.stage(key, work, outputs=[log.path, report_path])
    return probed_influence(ctx, iteration)


def influence_guide(ctx: StageContext, iteration: str, policy: Policy | None) -> RoundGuide:
    """DITS's influence-guided search: after each round the pairs found so far are probed (stage
    ``ITER/influence/round_R``); their influence is written onto their branch nodes and the next
    round's node priority is Q + ``search.influence_weight`` · Î, on one scale across trees."""

    def after_round(trees: list[Tree], r: int) -> NodePolicy:
        pairs = tree_pairs(ctx, trees)
        influence = influence_stage(ctx, f"{iteration}/influence/round_{r}", iteration, policy, pairs)
        assign_influence(trees, pairs, influence)
        return InfluencePolicy(ctx.cfg.search.influence_weight, bounds=influence_bounds(influence))

    return after_round


def selection_stage(
    ctx: StageContext, iteration: str, pairs: Sequence[PreferencePair], influence: dict[str, float]
) -> list[PreferencePair]:
    """Stage ``ITER/selected``: the pairs ``selection`` keeps among the probed candidates
    (``selected.jsonl``)."""
    log = ctx.store.log(iteration, "selected.jsonl")

    def work() -> dict[str, Any]:
        scored = [p for p in pairs if p.id in influence]
        if not scored:
            raise DitsError(
                f"{iteration}: no candidate pair could be probed (all longer than dpo.max_length?)"
            )
        chosen = select_pairs(scored, influence, ctx.cfg.selection, seed=ctx.seed(iteration, "select"))
        log.rewrite(p.to_dict() for p in chosen)
        return {
            "candidates": len(pairs),
            "scored": len(scored),
            "selected": len(chosen),
            "strategy": ctx.cfg.selection.strategy,
        }

    ctx.stage(f"{iteration}/selected", work, outputs=[log.path])
    return [PreferencePair.from_dict(r) for r in log]


def _strip(record: dict[str, Any]) -> dict[str, Any]:
    """A log record back to `GroupInfluence` fields (drops the run's extra keys)."""
    extra = {"id", "stage", "q_mean"}
    return {k: v for k, v in record.items() if k not in extra}
