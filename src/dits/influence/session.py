"""One influence scale per iteration: θ*, its validation dialogues F(θ*), the probe step size.

Every influence stage of an iteration — each round of influence-guided search and the final stage —
measures groups against the same `ProbeSession`, so their values share one scale and selection can
compare them. The session is opened by the iteration's first influence stage:

1. **Warm-up hygiene.** Whole trees holding ``influence.warmup_fraction`` of that stage's candidates
   are set aside; θ* is the SFT adapter warmed up on them (``warmup_steps`` DPO steps at
   ``warmup_lr``), so the groups probed later were never fitted by θ* (with a fraction of 0, θ* warms
   up on the whole pool, as the reference code does). Pairs of the warm-up trees — and of the trees
   held out for the loss proxy — are not probed; selection gives them the mean influence of the
   probed pairs and says so in its summary.
2. **F(SFT) and F(θ*)** on the validation units are measured and recorded.
3. **Informative validation tasks** (an extension of ours). With ``validation_pool`` > V, θ* plays the
   whole pool; the V tasks kept are the ones some calibration probe moved (its score differs from
   θ*'s at the chosen step size: a larger, destructive size tried on the way moves nearly every task,
   and a dialogue whose text changes but whose score does not adds nothing), in pool order, then the
   others. A task no probe moves adds the same zero to every
   group, so keeping movable ones spends the budget where groups differ. The count is reported.
4. **Calibration that separates.** Each step size of ``probe_lr_grid`` (ascending) is tried on
   ``calibration_groups`` groups; the grid is climbed while the mean validation score drops by at most
   ``max_score_drop``, and among those sizes the one that separates the groups best (most distinct
   influence values, then the largest spread; ties: the smaller step) is chosen. The calibration groups'
   measurements at the chosen size are their final estimates (not played again).

The session is saved (``iter_K/influence_session.json``, θ*'s weights in ``iter_K/theta_star.pt``) and
a resumed run reopens it exactly.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any

import torch

from dits.config import InfluenceConfig, LoraSettings, TrainConfig
from dits.engines.base import Engine
from dits.engines.batching import run_programs
from dits.errors import DitsError
from dits.influence.estimator import (
    Group,
    Harness,
    Tally,
    UnitResult,
    make_groups,
    racing_schedule,
    run_groups,
    split_trees,
    unit_seed,
)
from dits.influence.probe import Prober
from dits.influence.report import CalibrationRow, GroupInfluence, distinct_values, spread
from dits.mas.dialogue import TwoAgentSystem
from dits.search.pairs import PreferencePair
from dits.tasks.base import TaskInstance
from dits.utils import write_atomic

SESSION_FILE = "influence_session.json"
THETA_FILE = "theta_star.pt"


@dataclass
class SessionRecord:
    """What a session measured and decided (saved; a resumed run reopens the session from it)."""

    lr: float
    optimizer: str
    calibration: list[CalibrationRow]
    calibration_note: str
    calibration_groups: list[str]
    base_score: float
    base_scores: list[float]
    sft_score: float | None
    validation_ids: list[str]
    samples: int
    pool_size: int
    moved_tasks: int
    warmup_trees: list[str]
    holdout_trees: list[str]
    warmup_losses: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SessionRecord:
        return cls(**{**data, "calibration": [CalibrationRow(**r) for r in data["calibration"]]})


@dataclass
class Calibration:
    """The rows tried, the chosen step size and why, every unit result at the chosen size, and the
    validation units whose score some probe moved at that size."""

    lr: float
    rows: list[CalibrationRow]
    note: str
    results: list[UnitResult] = field(default_factory=list)
    moved: set[int] = field(default_factory=set)


@dataclass
class ProbeSession:
    """θ* (in ``prober``), its validation dialogues (``harness``) and the iteration's scale (``record``).
    ``calibration_results``: the calibration groups' unit results at the chosen step (a fresh session)."""

    prober: Prober
    harness: Harness
    record: SessionRecord
    calibration_results: list[UnitResult]
    seed: int
    group_size: int

    def probed(self, pair: PreferencePair) -> bool:
        """Whether ``pair`` may be probed: not from a warm-up or held-out tree."""
        return pair.tree_id not in self.record.warmup_trees and pair.tree_id not in self.record.holdout_trees

    def groups(self, pairs: Sequence[PreferencePair]) -> list[Group]:
        """The groups of the probe-able ``pairs`` that fit ``dpo.max_length`` (the same pairs always
        form the same groups)."""
        self.prober.add_pairs(pairs)
        return _groups(pairs, self.prober, self.group_size, self.seed, self.probed)

    def on_tasks(self, tasks: Sequence[TaskInstance], cfg: InfluenceConfig) -> Harness:
        """θ*'s validation dialogues on other ``tasks`` (same θ*, same step size): e.g. the second half
        of a split-half comparison."""
        harness = self.harness
        return make_harness(
            self.prober, harness.system, tasks, cfg, self.seed, harness.holdout, harness.first_order
        )

    def measure(
        self,
        groups: Sequence[Group],
        cfg: InfluenceConfig,
        *,
        harness: Harness | None = None,
        measured: Sequence[UnitResult] = (),
        on_unit: Callable[[UnitResult], None] | None = None,
    ) -> list[GroupInfluence]:
        """The influence of ``groups`` with the configured estimator, at the session's step size, on the
        session's validation units (or ``harness``'s)."""
        harness = harness or self.harness
        units = len(harness.units)
        schedule = {
            "exact": [units],
            "first-order": [0],
            "racing": racing_schedule(cfg.racing_initial_tasks * cfg.validation_samples, units),
        }[cfg.estimator]
        return run_groups(
            harness,
            groups,
            self.record.lr,
            cfg.probe_optimizer,
            schedule,
            keep_fraction=cfg.racing_keep_fraction,
            per_batch=cfg.adapters_per_batch,
            state_budget_bytes=cfg.racing_state_budget_bytes,
            measured=measured,
            on_unit=on_unit,
        )

    def close(self) -> None:
        self.prober.close()


def _groups(
    pairs: Sequence[PreferencePair], prober: Prober, size: int, seed: int, keep: Any = lambda p: True
) -> list[Group]:
    return make_groups([p.id for p in pairs if keep(p) and p.id in prober.pairs], size, seed)


def calibrate(harness: Harness, groups: Sequence[Group], cfg: InfluenceConfig) -> Calibration:
    """Choose the probe step size on ``groups`` (module docstring, point 4)."""
    if not groups:
        raise DitsError("probe step calibration needs at least one group of pairs")
    units = list(harness.units)
    rows: list[CalibrationRow] = []
    by_lr: dict[float, list[UnitResult]] = {}
    for lr in sorted(cfg.probe_lr_grid):
        tallies = {g.id: Tally(g) for g in groups}
        results: list[UnitResult] = []
        wanted = {g.id: units for g in groups}
        for group, probed, measured in harness.measure(
            groups, lr, cfg.probe_optimizer, wanted, cfg.adapters_per_batch
        ):
            tallies[group.id].add(probed, measured)
            results += measured
        influences = [tallies[g.id].influence(harness) for g in groups]
        mean_after = fmean(r.score for r in results)
        row = CalibrationRow(
            lr=lr,
            groups=len(groups),
            change_fraction=sum(r.changed for r in results) / len(results),
            mean_score=mean_after,
            score_delta=mean_after - harness.base_score,
            distinct_scores=distinct_values(influences),
            spread=spread(influences),
            acceptable=mean_after - harness.base_score >= -cfg.max_score_drop,
        )
        rows.append(row)
        by_lr[lr] = results
        if not row.acceptable or 1 < len(groups) == row.distinct_scores:
            break  # larger steps only do more damage / every group is already told apart
    lr, note = choose_lr(rows, cfg.max_score_drop)
    return Calibration(lr, rows, note, by_lr[lr], score_moved(harness, by_lr[lr]))


def score_moved(harness: Harness, results: Sequence[UnitResult]) -> set[int]:
    """The units whose score (either side of a central difference) differs from θ*'s."""
    base = harness.base_scores
    return {
        r.unit
        for r in results
        if r.score != base[r.unit] or (r.reflected_score is not None and r.reflected_score != base[r.unit])
    }


def choose_lr(rows: Sequence[CalibrationRow], max_score_drop: float) -> tuple[float, str]:
    """The calibration rule on the rows tried (ascending lr): among step sizes whose mean score dropped
    by at most ``max_score_drop``, the one with the most distinct influence values, then the largest
    spread, then the most dialogues changed, then the smaller step; if every size dropped too far, the
    smallest. Returns ``(lr, note)``;
    the note warns when the chosen size separates no group (every influence would tie)."""
    tried = ", ".join(f"{r.lr:g} ({r.distinct_scores} distinct, Δscore {r.score_delta:+.3f})" for r in rows)
    safe = [r for r in rows if r.acceptable]
    if safe:
        best = max(safe, key=lambda r: (r.distinct_scores, r.spread, r.change_fraction, -r.lr))
        note = (
            f"lr {best.lr:g}: most distinct calibration influences among steps lowering the mean score "
            f"by <= {max_score_drop}; tried {tried}"
        )
    else:
        best = rows[0]
        note = (
            f"lr {best.lr:g}: every step lowered the mean score by more than {max_score_drop}; tried {tried}"
        )
    if best.distinct_scores <= 1:
        note += (
            "; WARNING: no step size tried separated the calibration groups, so influences will mostly tie "
            "(raise influence.probe_lr_grid, influence.validation_tasks or influence.validation_samples)"
        )
    return best.lr, note


def open_session(
    folder: Path,
    engine: Engine,
    system: TwoAgentSystem,
    candidates: Sequence[PreferencePair],
    pool: Sequence[TaskInstance],
    cfg: InfluenceConfig,
    dpo: TrainConfig,
    *,
    policy: str | None,
    seed: int,
    lora: LoraSettings | None = None,
    first_order: bool = False,
    pairs_per_batch: int = 16,
    local_model: str | None = None,
    policy_path: str | None = None,
) -> ProbeSession:
    """The iteration's session: reopened from ``folder`` if saved there, else measured (module docstring)
    from the first influence stage's ``candidates`` and the validation ``pool`` (≥ V tasks) and saved.
    ``local_model``/``policy_path``: where θ* trains when the engine cannot train in place (`Prober`)."""
    saved = folder / SESSION_FILE
    prober = Prober(
        engine,
        candidates,
        dpo,
        policy=policy,
        lora=lora,
        seed=seed,
        pairs_per_batch=pairs_per_batch,
        local_model=local_model,
        policy_path=policy_path,
    )
    try:
        if saved.exists():
            record = SessionRecord.from_dict(json.loads(saved.read_text()))
            by_id = {t.id: t for t in pool}
            missing = [i for i in record.validation_ids if i not in by_id]
            if missing:
                raise DitsError(
                    f"{saved}: validation task {missing[0]!r} is not in the task's validation split"
                )
            prober.set_theta(torch.load(folder / THETA_FILE, weights_only=True))
            held = [p.id for p in candidates if p.tree_id in record.holdout_trees]
            tasks = [by_id[i] for i in record.validation_ids]
            harness = make_harness(prober, system, tasks, cfg, seed, held, first_order)
            return ProbeSession(prober, harness, record, [], seed, cfg.group_size)
        return _measure_session(folder, prober, system, candidates, pool, cfg, policy, seed, first_order)
    except BaseException:
        prober.close()
        raise


def _measure_session(
    folder: Path,
    prober: Prober,
    system: TwoAgentSystem,
    candidates: Sequence[PreferencePair],
    pool: Sequence[TaskInstance],
    cfg: InfluenceConfig,
    policy: str | None,
    seed: int,
    first_order: bool,
) -> ProbeSession:
    """A fresh session (module docstring, points 1–4), saved to ``folder``."""
    pool = pool[: max(cfg.validation_tasks, cfg.validation_pool)]
    count = round(cfg.proxy_holdout_fraction * len(candidates))
    rest, holdout = split_trees(candidates, count, seed=seed) if count else (list(candidates), [])
    count = round(cfg.warmup_fraction * len(rest))
    probe_pool, warmup = split_trees(rest, count, seed=seed, purpose="warmup") if count else (rest, rest)
    if not probe_pool:
        raise DitsError("influence: no candidate pair is left to probe after the warm-up and held-out trees")
    losses = prober.warm_up(
        [p.id for p in warmup if p.id in prober.pairs], cfg.warmup_steps, cfg.warmup_lr, cfg.warmup_batch_size
    )
    sft_score = policy_score(prober, system, pool[: cfg.validation_tasks], cfg, seed, policy)
    harness = make_harness(prober, system, pool, cfg, seed, [p.id for p in holdout], first_order)
    groups = _groups(probe_pool, prober, cfg.group_size, seed)
    calibration = _calibration(harness, groups[: cfg.calibration_groups], cfg)
    kept = informative_tasks(calibration.moved, len(pool), cfg)
    results = harness.restrict(kept, calibration.results)
    record = SessionRecord(
        lr=calibration.lr,
        optimizer=cfg.probe_optimizer,
        calibration=calibration.rows,
        calibration_note=calibration.note,
        calibration_groups=sorted({r.group for r in results}),
        base_score=harness.base_score,
        base_scores=harness.base_scores,
        sft_score=sft_score,
        validation_ids=[t.id for t in harness.tasks],
        samples=cfg.validation_samples,
        pool_size=len(pool),
        moved_tasks=len({u // cfg.validation_samples for u in calibration.moved}),
        warmup_trees=sorted({p.tree_id for p in warmup}) if count else [],
        holdout_trees=sorted({p.tree_id for p in holdout}),
        warmup_losses=losses,
    )
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{THETA_FILE}.tmp"
    torch.save(prober.state(), tmp)
    tmp.replace(folder / THETA_FILE)
    write_atomic(folder / SESSION_FILE, json.dumps(record.to_dict(), indent=1))
    return ProbeSession(prober, harness, record, results, seed, cfg.group_size)


def make_harness(
    prober: Prober,
    system: TwoAgentSystem,
    tasks: Sequence[TaskInstance],
    cfg: InfluenceConfig,
    seed: int,
    holdout: Sequence[str],
    first_order: bool,
) -> Harness:
    """θ*'s validation dialogues on ``tasks`` with the influence settings of ``cfg``."""
    return Harness(
        prober,
        system,
        tasks,
        seed=seed,
        samples=cfg.validation_samples,
        temperature=cfg.validation_temperature,
        holdout=[i for i in holdout if i in prober.pairs],
        first_order=first_order or cfg.estimator == "first-order",
        drafts=cfg.drafts,
        central=cfg.difference == "central",
    )


def policy_score(
    prober: Prober,
    system: TwoAgentSystem,
    tasks: Sequence[TaskInstance],
    cfg: InfluenceConfig,
    seed: int,
    policy: str | None,
) -> float | None:
    """F of the iteration's policy (the SFT adapter θ* starts from) on the validation units."""
    if policy is None:
        return None
    samples = cfg.validation_samples
    params = Harness.sampling(samples, cfg.validation_temperature)
    units = [(task, k) for task in tasks for k in range(samples)]
    programs = [
        system.converse(task, params, seed=unit_seed(seed, task, k, samples), adapter=policy)
        for task, k in units
    ]
    dialogues = run_programs(programs, prober.engine)
    return fmean(system.score(d, task) for d, (task, _) in zip(dialogues, units, strict=True))


def _calibration(harness: Harness, groups: Sequence[Group], cfg: InfluenceConfig) -> Calibration:
    if cfg.probe_lr != "auto":
        return Calibration(float(cfg.probe_lr), [], "fixed by influence.probe_lr")
    if cfg.estimator == "first-order":
        return Calibration(min(cfg.probe_lr_grid), [], "first-order: the ranking does not depend on lr")
    return calibrate(harness, groups, cfg)


def informative_tasks(moved: set[int], pool: int, cfg: InfluenceConfig) -> list[int]:
    """The V task indices of the pool to keep: tasks some calibration probe moved first, in pool order."""
    movable = {u // cfg.validation_samples for u in moved}
    ordered = [t for t in range(pool) if t in movable] + [t for t in range(pool) if t not in movable]
    return sorted(ordered[: cfg.validation_tasks])
