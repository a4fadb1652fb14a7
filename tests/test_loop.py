"""The recipes end to end on the fake engine + tiny-random training, and crash/resume."""

from __future__ import annotations

import json
import random
import re
from typing import Any

import pytest
import yaml

from dits.config import load_config
from dits.context import Policy, StageContext
from dits.engines.base import GenerationRequest, SamplingParams
from dits.engines.fake import FakeEngine
from dits.errors import DitsError
from dits.recipes import run

SMALL = [
    "task.name=synth-ie",
    "engine.kind=fake",
    "isft.tasks_per_iteration=4",
    "isft.samples_per_task=3",
    "isft.min_reward=-10",
    "search.tasks_per_iteration=3",
    "search.expansions=2",
    "search.rollouts_per_expansion=2",
    "search.token_budget_tasks=2",
    "pairs.min_chosen_value=-10",
    "pairs.min_gap=-10",
    "eval.limit=3",
    "sft.batch_size=2",
    "dpo.batch_size=2",
    "sft.max_length=512",
    "dpo.max_length=512",
    "loop.iterations=1",
    "dialogue.max_turns=3",
    "dialogue.demonstration=false",
]


def guessing_responder(request: GenerationRequest, params: SamplingParams, rng: random.Random) -> str:
    """Names one of the people asked about (right about half the time), sometimes with filler."""
    question = next(m["content"] for m in reversed(request.messages) if m["content"].startswith("Question:"))
    names = re.findall(r"first, (.+?) or (.+?)\?", question) or [("Oslo", "Lima")]
    pick = names[0][0] if params.greedy else rng.choice(names[0])
    filler = "" if params.greedy else rng.choice(["", "I recall the years. ", "Not sure, "])
    return f"{filler}<A>{pick}</A>"


def config(tmp_path, tiny_model, method: str, *extra: str):
    return load_config(
        None,
        [f"name={method}", f"runs_dir={tmp_path}", f"model={tiny_model}", f"method={method}", *SMALL, *extra],
    )


@pytest.mark.parametrize("method", ["isft", "idpo", "isft-dpo"])
def test_each_optima_method_runs_and_evaluates(tmp_path, tiny_model, method) -> None:
    cfg = config(tmp_path, tiny_model, method)
    results = run(cfg, engine=FakeEngine(guessing_responder))
    assert set(results) == {"base", "iter_0"}
    manifest = json.loads((cfg.run_dir / "manifest.json").read_text())
    stages = manifest["stages"]
    assert all(s["status"] == "done" for s in stages.values())
    assert all(s["summary"]["peak_rss_mb"] > 0 for s in stages.values())  # every stage's own peak
    has_dpo = method != "isft"
    assert ("iter_0/dpo" in stages) == has_dpo
    assert ("init/sft" in stages) == (method == "idpo")
    assert (cfg.run_dir / "eval" / "iter_0.json").exists()
    assert (cfg.run_dir / "config.yaml").exists()


@pytest.mark.parametrize("method", ["isft-dpo", "idpo"])
def test_every_synthesis_stage_gets_fresh_train_tasks_in_recipe_order(tmp_path, tiny_model, method) -> None:
    cfg = config(tmp_path, tiny_model, method, "loop.iterations=2")
    run(cfg, engine=FakeEngine(guessing_responder))
    train = [i.id for i in StageContext(cfg).tasks("train", 30)]
    order = ["init/sft_samples.jsonl"] if method == "idpo" else []
    for it in ("iter_0", "iter_1"):
        order += [] if method == "idpo" else [f"{it}/sft_samples.jsonl"]
        order += [f"{it}/trees.jsonl"]
    used = [
        [json.loads(line)["id"] for line in (cfg.run_dir / name).read_text().splitlines()] for name in order
    ]
    assert sum(used, []) == train[: sum(len(u) for u in used)]  # one cursor, no task twice, no gap
    assert [len(u) for u in used] == [4 if "samples" in name else 3 for name in order]


class Crash(Exception):
    pass


def crashing_engine(after_calls: int) -> FakeEngine:
    """A fake engine that raises (like a kill) at its ``after_calls``-th generate call."""
    engine = FakeEngine(guessing_responder)
    generate = engine.generate

    def wrapped(requests, params):
        if len(engine.calls) >= after_calls:
            raise Crash
        return generate(requests, params)

    engine.generate = wrapped  # type: ignore[method-assign]
    return engine


def artefacts(run_dir) -> dict[str, str]:
    return {str(p.relative_to(run_dir)): p.read_text() for p in sorted(run_dir.rglob("*.jsonl"))}


@pytest.mark.parametrize("crash_at", [0.3, 0.7])
def test_killed_run_resumes_to_identical_artefacts(tmp_path, tiny_model, crash_at) -> None:
    reference = config(tmp_path / "a", tiny_model, "isft-dpo")
    engine = FakeEngine(guessing_responder)
    run(reference, engine=engine)

    resumed = config(tmp_path / "b", tiny_model, "isft-dpo")
    with pytest.raises(Crash):  # killed in the middle of a stage
        run(resumed, engine=crashing_engine(int(crash_at * len(engine.calls))))
    run(resumed, engine=FakeEngine(guessing_responder))
    assert artefacts(resumed.run_dir) == artefacts(reference.run_dir)
    a = json.loads((reference.run_dir / "eval" / "iter_0.json").read_text())["summary"]
    b = json.loads((resumed.run_dir / "eval" / "iter_0.json").read_text())["summary"]
    assert a["score"] == b["score"] and a["mean_tokens"] == b["mean_tokens"]


def test_resuming_with_another_config_is_refused(tmp_path, tiny_model) -> None:
    cfg = config(tmp_path, tiny_model, "isft")
    run(cfg, engine=FakeEngine(guessing_responder))
    with pytest.raises(DitsError, match="different config"):
        run(config(tmp_path, tiny_model, "isft", "isft.samples_per_task=2"), engine=FakeEngine())


def test_a_run_saved_before_a_config_key_existed_resumes(tmp_path, tiny_model) -> None:
    cfg = config(tmp_path, tiny_model, "isft")
    run(cfg, engine=FakeEngine(guessing_responder))
    saved = cfg.run_dir / "config.yaml"
    older = yaml.safe_load(saved.read_text())
    del older["influence"]["racing_state_budget_mb"]  # as written by a version without the key
    saved.write_text(yaml.safe_dump(older, sort_keys=False))
    run(cfg, engine=FakeEngine(guessing_responder))  # the key's default is what that run did
    older["influence"]["racing_state_budget_mb"] = 1  # not the default: a different run
    saved.write_text(yaml.safe_dump(older, sort_keys=False))
    with pytest.raises(DitsError, match="different config"):
        run(cfg, engine=FakeEngine(guessing_responder))
    older["influence"]["no_such_key"] = 1  # a key this version does not know
    saved.write_text(yaml.safe_dump(older, sort_keys=False))
    with pytest.raises(DitsError, match="different config"):
        run(cfg, engine=FakeEngine(guessing_responder))


DITS_SMALL = [
    "engine.kind=hf",
    "dialogue.max_utterance_tokens=6",
    "dialogue.max_turns=2",
    "influence.validation_tasks=2",
    "influence.group_size=2",
    "influence.warmup_steps=1",
    "influence.probe_lr=0.001",
    "influence.adapters_per_batch=4",
]


def test_dits_runs_with_influence_selection_and_guided_search(tmp_path, tiny_model) -> None:
    cfg = config(tmp_path, tiny_model, "dits", *DITS_SMALL, "influence.warmup_fraction=0.3")
    assert cfg.guided_search and cfg.search_rounds == 2  # the default for dits
    results = run(cfg)
    assert set(results) == {"base", "iter_0"}
    stages = json.loads((cfg.run_dir / "manifest.json").read_text())["stages"]
    for key in (
        "iter_0/trees/round_0",
        "iter_0/influence/round_0",
        "iter_0/trees",
        "iter_0/influence",
        "iter_0/selected",
    ):
        assert stages[key]["status"] == "done", key
    groups = [
        json.loads(line) for line in (cfg.run_dir / "iter_0" / "influence.jsonl").read_text().splitlines()
    ]
    assert {g["stage"] for g in groups} <= {"iter_0/influence/round_0", "iter_0/influence"}
    pairs = (cfg.run_dir / "iter_0" / "pairs.jsonl").read_text().splitlines()
    selected = (cfg.run_dir / "iter_0" / "selected.jsonl").read_text().splitlines()
    assert 1 <= len(selected) <= max(1, len(pairs) // 2)
    trees = [json.loads(line) for line in (cfg.run_dir / "iter_0" / "trees.jsonl").read_text().splitlines()]
    probed_nodes = [n for t in trees for n in t["nodes"] if n.get("influence") is not None]
    assert probed_nodes  # round-0 probes were written onto their branch nodes before round 1
    # one θ*, one step size, one F(θ*) for the whole iteration
    reports = [
        json.loads((cfg.run_dir / "iter_0" / f).read_text())
        for f in ("influence_round_0_report.json", "influence_report.json")
    ]
    assert len({(r["lr"], r["base_score"], tuple(r["validation_ids"])) for r in reports}) == 1
    session = json.loads((cfg.run_dir / "iter_0" / "influence_session.json").read_text())
    assert session["sft_score"] is not None and (cfg.run_dir / "iter_0" / "theta_star.pt").exists()
    warm = set(session["warmup_trees"])
    assert warm and not any(p.split("/")[0] in warm for g in groups for p in g["pair_ids"])  # never probed
    summary = stages["iter_0/selected"]["summary"]
    assert summary["unprobed_with_mean_influence"] >= 1 and summary["probed"] + summary[
        "unprobed_with_mean_influence"
    ] == len(pairs)


def test_a_killed_racing_influence_stage_resumes_to_the_same_estimates(
    tmp_path, tiny_model, monkeypatch
) -> None:
    from dits.influence.estimator import Harness

    racing = [
        *DITS_SMALL,
        "influence.estimator=racing",
        "influence.validation_tasks=4",
        "influence.racing_initial_tasks=1",
        "search.guidance=q",
    ]
    reference = config(tmp_path / "a", tiny_model, "dits", *racing)
    run(reference)
    resumed = config(tmp_path / "b", tiny_model, "dits", *racing)
    play = Harness._play_states
    calls = iter(range(10**6))

    def crash_after_two(self, states, units):  # killed in the middle of the race
        if next(calls) == 2:
            raise Crash
        return play(self, states, units)

    monkeypatch.setattr(Harness, "_play_states", crash_after_two)
    with pytest.raises(Crash):
        run(resumed)
    monkeypatch.setattr(Harness, "_play_states", play)
    run(resumed)
    for name in ("influence.jsonl", "selected.jsonl", "pairs.jsonl"):
        assert (resumed.run_dir / "iter_0" / name).read_text() == (
            reference.run_dir / "iter_0" / name
        ).read_text(), name


def test_full_fine_tuning_serves_the_new_model_and_scores_readability_with_the_initial_one(
    tmp_path, tiny_model
) -> None:
    cfg = config(tmp_path, tiny_model, "isft-dpo", *DITS_SMALL[:3], "sft.lora=false", "dpo.lora=false")
    results = run(cfg)
    assert set(results) == {"base", "iter_0"}
    dpo = cfg.run_dir / "iter_0" / "dpo"
    assert (dpo / "config.json").exists() and not (dpo / "adapter_config.json").exists()
    ctx = StageContext(cfg)
    assert ctx.serve(Policy("x", dpo)) is None
    engine: Any = ctx.engine
    assert str(engine.ref.base) == str(dpo) and engine.reference is not None
