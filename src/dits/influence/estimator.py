"""DITS influence of groups of preference pairs: the validation metric after one step from θ*.

`estimate` runs the whole stage: θ* (`Prober.warm_up`), F(θ*) = mean task metric of θ*'s greedy
dialogues on the V validation instances (measured once), the probe step size (fixed or calibrated,
`calibrate`), then one of three estimators over groups of ``cfg.group_size`` pairs:

* ``exact``: I(g) = F(θ* + step_g) − F(θ*) on all V tasks. Groups are probed ``cfg.adapters_per_batch``
  at a time; their states become adapters of the engine and all K × V greedy dialogues run in the same
  waves (mixed-adapter batches), then the adapters are removed.
* ``racing``: successive halving — every group on the first ``cfg.racing_initial_tasks`` tasks, keep the
  top ``cfg.racing_keep_fraction``, double the tasks, … until V. A group eliminated after n tasks keeps
  its partial estimate, mean score on the first n tasks minus θ*'s mean on the same n tasks.
  The adapter states of the groups still racing are kept for the next round while they fit in
  ``cfg.racing_state_budget_mb``; a group beyond it is probed again (probes are deterministic, so the
  result is the same, only slower).
* ``first-order``: no validation generation per group. I(g) ≈ ⟨∇_θ (1/V) Σ_d F(d) log p_θ*(d), Δθ_g⟩:
  the first-order change, under the exact probe step Δθ_g, of the log-likelihood of θ*'s own validation
  dialogues weighted by their score (teacher-forced, each agent's own turns in its own view; a dialogue
  θ* solves counts fully, a failed one not at all). With ``estimate(first_order=True)`` the exact and
  racing modes record it too (``GroupInfluence.first_order``), and `InfluenceReport.proxy_agreement`
  measures how well it ranks groups like the exact value.

Also per group, for analysis only, the DPO-loss proxy: DPO loss on held-out pairs after − before the
step. Held-out pairs must not be in the scored pool; `split_holdout` sets aside whole trees, so they share
no instance with it (the reference repository used the last 10 % of its pair file the same way).
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import fmean

import numpy as np
import torch

from dits.config import InfluenceConfig, LoraSettings, TrainConfig
from dits.engines.base import AdapterWeights, Engine, SamplingParams
from dits.engines.batching import run_programs
from dits.errors import DitsError
from dits.influence.probe import MaskedSequence, Optimizer, Prober
from dits.influence.report import CalibrationRow, GroupInfluence, InfluenceReport
from dits.mas.dialogue import Dialogue, TwoAgentSystem
from dits.search.pairs import PreferencePair
from dits.tasks.base import TaskInstance
from dits.train.records import sft_rows, tokenize_sft
from dits.utils import derive_seed

GREEDY = SamplingParams()
MAX_SCORE_DROP = 0.1
"""Calibration: a step size may lower the probes' mean validation score by at most this (metric units)."""
CALIBRATION_GROUPS = 4


@dataclass(frozen=True)
class Group:
    """A candidate unit: pairs probed together by one step."""

    id: str
    pair_ids: tuple[str, ...]


def make_groups(pair_ids: Sequence[str], size: int, seed: int) -> list[Group]:
    """Sorted ids, seeded shuffle, consecutive chunks of ``size`` (the last may be smaller). A group's id
    is its position plus a digest of its pair ids, so a resumed run over the same pool and seed skips
    exactly the groups it finished, and a changed pool cannot be mistaken for a finished one."""
    ids = sorted(pair_ids)
    order = np.random.default_rng(derive_seed(seed, "groups") % 2**32).permutation(len(ids))
    shuffled = [ids[i] for i in order]
    groups = []
    for index, start in enumerate(range(0, len(shuffled), size)):
        members = tuple(shuffled[start : start + size])
        digest = hashlib.blake2b("\n".join(members).encode(), digest_size=4).hexdigest()
        groups.append(Group(f"g{index:05d}-{digest}", members))
    return groups


def split_holdout(
    pairs: Sequence[PreferencePair], count: int, *, seed: int
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """``(pool, held_out)``: whole trees, in a seeded order, are held out until ≥ ``count`` pairs."""
    sizes = Counter(p.tree_id for p in pairs)
    trees = sorted(sizes)
    random.Random(derive_seed(seed, "holdout")).shuffle(trees)
    held: set[str] = set()
    for tree in trees:
        if sum(sizes[t] for t in held) >= count:
            break
        held.add(tree)
    return [p for p in pairs if p.tree_id not in held], [p for p in pairs if p.tree_id in held]


def racing_schedule(initial: int, total: int) -> list[int]:
    """Numbers of validation tasks per racing round: initial, 2·initial, … capped at ``total``."""
    stops = [min(initial, total)]
    while stops[-1] < total:
        stops.append(min(2 * stops[-1], total))
    return stops


def _signature(dialogue: Dialogue) -> tuple[str | None, tuple[str, ...]]:
    return dialogue.final_answer, tuple(t.text for t in dialogue.turns)


@dataclass(frozen=True)
class ProbeMeasures:
    """What a probe measured before θ* was restored: the group's loss and the two proxies."""

    loss: float
    loss_proxy: float | None
    first_order: float | None


@dataclass
class Probed:
    """One probe: the adapter state after the step and its measures."""

    state: dict[str, torch.Tensor]
    measures: ProbeMeasures

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state.values())


class Harness:
    """θ*'s greedy validation dialogues (F(θ*), measured once) and probes measured against them."""

    def __init__(
        self,
        prober: Prober,
        system: TwoAgentSystem,
        tasks: Sequence[TaskInstance],
        *,
        seed: int,
        holdout: Sequence[str] = (),
        first_order: bool = True,
        drafts: bool = True,
    ) -> None:
        self.prober, self.system, self.tasks, self.seed = prober, system, list(tasks), seed
        self.holdout = list(holdout)
        self.dialogues = self.tokens = 0
        self.drafts = drafts
        self.base: list[Dialogue] = []
        (self.base,) = self.play([prober.name], range(len(self.tasks)))
        self.base_scores = self.scores(self.base, range(len(self.tasks)))
        self.first_order = first_order
        self.gradient = self._likelihood_gradient() if first_order else None
        self.holdout_loss = prober.loss(self.holdout) if self.holdout else None

    @property
    def base_score(self) -> float:
        return fmean(self.base_scores)

    def play(self, adapters: Sequence[str], tasks: range) -> list[list[Dialogue]]:
        """Greedy dialogues of ``tasks`` under each adapter, all in the same waves (θ*'s dialogues of the
        same tasks, once known, serve as drafts: identical results, fewer decoding steps)."""
        programs = [
            self.system.converse(
                self.tasks[i],
                GREEDY,
                seed=derive_seed(self.seed, "validation", self.tasks[i].id),
                adapter=a,
                reference=self.base[i] if self.base and self.drafts else None,
            )
            for a in adapters
            for i in tasks
        ]
        instances = [self.tasks[i] for i in tasks]
        flat = run_programs(programs, self.prober.engine)
        self.dialogues += len(flat)
        self.tokens += sum(d.tokens for d in flat)
        n = len(instances)
        return [flat[i * n : (i + 1) * n] for i in range(len(adapters))]

    def scores(self, dialogues: Sequence[Dialogue], tasks: range) -> list[float]:
        return [self.system.score(d, self.tasks[i]) for d, i in zip(dialogues, tasks, strict=True)]

    def changed(self, dialogues: Sequence[Dialogue], tasks: range) -> int:
        """How many dialogues differ (text or final answer) from θ*'s on the same task."""
        return sum(_signature(d) != _signature(self.base[i]) for d, i in zip(dialogues, tasks, strict=True))

    def _likelihood_gradient(self) -> dict[str, torch.Tensor] | None:
        """∇ at θ* of (1/V) Σ_d F(d) · log p(d) over θ*'s validation dialogues (None if none scores > 0)."""
        sequences, weights = [], []
        demonstrate = self.system.rules.demonstration
        for dialogue, instance, score in zip(self.base, self.tasks, self.base_scores, strict=True):
            if score <= 0:
                continue
            for row in sft_rows(dialogue, instance, demonstrate=demonstrate):
                tokens = tokenize_sft(row, self.prober.engine.tokenizer, self.prober.dpo.max_length)
                if tokens is not None:
                    sequences.append(MaskedSequence(tokens["input_ids"], tokens["completion_mask"]))
                    weights.append(score / len(self.tasks))
        return self.prober.gradient(sequences, weights) if sequences else None

    def probe(self, group: Group, lr: float, optimizer: Optimizer) -> Probed:
        with self.prober.stepped(group.pair_ids, lr, optimizer) as loss:
            proxy = None
            if self.holdout_loss is not None:
                proxy = self.prober.loss(self.holdout) - self.holdout_loss
            first_order = None
            if self.first_order:
                first_order = self.prober.delta_dot(self.gradient) if self.gradient else 0.0
            return Probed(self.prober.state(), ProbeMeasures(loss, proxy, first_order))

    def measure(
        self,
        groups: Sequence[Group],
        lr: float,
        optimizer: Optimizer,
        tasks: range,
        per_batch: int,
        probed_before: Mapping[str, Probed] | None = None,
    ) -> Iterator[tuple[Group, Probed, list[Dialogue]]]:
        """Probe ``groups`` ``per_batch`` at a time (reusing ``probed_before[group.id]`` where given: same
        lr and optimizer); each batch's adapters play ``tasks`` together."""
        known = probed_before or {}
        for start in range(0, len(groups), per_batch):
            chunk = groups[start : start + per_batch]
            probed = [known.get(g.id) or self.probe(g, lr, optimizer) for g in chunk]
            played = self._play_states([p.state for p in probed], tasks) if tasks else [[] for _ in chunk]
            yield from zip(chunk, probed, played, strict=True)

    def _play_states(self, states: Sequence[dict[str, torch.Tensor]], tasks: range) -> list[list[Dialogue]]:
        engine = self.prober.engine
        slots = [f"{self.prober.name}_probe{i}" for i in range(len(states))]
        try:
            for slot, state in zip(slots, states, strict=True):
                engine.add_adapter(slot, AdapterWeights(self.prober.config, state))
            return self.play(slots, tasks)
        finally:
            for slot in slots:
                if slot in engine.adapters():
                    engine.remove_adapter(slot)


@dataclass
class _Tally:
    """What has been measured for one group so far (racing accumulates over rounds)."""

    group: Group
    probe: ProbeMeasures | None = None
    scores: list[float] = field(default_factory=list)
    changed: int = 0
    tokens: int = 0

    def add(self, harness: Harness, probed: Probed, dialogues: list[Dialogue], tasks: range) -> None:
        self.probe = self.probe or probed.measures
        self.scores += harness.scores(dialogues, tasks)
        self.changed += harness.changed(dialogues, tasks)
        self.tokens += sum(d.tokens for d in dialogues)

    def influence(self, harness: Harness) -> float:
        """Mean score minus θ*'s mean on the same tasks; the first-order value when no task was played."""
        assert self.probe is not None
        if not self.scores:
            assert self.probe.first_order is not None
            return self.probe.first_order
        return fmean(self.scores) - fmean(harness.base_scores[: len(self.scores)])

    def record(self, harness: Harness) -> GroupInfluence:
        assert self.probe is not None
        return GroupInfluence(
            group=self.group.id,
            pair_ids=list(self.group.pair_ids),
            influence=self.influence(harness),
            score_after=fmean(self.scores) if self.scores else None,
            tasks=len(self.scores),
            changed=self.changed,
            dialogues=len(self.scores),
            tokens=self.tokens,
            loss=self.probe.loss,
            loss_proxy=self.probe.loss_proxy,
            first_order=self.probe.first_order,
        )


def run_groups(
    harness: Harness,
    groups: Sequence[Group],
    lr: float,
    optimizer: Optimizer,
    schedule: Sequence[int],
    *,
    keep_fraction: float,
    per_batch: int,
    state_budget_bytes: int = 0,
    on_group_done: Callable[[GroupInfluence], None] | None = None,
) -> list[GroupInfluence]:
    """Probe ``groups`` in rounds: round r plays validation tasks ``[schedule[r-1], schedule[r])``; after
    every round but the last only the top ``keep_fraction`` (by current estimate) go on. ``[V]`` is the
    exact estimator, ``[0]`` the first-order one, `racing_schedule` successive halving. Between rounds the
    adapter states of up to ``state_budget_bytes`` of groups are kept, so that those groups are not probed
    again. Results come back in group order; ``on_group_done`` sees each group as soon as it is final."""
    tallies = {g.id: _Tally(g) for g in groups}
    finished: dict[str, GroupInfluence] = {}
    kept: dict[str, Probed] = {}

    def finish(group: Group) -> None:
        finished[group.id] = tallies[group.id].record(harness)
        if on_group_done is not None:
            on_group_done(finished[group.id])

    alive, start = list(groups), 0
    for round_index, stop in enumerate(schedule):
        last = round_index == len(schedule) - 1
        tasks = range(start, stop)
        measured = harness.measure(alive, lr, optimizer, tasks, per_batch, probed_before=kept)
        kept, held = {}, 0
        for group, probed, dialogues in measured:
            tallies[group.id].add(harness, probed, dialogues, tasks)
            if last:
                finish(group)
            elif held + probed.nbytes <= state_budget_bytes:
                kept[group.id], held = probed, held + probed.nbytes
        if last:
            break
        ranked = sorted(alive, key=lambda g: -tallies[g.id].influence(harness))
        survivors = {g.id for g in ranked[: max(1, math.ceil(keep_fraction * len(alive)))]}
        for group in ranked:
            if group.id not in survivors:
                finish(group)
        kept = {gid: probed for gid, probed in kept.items() if gid in survivors}
        alive, start = [g for g in alive if g.id in survivors], stop
    return [finished[g.id] for g in groups]


def _accepts(row: CalibrationRow, target: float, max_score_drop: float) -> bool:
    return row.change_fraction >= target and row.score_delta >= -max_score_drop


def choose_lr(rows: Sequence[CalibrationRow], target: float, max_score_drop: float) -> tuple[float, str]:
    """The calibration rule on rows in ascending lr order: the smallest lr whose probes change ≥ ``target``
    of the validation dialogues with a mean score drop ≤ ``max_score_drop``; otherwise the most-changing
    lr within the tolerance; otherwise the least harmful. Returns ``(lr, note)``; the note also warns when
    no probe moved the metric at all (every group would tie)."""
    hit = next((r for r in rows if _accepts(r, target, max_score_drop)), None)
    safe = [r for r in rows if r.score_delta >= -max_score_drop]
    if hit is not None:
        best, note = hit, f"smallest lr changing >= {target:.0%} of dialogues, score drop <= {max_score_drop}"
    elif safe:
        best = max(safe, key=lambda r: (r.change_fraction, -r.lr))
        note = (
            f"fallback: no lr changed >= {target:.0%} of dialogues within tolerance; took the most-changing"
        )
    else:
        best = max(rows, key=lambda r: (r.score_delta, -r.lr))
        note = (
            f"fallback: every lr lowered the mean score by more than {max_score_drop}; took the least harmful"
        )
    if all(r.distinct_scores == 1 and r.score_delta == 0 for r in rows):
        note += "; WARNING: no probe changed the validation metric at any lr, so influences will tie"
    return best.lr, note


def calibrate(
    harness: Harness,
    groups: Sequence[Group],
    cfg: InfluenceConfig,
    *,
    n_groups: int = CALIBRATION_GROUPS,
    max_score_drop: float = MAX_SCORE_DROP,
) -> tuple[float, list[CalibrationRow], str]:
    """Pick the probe step size (too small a step changes no greedy answer, too large wrecks θ*): try ``cfg.probe_lr_grid`` in ascending order on the
    first ``n_groups`` groups (a random sample: groups are shuffled), all V tasks each, and stop at the
    first lr `choose_lr` accepts (the fallbacks need the whole grid). Returns ``(lr, table, note)``."""
    sample = list(groups[:n_groups])
    if not sample:
        raise DitsError("probe step calibration needs at least one group of pairs")
    everything = range(len(harness.tasks))
    rows: list[CalibrationRow] = []
    for lr in sorted(cfg.probe_lr_grid):
        measured = list(harness.measure(sample, lr, cfg.probe_optimizer, everything, cfg.adapters_per_batch))
        group_scores = [fmean(harness.scores(d, everything)) for _, _, d in measured]
        changed = sum(harness.changed(d, everything) for _, _, d in measured)
        rows.append(
            CalibrationRow(
                lr=lr,
                groups=len(sample),
                change_fraction=changed / (len(sample) * len(everything)),
                mean_score=fmean(group_scores),
                score_delta=fmean(group_scores) - harness.base_score,
                distinct_scores=len({round(s, 12) for s in group_scores}),
            )
        )
        if _accepts(rows[-1], cfg.target_change_fraction, max_score_drop):
            break
    lr, note = choose_lr(rows, cfg.target_change_fraction, max_score_drop)
    return lr, rows, note


def estimate(
    engine: Engine,
    system: TwoAgentSystem,
    pairs: Sequence[PreferencePair],
    validation: Sequence[TaskInstance],
    cfg: InfluenceConfig,
    dpo: TrainConfig,
    *,
    policy: str | None,
    seed: int,
    lora: LoraSettings | None = None,
    holdout: Sequence[PreferencePair] = (),
    done: Collection[str] = frozenset(),
    on_group_done: Callable[[GroupInfluence], None] | None = None,
    first_order: bool = False,
    pairs_per_batch: int = 16,
) -> InfluenceReport:
    """The influence stage (module docstring). ``policy``: the SFT adapter loaded in ``engine`` (θ*'s
    start and the frozen reference; None: a fresh LoRA from ``lora`` against the bare base). ``dpo``: the
    DPO stage's loss (``beta``, ``nll_weight``) and ``max_length``. ``validation``: instances of the
    task's validation split (the first ``cfg.validation_tasks`` are used). ``holdout``: pairs for the
    DPO-loss proxy, disjoint from ``pairs``. Groups whose id is in ``done`` are skipped (resume);
    ``on_group_done`` receives every finished group at once. ``first_order``: also compute every group's
    first-order value in the exact and racing modes (one teacher-forced backward pass over θ*'s solved
    validation dialogues, then a dot product per group). ``pairs_per_batch``: pairs per forward pass of
    the probe steps. θ* is removed from the engine at the end."""
    started = time.perf_counter()
    tasks = list(validation[: cfg.validation_tasks])
    if not tasks:
        raise DitsError("influence estimation needs validation instances (the task's validation split)")
    if {p.id for p in pairs} & {p.id for p in holdout}:
        raise DitsError("held-out proxy pairs must not be in the pool being scored")
    prober = Prober(
        engine, [*pairs, *holdout], dpo, policy=policy, lora=lora, seed=seed, pairs_per_batch=pairs_per_batch
    )
    try:
        pool = [p.id for p in pairs if p.id in prober.pairs]
        warmup = prober.warm_up(pool, cfg.warmup_steps, cfg.warmup_lr, cfg.warmup_batch_size)
        harness = Harness(
            prober,
            system,
            tasks,
            seed=seed,
            holdout=[p.id for p in holdout if p.id in prober.pairs],
            first_order=first_order or cfg.estimator == "first-order",
            drafts=cfg.drafts,
        )
        groups = make_groups(pool, cfg.group_size, seed)
        todo = [g for g in groups if g.id not in done]
        if cfg.probe_lr != "auto":
            lr, table, note = float(cfg.probe_lr), [], "fixed by influence.probe_lr"
        elif cfg.estimator == "first-order":
            lr, table, note = min(cfg.probe_lr_grid), [], "first-order: the ranking does not depend on lr"
        elif not todo:
            lr, table, note = math.nan, [], "nothing left to probe"
        else:
            lr, table, note = calibrate(harness, groups, cfg)
        schedule = {
            "exact": [len(tasks)],
            "first-order": [0],
            "racing": racing_schedule(cfg.racing_initial_tasks, len(tasks)),
        }[cfg.estimator]
        results = run_groups(
            harness,
            todo,
            lr,
            cfg.probe_optimizer,
            schedule,
            keep_fraction=cfg.racing_keep_fraction,
            per_batch=cfg.adapters_per_batch,
            state_budget_bytes=cfg.racing_state_budget_bytes,
            on_group_done=on_group_done,
        )
        return InfluenceReport(
            estimator=cfg.estimator,
            base_score=harness.base_score,
            base_scores=harness.base_scores,
            validation_ids=[t.id for t in tasks],
            lr=lr,
            optimizer=cfg.probe_optimizer,
            calibration=table,
            calibration_note=note,
            groups=results,
            warmup_losses=warmup,
            unfit_pairs=list(prober.unfit),
            probe_steps=prober.stats.probe_steps,
            probe_seconds=prober.stats.probe_seconds,
            dialogues=harness.dialogues,
            validation_tokens=harness.tokens,
            wall_time=time.perf_counter() - started,
            extra={"groups_total": len(groups), "groups_skipped": len(groups) - len(todo)},
        )
    finally:
        prober.close()
