"""Evaluation: greedy dialogues on a split, batched across instances; optional self-consistency."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from dits.context import StageContext
from dits.engines.base import SERVED, Engine, SamplingParams
from dits.engines.batching import Program, parallel, run_programs
from dits.mas.dialogue import Dialogue, TwoAgentSystem
from dits.progress import StageTimer, progress_bar
from dits.runtime import ModelHost, Policy
from dits.tasks.base import TaskInstance
from dits.tasks.metrics import normalize_text
from dits.utils import derive_seed, write_atomic


@dataclass
class EvalSummary:
    """What an evaluation reports: mean task score, mean generated tokens, size, wall time."""

    task: str
    model: str
    split: str
    n: int
    score: float
    mean_tokens: float
    answered: float
    wall_time: float
    self_consistency: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def majority_answer(answers: Sequence[str | None]) -> str | None:
    """The most frequent non-empty answer (normalised), earliest first on ties."""
    keyed = [(normalize_text(a), a) for a in answers if a]
    if not keyed:
        return None
    counts = Counter(key for key, _ in keyed)
    best = max(counts.values())
    return next(answer for key, answer in keyed if counts[key] == best)


def play_instance(
    system: TwoAgentSystem,
    instance: TaskInstance,
    *,
    adapter: str | None,
    seed: int,
    self_consistency: int,
    sc_temperature: float,
) -> Program[list[Dialogue]]:
    """A program: one greedy dialogue of ``instance``, or ``self_consistency`` sampled ones (same waves)."""
    params = SamplingParams(temperature=sc_temperature) if self_consistency else SamplingParams()
    return parallel(
        system.converse(instance, params, seed=derive_seed(seed, instance.id, k), adapter=adapter)
        for k in range(max(self_consistency, 1))
    )


def evaluate(
    system: TwoAgentSystem,
    instances: Sequence[TaskInstance],
    engine: Engine,
    *,
    model_label: str = "",
    split: str = "test",
    adapter: str | None = SERVED,
    seed: int = 0,
    self_consistency: int = 0,
    sc_temperature: float = 0.5,
) -> tuple[list[dict[str, Any]], EvalSummary]:
    """Play every instance (greedy, or ``self_consistency`` samples + majority vote) and score it."""

    def play(on_done: Callable[..., None]) -> list[list[Dialogue]]:
        programs = [
            play_instance(
                system,
                i,
                adapter=adapter,
                seed=seed,
                self_consistency=self_consistency,
                sc_temperature=sc_temperature,
            )
            for i in instances
        ]
        return run_programs(programs, engine, on_done=on_done)

    return scored_runs(system, instances, play, model_label, split, self_consistency)


def scored_runs(
    system: TwoAgentSystem,
    instances: Sequence[TaskInstance],
    play: Callable[[Callable[..., None]], list[list[Dialogue]]],
    model_label: str,
    split: str,
    self_consistency: int,
) -> tuple[list[dict[str, Any]], EvalSummary]:
    """Each instance's record and the summary, from ``play(on_done)``: every instance's dialogues."""
    timer = StageTimer(f"eval {system.task.name}/{split}")
    with progress_bar(f"eval {system.task.name}", len(instances)) as advance:
        runs = play(lambda *_: advance(1))
    records = []
    for instance, dialogues in zip(instances, runs, strict=True):
        answer = (
            majority_answer([d.final_answer for d in dialogues])
            if self_consistency
            else dialogues[0].final_answer
        )
        records.append(
            {
                "id": instance.id,
                "question": instance.question,
                "answers": list(instance.answers),
                "prediction": answer,
                "score": system.task.score(answer, instance),
                "tokens": sum(d.tokens for d in dialogues),
                "dialogues": [d.to_dict() for d in dialogues],
            }
        )
    n = len(records)
    summary = EvalSummary(
        task=system.task.name,
        model=model_label,
        split=split,
        n=n,
        score=sum(r["score"] for r in records) / n if n else 0.0,
        mean_tokens=sum(r["tokens"] for r in records) / n if n else 0.0,
        answered=sum(r["prediction"] is not None for r in records) / n if n else 0.0,
        wall_time=timer.seconds,
        self_consistency=self_consistency,
    )
    timer.summary(n=n, score=summary.score, mean_tokens=summary.mean_tokens)
    return records, summary


def write_eval(path: Path, records: list[dict[str, Any]], summary: EvalSummary) -> None:
    """Save per-instance records and the summary as one JSON file (atomically)."""
    write_atomic(path, json.dumps({"summary": summary.to_dict(), "records": records}, indent=1))


def _eval_program(
    host: ModelHost, instance: TaskInstance, *, policy: Policy | None, seed: int
) -> Program[list[Dialogue]]:
    """`play_instance` of ``instance`` on ``host`` with the run's eval settings (a stage's program factory)."""
    cfg = host.cfg.eval
    return play_instance(
        host.system,
        instance,
        adapter=host.serve(policy),
        seed=seed,
        self_consistency=cfg.self_consistency,
        sc_temperature=cfg.self_consistency_temperature,
    )


def evaluation_stage(ctx: StageContext, label: str, policy: Policy | None) -> dict[str, Any]:
    """Stage ``eval/LABEL``: ``policy`` on the first ``eval.limit`` tasks of ``eval.split``
    (``eval/LABEL.json``: every dialogue and the summary, which is returned)."""
    out = ctx.store.path("eval", f"{label}.json")
    cfg = ctx.cfg.eval

    def work() -> dict[str, Any]:
        instances = ctx.tasks(cfg.split, cfg.limit)
        make = partial(_eval_program, policy=policy, seed=ctx.seed("eval"))
        records, summary = scored_runs(
            ctx.system,
            instances,
            lambda on_done: ctx.map_programs(make, instances, on_done=on_done),
            label,
            cfg.split,
            cfg.self_consistency,
        )
        write_eval(out, records, summary)
        return summary.to_dict()

    return ctx.stage(f"eval/{label}", work, outputs=[out])
