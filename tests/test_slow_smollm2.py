"""End to end with the bundled SmolLM2-135M on CPU (`make test-slow`; minutes, not seconds)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dits.cli import app
from dits.config import load_config
from dits.recipes import run

pytestmark = pytest.mark.slow

SHORT_DIALOGUES = ["dialogue.max_turns=2", "dialogue.max_utterance_tokens=32"]


def test_eval_of_the_built_in_model_prints_score_and_writes_records(tmp_path) -> None:
    out = tmp_path / "eval.json"
    args = ["eval", "--model", "smollm2-135m", "--task", "synth-ie", "--limit", "3", "--out", str(out)]
    for override in SHORT_DIALOGUES:
        args += ["--set", override]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "score" in result.output and "mean tokens" in result.output
    saved = json.loads(out.read_text())
    assert saved["summary"]["n"] == 3
    assert saved["summary"]["mean_tokens"] > 0
    assert all(record["dialogues"] for record in saved["records"])


def test_one_isft_dpo_iteration_trains_and_evaluates_the_trained_adapter(tmp_path) -> None:
    cfg = load_config(
        None,
        [
            "name=slow",
            f"runs_dir={tmp_path}",
            "model=smollm2-135m",
            "method=isft-dpo",
            *SHORT_DIALOGUES,
            "isft.tasks_per_iteration=3",
            "isft.samples_per_task=2",
            "isft.min_reward=-10",
            "search.tasks_per_iteration=2",
            "search.expansions=2",
            "search.rollouts_per_expansion=2",
            "search.token_budget_tasks=2",
            "pairs.min_chosen_value=-10",
            "pairs.min_gap=-10",
            "eval.limit=2",
            "loop.iterations=1",
        ],
    )
    results = run(cfg)
    assert set(results) == {"base", "iter_0"}
    stages = json.loads((cfg.run_dir / "manifest.json").read_text())["stages"]
    assert all(stage["status"] == "done" for stage in stages.values())
    assert (cfg.run_dir / "iter_0" / "dpo" / "adapter_config.json").exists()
    trained_eval = json.loads((cfg.run_dir / "eval" / "iter_0.json").read_text())
    assert trained_eval["summary"]["n"] == 2
