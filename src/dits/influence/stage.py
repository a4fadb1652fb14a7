"""The DITS stages of a run: probe candidate pairs, select the DPO data, guide the tree search.

Artefacts: ``iter_K/influence.jsonl`` (one record per probed group: its influence, the pairs in it, the
mean chosen Q of those pairs, the proxies), ``iter_K/influence_report*.json`` (F(θ*), the probe step
size and calibration table, ties, budget) and ``iter_K/selected.jsonl`` (the pairs DPO trains on).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from statistics import fmean
from typing import TYPE_CHECKING, Any

from dits.errors import DitsError
from dits.influence.estimator import estimate, split_holdout
from dits.influence.report import GroupInfluence, pair_influence
from dits.influence.selection import select_pairs
from dits.runtime import take
from dits.search.pairs import PreferencePair
from dits.store import JsonlLog, write_atomic

if TYPE_CHECKING:
    from dits.loop import Policy, Run


def influence_log(run: Run, it: str) -> JsonlLog:
    return run.store.log(it, "influence.jsonl")


def probed_influence(run: Run, it: str, *, except_stage: str | None = None) -> dict[str, float]:
    """Pair id → influence of its group, for every pair probed so far in iteration ``it`` (optionally
    leaving out the groups of one stage)."""
    records = [r for r in influence_log(run, it) if r["stage"] != except_stage]
    return pair_influence([GroupInfluence.from_dict(_strip(r)) for r in records])


def probe(run: Run, key: str, it: str, policy: Policy, pairs: Sequence[PreferencePair]) -> dict[str, Any]:
    """Stage ``key``: the influence of every not-yet-probed pair of ``pairs`` (groups appended as they
    finish; a resumed stage skips finished groups)."""
    cfg = run.cfg
    log = influence_log(run, it)

    def work() -> dict[str, Any]:
        # Pairs probed by earlier stages (search rounds) keep their value; this stage's own finished
        # groups are skipped by id below, so a resumed stage forms exactly the same groups.
        probed = probed_influence(run, it, except_stage=key)
        fresh = [p for p in pairs if p.id not in probed]
        if not fresh:
            return {"groups": 0, "note": "every pair already probed"}
        holdout_count = round(cfg.influence.proxy_holdout_fraction * len(fresh))
        pool, holdout = (
            split_holdout(fresh, holdout_count, seed=run.seed(key, "holdout"))
            if holdout_count
            else (fresh, [])
        )
        validation = take(run.system.task, "validation", cfg.influence.validation_tasks)
        q_of = {p.id: p.chosen_value for p in pairs}
        done = {r["group"] for r in log if r["stage"] == key}

        def record(group: GroupInfluence) -> None:
            q_mean = fmean(q_of[i] for i in group.pair_ids)
            log.append({"id": group.group, "stage": key, **group.to_dict(), "q_mean": q_mean})

        report = estimate(
            run.engine,  # type: ignore[arg-type]
            run.system,
            pool,
            validation,
            cfg.influence,
            cfg.dpo,
            policy=run.adapter(policy),
            seed=run.seed(key),
            lora=cfg.dpo.lora_settings,
            holdout=holdout,
            done=done,
            on_group_done=record,
            first_order=cfg.influence.first_order_proxy,
        )
        name = key.split("/", 1)[1].replace("/", "_")
        write_atomic(run.store.path(it, f"{name}_report.json"), json.dumps(report.to_dict(), indent=1))
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

    return run.stage(key, work)


def select(run: Run, it: str, policy: Policy, pairs: list[PreferencePair]) -> list[PreferencePair]:
    """Probe the candidate pool, then keep what ``selection`` says (written to ``selected.jsonl``)."""
    probe(run, f"{it}/influence", it, policy, pairs)
    log = run.store.log(it, "selected.jsonl")

    def work() -> dict[str, Any]:
        influence = probed_influence(run, it)
        scored = [p for p in pairs if p.id in influence]
        if not scored:
            raise DitsError(f"{it}: no candidate pair could be probed (all longer than dpo.max_length?)")
        chosen = select_pairs(scored, influence, run.cfg.selection, seed=run.seed(it, "select"))
        write_atomic(log.path, "".join(json.dumps(p.to_dict()) + "\n" for p in chosen))
        return {
            "candidates": len(pairs),
            "scored": len(scored),
            "selected": len(chosen),
            "strategy": run.cfg.selection.strategy,
        }

    run.stage(f"{it}/selected", work)
    return [PreferencePair.from_dict(r) for r in log]


def _strip(record: dict[str, Any]) -> dict[str, Any]:
    """A log record back to `GroupInfluence` fields (drops the run's extra keys)."""
    extra = {"id", "stage", "q_mean"}
    return {k: v for k, v in record.items() if k not in extra}
