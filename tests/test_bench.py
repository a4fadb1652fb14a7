"""The benchmark scripts run end to end at toy sizes (tiny-random model) and write what RESULTS.md renders.

These check that `make bench` keeps working, not what it measures: with random weights every score is 0.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from test_loop import DITS_SMALL, SMALL

BENCH = REPO / "bench"
START, END = "<!-- results:start -->", "<!-- results:end -->"
TOY = [
    "dialogue.max_turns=2",
    "dialogue.max_utterance_tokens=8",
    "dialogue.demonstration=false",
    "engine.batch_size=8",
    "sft.batch_size=2",
    "dpo.batch_size=2",
    "sft.epochs=1",
    "dpo.epochs=1",
    "sft.max_length=512",
    "dpo.max_length=512",
    "influence.warmup_steps=1",
    "influence.warmup_batch_size=2",
]
SIZES = {
    "throughput": [
        *("--eval-tasks", "2", "--sample-tasks", "2", "--samples", "2", "--trees", "2", "--expansions", "1"),
        *("--rollouts", "2", "--probes", "2", "--validation", "2", "--repeats", "1"),
    ],
    "probe": [
        *("--groups", "2", "--validation", "2", "--trees", "3", "--expansions", "1"),
        *("--calibration-groups", "1", "--racing-initial", "1"),
    ],
    "claims": [
        *("--sft-tasks", "2", "--trees", "4", "--validation", "2", "--seeds", "1"),
        *("--eval-limit", "2", "--probe-lr", "0.001"),
    ],
    "budget": [
        *("--sft-tasks", "2", "--trees", "2", "--levels", "1", "--replicates", "2", "--validation", "2"),
        *("--eval-limit", "2", "--set=search.expansions=2", "--set=influence.probe_lr=0.001"),
    ],
}


def run_benchmark(name: str, tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / f"{name}.json"
    overrides = [f"--set={o}" for o in TOY]
    command = [sys.executable, str(BENCH / f"{name}.py"), "--model", "tiny-random", "--out", str(out)]
    command += ["--scratch-dir", str(tmp_path / "scratch"), *overrides, *extra]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["benchmark"] == name and report["meta"]["model"] == "tiny-random"
    assert report["summary"] and all(row["metric"] and row["value"] for row in report["summary"])
    assert str(REPO) not in out.read_text()  # results files are committed: no machine paths
    return report


@pytest.mark.parametrize("name", sorted(SIZES))
def test_benchmark_runs_at_toy_sizes(tmp_path: Path, tiny_model: str, name: str) -> None:
    report = run_benchmark(name, tmp_path, *SIZES[name])
    results = report["results"]
    if name == "probe":
        # decoded, no-drafts, one-adapter-at-a-time and batched estimates agree exactly
        assert results["identical_check"]["identical"] is True
        assert len(results["identical_check"]["modes_compared"]) == 4
        sharing = results["prompt_sharing"]  # the probes' scoring runs fewer tokens, same values
        assert sharing["tokens"]["shared"] < sharing["tokens"]["whole"]
        assert sharing["max_abs_logp_difference"] < 1e-3
    if name == "throughput":
        assert set(results["workloads"]) == {"evaluation", "sampling", "search", "probes"}
        for workload in results["workloads"].values():  # both paths compute what is needed, reuse less
            reuse, off = workload["reuse"], workload["off"]
            assert reuse["distinct_positions"] <= reuse["positions_computed"] < off["positions_computed"]
            assert off["distinct_positions"] <= off["positions_computed"]
            assert workload["identical"]["compared"] > 0
    if name == "budget":
        assert set(results["arms"]) == {"optima", "dits", "dits-unguided"}
        assert all(len(level["scores"]) == 2 for arm in results["arms"].values() for level in arm.values())
        dits = results["arms"]["dits"]["1"]
        assert dits["minus_optima"]["reference"] == "optima"
        assert dits["minus_unguided"]["reference"] == "dits-unguided"  # guided vs unguided, paired
        assert len(dits["minus_unguided"]["diffs"]) == 2
    if name == "claims":
        assert set(results["ablation"]["scores"]) == {"full", "random", "q", "dits_gamma0", "dits_gamma1"}
        assert results["groups"] == len(results["group_table"]) > 0
        assert (results["validation_samples"], results["difference"]) == (1, "forward")


def test_claims_estimator_variant_without_the_ablation(tmp_path: Path, tiny_model: str) -> None:
    """--seeds 0 measures claims (a)-(c) only; --validation-samples/--difference/--validation-pool change
    the estimate, not the pool of pairs."""
    sizes = (
        "--sft-tasks",
        "2",
        "--trees",
        "4",
        "--validation",
        "2",
        "--eval-limit",
        "2",
        "--probe-lr",
        "0.001",
    )
    greedy = run_benchmark("claims", tmp_path, *sizes, "--seeds", "0")
    (tmp_path / "claims-greedy.json").write_text(json.dumps(greedy))
    extra = ("--seeds", "0", "--validation-samples", "2", "--difference", "central", "--validation-pool", "6")
    report = run_benchmark("claims", tmp_path, *sizes, *extra, "--compare-to", "claims-greedy.json")
    results = report["results"]
    assert greedy["results"]["ablation"] is None and results["ablation"] is None
    assert (results["validation_samples"], results["difference"]) == (2, "central")
    assert results["claims"]["validation_pool"] == 6
    assert results["groups"] == len(results["group_table"]) == results["compared_to"]["n"] > 0  # same pool
    assert any(row["metric"].startswith("influence vs claims-greedy.json") for row in report["summary"])


def test_e2e_records_per_stage_memory(tmp_path: Path, tiny_model: str) -> None:
    report = run_benchmark("e2e", tmp_path, "--quick", *[f"--set={o}" for o in [*SMALL, *DITS_SMALL]])
    process, runs = report["results"]["process"], report["results"]["runs"]
    assert process["returncode"] == 0 and process["peak_rss_mb"] > 0
    assert set(runs) == {"optima", "dits"}
    assert all(stage["peak_rss_mb"] > 0 for run in runs.values() for stage in run["stages"].values())
    assert report["results"]["peak_rss_by_kind_mb"]["influence"] > 0


def test_render_only_rewrites_the_tables_between_the_markers(tmp_path: Path) -> None:
    markdown = tmp_path / "RESULTS.md"
    shutil.copy(BENCH / "RESULTS.md", markdown)
    results = tmp_path / "results"
    results.mkdir()
    report = {
        "benchmark": "probe",
        "meta": {
            "date": "2026-01-01",
            "command": "bench/probe.py --quick",
            "quick": True,
            "model": "m",
            "machine": {"cpu": "cpu", "cores": 2, "torch": "2", "torch_threads": 2},
        },
        "summary": [{"metric": "speed-up", "value": "9.99", "goal": "goal >= 4"}],
    }
    (results / "probe-quick.json").write_text(json.dumps(report))
    variant = {**report, "summary": [{"metric": "speed-up", "value": "1.23", "goal": ""}]}
    (results / "probe-quick-racing.json").write_text(json.dumps(variant))  # same benchmark, other settings
    command = [sys.executable, str(BENCH / "run_all.py"), "--render-only"]
    command += ["--results-dir", str(results), "--markdown", str(markdown)]
    subprocess.run(command, check=True, capture_output=True)
    text, original = markdown.read_text(), (BENCH / "RESULTS.md").read_text()
    start, end = text.index(START), text.index(END)
    assert "| speed-up | 9.99 | goal >= 4 |" in text[start:end]
    variant_at = text.index("### probe (quick, m, racing)")  # its own table, after the main one
    assert text.index("9.99") < variant_at < text.index("| speed-up | 1.23 |  |") < end
    assert "throughput (quick" not in text[start:end]  # only the files found are rendered
    assert text[:start] == original[: original.index(START)]  # the hand-written parts are left alone
    assert text[end:] == original[original.index(END) :]
