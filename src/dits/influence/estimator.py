"""Influence of groups of preference pairs: the validation metric after one step from θ*.

The *validation units* are the V validation tasks × K dialogues per task (K = 1: greedy; K > 1: sampled
with the same seeds under every adapter, so the probes differ only by their weights). `Harness` holds
θ*'s dialogue of every unit (F(θ*) = their mean score) and measures probes against them; a probe's
dialogues are played with θ*'s as drafts, so a unit whose dialogue the step does not change costs one
verifying forward pass instead of token-by-token decoding.

`run_groups` measures groups on a schedule of unit counts:

* ``[U]`` — exact: every group on all U units;
* `racing_schedule` — successive halving: all groups on the first units, the top ``keep_fraction`` (and
  every group tied with the last of them) go on to twice as many units, … until U. Groups are compared
  only on the units they all played. A group eliminated after a round keeps its estimate, capped by the
  lowest final value of the groups that beat it there, so it never outranks them;
* ``[0]`` — first-order: no validation dialogue per group (see `Harness.probe`).

Every (group, unit) measurement is handed to ``on_unit`` as it is made and can be handed back through
``measured`` when a killed stage resumes: nothing is played twice and racing makes the same decisions
as an uninterrupted run. With ``central`` the influence is the central difference
[F(θ* + step) − F(θ* − step)] / 2, where θ* − step is the step reflected through θ*.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from statistics import fmean
from typing import Any

import numpy as np
import torch

from dits.engines.base import AdapterWeights, SamplingParams
from dits.engines.batching import run_programs
from dits.influence.probe import MaskedSequence, Optimizer, Prober
from dits.influence.report import GroupInfluence
from dits.mas.dialogue import Dialogue, TwoAgentSystem
from dits.search.pairs import PreferencePair
from dits.tasks.base import TaskInstance
from dits.train.records import sft_rows, tokenize_sft
from dits.utils import derive_seed


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


def split_trees(
    pairs: Sequence[PreferencePair], count: int, *, seed: int, purpose: str = "holdout"
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """``(rest, set_aside)``: whole trees, in an order seeded by ``seed`` and ``purpose``, are set aside
    until ≥ ``count`` pairs (the held-out pairs of the loss proxy, the warm-up pairs of θ*)."""
    sizes = Counter(p.tree_id for p in pairs)
    trees = sorted(sizes)
    random.Random(derive_seed(seed, purpose)).shuffle(trees)
    held: set[str] = set()
    for tree in trees:
        if sum(sizes[t] for t in held) >= count:
            break
        held.add(tree)
    return [p for p in pairs if p.tree_id not in held], [p for p in pairs if p.tree_id in held]


def racing_schedule(initial: int, total: int) -> list[int]:
    """Numbers of validation units per racing round: initial, 2·initial, … capped at ``total``."""
    stops = [min(initial, total)]
    while stops[-1] < total:
        stops.append(min(2 * stops[-1], total))
    return stops


def unit_seed(seed: int, task: TaskInstance, sample: int, samples: int) -> int:
    """The seed of one validation dialogue (the same under every adapter)."""
    if samples == 1:
        return derive_seed(seed, "validation", task.id)
    return derive_seed(seed, "validation", task.id, sample)


def _signature(dialogue: Dialogue) -> tuple[str | None, tuple[str, ...]]:
    return dialogue.final_answer, tuple(t.text for t in dialogue.turns)


def dialogue_digest(*dialogues: Dialogue | None) -> str:
    """A short digest of dialogues' texts and final answers."""
    signatures = [_signature(d) for d in dialogues if d is not None]
    return hashlib.blake2b(repr(signatures).encode(), digest_size=6).hexdigest()


@dataclass(frozen=True)
class ProbeMeasures:
    """What a probe measured before θ* was restored: the group's loss and the two proxies."""

    loss: float
    loss_proxy: float | None
    first_order: float | None


@dataclass
class Probed:
    """One probe: the adapter state after the step (and its reflection through θ*) and its measures."""

    state: dict[str, torch.Tensor]
    measures: ProbeMeasures
    reflected: dict[str, torch.Tensor] | None = None

    @property
    def nbytes(self) -> int:
        states = [self.state, *([self.reflected] if self.reflected else [])]
        return sum(t.numel() * t.element_size() for s in states for t in s.values())


@dataclass(frozen=True)
class UnitResult:
    """One group's dialogue of one validation unit (both sides with a central difference); ``digest``
    identifies the dialogue's text, so that two runs can be checked to have played the same."""

    group: str
    unit: int
    score: float
    changed: bool
    tokens: int
    reflected_score: float | None = None
    digest: str = ""

    def to_dict(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UnitResult:
        return cls(**data)


class Harness:
    """θ*'s dialogue of every validation unit (F(θ*), measured once) and probes measured against them.

    ``samples`` dialogues per task: one greedy (1), or that many sampled at ``temperature`` with seeds
    shared by every adapter. ``drafts``: probes replay θ*'s dialogues as drafts (same results, cheaper).
    ``central``: every probe also plays the step reflected through θ* (a central difference).
    """

    def __init__(
        self,
        prober: Prober,
        system: TwoAgentSystem,
        tasks: Sequence[TaskInstance],
        *,
        seed: int,
        samples: int = 1,
        temperature: float = 0.7,
        holdout: Sequence[str] = (),
        first_order: bool = True,
        drafts: bool = True,
        central: bool = False,
    ) -> None:
        self.prober, self.system, self.tasks, self.seed = prober, system, list(tasks), seed
        self.samples, self.drafts, self.central, self.first_order = samples, drafts, central, first_order
        self.params = self.sampling(samples, temperature)
        self.holdout = list(holdout)
        self.dialogues = self.tokens = 0
        self.base: list[Dialogue] = []
        (self.base,) = self.play([prober.name], self.units)
        self.base_scores = self.scores(self.base, self.units)
        self._gradient: dict[str, torch.Tensor] | None = None
        self.holdout_loss = prober.loss(self.holdout) if self.holdout else None

    @staticmethod
    def sampling(samples: int, temperature: float) -> SamplingParams:
        """Greedy for one dialogue per task, else sampling at ``temperature``."""
        return SamplingParams() if samples == 1 else SamplingParams(temperature=temperature)

    def restrict(self, tasks: Sequence[int], results: Sequence[UnitResult]) -> list[UnitResult]:
        """Keep only the tasks at indices ``tasks`` (θ*'s dialogues of the others are dropped); returns
        ``results`` of kept units, renumbered."""
        old_units = [t * self.samples + k for t in tasks for k in range(self.samples)]
        new_of = {u: i for i, u in enumerate(old_units)}
        self.tasks = [self.tasks[t] for t in tasks]
        self.base = [self.base[u] for u in old_units]
        self.base_scores = [self.base_scores[u] for u in old_units]
        return [replace(r, unit=new_of[r.unit]) for r in results if r.unit in new_of]

    @property
    def units(self) -> range:
        return range(len(self.tasks) * self.samples)

    @property
    def base_score(self) -> float:
        return fmean(self.base_scores)

    def task_of(self, unit: int) -> TaskInstance:
        return self.tasks[unit // self.samples]

    def unit_seed(self, unit: int) -> int:
        """The seed of a unit's dialogue (the same under every adapter)."""
        return unit_seed(self.seed, self.task_of(unit), unit % self.samples, self.samples)

    def play(self, adapters: Sequence[str], units: Sequence[int]) -> list[list[Dialogue]]:
        """The dialogues of ``units`` under each adapter, all in the same waves (θ*'s dialogues of the
        same units, once known, serve as drafts: identical results, fewer decoding steps)."""
        programs = [
            self.system.converse(
                self.task_of(u),
                self.params,
                seed=self.unit_seed(u),
                adapter=a,
                reference=self.base[u] if self.base and self.drafts else None,
            )
            for a in adapters
            for u in units
        ]
        flat = run_programs(programs, self.prober.engine)
        self.dialogues += len(flat)
        self.tokens += sum(d.tokens for d in flat)
        n = len(units)
        return [flat[i * n : (i + 1) * n] for i in range(len(adapters))]

    def scores(self, dialogues: Sequence[Dialogue], units: Sequence[int]) -> list[float]:
        return [self.system.score(d, self.task_of(u)) for d, u in zip(dialogues, units, strict=True)]

    def changed(self, dialogue: Dialogue, unit: int) -> bool:
        """Whether a dialogue differs (text or final answer) from θ*'s on the same unit."""
        return _signature(dialogue) != _signature(self.base[unit])

    @property
    def gradient(self) -> dict[str, torch.Tensor] | None:
        """∇ at θ* of (1/U) Σ_d F(d) · log p(d) over θ*'s validation dialogues (None if none scores > 0;
        computed on first use)."""
        if self._gradient is None and self.first_order:
            self._gradient = self._likelihood_gradient() or {}
        return self._gradient or None

    def _likelihood_gradient(self) -> dict[str, torch.Tensor] | None:
        sequences, weights = [], []
        demonstrate = self.system.rules.demonstration
        for unit, (dialogue, score) in enumerate(zip(self.base, self.base_scores, strict=True)):
            if score <= 0:
                continue
            for row in sft_rows(dialogue, self.task_of(unit), demonstrate=demonstrate):
                tokens = tokenize_sft(row, self.prober.engine.tokenizer, self.prober.dpo.max_length)
                if tokens is not None:
                    sequences.append(MaskedSequence(tokens["input_ids"], tokens["completion_mask"]))
                    weights.append(score / len(self.base))
        return self.prober.gradient(sequences, weights) if sequences else None

    def probe(self, group: Group, lr: float, optimizer: Optimizer, *, reflect: bool = False) -> Probed:
        """One step from θ* on ``group`` (and, with ``reflect``, the step reflected through θ*)."""
        gradient = self.gradient  # before the step: it is taken at θ*
        with self.prober.stepped(group.pair_ids, lr, optimizer) as loss:
            proxy = None
            if self.holdout_loss is not None:
                proxy = self.prober.loss(self.holdout) - self.holdout_loss
            first_order = None
            if self.first_order:
                first_order = self.prober.delta_dot(gradient) if gradient else 0.0
            state = self.prober.state()
        reflected = self.prober.reflect(state) if reflect else None
        return Probed(state, ProbeMeasures(loss, proxy, first_order), reflected)

    def measure(
        self,
        groups: Sequence[Group],
        lr: float,
        optimizer: Optimizer,
        units: Mapping[str, Sequence[int]],
        per_batch: int,
        *,
        probed_before: Mapping[str, Probed] | None = None,
    ) -> Iterator[tuple[Group, Probed, list[UnitResult]]]:
        """Probe ``groups`` ``per_batch`` at a time (reusing ``probed_before[group.id]``: same lr and
        optimizer); each batch's adapters play their ``units[group.id]`` together."""
        known, central = probed_before or {}, self.central
        for start in range(0, len(groups), per_batch):
            chunk = groups[start : start + per_batch]
            probed = [known.get(g.id) or self.probe(g, lr, optimizer, reflect=central) for g in chunk]
            sides = [[p.state for p in probed]]
            if central:
                sides.append([p.reflected for p in probed])  # type: ignore[misc]
            played = [self._play_states(states, [units[g.id] for g in chunk]) for states in sides]
            for index, (group, probe) in enumerate(zip(chunk, probed, strict=True)):
                results = []
                for position, unit in enumerate(units[group.id]):
                    dialogue = played[0][index][position]
                    reflected = played[1][index][position] if central else None
                    results.append(
                        UnitResult(
                            group.id,
                            unit,
                            self.system.score(dialogue, self.task_of(unit)),
                            self.changed(dialogue, unit),
                            dialogue.tokens + (reflected.tokens if reflected else 0),
                            self.system.score(reflected, self.task_of(unit)) if reflected else None,
                            dialogue_digest(dialogue, reflected),
                        )
                    )
                yield group, probe, results

    def _play_states(
        self, states: Sequence[dict[str, torch.Tensor]], units: Sequence[Sequence[int]]
    ) -> list[list[Dialogue]]:
        """The dialogues of each state's units, every state hosted as an adapter, all in the same waves."""
        engine = self.prober.engine
        slots = [f"{self.prober.name}_probe{i}" for i in range(len(states))]
        try:
            for slot, state in zip(slots, states, strict=True):
                engine.add_adapter(slot, AdapterWeights(self.prober.config, state))
            programs = [
                self.system.converse(
                    self.task_of(u),
                    self.params,
                    seed=self.unit_seed(u),
                    adapter=slot,
                    reference=self.base[u] if self.drafts else None,
                )
                for slot, own in zip(slots, units, strict=True)
                for u in own
            ]
            flat = run_programs(programs, engine)
        finally:
            for slot in slots:
                if slot in engine.adapters():
                    engine.remove_adapter(slot)
        self.dialogues += len(flat)
        self.tokens += sum(d.tokens for d in flat)
        out, start = [], 0
        for own in units:
            out.append(flat[start : start + len(own)])
            start += len(own)
        return out


@dataclass
class Tally:
    """What has been measured for one group so far (racing accumulates over rounds)."""

    group: Group
    probe: ProbeMeasures | None = None
    units: dict[int, UnitResult] = field(default_factory=dict)

    def add(self, probed: Probed | None, results: Sequence[UnitResult]) -> None:
        if probed is not None:
            self.probe = self.probe or probed.measures
        self.units.update((r.unit, r) for r in results)

    def influence(self, harness: Harness, upto: int | None = None) -> float:
        """Mean change over the units measured (the first ``upto`` of them); the first-order value when
        no unit was played."""
        units = sorted(self.units)[:upto]
        if not units:
            assert self.probe is not None and self.probe.first_order is not None
            return self.probe.first_order
        results = [self.units[u] for u in units]
        if results[0].reflected_score is not None:
            return fmean((r.score - (r.reflected_score or 0.0)) / 2 for r in results)
        return fmean(r.score - harness.base_scores[r.unit] for r in results)

    def record(self, harness: Harness, influence: float, eliminated_after: int | None) -> GroupInfluence:
        assert self.probe is not None
        results = [self.units[u] for u in sorted(self.units)]
        return GroupInfluence(
            group=self.group.id,
            pair_ids=list(self.group.pair_ids),
            influence=influence,
            score_after=fmean(r.score for r in results) if results else None,
            tasks=len(results),
            changed=sum(r.changed for r in results),
            dialogues=len(results) * (2 if results and results[0].reflected_score is not None else 1),
            tokens=sum(r.tokens for r in results),
            loss=self.probe.loss,
            loss_proxy=self.probe.loss_proxy,
            first_order=self.probe.first_order,
            eliminated_after=eliminated_after,
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
    measured: Sequence[UnitResult] = (),
    on_unit: Callable[[UnitResult], None] | None = None,
) -> list[GroupInfluence]:
    """Measure ``groups`` in rounds (module docstring): round r plays units ``[schedule[r-1],
    schedule[r])`` of the groups still racing; ``[U]`` is the exact estimator, ``[0]`` the first-order
    one. ``measured``: unit results of an earlier, interrupted run (not played again); ``on_unit`` sees
    every new one. Between rounds the adapter states of up to ``state_budget_bytes`` of groups are kept,
    so that those groups are not probed again. Results come back in group order."""
    tallies = {g.id: Tally(g) for g in groups}
    for result in measured:
        if result.group in tallies:
            tallies[result.group].add(None, [result])
    kept: dict[str, Probed] = {}
    alive, start = list(groups), 0
    eliminated: list[tuple[int, list[Group], list[Group]]] = []  # (units, out, survivors) per round
    for round_index, stop in enumerate(schedule):
        last = round_index == len(schedule) - 1
        wanted = {g.id: [u for u in range(start, stop) if u not in tallies[g.id].units] for g in alive}
        todo = [g for g in alive if wanted[g.id] or tallies[g.id].probe is None]
        held = 0
        next_kept: dict[str, Probed] = {}
        for group, probed, results in harness.measure(
            todo, lr, optimizer, wanted, per_batch, probed_before=kept
        ):
            tallies[group.id].add(probed, results)
            for result in results:
                if on_unit is not None:
                    on_unit(result)
            if not last and held + probed.nbytes <= state_budget_bytes:
                next_kept[group.id], held = probed, held + probed.nbytes
        if last:
            break
        ranked = sorted(alive, key=lambda g: -tallies[g.id].influence(harness, stop))
        cut = max(1, math.ceil(keep_fraction * len(alive)))
        bar = tallies[ranked[cut - 1].id].influence(harness, stop)
        survivors = [g for g in ranked if tallies[g.id].influence(harness, stop) >= bar]  # ties go on
        out = [g for g in ranked if g not in survivors]
        eliminated.append((stop, out, survivors))
        kept = {gid: p for gid, p in next_kept.items() if any(g.id == gid for g in survivors)}
        alive, start = [g for g in groups if g in survivors], stop
    final = {g.id: tallies[g.id].influence(harness) for g in alive}
    rounds_out = {}
    for units, out, survivors in reversed(eliminated):
        cap = min(final[g.id] for g in survivors)
        for group in out:
            final[group.id] = min(tallies[group.id].influence(harness, units), cap)
            rounds_out[group.id] = units
    return [tallies[g.id].record(harness, final[g.id], rounds_out.get(g.id)) for g in groups]
