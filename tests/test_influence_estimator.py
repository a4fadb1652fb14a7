"""Influence estimation on tiny-random: the iteration session (warm-up hygiene, calibration that
separates, informative tasks, exact reopening), the estimators (exact, racing, first-order, central
difference, sampled validation units), drafts, resume, and the report's statistics."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from dits.errors import DitsError
from dits.influence.estimator import (
    Group,
    UnitResult,
    make_groups,
    racing_schedule,
    split_trees,
)
from dits.influence.report import CalibrationRow, GroupInfluence, agreement, tie_fraction
from dits.influence.session import (
    ProbeSession,
    choose_lr,
    informative_tasks,
    open_session,
    score_moved,
)
from test_influence_support import DPO, FAST, POLICY, make_engine, make_pairs, make_system, validation

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
V = FAST.validation_tasks


@pytest.fixture(scope="module")
def engine(tiny_model: str):
    return make_engine(tiny_model)


def session(engine, folder: Path, cfg=FAST, pairs=None, pool=None) -> ProbeSession:
    return open_session(
        folder,
        engine,
        make_system(),
        pairs if pairs is not None else make_pairs(),
        pool if pool is not None else validation(),
        cfg,
        DPO,
        policy=POLICY,
        seed=0,
        first_order=True,
    )


@pytest.fixture
def own_engine(tiny_model: str):
    """An engine of the test's own (one θ* per engine: the module's session holds the shared one)."""
    return make_engine(tiny_model)


@pytest.fixture(scope="module")
def opened(engine, tmp_path_factory):
    s = session(engine, tmp_path_factory.mktemp("session"))
    yield s
    s.close()


@pytest.fixture(scope="module")
def exact(opened) -> list[GroupInfluence]:
    return opened.measure(opened.groups(make_pairs()), FAST)


# ------------------------------------------------------------------------------------ pure parts
def test_groups_are_seeded_stable_chunks() -> None:
    ids = [f"p{i}" for i in range(7)]
    groups = make_groups(ids, 3, seed=1)
    assert make_groups(ids[::-1], 3, seed=1) == groups  # input order does not matter
    assert [len(g.pair_ids) for g in groups] == [3, 3, 1]
    assert sorted(i for g in groups for i in g.pair_ids) == ids
    assert make_groups(ids, 3, seed=2) != groups


def test_racing_schedule_doubles_up_to_all_units() -> None:
    assert racing_schedule(4, 20) == [4, 8, 16, 20]
    assert racing_schedule(5, 5) == [5] and racing_schedule(8, 3) == [3]


def test_trees_are_set_aside_whole() -> None:
    pool, held = split_trees(make_pairs(5, 2), 3, seed=0)
    assert len(held) == 4 and len(pool) == 6  # two whole trees of two pairs
    assert {p.tree_id for p in held}.isdisjoint({p.tree_id for p in pool})
    assert split_trees(make_pairs(5, 2), 3, seed=0, purpose="warmup") != (pool, held)  # another order


def test_agreement_and_tie_statistics() -> None:
    result = agreement({"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 10.0, "b": 30.0, "c": 20.0, "d": 0.0})
    assert (result.n, result.spearman) == (3, pytest.approx(0.5))
    assert tie_fraction([1.0, 1.0, 2.0, 3.0]) == 0.5 and tie_fraction([]) == 0.0


def row(lr: float, distinct: int, spread: float, delta: float, tol: float = 0.1) -> CalibrationRow:
    return CalibrationRow(lr, 6, 0.5, 0.5 + delta, delta, distinct, spread, delta >= -tol)


def test_calibration_rule_prefers_the_step_that_separates_the_groups() -> None:
    rows = [row(1e-4, 1, 0.0, 0.0), row(1e-3, 4, 0.05, -0.02), row(1e-2, 6, 0.2, -0.3)]
    lr, note = choose_lr(rows, 0.1)
    assert lr == 1e-3  # 1e-2 separates more but costs 0.3 of the score
    assert "WARNING" not in note and "1e-04 (1 distinct" in note.replace("0.0001", "1e-04")
    assert choose_lr([row(1e-4, 3, 0.1, 0.0), row(1e-3, 3, 0.2, 0.0)], 0.1)[0] == 1e-3  # spread breaks ties
    assert (
        choose_lr([row(1e-4, 3, 0.1, 0.0), row(1e-3, 3, 0.1, 0.0)], 0.1)[0] == 1e-4
    )  # then the smaller step
    lr, note = choose_lr([row(1e-4, 1, 0.0, 0.0), row(1e-3, 1, 0.0, 0.0)], 0.1)
    assert "WARNING" in note  # nothing separates: influences will tie
    lr, note = choose_lr([row(1e-3, 5, 0.1, -0.5), row(1e-2, 6, 0.1, -0.6)], 0.1)
    assert lr == 1e-3 and "every step lowered" in note


# ------------------------------------------------------------------------------------ the session
def test_session_measures_sft_and_theta_and_never_probes_its_warm_up_trees(opened) -> None:
    record = opened.record
    assert record.sft_score is not None and len(record.base_scores) == V
    assert record.warmup_trees and record.calibration_groups == []  # a fixed step: nothing calibrated
    pairs = make_pairs()
    warm = [p for p in pairs if p.tree_id in record.warmup_trees]
    assert warm and all(not opened.probed(p) for p in warm)
    probed_ids = {i for g in opened.groups(pairs) for i in g.pair_ids}
    assert probed_ids.isdisjoint(p.id for p in warm) and probed_ids


def test_a_saved_session_reopens_exactly(own_engine, tmp_path) -> None:
    folder = tmp_path / "s"
    first = session(own_engine, folder)
    record, results = first.record, first.calibration_results
    theta = first.prober.state()
    first.close()
    again = session(own_engine, folder)
    try:
        assert again.record == record and again.harness.base_scores == record.base_scores
        assert all((again.prober.state()[k] == v).all() for k, v in theta.items())
        groups = again.groups(make_pairs())
        cal = [g for g in groups if g.id in record.calibration_groups]
        by_group = {g.group: g for g in again.measure(cal, FAST)}
        for result in results:
            assert by_group[result.group].influence is not None
    finally:
        again.close()


def test_calibration_climbs_past_steps_that_separate_nothing(own_engine, tmp_path) -> None:
    cfg = FAST.model_copy(update={"probe_lr": "auto", "probe_lr_grid": [1e-9, 0.02], "max_score_drop": 1.0})
    s = session(own_engine, tmp_path / "c", cfg)
    try:
        rows = s.record.calibration
        assert [r.lr for r in rows] == [1e-9, 0.02]
        assert (
            rows[0].distinct_scores == 1 and rows[0].change_fraction == 0.0
        )  # the tiny step changes nothing
        assert rows[1].distinct_scores > 1 and s.record.lr == 0.02
        assert len(s.calibration_results) == V * len(s.record.calibration_groups)  # reused as estimates
    finally:
        s.close()
    strict = cfg.model_copy(update={"max_score_drop": -1.0})  # no step is acceptable
    s = session(own_engine, tmp_path / "d", strict)
    try:
        assert s.record.lr == 1e-9 and "every step lowered" in s.record.calibration_note
        assert [r.lr for r in s.record.calibration] == [1e-9]  # no use climbing further
    finally:
        s.close()


def test_calibration_on_a_larger_pool_keeps_the_tasks_probes_moved(own_engine, tmp_path) -> None:
    cfg = FAST.model_copy(
        update={"probe_lr": "auto", "probe_lr_grid": [0.02], "max_score_drop": 1.0, "validation_pool": 6}
    )
    s = session(own_engine, tmp_path / "p", cfg, pool=validation(6))
    try:
        record = s.record
        assert record.pool_size == 6 and len(record.validation_ids) == V
        assert set(record.validation_ids) <= {t.id for t in validation(6)}
        assert all(r.unit < V for r in s.calibration_results)  # renumbered onto the kept tasks
        base = s.harness.base_scores
        kept_moved = {r.unit for r in s.calibration_results if r.score != base[r.unit]}
        assert record.moved_tasks >= 1  # the step moved some score
        assert len(kept_moved) == min(record.moved_tasks, V)  # every task whose score moved is kept first
    finally:
        s.close()


def test_a_task_counts_as_moved_only_when_its_score_changes() -> None:
    harness = SimpleNamespace(base_scores=[0.0, 1.0, 0.5, 0.0])
    results = [
        UnitResult("g", 0, score=0.0, changed=True, tokens=1),  # other text, same score: adds nothing
        UnitResult("g", 1, score=0.0, changed=True, tokens=1),  # score moved
        UnitResult("g", 2, score=0.5, changed=False, tokens=1),
        UnitResult("g", 3, score=0.0, changed=True, tokens=1, reflected_score=1.0),  # the θ* − step side
    ]
    moved = score_moved(harness, results)
    assert moved == {1, 3}
    cfg = FAST.model_copy(update={"validation_tasks": 3, "validation_samples": 1})
    assert informative_tasks(moved, 4, cfg) == [0, 1, 3]  # moved tasks first, then the pool order


# ------------------------------------------------------------------------------------ estimators
def test_exact_influence_is_the_metric_delta_on_all_units(opened, exact) -> None:
    base = opened.record.base_scores
    assert len(exact) >= 2
    for group in exact:
        assert group.influence == pytest.approx(group.score_after - sum(base) / V)
        assert (group.tasks, group.dialogues) == (V, V)
    assert any(g.changed for g in exact) and len({g.influence for g in exact}) > 1  # probes really matter
    assert all(g.first_order is not None for g in exact)


def test_batched_adapters_and_drafts_do_not_change_influence(opened, exact) -> None:
    groups = opened.groups(make_pairs())
    single = opened.measure(groups, FAST.model_copy(update={"adapters_per_batch": 1}))
    assert [g.to_dict() for g in single] == [g.to_dict() for g in exact]
    opened.harness.drafts = False
    try:
        decoded = opened.measure(groups, FAST)
    finally:
        opened.harness.drafts = True
    assert [g.to_dict() for g in decoded] == [g.to_dict() for g in exact]


def test_resume_plays_no_unit_twice(opened, exact) -> None:
    groups = opened.groups(make_pairs())
    seen: list[UnitResult] = []
    full = opened.measure(groups, FAST, on_unit=seen.append)
    before, half = opened.harness.dialogues, len(seen) // 2
    resumed = opened.measure(groups, FAST, measured=seen[:half])
    assert [g.to_dict() for g in resumed] == [g.to_dict() for g in full]
    assert opened.harness.dialogues - before == len(seen) - half  # only the units not measured before


def test_racing_is_tie_aware_exact_on_resume_and_never_ranks_the_eliminated_first(opened) -> None:
    cfg = FAST.model_copy(update={"estimator": "racing", "racing_keep_fraction": 0.5})
    groups = opened.groups(make_pairs(6, 2))
    seen: list[UnitResult] = []
    raced = opened.measure(groups, cfg, on_unit=seen.append)
    out = [g for g in raced if g.eliminated_after is not None]
    kept = [g for g in raced if g.eliminated_after is None]
    assert kept and all(g.tasks == V for g in kept)
    for loser in out:
        assert loser.tasks == loser.eliminated_after < V
        assert loser.influence <= min(g.influence for g in kept)  # the race's verdict holds in the values
    again = opened.measure(groups, cfg, measured=seen[:3])
    assert [g.to_dict() for g in again] == [g.to_dict() for g in raced]


def test_first_order_mode_plays_no_validation_dialogue_per_group(opened, exact) -> None:
    before = opened.harness.dialogues
    first = opened.measure(opened.groups(make_pairs()), FAST.model_copy(update={"estimator": "first-order"}))
    assert opened.harness.dialogues == before
    assert [g.influence for g in first] == [g.first_order for g in exact]


def test_central_difference_and_sampled_units(own_engine, tmp_path) -> None:
    cfg = FAST.model_copy(update={"difference": "central", "validation_samples": 2})
    s = session(own_engine, tmp_path / "central", cfg)
    try:
        assert len(s.harness.units) == 2 * V
        groups = s.groups(make_pairs())[:2]
        results = s.measure(groups, cfg)
        for group in results:
            assert group.tasks == 2 * V and group.dialogues == 4 * V  # both sides of every unit
        s.harness.drafts = False
        assert [g.to_dict() for g in s.measure(groups, cfg)] == [g.to_dict() for g in results]
    finally:
        s.close()


def test_measuring_on_other_tasks_keeps_theta_and_the_step(opened) -> None:
    other = opened.on_tasks(validation(6)[3:], FAST)
    groups: list[Group] = opened.groups(make_pairs())[:2]
    results = opened.measure(groups, FAST, harness=other)
    assert all(g.tasks == 3 for g in results)


def test_an_engine_without_a_trainable_model_gets_the_same_influence_from_a_local_copy(
    tiny_model: str, tmp_path
) -> None:
    """Inference servers host adapters but cannot train in place: θ* trains in a local copy of the model
    and is pushed to the engine; the estimates equal those of in-place training."""
    from dits.engines.base import Capabilities

    inplace = make_engine(tiny_model)
    policy_dir = tmp_path / "policy"
    inplace.model.save_pretrained(str(policy_dir), selected_adapters=[POLICY])

    class ServerLike(type(inplace)):  # type: ignore[misc]
        capabilities = Capabilities(
            nll=True, adapters=True, mixed_adapter_batches=True, trainable_model=False
        )

    server = make_engine(tiny_model)
    server.__class__ = ServerLike
    with pytest.raises(DitsError, match="local_model"):  # it must be told what to train locally
        open_session(
            tmp_path / "x",
            server,
            make_system(),
            make_pairs(),
            validation(),
            FAST,
            DPO,
            policy=POLICY,
            seed=0,
        )
    remote = open_session(
        tmp_path / "remote",
        server,
        make_system(),
        make_pairs(),
        validation(),
        FAST,
        DPO,
        policy=POLICY,
        seed=0,
        local_model=tiny_model,
        policy_path=str(policy_dir / POLICY),
    )
    local = session(inplace, tmp_path / "inplace")
    try:
        assert remote.record.base_scores == local.record.base_scores
        groups = local.groups(make_pairs())
        assert [g.influence for g in remote.measure(groups, FAST)] == [
            g.influence for g in local.measure(groups, FAST)
        ]
    finally:
        remote.close()
        local.close()
