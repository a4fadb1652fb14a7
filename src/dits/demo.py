"""`dits demo`: SmolLM2-135M on the built-in information-exchange task, on CPU.

Evaluates the base model, runs Optima iSFT-DPO and DITS iSFT-DPO with the same synthesis budget
(same tasks, same tree-search sizes), prints a table and writes a report with plots. The two runs are
identical up to the influence stage of iteration 0 (same seeds, same base model, Q-guided search), so
the DITS run takes those stages from the Optima run instead of recomputing them.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path
from typing import Any

from dits.config import RunConfig, load_config
from dits.engines.factory import make_engine
from dits.lock import RunLock
from dits.progress import console
from dits.recipes import run
from dits.report import build_report
from dits.store import RunStore

QUICK = [
    "loop.iterations=1",
    "eval.limit=24",
    "isft.tasks_per_iteration=16",
    "search.tasks_per_iteration=8",
    "search.expansions=4",
    "influence.validation_tasks=8",
    "influence.warmup_steps=4",
]
SHARED_STAGES = (
    "eval/base",
    "iter_0/samples",
    "iter_0/sft",
    "iter_0/token_budget",
    "iter_0/trees",
    "iter_0/pairs",
)
SHARED_FILES = (
    "iter_0/sft_samples.jsonl",
    "iter_0/sft",
    "iter_0/trees.jsonl",
    "iter_0/pairs.jsonl",
    "eval/base.json",
)


def demo_config_path() -> Path:
    return Path(str(resources.files("dits").joinpath("configs/demo.yaml")))


def demo_configs(quick: bool, runs_dir: str, overrides: list[str]) -> tuple[RunConfig, RunConfig]:
    """The Optima and DITS configs of the demo (identical but for the method)."""
    root = str(Path(runs_dir) / ("demo-quick" if quick else "demo"))
    common = [*(QUICK if quick else []), f"runs_dir={root}", *overrides]
    path = demo_config_path()
    return (
        load_config(path, ["name=optima", "method=isft-dpo", *common]),
        load_config(path, ["name=dits", "method=dits", *common]),
    )


def share_stages(source: RunConfig, target: RunConfig) -> None:
    """Copy the stages both runs compute identically from ``source`` into ``target`` (once), with their
    output records (paths are relative to the run directory, so the copies verify)."""
    with RunLock(target.run_dir):
        src, dst = RunStore(source.run_dir), RunStore(target.run_dir)
        for relative in SHARED_FILES:
            origin, copy = source.run_dir / relative, target.run_dir / relative
            if origin.exists() and not copy.exists():
                copy.parent.mkdir(parents=True, exist_ok=True)
                (shutil.copytree if origin.is_dir() else shutil.copy2)(origin, copy)
        for stage in SHARED_STAGES:
            if src.is_done(stage) and not dst.is_done(stage):
                entry = src.stages()[stage]
                dst.adopt(stage, {**entry, "summary": {**entry["summary"], "shared_from": source.name}})


def budget_row(cfg: RunConfig) -> dict[str, Any]:
    """Tokens generated per kind of work, probe steps and wall time of a finished run."""
    stages = RunStore(cfg.run_dir).stages()
    totals = {
        "synthesis_tokens": 0,
        "influence_tokens": 0,
        "eval_tokens": 0,
        "probe_steps": 0,
        "wall_time": 0.0,
    }
    for key, stage in stages.items():
        summary = stage.get("summary", {})
        tokens = summary.get("tokens_generated", 0) or 0
        kind = (
            "eval_tokens"
            if key.startswith("eval/")
            else "influence_tokens"
            if "influence" in key
            else "synthesis_tokens"
        )
        totals[kind] += tokens
        totals["probe_steps"] += summary.get("probe_steps", 0) or 0
        if "shared_from" not in summary:
            totals["wall_time"] += summary.get("wall_time", 0.0) or 0.0
    return totals


def run_demo(quick: bool = False, runs_dir: str = "runs", overrides: list[str] | None = None) -> Path:
    """Run the demo; returns the report path."""
    optima, dits = demo_configs(quick, runs_dir, overrides or [])
    engine = make_engine(optima.engine, optima.model)
    results = {"optima": run(optima, engine)}
    if dits.search.guidance == "q":
        share_stages(optima, dits)
    results["dits"] = run(dits, engine)
    root = optima.run_dir.parent
    print_table(results, {"optima": budget_row(optima), "dits": budget_row(dits)})
    print_stage_times({"Optima": optima, "DITS": dits})
    report = build_report(root)
    console.print(f"report: {report}")
    return report


def print_table(results: dict[str, dict[str, Any]], budgets: dict[str, dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(
        title="dits demo (iSFT-DPO): test score, mean tokens per dialogue, budget",
        caption="synth tok / infl tok: tokens generated for synthesis / influence validation dialogues; "
        "probes: probe steps; wall s: the run's own stages",
    )
    for column in ("method", "model", "score", "tokens", "synth tok", "infl tok", "probes", "wall s"):
        table.add_column(column)
    for method, evals in results.items():
        budget = budgets[method]
        for label, summary in evals.items():
            final = label == list(evals)[-1]
            table.add_row(
                "Optima" if method == "optima" else "DITS",
                label,
                f"{summary['score']:.3f}",
                f"{summary['mean_tokens']:.1f}",
                str(budget["synthesis_tokens"]) if final else "",
                str(budget["influence_tokens"]) if final else "",
                str(budget["probe_steps"]) if final else "",
                f"{budget['wall_time']:.0f}" if final else "",
            )
    console.print(table)


def print_stage_times(runs: dict[str, RunConfig]) -> None:
    """Wall time of every stage of each run; a stage the DITS run took from the Optima run says so."""
    from rich.table import Table

    stages = {label: RunStore(cfg.run_dir).stages() for label, cfg in runs.items()}
    keys = list(dict.fromkeys(key for run_stages in stages.values() for key in run_stages))
    table = Table(title="wall time per stage (s)")
    table.add_column("stage")
    for label in runs:
        table.add_column(label, justify="right")
    for key in keys:
        cells = []
        for label in runs:
            summary = stages[label].get(key, {}).get("summary")
            if summary is None:
                cells.append("")
            elif "shared_from" in summary:
                cells.append("(same)")
            else:
                cells.append(f"{summary.get('wall_time', 0.0):.0f}")
        table.add_row(key, *cells)
    console.print(table)
