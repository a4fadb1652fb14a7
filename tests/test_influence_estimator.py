"""Influence estimation on tiny-random: exact (batched = one at a time), racing, first-order, calibration,
resume, the loss proxy; and the report's statistics."""

from __future__ import annotations

import pytest

from dits.errors import DitsError
from dits.influence.estimator import (
    Harness,
    calibrate,
    choose_lr,
    estimate,
    make_groups,
    racing_schedule,
    split_holdout,
)
from dits.influence.probe import Prober
from dits.influence.report import CalibrationRow, GroupInfluence, InfluenceReport, agreement
from test_influence_support import DPO, FAST, POLICY, make_engine, make_pairs, make_system, validation

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
V = FAST.validation_tasks


@pytest.fixture(scope="module")
def engine(tiny_model: str):
    return make_engine(tiny_model)


def run(engine, cfg=FAST, **kwargs) -> InfluenceReport:
    return estimate(
        engine,
        make_system(),
        kwargs.pop("pairs", make_pairs()),
        validation(),
        cfg,
        DPO,
        policy=POLICY,
        seed=0,
        **kwargs,
    )


@pytest.fixture(scope="module")
def exact(engine) -> tuple[InfluenceReport, list[GroupInfluence]]:
    seen: list[GroupInfluence] = []
    return run(engine, on_group_done=seen.append, first_order=True), seen


# ------------------------------------------------------------------------------------ pure parts
def test_groups_are_seeded_stable_chunks() -> None:
    ids = [f"p{i}" for i in range(7)]
    groups = make_groups(ids, 3, seed=1)
    assert make_groups(ids[::-1], 3, seed=1) == groups  # input order does not matter
    assert [len(g.pair_ids) for g in groups] == [3, 3, 1]
    assert sorted(i for g in groups for i in g.pair_ids) == ids
    assert make_groups(ids, 3, seed=2) != groups
    before = {g.id: g.pair_ids for g in groups}
    changed = make_groups([*ids[:-1], "p99"], 3, seed=1)
    assert all(before.get(g.id, g.pair_ids) == g.pair_ids for g in changed)  # same id ⇒ same pairs
    assert {g.id for g in changed} != set(before)


def test_racing_schedule_doubles_up_to_all_tasks() -> None:
    assert racing_schedule(4, 20) == [4, 8, 16, 20]
    assert racing_schedule(5, 5) == [5] and racing_schedule(8, 3) == [3]


def test_holdout_takes_whole_trees() -> None:
    pool, held = split_holdout(make_pairs(5, 2), 3, seed=0)
    assert len(held) == 4 and len(pool) == 6  # two whole trees of two pairs
    assert {p.tree_id for p in held}.isdisjoint({p.tree_id for p in pool})


def test_agreement_and_tie_statistics() -> None:
    result = agreement({"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 10.0, "b": 30.0, "c": 20.0, "d": 0.0})
    assert (result.n, result.spearman) == (3, pytest.approx(0.5))
    tied = agreement({"a": 1.0, "b": 1.0, "c": 2.0}, {"a": 1.0, "b": 2.0, "c": 3.0})
    assert tied.spearman == pytest.approx(0.75**0.5)  # average ranks for ties
    groups = [
        GroupInfluence(f"g{i}", [], v, None, 0, 0, 0, 0, 0.0, None, 0.0) for i, v in enumerate([1, 1, 2, 3])
    ]
    report = InfluenceReport("exact", 0, [], [], 0, "adam", [], "", groups, [], [], 0, 0, 0, 0, 0)
    assert (report.distinct_values, report.tie_fraction) == (3, 0.5)


def test_lr_rule_and_its_fallbacks() -> None:
    def row(lr: float, changed: float, delta: float) -> CalibrationRow:
        return CalibrationRow(lr, 4, changed, 0.5 + delta, delta, 2)

    rows = [row(1e-4, 0.0, 0.0), row(1e-3, 0.5, -0.3), row(3e-3, 0.3, -0.05), row(1e-2, 0.9, 0.0)]
    assert choose_lr(rows, 0.25, 0.1)[0] == 3e-3  # 1e-3 changes enough but costs 0.3 of the score
    lr, note = choose_lr(rows, 0.95, 0.1)  # unreachable target: the most-changing lr within tolerance
    assert lr == 1e-2 and "most-changing" in note and "WARNING" not in note
    assert choose_lr(rows, 0.25, 0.01)[0] == 1e-2  # only 1e-4 and 1e-2 are safe; 1e-2 changes enough
    lr, note = choose_lr([row(1e-3, 0.5, -0.3), row(1e-2, 0.9, -0.2)], 0.25, 0.1)
    assert lr == 1e-2 and "least harmful" in note


# ------------------------------------------------------------------------------------ exact
def test_exact_influence_is_the_metric_delta_on_all_tasks(engine, exact) -> None:
    report, seen = exact
    assert seen == report.groups and len(report.groups) == 4
    assert report.base_score == pytest.approx(sum(report.base_scores) / V)
    for group in report.groups:
        assert group.influence == pytest.approx(group.score_after - report.base_score)
        assert (group.tasks, group.dialogues) == (V, V)
    assert report.dialogues == V + 4 * V and report.probe_steps == 4
    assert any(g.changed for g in report.groups) and report.distinct_values > 1  # probes really matter
    assert report.pair_influence() == {p: g.influence for g in report.groups for p in g.pair_ids}
    assert report.proxy_agreement()["first_order"].n == 4  # no held-out pairs: no loss proxy
    assert "loss_proxy" not in report.proxy_agreement()
    assert engine.adapters() == [POLICY]  # θ* and the probe adapters are gone


def test_batched_adapters_give_the_same_scores_as_one_at_a_time(engine, exact) -> None:
    single = run(engine, FAST.model_copy(update={"adapters_per_batch": 1}), first_order=True)
    assert [g.to_dict() for g in single.groups] == [g.to_dict() for g in exact[0].groups]


def test_drafts_give_the_same_influence_as_decoding_every_token(engine, exact) -> None:
    decoded = run(engine, FAST.model_copy(update={"drafts": False}), first_order=True)
    assert [g.to_dict() for g in decoded.groups] == [g.to_dict() for g in exact[0].groups]
    assert decoded.base_scores == exact[0].base_scores


def test_resume_skips_finished_groups(engine, exact) -> None:
    report = exact[0]
    done = {g.group for g in report.groups[:2]}
    seen: list[GroupInfluence] = []
    rest = run(engine, done=done, on_group_done=seen.append, first_order=True)
    assert [g.to_dict() for g in rest.groups] == [g.to_dict() for g in report.groups[2:]]
    assert seen == rest.groups and rest.extra == {"groups_total": 4, "groups_skipped": 2}


# ------------------------------------------------------------------------------------ cheaper estimators
def test_racing_spends_fewer_dialogues_than_exact(engine, exact) -> None:
    full = exact[0]
    racing = run(engine, FAST.model_copy(update={"estimator": "racing"}))
    # schedule [1, 2, 3], keep half: 4 groups × 1 task, 2 × 1, 1 × 1
    assert sorted(g.tasks for g in racing.groups) == [1, 1, 2, 3]
    assert sum(g.dialogues for g in racing.groups) == 7 < sum(g.dialogues for g in full.groups) == 12
    finalist = max(racing.groups, key=lambda g: g.tasks)
    assert finalist.influence == full.influences()[finalist.group]  # same probe, same tasks
    assert agreement(racing.influences(), full.influences()).n == 4
    assert all(g.first_order is None for g in racing.groups)  # analysis proxy off by default
    assert racing.probe_steps == 4  # the finalists' adapter states were kept between rounds


def test_racing_without_state_budget_reprobes_with_the_same_results(engine) -> None:
    kept = run(engine, FAST.model_copy(update={"estimator": "racing"}))
    reprobed = run(engine, FAST.model_copy(update={"estimator": "racing", "racing_state_budget_mb": 0}))
    assert [g.to_dict() for g in reprobed.groups] == [g.to_dict() for g in kept.groups]
    assert reprobed.probe_steps == 4 + 2 + 1 > kept.probe_steps


def test_first_order_mode_plays_no_validation_dialogue_per_group(engine, exact) -> None:
    full = exact[0]
    pool, held = split_holdout(make_pairs(6, 2), 4, seed=0)
    report = run(engine, FAST.model_copy(update={"estimator": "first-order"}), pairs=pool, holdout=held)
    assert report.dialogues == V and all(g.dialogues == 0 and g.score_after is None for g in report.groups)
    assert all(g.influence == g.first_order for g in report.groups)
    assert len({g.first_order for g in full.groups}) == 4  # the exact run carries it for comparison
    assert all(g.loss_proxy is not None for g in report.groups)
    assert len({g.loss_proxy for g in report.groups}) == len(report.groups)
    assert report.proxy_agreement()["loss_proxy"].n == len(report.groups)
    with pytest.raises(DitsError, match="held-out"):
        run(engine, pairs=pool, holdout=pool[:1])


# ------------------------------------------------------------------------------------ calibration
@pytest.fixture
def harness(engine):
    pairs = make_pairs()
    prober = Prober(engine, pairs, DPO, policy=POLICY, seed=0)
    prober.warm_up([p.id for p in pairs], 2, 1e-2, 2)
    yield Harness(prober, make_system(), validation()[:V], seed=0)
    prober.close()


def test_calibration_picks_the_smallest_lr_that_changes_enough(harness) -> None:
    groups = make_groups([p.id for p in make_pairs()], 2, seed=0)
    cfg = FAST.model_copy(update={"probe_lr_grid": [0.3, 1e-7, 0.05], "target_change_fraction": 0.3})
    lr, rows, note = calibrate(harness, groups, cfg, n_groups=2, max_score_drop=1.0)
    assert [r.lr for r in rows] == [1e-7, 0.05] and lr == 0.05  # ascending; stops at the first hit
    assert rows[0].change_fraction == 0.0 and rows[1].change_fraction >= 0.3
    assert rows[1].groups == 2 and rows[1].score_delta == pytest.approx(
        rows[1].mean_score - harness.base_score
    )
    assert note.startswith("smallest lr")
    # unreachable target: the most-changing lr within the tolerance; no lr within it: the least harmful
    tiny = cfg.model_copy(update={"probe_lr_grid": [1e-6, 1e-7]})
    lr, rows, note = calibrate(harness, groups, tiny, n_groups=2, max_score_drop=1.0)
    assert (len(rows), lr, rows[0].change_fraction) == (2, 1e-7, 0.0) and "most-changing" in note
    assert "WARNING" in note  # such steps move nothing: every group would tie
    lr, _, note = calibrate(harness, groups, cfg, n_groups=1, max_score_drop=-1.0)
    assert "least harmful" in note


def test_estimate_calibrates_when_asked(engine) -> None:
    cfg = FAST.model_copy(update={"probe_lr": "auto", "probe_lr_grid": [1e-7, 0.05]})
    report = run(engine, cfg, pairs=make_pairs(2, 2))
    assert report.lr in (1e-7, 0.05) and report.calibration[0].change_fraction == 0.0
    assert report.calibration_note and report.calibration[0].groups == 2
