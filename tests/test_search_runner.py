"""Growing trees as wave-batched programs: invariance to batching and rounds, backup, token budget."""

from __future__ import annotations

import random
import re

import pytest

from dits.config import SearchConfig
from dits.engines.base import GenerationRequest, SamplingParams
from dits.engines.fake import FakeEngine
from dits.reward import RewardConfig
from dits.search.policy import InfluencePolicy, QPolicy
from dits.search.runner import grow, round_sizes, search, token_budget
from dits.search.tree import ROOT, Tree
from dits.tasks.base import TaskInstance
from test_search_support import make_instance, make_system, seeded_responder

WEIGHTS = RewardConfig(lambda_tokens=0.6, lambda_loss=1.0, min_tokens=2)
INSTANCES = [make_instance(f"q{i}") for i in range(5)]


def config(**overrides: object) -> SearchConfig:
    return SearchConfig(**{"expansions": 5, "rollouts_per_expansion": 3, **overrides})  # type: ignore[arg-type]


def run_search(max_active: int, **overrides: object) -> tuple[list[Tree], FakeEngine]:
    engine = FakeEngine(seeded_responder)
    trees = search(
        make_system(),
        INSTANCES,
        engine,
        config(max_active_trees=max_active, **overrides),
        WEIGHTS,
        20.0,
        seed=7,
        policy=QPolicy(),
    )
    return trees, engine


def test_trees_do_not_depend_on_how_they_share_waves() -> None:
    one_at_a_time, serial = run_search(max_active=1)
    together, batched = run_search(max_active=len(INSTANCES))
    two_by_two, _ = run_search(max_active=2)
    assert [t.to_dict() for t in together] == [t.to_dict() for t in one_at_a_time]
    assert [t.to_dict() for t in two_by_two] == [t.to_dict() for t in one_at_a_time]
    # The trees are not trivial: several expansions below the root, branching, merged rollouts.
    assert all(t.expansions == 5 and t.nodes[ROOT].visits == 15 for t in together)
    assert any(node_id != ROOT for t in together for node_id in t.selected)
    assert any(len(n.children) >= 2 for t in together for n in t.nodes)
    # Batching: the k rollouts of a tree share a wave; all active trees share it too.
    assert max(len(requests) for requests, _ in serial.calls) == 3
    assert max(len(requests) for requests, _ in batched.calls) == 3 * len(INSTANCES)
    assert len(batched.calls) < len(serial.calls) / 3
    assert len(batched.nll_calls) < len(serial.nll_calls)


def test_first_wave_holds_the_first_turn_of_every_rollout() -> None:
    _, engine = run_search(max_active=1, expansions=1)
    first_requests, params = engine.calls[0]
    assert len(first_requests) == 3 and params.temperature == 0.7
    assert len({r.seed for r in first_requests}) == 3  # every rollout has its own seed


def test_visits_and_values_are_consistent() -> None:
    trees, _ = run_search(max_active=len(INSTANCES))
    for tree in trees:
        for node in tree.nodes:
            below = sum(tree.nodes[c].visits for c in node.children)
            assert node.visits >= below >= 0 and node.visits >= 1
            if node.children and node.visits == below:  # every rollout went on: Q = mean of children
                mean = sum(tree.nodes[c].visits * tree.nodes[c].value for c in node.children) / below
                assert node.value == pytest.approx(mean)
        expanded = [i for i in tree.selected if i != ROOT]
        assert len(expanded) == len(set(expanded))  # never expanded twice


def grow_with(
    trees: list[Tree], n: int, seed: int, policy: QPolicy | InfluencePolicy, **overrides: object
) -> list[Tree]:
    cfg = config(**overrides)
    return grow(
        make_system(), trees, FakeEngine(seeded_responder), n, cfg, WEIGHTS, 20.0, seed=seed, policy=policy
    )


def search_with(items: list[TaskInstance | Tree], seed: int, **overrides: object) -> list[Tree]:
    engine, cfg = FakeEngine(seeded_responder), config(**overrides)
    return search(make_system(), items, engine, cfg, WEIGHTS, 20.0, seed=seed, policy=QPolicy())


def test_growing_in_rounds_with_a_save_in_between_equals_one_go() -> None:
    in_one_go = search_with(list(INSTANCES), seed=3, max_active_trees=3)
    trees = [Tree(i) for i in INSTANCES]
    for size in round_sizes(config().expansions, 2):
        trees = grow_with(trees, size, seed=3, policy=QPolicy(), max_active_trees=3)
        trees = [Tree.from_json(t.to_json()) for t in trees]
    assert [t.to_dict() for t in trees] == [t.to_dict() for t in in_one_go]


def test_search_continues_existing_trees_up_to_the_budget() -> None:
    partial = grow_with([Tree(INSTANCES[0]), Tree(INSTANCES[1])], 2, seed=1, policy=QPolicy())
    full = search_with([INSTANCES[2]], seed=1, expansions=4)
    finished: list[str] = []
    trees = search(
        make_system(),
        [*partial, *full, INSTANCES[3]],
        FakeEngine(seeded_responder),
        config(expansions=4),
        WEIGHTS,
        20.0,
        seed=1,
        policy=QPolicy(),
        on_tree_done=lambda tree: finished.append(tree.id),
    )
    assert [t.expansions for t in trees] == [4, 4, 4, 4]
    assert trees[0] is partial[0] and trees[2].to_dict() == full[0].to_dict()
    assert sorted(finished) == ["q0", "q1", "q2", "q3"]


def test_influence_guidance_changes_the_search() -> None:
    def grown(policy: QPolicy | InfluencePolicy) -> list[dict]:
        trees = grow_with([Tree(i) for i in INSTANCES], 2, seed=5, policy=QPolicy())
        for tree in trees:  # probe one pair per tree: the deepest branch point gets a high influence
            branch = max((n for n in tree.nodes if len(n.children) >= 2), key=lambda n: len(tree.path(n.id)))
            branch.influence = 1.0
            tree.nodes[ROOT].influence = 0.0
        return [t.to_dict() for t in grow_with(trees, 3, seed=5, policy=policy)]

    assert grown(InfluencePolicy(gamma=5.0)) != grown(QPolicy())


def test_round_sizes() -> None:
    assert round_sizes(8, 3) == [3, 3, 2]
    assert round_sizes(8, 1) == [8]
    assert round_sizes(2, 4) == [1, 1, 0, 0]


def test_token_budget_is_floor_percentile_plus_one() -> None:
    def respond(request: GenerationRequest, params: SamplingParams, rng: random.Random) -> str:
        length = int(re.search(r"#(\d+) capital", str(request.messages)).group(1))  # type: ignore[union-attr]
        return " ".join(["word"] * length + ["<A>paris</A>"])

    instances = [make_instance(f"t{k}", question=f"#{k} capital?") for k in range(5)]
    engine = FakeEngine(respond)
    # Dialogue k: two identical answers → agreement after 2 turns of k + 1 tokens → 2k + 2 tokens.
    # Token counts 2, 4, 6, 8, 10: the 80th percentile is 8.4 → 8 + 1.
    budget = token_budget(make_system(), instances, engine, config(token_budget_percentile=80), seed=0)
    assert budget == 9.0
    # Only the first token_budget_tasks instances are sampled: 2, 4, 6 → 5.2 → 6.
    assert token_budget(make_system(), instances, engine, config(token_budget_tasks=3), seed=0) == 6.0
    assert engine.calls[-1][1].temperature == 0.7
    with pytest.raises(ValueError, match="at least one"):
        token_budget(make_system(), [], engine, config(), seed=0)
