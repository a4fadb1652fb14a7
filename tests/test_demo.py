"""`dits demo` end to end at toy sizes with the tiny random model: both runs, shared stages, report."""

from __future__ import annotations

import json

from dits.demo import run_demo
from dits.progress import console

TOY = [
    "isft.tasks_per_iteration=3",
    "isft.samples_per_task=2",
    "isft.min_reward=-10",
    "search.tasks_per_iteration=3",
    "search.expansions=2",
    "search.rollouts_per_expansion=2",
    "search.token_budget_tasks=2",
    "pairs.min_chosen_value=-10",
    "pairs.min_gap=-10",
    "eval.limit=2",
    "dialogue.max_turns=2",
    "dialogue.max_utterance_tokens=6",
    "influence.validation_tasks=2",
    "influence.warmup_steps=1",
    "influence.probe_lr=0.001",
    "sft.max_length=512",
    "dpo.max_length=512",
]


def test_quick_demo_runs_both_methods_and_writes_the_report(tmp_path, tiny_model) -> None:
    with console.capture() as captured:
        report = run_demo(quick=True, runs_dir=str(tmp_path), overrides=[f"model={tiny_model}", *TOY])
    assert report.exists() and report.name == "report.html"
    manifests = {
        name: json.loads((tmp_path / "demo-quick" / name / "manifest.json").read_text())["stages"]
        for name in ("optima", "dits")
    }
    assert all(stage["status"] == "done" for stages in manifests.values() for stage in stages.values())
    assert "iter_0/influence" in manifests["dits"] and "iter_0/influence" not in manifests["optima"]
    # the DITS run reuses the stages both runs compute identically, and says so
    assert manifests["dits"]["iter_0/trees"]["summary"]["shared_from"] == "optima"
    assert (tmp_path / "demo-quick" / "dits" / "iter_0" / "pairs.jsonl").read_text() == (
        tmp_path / "demo-quick" / "optima" / "iter_0" / "pairs.jsonl"
    ).read_text()
    printed = captured.get()
    assert "Optima" in printed and "DITS" in printed and "score" in printed
    assert "wall time per stage" in printed and "iter_0/influence" in printed
