"""Growing search trees as programs, wave-batched across trees (Optima's MCTS over dialogue turns).

One program per tree (`grow_tree`) performs its expansions one after another: select a node, run k
rollouts from it *together* (`parallel`, so they share every wave), merge the new utterances into the
tree, back up each rollout's reward. `grow` / `search` run the programs of many trees with
`run_programs`, so the pending turns of all rollouts of all active trees go to the engine as one call.

Nothing depends on how trees share waves: rollout ``r`` of expansion ``e`` of tree ``t`` is seeded with
``derive_seed(seed, t, e, r)`` and node selection draws from ``Random(derive_seed(seed, t, e, "select"))``.
Deriving the selection seed from the expansion index (not one RNG per tree) also makes growing a tree in
rounds, with a save/load between them, identical to growing it in one go under the same priorities.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from itertools import islice

import numpy as np

from dits.config import SearchConfig
from dits.engines.base import Engine, SamplingParams
from dits.engines.batching import Program, parallel, run_programs
from dits.mas.dialogue import Dialogue, Turn, TwoAgentSystem
from dits.reward import RewardBreakdown, RewardConfig, reward_program
from dits.search.policy import NodePolicy, select_node
from dits.search.tree import Tree
from dits.tasks.base import TaskInstance
from dits.utils import derive_seed


def rollout(
    system: TwoAgentSystem,
    instance: TaskInstance,
    params: SamplingParams,
    reward: RewardConfig,
    token_norm: float,
    *,
    seed: int,
    prefix: Sequence[Turn],
    adapter: str | None = None,
) -> Program[tuple[Dialogue, RewardBreakdown]]:
    """A program: play the dialogue to its end from ``prefix``, then score it."""
    dialogue = yield from system.converse(instance, params, seed=seed, prefix=prefix, adapter=adapter)
    breakdown = yield from reward_program(dialogue, system.score(dialogue, instance), token_norm, reward)
    return dialogue, breakdown


def grow_tree(
    system: TwoAgentSystem,
    tree: Tree,
    n_expansions: int,
    cfg: SearchConfig,
    reward: RewardConfig,
    token_norm: float,
    *,
    seed: int,
    policy: NodePolicy,
    adapter: str | None = None,
) -> Program[Tree]:
    """A program that adds ``n_expansions`` expansions to ``tree`` (in place) and returns it."""
    params = SamplingParams(temperature=cfg.temperature)
    for _ in range(n_expansions):
        index = tree.expansions
        rng = random.Random(derive_seed(seed, tree.id, index, "select"))
        node_id = select_node(tree, policy, rng, top_k=cfg.top_k, dedup_threshold=cfg.dedup_threshold)
        prefix = tree.path_turns(node_id)
        results = yield from parallel(
            rollout(
                system,
                tree.instance,
                params,
                reward,
                token_norm,
                seed=derive_seed(seed, tree.id, index, r),
                prefix=prefix,
                adapter=adapter,
            )
            for r in range(cfg.rollouts_per_expansion)
        )
        for dialogue, breakdown in results:
            leaf = tree.merge(node_id, dialogue.turns[len(prefix) :], cfg.merge_threshold)
            tree.backup(leaf, breakdown.total)
        tree.selected.append(node_id)
        tree.expansions += 1
    return tree


def _run(
    system: TwoAgentSystem,
    work: Sequence[tuple[Tree, int]],
    engine: Engine,
    cfg: SearchConfig,
    reward: RewardConfig,
    token_norm: float,
    *,
    seed: int,
    policy: NodePolicy,
    adapter: str | None,
    on_tree_done: Callable[[Tree], None] | None,
) -> list[Tree]:
    programs = (
        grow_tree(system, tree, n, cfg, reward, token_norm, seed=seed, policy=policy, adapter=adapter)
        for tree, n in work
    )
    on_done = None if on_tree_done is None else (lambda _index, tree: on_tree_done(tree))
    return run_programs(programs, engine, max_active=cfg.max_active_trees, on_done=on_done)


def grow(
    system: TwoAgentSystem,
    trees: Sequence[Tree],
    engine: Engine,
    n_expansions: int,
    cfg: SearchConfig,
    reward: RewardConfig,
    token_norm: float,
    *,
    seed: int,
    policy: NodePolicy,
    adapter: str | None = None,
    on_tree_done: Callable[[Tree], None] | None = None,
) -> list[Tree]:
    """Add ``n_expansions`` expansions to every tree (in place; one DITS round), ≤ ``cfg.max_active_trees``
    trees in flight. ``on_tree_done(tree)`` runs as soon as a tree is finished."""
    return _run(
        system,
        [(t, n_expansions) for t in trees],
        engine,
        cfg,
        reward,
        token_norm,
        seed=seed,
        policy=policy,
        adapter=adapter,
        on_tree_done=on_tree_done,
    )


def search(
    system: TwoAgentSystem,
    instances_or_trees: Iterable[TaskInstance | Tree],
    engine: Engine,
    cfg: SearchConfig,
    reward: RewardConfig,
    token_norm: float,
    *,
    seed: int,
    policy: NodePolicy,
    adapter: str | None = None,
    on_tree_done: Callable[[Tree], None] | None = None,
) -> list[Tree]:
    """Grow a tree per instance (or continue the given trees, in place) up to ``cfg.expansions`` expansions
    each; ``on_tree_done(tree)`` runs as soon as a tree is finished."""
    trees = [item if isinstance(item, Tree) else Tree(item) for item in instances_or_trees]
    return _run(
        system,
        [(t, max(cfg.expansions - t.expansions, 0)) for t in trees],
        engine,
        cfg,
        reward,
        token_norm,
        seed=seed,
        policy=policy,
        adapter=adapter,
        on_tree_done=on_tree_done,
    )


def round_sizes(expansions: int, rounds: int) -> list[int]:
    """Split ``expansions`` over ``rounds`` as evenly as possible, earlier rounds first (8, 3 → 3, 3, 2)."""
    base, extra = divmod(expansions, rounds)
    return [base + (1 if r < extra else 0) for r in range(rounds)]


def budget_dialogue(
    system: TwoAgentSystem,
    instance: TaskInstance,
    cfg: SearchConfig,
    seed: int,
    adapter: str | None = None,
) -> Program[Dialogue]:
    """One dialogue of the token budget's sample: ``instance`` at ``cfg.temperature``."""
    params = SamplingParams(temperature=cfg.temperature)
    return system.converse(instance, params, seed=derive_seed(seed, "budget", instance.id), adapter=adapter)


def budget_of(dialogues: Sequence[Dialogue], cfg: SearchConfig) -> float:
    """``floor(percentile_p(token counts)) + 1`` with p = ``cfg.token_budget_percentile``."""
    if not dialogues:
        raise ValueError("token_budget needs at least one instance")
    tokens = [d.tokens for d in dialogues]
    return float(math.floor(np.percentile(tokens, cfg.token_budget_percentile)) + 1)


def token_budget(
    system: TwoAgentSystem,
    instances: Iterable[TaskInstance],
    engine: Engine,
    cfg: SearchConfig,
    seed: int,
    adapter: str | None = None,
) -> float:
    """Optima's T_norm for search: one dialogue per task (the first ``cfg.token_budget_tasks``) at
    ``cfg.temperature``; `budget_of` their token counts."""
    programs = [
        budget_dialogue(system, instance, cfg, seed, adapter)
        for instance in islice(instances, cfg.token_budget_tasks)
    ]
    return budget_of(run_programs(programs, engine, max_active=cfg.max_active_trees), cfg)
