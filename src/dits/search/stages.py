"""The tree-search stages of a run: token budget, tree growth (in one go or in guided rounds), pairs.

Artefacts: ``iter_K/trees.jsonl`` (one finished tree per line; ``trees_roundR.jsonl`` after each guided
round but the last) and ``iter_K/pairs.jsonl``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from dits.context import StageContext
from dits.engines.batching import Program
from dits.mas.dialogue import Dialogue
from dits.progress import progress_bar
from dits.runtime import ModelHost, Policy
from dits.search.pairs import PreferencePair, extract_pairs
from dits.search.policy import NodePolicy, QPolicy
from dits.search.runner import budget_dialogue, budget_of, grow_tree, round_sizes
from dits.search.tree import Tree
from dits.store import in_order
from dits.tasks.base import TaskInstance

RoundGuide = Callable[[list[Tree], int], NodePolicy]
"""Called after guided round ``r`` with the trees grown so far; returns the node policy of round r + 1
(DITS: probe the pairs found so far, mix their influence into the node priority)."""


def search_stage(
    ctx: StageContext, iteration: str, policy: Policy | None, *, guide: RoundGuide | None = None
) -> list[Tree]:
    """Stages ``ITER/token_budget`` and ``ITER/trees``: one tree per task of the next
    ``search.tasks_per_iteration`` train tasks, grown by ``policy``. Q-guided in one go; with ``guide``,
    in `RunConfig.search_rounds` rounds (``search.expansions`` split between them, stages
    ``ITER/trees/round_R``), ``guide`` choosing each later round's node policy."""
    cfg = ctx.cfg.search
    instances = ctx.train_tasks(f"{iteration}/trees", cfg.tasks_per_iteration)

    def budget_work() -> dict[str, Any]:
        make = partial(_budget_program, seed=ctx.replica_seed(iteration, "budget"), policy=policy)
        sample = instances[: cfg.token_budget_tasks]
        dialogues = ctx.map_programs(make, sample, max_active=cfg.max_active_trees)
        return {"token_budget": budget_of(dialogues, cfg)}

    budget = ctx.stage(f"{iteration}/token_budget", budget_work)["token_budget"]
    sizes = round_sizes(cfg.expansions, ctx.cfg.search_rounds if guide is not None else 1)
    trees = [Tree(instance) for instance in instances]
    node_policy: NodePolicy = QPolicy()
    for r, expansions in enumerate(sizes):
        last = r == len(sizes) - 1
        key, name = (
            (f"{iteration}/trees", "trees.jsonl")
            if last
            else (f"{iteration}/trees/round_{r}", f"trees_round{r}.jsonl")
        )
        trees = _grow_stage(ctx, key, iteration, name, trees, expansions, budget, node_policy, policy)
        if not last:
            assert guide is not None
            node_policy = guide(trees, r)
    return trees


def _grow_stage(
    ctx: StageContext,
    key: str,
    iteration: str,
    name: str,
    trees: list[Tree],
    expansions: int,
    budget: float,
    node_policy: NodePolicy,
    policy: Policy | None,
) -> list[Tree]:
    """Stage ``key``: grow every tree by ``expansions`` (finished trees appended to ``name``)."""
    log = ctx.store.log(iteration, name)
    ids = [t.id for t in trees]

    def work() -> dict[str, Any]:
        done = log.ids()
        todo = [copy.deepcopy(t) for t in trees if t.id not in done]
        make = partial(
            _grow_program,
            expansions=expansions,
            budget=budget,
            seed=ctx.replica_seed(iteration, "search"),
            node_policy=node_policy,
            policy=policy,
        )
        with progress_bar(f"{key} tree search", len(todo)) as advance:
            ctx.map_programs(
                make,
                todo,
                max_active=ctx.cfg.search.max_active_trees,
                on_done=lambda _i, tree: (log.append({"id": tree.id, **tree.to_dict()}), advance(1)),
            )
        grown = in_order(log.read(), ids)
        log.rewrite(grown)
        return {"trees": len(grown), "nodes": sum(len(t["nodes"]) for t in grown), "token_budget": budget}

    ctx.stage(key, work, outputs=[log.path])
    return [Tree.from_dict(t) for t in in_order(log.read(), ids)]


def _budget_program(
    host: ModelHost, instance: TaskInstance, *, seed: int, policy: Policy | None
) -> Program[Dialogue]:
    """`budget_dialogue` of ``instance`` on ``host`` (a stage's program factory)."""
    return budget_dialogue(host.system, instance, host.cfg.search, seed, adapter=host.serve(policy))


def _grow_program(
    host: ModelHost,
    tree: Tree,
    *,
    expansions: int,
    budget: float,
    seed: int,
    node_policy: NodePolicy,
    policy: Policy | None,
) -> Program[Tree]:
    """`grow_tree` of ``tree`` on ``host`` (a stage's program factory)."""
    return grow_tree(
        host.system,
        tree,
        expansions,
        host.cfg.search,
        host.reward,
        budget,
        seed=seed,
        policy=node_policy,
        adapter=host.serve(policy),
    )


def tree_pairs(ctx: StageContext, trees: Sequence[Tree]) -> list[PreferencePair]:
    """Optima's preference pairs of ``trees`` (prefilters of ``pairs.*``)."""
    demonstrate = ctx.cfg.dialogue.demonstration
    return [p for t in trees for p in extract_pairs(t, ctx.cfg.pairs, demonstrate=demonstrate)]


def pairs_stage(ctx: StageContext, iteration: str, trees: Sequence[Tree]) -> list[PreferencePair]:
    """Stage ``ITER/pairs``: the preference pairs of the finished trees (``pairs.jsonl``)."""
    log = ctx.store.log(iteration, "pairs.jsonl")

    def work() -> dict[str, Any]:
        pairs = tree_pairs(ctx, trees)
        log.rewrite(p.to_dict() for p in pairs)
        return {"pairs": len(pairs)}

    ctx.stage(f"{iteration}/pairs", work, outputs=[log.path])
    return [PreferencePair.from_dict(r) for r in log.read()]
