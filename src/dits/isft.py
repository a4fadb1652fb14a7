"""iSFT data: sample N dialogues per task, score them, keep the best per task, keep the top band above ε.

At iteration 0 each dialogue gets a communication format from the pool (`FORMAT_POOL`) and the lower
initial temperature; later iterations use the base prompts. The SFT records are always re-rendered
under the base prompts (see `dits.train.records.sft_rows`), so the model learns the concise formats
without being told to use them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

from dits.config import ISFTConfig, RewardConfig
from dits.context import StageContext
from dits.engines.base import SamplingParams
from dits.engines.batching import Program, parallel
from dits.mas.dialogue import Dialogue, TwoAgentSystem
from dits.mas.prompts import FORMAT_POOL
from dits.progress import progress_bar
from dits.reward import RewardBreakdown, reward_program
from dits.runtime import ModelHost, Policy
from dits.store import in_order
from dits.tasks.base import TaskInstance
from dits.utils import derive_seed


def group_token_norm(dialogues: Sequence[Dialogue]) -> float:
    """Optima's iSFT normaliser: the longest dialogue of the group, ignoring ones with an overlong turn."""
    lengths = [d.tokens for d in dialogues if not any(t.overlong for t in d.turns)]
    return float(max(lengths or [d.tokens for d in dialogues] or [1]))


def sample_instance(
    system: TwoAgentSystem,
    instance: TaskInstance,
    cfg: ISFTConfig,
    weights: RewardConfig,
    *,
    seed: int,
    first_iteration: bool,
    adapter: str | None,
) -> Program[dict[str, Any]]:
    """A program: N dialogues of one task (run in the same waves), then their rewards."""
    use_pool = first_iteration and cfg.format_pool
    temperature = cfg.initial_temperature if first_iteration else cfg.temperature
    params = SamplingParams(temperature=temperature)
    hints = [
        FORMAT_POOL[derive_seed(seed, instance.id, k, "format") % len(FORMAT_POOL)] if use_pool else None
        for k in range(cfg.samples_per_task)
    ]
    dialogues: list[Dialogue] = yield from parallel(
        system.converse(
            instance, params, seed=derive_seed(seed, instance.id, k), adapter=adapter, format_hint=hint
        )
        for k, hint in enumerate(hints)
    )
    norm = group_token_norm(dialogues)
    rewards: list[RewardBreakdown] = yield from parallel(
        reward_program(d, system.score(d, instance), norm, weights) for d in dialogues
    )
    return {
        "id": instance.id,
        "instance": instance.to_dict(),
        "dialogues": [d.to_dict() for d in dialogues],
        "rewards": [r.to_dict() for r in rewards],
    }


def best_dialogue(record: dict[str, Any]) -> tuple[int, float]:
    """Index and reward of the best dialogue of a sampled task; impersonating dialogues never win."""
    scored = [(-math.inf if r["impersonation"] else r["total"], -k) for k, r in enumerate(record["rewards"])]
    value, negative_index = max(scored)
    return -negative_index, value


def select_sft_dialogues(
    records: Sequence[dict[str, Any]], cfg: ISFTConfig
) -> list[tuple[TaskInstance, Dialogue, float]]:
    """Best dialogue per task; tasks ranked by it; keep the band (drop_top, keep_top]; drop those < ε."""
    best = []
    for record in records:
        index, value = best_dialogue(record)
        if value > -math.inf:
            dialogue = Dialogue.from_dict(record["dialogues"][index])
            best.append((TaskInstance.from_dict(record["instance"]), dialogue, value))
    best.sort(key=lambda item: (-item[2], item[0].id))
    start = math.floor(cfg.drop_top_fraction * len(best))
    stop = math.floor(cfg.keep_top_fraction * len(best) + 1e-9)
    return [item for item in best[start:stop] if item[2] >= cfg.min_reward]


def _sample_program(
    host: ModelHost, instance: TaskInstance, *, seed: int, first: bool, policy: Policy | None
) -> Program[dict[str, Any]]:
    """`sample_instance` of ``instance`` on ``host`` (a stage's program factory)."""
    return sample_instance(
        host.system,
        instance,
        host.cfg.isft,
        host.reward,
        seed=seed,
        first_iteration=first,
        adapter=host.serve(policy),
    )


def sample_stage(
    ctx: StageContext, iteration: str, policy: Policy | None, *, first: bool
) -> list[dict[str, Any]]:
    """Stage ``ITER/samples``: ``isft.samples_per_task`` dialogues of ``policy`` on each of the next
    ``isft.tasks_per_iteration`` train tasks, with their rewards (``sft_samples.jsonl``, one task per
    line, appended as tasks finish). ``first``: iteration 0's format pool and temperature."""
    key = f"{iteration}/samples"
    log = ctx.store.log(iteration, "sft_samples.jsonl")
    instances = ctx.train_tasks(key, ctx.cfg.isft.tasks_per_iteration)
    ids = [i.id for i in instances]

    def work() -> dict[str, Any]:
        done = log.ids()
        todo = [i for i in instances if i.id not in done]
        make = partial(_sample_program, seed=ctx.seed(iteration, "samples"), first=first, policy=policy)
        with progress_bar(f"{iteration} iSFT sampling", len(todo)) as advance:
            ctx.map_programs(make, todo, on_done=lambda _i, rec: (log.append(rec), advance(1)))
        records = in_order(log.read(), ids)
        log.rewrite(records)
        return {"tasks": len(records), "dialogues": sum(len(r["dialogues"]) for r in records)}

    ctx.stage(key, work, outputs=[log.path])
    return in_order(log.read(), ids)
