"""`dits` against a real `transformers serve` on 127.0.0.1 with the tiny model: greedy dialogues as the
in-process engine gives them, many requests at once, `dits eval`, and a `dits run` whose server is killed
mid-run and which the same command then resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from dits.cli import app
from dits.config import load_config
from dits.engines.base import GenerationRequest, SamplingParams
from dits.engines.hf import HFEngine
from dits.engines.launch import ServerProcess, free_port, transformers_serve
from dits.engines.openai_server import OpenAIServerEngine
from dits.evaluate import evaluate
from dits.models import pull_builtin
from dits.runtime import build_system, take
from test_demo import TOY
from test_engine_conformance import PROMPTS, chat
from test_loop import SMALL

REPO = Path(__file__).resolve().parents[1]


def server_overrides(url: str) -> list[str]:
    return ["engine.kind=openai", "engine.server=transformers", f"engine.base_urls={url}"]


def assert_same_greedy_dialogues(url: str, server: str, model: str) -> None:
    """Greedy two-agent dialogues on three synth-ie tasks are the same through the server as in process."""
    cfg = load_config(
        None, ["task.name=synth-ie", "dialogue.max_turns=2", "dialogue.max_utterance_tokens=24"]
    )
    system = build_system(cfg)
    instances = take(system.task, "test", 3)
    served = OpenAIServerEngine(model, base_urls=[url], server=server)
    records = [
        evaluate(system, instances, engine, model_label="m", split="test", seed=0)[0]
        for engine in (served, HFEngine(model))
    ]
    assert [(r["dialogues"], r["tokens"]) for r in records[0]] == [
        (r["dialogues"], r["tokens"]) for r in records[1]
    ]


def test_greedy_dialogues_equal_the_in_process_engine(
    transformers_server: ServerProcess, tiny_model: str
) -> None:
    assert_same_greedy_dialogues(transformers_server.url, "transformers", tiny_model)


@pytest.mark.slow
def test_smollm2_greedy_dialogues_equal_the_in_process_engine(tmp_path: Path) -> None:
    server = transformers_serve(str(pull_builtin("smollm2-135m")), tmp_path / "server.log").start()
    try:
        assert_same_greedy_dialogues(server.url, "transformers", "smollm2-135m")
    finally:
        server.kill()


def test_many_requests_at_once_give_what_one_at_a_time_gives(
    transformers_server: ServerProcess, tiny_model: str
) -> None:
    engine = OpenAIServerEngine(
        tiny_model, base_urls=[transformers_server.url], server="transformers", max_concurrency=16
    )
    params = SamplingParams(temperature=1.0, max_new_tokens=6)
    batch = [GenerationRequest(chat(PROMPTS[i % 4]), seed=i) for i in range(32)]
    together = engine.generate(batch, params)
    alone = [engine.generate([r], params)[0] for r in batch[:4]]
    assert len(together) == 32 and [c[0].text for c in together[:4]] == [c[0].text for c in alone]


def test_dits_eval_runs_against_the_server(
    transformers_server: ServerProcess, tiny_model: str, tmp_path: Path
) -> None:
    out = tmp_path / "eval.json"
    sets = [item for o in server_overrides(transformers_server.url) for item in ("--set", o)]
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "--model",
            tiny_model,
            "--task",
            "synth-ie",
            "--limit",
            "2",
            "--out",
            str(out),
            *sets,
            "--set",
            "dialogue.max_turns=2",
            "--set",
            "dialogue.max_utterance_tokens=8",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "score" in result.output and json.loads(out.read_text())["summary"]["n"] == 2


def dits_run(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """`dits run CONFIG` in a subprocess with this checkout's sources."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    command = [sys.executable, "-c", "from dits.cli import app; app()", "run", str(config)]
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=config.parent)


def stages(run_dir: Path) -> dict[str, Any]:
    manifest = run_dir / "manifest.json"
    return json.loads(manifest.read_text())["stages"] if manifest.exists() else {}


def unpinned_server(log: Path) -> ServerProcess:
    """`transformers serve` without a model: it loads whichever folder a request names (each trained model,
    as transformers serve has no LoRA endpoints and the runs here fine-tune fully)."""
    server = transformers_serve("", log, port=free_port())
    server.argv.remove("")
    return server.start()


@pytest.mark.slow
def test_a_killed_server_stops_the_run_in_one_line_and_the_same_command_resumes(
    tiny_model: str, tmp_path: Path
) -> None:
    server = unpinned_server(tmp_path / "server.log")
    config = tmp_path / "run.yaml"
    overrides = [
        *SMALL,
        *server_overrides(server.url),
        f"model={tiny_model}",
        "name=served",
        "runs_dir=runs",
        "sft.lora=false",
        "dpo.lora=false",
        "dialogue.max_utterance_tokens=8",
        "dialogue.max_turns=2",
    ]
    config.write_text(yaml.safe_dump(load_config(None, overrides).model_dump(mode="json")))
    run_dir = tmp_path / "runs" / "served"
    try:
        first = dits_run(config, tmp_path / "first.log")
        deadline = time.monotonic() + 300
        while stages(run_dir).get("eval/base", {}).get("status") != "done" and first.poll() is None:
            assert time.monotonic() < deadline, "the base evaluation did not finish in 5 minutes"
            time.sleep(0.2)
        server.kill()
        assert first.wait(timeout=300) == 2
        lines = (tmp_path / "first.log").read_text().strip().splitlines()
        assert f"no server answers at {server.url}" in lines[-1] and "run the same command again" in lines[-1]
        assert "Traceback" not in "\n".join(lines)
        done_before = {k for k, v in stages(run_dir).items() if v.get("status") == "done"}
        base_eval = (run_dir / "eval" / "base.json").read_bytes()
        server.start()
        second = dits_run(config, tmp_path / "second.log")
        assert second.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()[-2000:]
    finally:
        server.kill()
    final = stages(run_dir)
    assert "eval/base" in done_before and all(v["status"] == "done" for v in final.values())
    assert {"iter_0/sft", "iter_0/dpo", "eval/iter_0"} <= set(final)
    assert (run_dir / "eval" / "base.json").read_bytes() == base_eval  # finished stages are kept as they were


@pytest.mark.slow
def test_demo_through_transformers_serve_refuses_dits_before_spending(
    tiny_model: str, tmp_path: Path
) -> None:
    """The demo pointed at transformers serve: one line, nothing computed."""
    server = unpinned_server(tmp_path / "server.log")
    overrides = [
        f"model={tiny_model}",
        *TOY,
        *server_overrides(server.url),
        "sft.lora=false",
        "dpo.lora=false",
    ]
    try:
        result = CliRunner().invoke(
            app, ["demo", "--quick", "--runs-dir", str(tmp_path / "runs"), *overrides]
        )
    finally:
        server.kill()
    # transformers serve hosts no adapters, and θ* and every influence probe are adapters: the demo refuses
    # its DITS run before either run spends anything, with one line that says what to use instead
    assert result.exit_code == 2, result.output
    assert "cannot host them: use engine.kind=hf" in result.output
    assert "Traceback" not in result.output
    assert not stages(tmp_path / "runs" / "demo-quick" / "optima")
