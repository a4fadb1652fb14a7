"""`dits demo` end to end at toy sizes with the tiny random model: both runs, shared stages, report."""

from __future__ import annotations

import json

from dits.demo import run_demo
from dits.progress import console
from test_loop import DITS_SMALL, SMALL

TOY = [*SMALL, *DITS_SMALL]
"""The loop tests' toy sizes with the HF engine (the DITS run needs real adapters for its probes)."""


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
    # the DITS run reuses the stages both runs compute identically (up to the search), and says so
    assert manifests["dits"]["iter_0/sft"]["summary"]["shared_from"] == "optima"
    assert "shared_from" not in manifests["dits"]["iter_0/trees"]["summary"]  # its search is guided
    assert "iter_0/influence/round_0" in manifests["dits"]
    printed = captured.get()
    assert "Optima" in printed and "DITS" in printed and "score" in printed
    assert "wall time per stage" in printed and "iter_0/influence" in printed
    assert "groups" in printed  # probed groups, distinct values and ties in the demo table


def test_a_q_guided_dits_demo_also_shares_the_search(tmp_path, tiny_model) -> None:
    run_demo(quick=True, runs_dir=str(tmp_path), overrides=[f"model={tiny_model}", *TOY, "search.guidance=q"])
    dits = json.loads((tmp_path / "demo-quick" / "dits" / "manifest.json").read_text())["stages"]
    assert dits["iter_0/trees"]["summary"]["shared_from"] == "optima"
    assert (tmp_path / "demo-quick" / "dits" / "iter_0" / "pairs.jsonl").read_text() == (
        tmp_path / "demo-quick" / "optima" / "iter_0" / "pairs.jsonl"
    ).read_text()
