"""The DITS stages of a run: probe candidate pairs, guide the tree search, select the DPO data.

All influence stages of an iteration share one `dits.influence.session.ProbeSession` (one θ*, one step
size, one F(θ*)), opened by the first of them. Artefacts, per iteration ``iter_K/``:

* ``influence.jsonl`` — one record per probed group: its influence, its pairs (ids and content keys),
  the mean chosen Q of those pairs, the proxies;
* ``influence_units.jsonl`` — every (group, validation unit) measurement as it is made, so a killed
  stage resumes without playing anything twice and racing decides as an uninterrupted run;
* ``influence_session.json`` and ``theta_star.pt`` — the iteration's scale (F(SFT), F(θ*), the
  calibration table and the chosen step size, warm-up and held-out trees) and θ*'s weights;
* ``influence_report*.json`` — per stage: groups, ties, budget, proxies;
* ``selected.jsonl`` — the pairs DPO trains on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from statistics import fmean
from typing import Any

from dits.config import RunConfig
from dits.context import StageContext
from dits.errors import DitsError
from dits.influence.estimator import UnitResult
from dits.influence.report import GroupInfluence, InfluenceReport, distinct_values, tie_fraction
from dits.influence.selection import assign_influence, influence_bounds, select_pairs
from dits.influence.session import ProbeSession, open_session
from dits.runtime import ModelHost, Policy, take
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


def report_path(ctx: StageContext, key: str, iteration: str) -> Path:
    """``iter_K/influence[_round_R]_report.json`` of stage ``key``."""
    return ctx.store.path(iteration, f"{key.split('/', 1)[1].replace('/', '_')}_report.json")


def influence_log(ctx: StageContext, iteration: str) -> JsonlLog:
    return ctx.store.log(iteration, "influence.jsonl")


def probed_influence(
    ctx: StageContext, iteration: str, pairs: Sequence[PreferencePair], *, except_stage: str | None = None
) -> dict[str, float]:
    """Pair id → influence of its group, for the ``pairs`` probed so far in ``iteration`` with their
    current content (a pair whose chosen or rejected answer changed since it was probed is left out),
    optionally leaving out the groups of one stage."""
    keys = {p.id: p.key for p in pairs}
    out: dict[str, float] = {}
    for record in influence_log(ctx, iteration):
        if record["stage"] == except_stage:
            continue
        for pair_id, key in zip(record["pair_ids"], record["pair_keys"], strict=True):
            if keys.get(pair_id) == key:
                out[pair_id] = record["influence"]
    return out


def probe_session(
    ctx: StageContext, iteration: str, policy: Policy | None, pairs: Sequence[PreferencePair]
) -> ProbeSession:
    """The iteration's session (opened once per process: measured, or reopened from its files). Its
    opener is kept beside it (``influence/ITER/open``): workers reopen the session with it."""
    key = f"influence/{iteration}"
    if key not in ctx.live:
        seed = ctx.replica_seed(iteration, "influence")
        opener = partial(open_run_session, policy=policy, candidates=list(pairs), seed=seed)
        ctx.live[key] = opener(ctx, ctx.store.path(iteration))
        ctx.live[f"{key}/open"] = opener
    return ctx.live[key]


def open_run_session(
    host: ModelHost, folder: Path, *, policy: Policy | None, candidates: Sequence[PreferencePair], seed: int
) -> ProbeSession:
    """`open_session` in ``folder`` on ``host``'s engine with the run's influence settings."""
    cfg = host.cfg
    start = host.serve(policy)  # first: serving a fully fine-tuned policy replaces the engine
    size = max(cfg.influence.validation_tasks, cfg.influence.validation_pool)
    pool = take(host.system.task, "validation", size)
    return open_session(
        folder,
        host.engine,
        host.system,
        candidates,
        pool,
        cfg.influence,
        cfg.dpo,
        policy=start,
        seed=seed,
        lora=cfg.dpo.lora_settings,
        first_order=cfg.influence.first_order_proxy,
        pairs_per_batch=pairs_per_batch(cfg),
        local_model=cfg.model,
        policy_path=None if policy is None else str(policy.path),
    )


def close_session(ctx: StageContext, iteration: str) -> None:
    """Remove the iteration's θ* from the engine (after its last influence stage)."""
    ctx.live.pop(f"influence/{iteration}/open", None)
    session = ctx.live.pop(f"influence/{iteration}", None)
    if session is not None:
        session.close()


def influence_stage(
    ctx: StageContext, key: str, iteration: str, policy: Policy | None, pairs: Sequence[PreferencePair]
) -> dict[str, float]:
    """Stage ``key``: the influence of every pair of ``pairs`` not probed yet with its current content,
    measured from ``policy``'s iteration session. Returns pair id → influence for every such pair probed
    so far in the iteration."""
    cfg = ctx.cfg.influence
    log = influence_log(ctx, iteration)
    units = ctx.store.log(iteration, "influence_units.jsonl")
    report_file = report_path(ctx, key, iteration)

    def work() -> dict[str, Any]:
        session = probe_session(ctx, iteration, policy, pairs)
        for result in session.calibration_results:  # the opening stage's calibration groups: final
            units.append({"stage": key, **result.to_dict()})
        session.calibration_results = []
        probed = probed_influence(ctx, iteration, pairs, except_stage=key)
        fresh = [p for p in pairs if p.id not in probed]
        groups = session.groups(fresh)
        done = {r["group"] for r in log if r["stage"] == key}
        measured = [UnitResult.from_dict(_fields(r)) for r in units if r["stage"] == key]
        by_id = {p.id: p for p in pairs}
        opener = ctx.live[f"influence/{iteration}/open"]
        results = session.measure(
            [g for g in groups if g.id not in done],
            cfg,
            harness=ctx.probe_harness(session, opener, ctx.store.path(iteration), fresh),
            measured=measured,
            on_unit=lambda r: units.append({"stage": key, **r.to_dict()}),
        )
        for group in results:
            group.pair_keys = [by_id[i].key for i in group.pair_ids]
            q_mean = fmean(by_id[i].chosen_value for i in group.pair_ids)
            log.append({"id": group.group, "stage": key, **group.to_dict(), "q_mean": q_mean})
        return _summary(
            ctx,
            key,
            iteration,
            session,
            [GroupInfluence.from_dict(_fields(r, GroupInfluence)) for r in log if r["stage"] == key],
        )

    ctx.stage(key, work, outputs=[log.path, units.path, report_file])
    return probed_influence(ctx, iteration, pairs)


def _fields(record: dict[str, Any], kind: type = UnitResult) -> dict[str, Any]:
    """A log record back to the fields of ``kind`` (drops the run's extra keys)."""
    names = kind.__dataclass_fields__
    return {k: v for k, v in record.items() if k in names}


def _summary(
    ctx: StageContext, key: str, iteration: str, session: ProbeSession, groups: list[GroupInfluence]
) -> dict[str, Any]:
    """The stage's report file and summary, over every group the stage probed (across resumes)."""
    record = session.record
    harness, prober = session.harness, session.prober
    report = InfluenceReport(
        estimator=ctx.cfg.influence.estimator,
        base_score=record.base_score,
        base_scores=record.base_scores,
        validation_ids=record.validation_ids,
        lr=record.lr,
        optimizer=record.optimizer,
        calibration=record.calibration,
        calibration_note=record.calibration_note,
        groups=groups,
        warmup_losses=record.warmup_losses,
        unfit_pairs=list(prober.unfit),
        probe_steps=prober.stats.probe_steps,
        probe_seconds=prober.stats.probe_seconds,
        dialogues=sum(g.dialogues for g in groups),
        validation_tokens=sum(g.tokens for g in groups),
        wall_time=0.0,
        extra={
            "sft_score": record.sft_score,
            "validation_pool": record.pool_size,
            "moved_tasks": record.moved_tasks,
            "validation_samples": record.samples,
            "warmup_trees": len(record.warmup_trees),
            "holdout_trees": len(record.holdout_trees),
            "session_dialogues": harness.dialogues,
        },
    )
    write_atomic(report_path(ctx, key, iteration), json.dumps(report.to_dict(), indent=1))
    agreement = {k: v.__dict__ for k, v in report.proxy_agreement().items()}
    return {
        "groups": len(groups),
        "pairs_scored": sum(len(g.pair_ids) for g in groups),
        "sft_score": record.sft_score,
        "base_score": record.base_score,
        "probe_lr": record.lr,
        "calibration": record.calibration_note,
        "distinct_values": report.distinct_values,
        "tie_fraction": round(report.tie_fraction, 3),
        "moved_tasks": record.moved_tasks,
        "validation_dialogues": report.dialogues,
        "tokens_generated": report.validation_tokens,
        "proxy_agreement": agreement,
    }


def influence_guide(ctx: StageContext, iteration: str, policy: Policy | None) -> RoundGuide:
    """DITS's influence-guided search: after each round the pairs found so far are probed (stage
    ``ITER/influence/round_R``); their influence is written onto their branch nodes and the next
    round's node priority is Q + ``search.influence_weight`` · Î, on the iteration's one scale."""

    def after_round(trees: list[Tree], r: int) -> NodePolicy:
        pairs = tree_pairs(ctx, trees)
        influence = influence_stage(ctx, f"{iteration}/influence/round_{r}", iteration, policy, pairs)
        assign_influence(trees, pairs, influence)
        return InfluencePolicy(ctx.cfg.search.influence_weight, bounds=influence_bounds(influence))

    return after_round


def selection_stage(
    ctx: StageContext, iteration: str, pairs: Sequence[PreferencePair], influence: dict[str, float]
) -> list[PreferencePair]:
    """Stage ``ITER/selected``: the pairs ``selection`` keeps (``selected.jsonl``). Pairs that were not
    probed (warm-up or held-out trees, too long for ``dpo.max_length``) enter with the mean influence of
    the probed ones; the summary counts them."""
    log = ctx.store.log(iteration, "selected.jsonl")
    close_session(ctx, iteration)

    def work() -> dict[str, Any]:
        if not influence:
            raise DitsError(
                f"{iteration}: no candidate pair could be probed (all longer than dpo.max_length?)"
            )
        neutral = fmean(influence.values())
        scored = {p.id: influence.get(p.id, neutral) for p in pairs}
        chosen = select_pairs(
            list(pairs), scored, ctx.cfg.selection, seed=ctx.replica_seed(iteration, "select")
        )
        log.rewrite(p.to_dict() for p in chosen)
        values = _group_values(ctx, iteration, influence)
        return {
            "candidates": len(pairs),
            "probed": sum(p.id in influence for p in pairs),
            "unprobed_with_mean_influence": sum(p.id not in influence for p in pairs),
            "selected": len(chosen),
            "strategy": ctx.cfg.selection.strategy,
            "distinct_values": distinct_values(values),
            "tie_fraction": round(tie_fraction(values), 3),
        }

    ctx.stage(f"{iteration}/selected", work, outputs=[log.path])
    return [PreferencePair.from_dict(r) for r in log]


def _group_values(ctx: StageContext, iteration: str, influence: dict[str, float]) -> list[float]:
    """The influence of every group whose pairs feed ``influence`` (one value per group)."""
    return [
        r["influence"]
        for r in influence_log(ctx, iteration)
        if any(influence.get(i) == r["influence"] for i in r["pair_ids"])
    ]
