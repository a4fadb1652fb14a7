"""`bench/engines.py` runs end to end at toy size against the session's `transformers serve`."""

from __future__ import annotations

from pathlib import Path

from dits.engines.launch import ServerProcess
from test_bench import run_benchmark


def test_engines_benchmark_compares_served_and_in_process_dialogues(
    transformers_server: ServerProcess, tmp_path: Path
) -> None:
    report = run_benchmark(
        "engines", tmp_path, "--dialogues", "2", "--adapters", "1", "--base-url", transformers_server.url
    )
    results = report["results"]
    assert (
        results["identical_dialogues"] and results["served_over_hf"] > 0 and results["hf_adapter_seconds"] > 0
    )
