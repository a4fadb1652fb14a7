"""`dits demo`: SmolLM2-135M on the built-in information-exchange task, on CPU.

Evaluates the base model, runs Optima iSFT-DPO and DITS iSFT-DPO with the same synthesis budget
(same tasks, same tree-search sizes), prints a table and writes a report with plots. The two runs are
identical up to the tree search of iteration 0 (same seeds, same base model; the whole search too when
the DITS run's search is Q-guided), so the DITS run takes those stages from the Optima run instead of
recomputing them.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
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
    "search.tasks_per_iteration=16",
    "search.expansions=4",
    "pairs.top_fraction_per_tree=1.0",
    "influence.validation_tasks=8",
    "influence.group_size=1",
    "influence.warmup_steps=4",
]
"""One iteration at sizes a 2-core CPU runs in a coffee break: 16 search trees (32 rollouts decode
together, filling the engine's slots) and every pair that passes Optima's prefilters, probed one by one,
so that the DITS run has enough groups to rank."""
SHARED_STAGES = ("eval/base", "iter_0/samples", "iter_0/sft", "iter_0/token_budget")
SHARED_FILES = ("iter_0/sft_samples.jsonl", "iter_0/sft", "eval/base.json")
SHARED_SEARCH_STAGES = ("iter_0/trees", "iter_0/pairs")
SHARED_SEARCH_FILES = ("iter_0/trees.jsonl", "iter_0/pairs.jsonl")
"""Also shared when the DITS run's search is Q-guided like Optima's (``search.guidance=q``)."""


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


def share_stages(source: RunConfig, target: RunConfig, stages: Sequence[str], files: Sequence[str]) -> None:
    """Copy ``stages`` (their manifest entries, with their output records, and ``files``) that ``target``
    would compute exactly as ``source`` did from ``source``'s run directory into ``target``'s (once;
    output paths are relative to the run directory, so the copies verify)."""
    with RunLock(target.run_dir):
        src, dst = RunStore(source.run_dir), RunStore(target.run_dir)
        for relative in files:
            origin, copy = source.run_dir / relative, target.run_dir / relative
            if origin.exists() and not copy.exists():
                copy.parent.mkdir(parents=True, exist_ok=True)
                (shutil.copytree if origin.is_dir() else shutil.copy2)(origin, copy)
        for stage in stages:
            if src.is_done(stage) and not dst.is_done(stage):
                entry = src.stages()[stage]
                dst.adopt(stage, {**entry, "summary": {**entry["summary"], "shared_from": source.name}})


def share_demo_stages(optima: RunConfig, dits: RunConfig) -> None:
    """What the DITS run of the demo computes exactly as the Optima run: everything up to the search,
    and the search too when the DITS run's search is not influence-guided."""
    guided = dits.guided_search
    share_stages(
        optima,
        dits,
        [*SHARED_STAGES, *(() if guided else SHARED_SEARCH_STAGES)],
        [*SHARED_FILES, *(() if guided else SHARED_SEARCH_FILES)],
    )


def budget_row(cfg: RunConfig) -> dict[str, Any]:
    """Tokens generated per kind of work, probed groups (distinct values, ties) and wall time of a run."""
    stages = RunStore(cfg.run_dir).stages()
    totals = {
        "synthesis_tokens": 0,
        "influence_tokens": 0,
        "eval_tokens": 0,
        "groups": 0,
        "distinct": None,
        "ties": None,
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
        if "/influence" in key:
            totals["groups"] += summary.get("groups", 0) or 0
        if key.endswith("/selected"):
            totals["distinct"], totals["ties"] = summary.get("distinct_values"), summary.get("tie_fraction")
        if "shared_from" not in summary:
            totals["wall_time"] += summary.get("wall_time", 0.0) or 0.0
    return totals


def run_demo(quick: bool = False, runs_dir: str = "runs", overrides: list[str] | None = None) -> Path:
    """Run the demo; returns the report path."""
    optima, dits = demo_configs(quick, runs_dir, overrides or [])
    engine = make_engine(optima.engine, optima.model)
    results = {"optima": run(optima, engine)}
    share_demo_stages(optima, dits)
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
        "wall s: the run's own stages",
    )
    for column in ("method", "model", "score", "tokens", "synth tok", "infl tok", "wall s"):
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
                f"{budget['synthesis_tokens']:,}" if final else "",
                f"{budget['influence_tokens']:,}" if final else "",
                f"{budget['wall_time']:.0f}" if final else "",
            )
    console.print(table)
    dits = budgets.get("dits", {})
    if dits.get("groups"):
        ties = f"{dits['ties']:.0%}" if dits.get("ties") is not None else "?"
        console.print(
            f"DITS influence: {dits['groups']} groups probed, {dits['distinct']} distinct values, {ties} tied"
        )


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
