"""The command line: user mistakes end in one clear line, and the cheap commands work."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dits.cli import app
from dits.config import load_config

REPO_CONFIG = "configs/cpu/synth-ie-dits.yaml"


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error:")
    for fragment in fragments:
        assert fragment in lines[0]


def test_unknown_task(tmp_path) -> None:
    result = invoke("eval", "--model", "tiny-random", "--task", "no-such-task", "--set", "engine.kind=fake")
    assert_one_line_error(result, "unknown task 'no-such-task'", "synth-ie")


def test_unknown_model() -> None:
    result = invoke("eval", "--model", "no-such-model", "--task", "synth-ie", "--limit", "1")
    assert_one_line_error(result, "unknown model 'no-such-model'", "smollm2-135m")


def test_missing_data_file(tmp_path) -> None:
    missing = tmp_path / "validation.jsonl"
    result = invoke("tasks", "show", "hotpotqa", "--data-file", f"test={missing}")
    assert_one_line_error(result, str(missing), "task.data_files.test")


def test_malformed_jsonl_line_names_file_and_line(tmp_path) -> None:
    path = tmp_path / "mine.jsonl"
    good = {
        "id": "a",
        "family": "qa",
        "question": "q?",
        "answers": ["x"],
        "context": {"alice": [], "bob": []},
    }
    path.write_text(json.dumps(good) + "\n{not json\n")
    result = invoke("tasks", "show", f"jsonl:{path}", "--split", "train", "--n", "5")
    assert_one_line_error(result, f"{path}:2")


@pytest.mark.parametrize("override", ["no_such_section.key=1", "search.no_such_key=1"])
def test_unknown_config_key(override) -> None:
    result = invoke("eval", "--model", "tiny-random", "--task", "synth-ie", "--set", override)
    assert_one_line_error(result, override.split("=")[0].split(".")[-1])


def test_unknown_config_key_in_a_run_config(tmp_path) -> None:
    config = tmp_path / "exp.yaml"
    config.write_text("method: dits\nsearch:\n  expansion: 4\n")
    result = invoke("run", str(config))
    assert_one_line_error(result, str(config), "expansion")


def test_eval_with_the_fake_engine_prints_score_and_writes_records(tmp_path) -> None:
    out = tmp_path / "eval.json"
    result = invoke(
        "eval", "--model", "tiny-random", "--task", "synth-debate", "--limit", "3",
        "--set", "engine.kind=fake", "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "score" in result.output and "mean tokens" in result.output
    assert json.loads(out.read_text())["summary"]["n"] == 3


def test_tasks_list_and_show() -> None:
    listed = invoke("tasks", "list")
    assert listed.exit_code == 0
    for name in ("hotpotqa", "gsm8k", "synth-ie", "synth-debate"):
        assert name in listed.output
    shown = invoke("tasks", "show", "synth-ie", "--n", "1")
    assert shown.exit_code == 0
    assert "alice sees" in shown.output and "bob sees" in shown.output


def test_config_show_prints_a_commented_config_that_reads_back(tmp_path) -> None:
    shown = tmp_path / "shown.yaml"
    for args, expected in [
        ((REPO_CONFIG, "loop.iterations=3"), load_config(REPO_CONFIG, ["loop.iterations=3"])),
        (("selection.gamma=0",), load_config(None, ["selection.gamma=0"])),
        ((), load_config(None)),
    ]:
        result = invoke("config", "show", *args)
        assert result.exit_code == 0, result.output
        assert "# turn cap (Optima: 10)\n  max_turns: " in result.output
        shown.write_text(result.output)
        assert load_config(shown) == expected, args


@pytest.mark.parametrize("override", ["search.no_such_key=1", "loop.iterations=0", "loop.iterations"])
def test_config_show_fails_like_run_on_bad_keys(override) -> None:
    shown = invoke("config", "show", REPO_CONFIG, override)
    assert_one_line_error(shown, REPO_CONFIG if "=" in override else "key=value")
    assert shown.output == invoke("run", REPO_CONFIG, override).output
