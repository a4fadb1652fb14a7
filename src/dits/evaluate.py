"""Evaluation: greedy dialogues on a split, batched across instances; optional self-consistency."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dits.context import Policy, StageContext
from dits.engines.base import SERVED, Engine, SamplingParams
from dits.engines.batching import parallel, run_programs
from dits.mas.dialogue import Dialogue, TwoAgentSystem
from dits.progress import StageTimer, progress_bar
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
    timer = StageTimer(f"eval {system.task.name}/{split}")
    samples = max(self_consistency, 1)
    params = SamplingParams(temperature=sc_temperature) if self_consistency else SamplingParams()

    def play(instance: TaskInstance):  # one program per instance: its k dialogues run in the same wave
        return parallel(
            system.converse(instance, params, seed=derive_seed(seed, instance.id, k), adapter=adapter)
            for k in range(samples)
        )

    with progress_bar(f"eval {system.task.name}", len(instances)) as advance:
        runs: list[list[Dialogue]] = run_programs(
            [play(i) for i in instances], engine, on_done=lambda *_: advance(1)
        )
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


def evaluation_stage(ctx: StageContext, label: str, policy: Policy | None) -> dict[str, Any]:
    """Stage ``eval/LABEL``: ``policy`` on the first ``eval.limit`` tasks of ``eval.split``
    (``eval/LABEL.json``: every dialogue and the summary, which is returned)."""
    out = ctx.store.path("eval", f"{label}.json")

    def work() -> dict[str, Any]:
        instances = ctx.tasks(ctx.cfg.eval.split, ctx.cfg.eval.limit)
        adapter = ctx.serve(policy)  # first: serving a fully fine-tuned policy replaces the engine
        records, summary = evaluate(
            ctx.system,
            instances,
            ctx.engine,
            model_label=label,
            split=ctx.cfg.eval.split,
            adapter=adapter,
            seed=ctx.seed("eval"),
            self_consistency=ctx.cfg.eval.self_consistency,
            sc_temperature=ctx.cfg.eval.self_consistency_temperature,
        )
        write_eval(out, records, summary)
        return summary.to_dict()

    return ctx.stage(f"eval/{label}", work, outputs=[out])
