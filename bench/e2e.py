"""End to end: wall time, CPU time and peak memory of `dits demo`, and per stage.

Runs ``dits demo [--quick]`` in a subprocess into a scratch runs directory (removed afterwards unless
``--keep``) and measures the subprocess: wall time (`time.perf_counter`), CPU time and peak resident
memory. The child's own high-water mark (`resource.getrusage(RUSAGE_CHILDREN)`) is reset whenever
`dits.memory` starts measuring a stage, so it only covers the last stage; the demo's peak is the larger
of it and the stages' peaks. Per-stage
wall times, peak resident memory (`dits.memory`), tokens and the final scores come from the two runs'
``manifest.json`` files (stages the DITS run takes over from the Optima run are marked shared and
counted once).

``--runs-dir DIR`` reads an already finished demo instead (``DIR/demo-quick`` or ``DIR/demo``, e.g.
``--runs-dir runs`` after ``make demo``); the whole process's peak memory and CPU time are then
unknown, the per-stage peaks are in the manifests.
"""

from __future__ import annotations

import argparse
import json
import operator
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import DEFAULT_MODEL, TINY_OVERRIDES, finish, make_parser, new_report, ratio, summary_row

NAME = "e2e"
LOG_TAIL = 40


def demo_command(args: argparse.Namespace, runs_dir: Path) -> list[str]:
    """``python -m dits.cli demo [--quick] --runs-dir DIR [overrides]`` for the chosen model."""
    overrides = [] if args.model == DEFAULT_MODEL else [f"model={args.model}"]
    if args.model == "tiny-random":
        overrides += TINY_OVERRIDES
    quick = ["--quick"] if args.quick else []
    return [
        sys.executable,
        "-m",
        "dits.cli",
        "demo",
        *quick,
        "--runs-dir",
        str(runs_dir),
        *overrides,
        *args.overrides,
    ]


def run_demo(command: list[str], log: Path) -> dict[str, Any]:
    """Run the demo, logging its output; wall time, CPU time and peak RSS of the child."""
    print(f"running: {' '.join(command)}  (log: {log})", flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log, "w") as handle:
        returncode = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=False).returncode
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (usage.ru_utime - before.ru_utime) + (usage.ru_stime - before.ru_stime)
    return {
        "returncode": returncode,
        "wall_s": wall,
        "cpu_s": cpu,
        "cpu_utilisation": ratio(cpu, wall),
        "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux reports KiB
        "log_tail": log.read_text(errors="replace").splitlines()[-LOG_TAIL:],
    }


def read_runs(root: Path) -> dict[str, Any]:
    """Per-run stage table (wall time, tokens, shared or not) and final scores from the manifests."""
    runs: dict[str, Any] = {}
    for manifest_path in sorted(root.glob("*/manifest.json")):
        manifest = json.loads(manifest_path.read_text())
        stages = {}
        for key, entry in manifest["stages"].items():
            summary = entry.get("summary", {})
            stages[key] = {
                "status": entry.get("status"),
                "wall_s": summary.get("wall_time"),
                "peak_rss_mb": summary.get("peak_rss_mb"),
                "tokens": summary.get("tokens_generated"),
                "shared_from": summary.get("shared_from"),
                "score": summary.get("score"),
            }
        own = [s["wall_s"] or 0.0 for s in stages.values() if not s["shared_from"]]
        finished = [e["finished"] for e in manifest["stages"].values() if "finished" in e]
        runs[manifest_path.parent.name] = {
            "stages": stages,
            "own_stage_wall_s": sum(own),
            "created": manifest["created"],
            "last_finished": max(finished, default=None),
            "final": manifest.get("final"),
            "stages_done": sum(s["status"] == "done" for s in stages.values()),
        }
    return runs


def manifest_span(runs: dict[str, Any]) -> float | None:
    """Seconds from the first run's creation to the last finished stage of any run."""
    ends = [r["last_finished"] for r in runs.values() if r["last_finished"] is not None]
    return max(ends) - min(r["created"] for r in runs.values()) if ends else None


def stage_kinds(
    runs: dict[str, Any], field: str = "wall_s", combine: Callable[[float, float], float] = operator.add
) -> dict[str, float]:
    """``field`` of the stages by kind of stage over all runs (shared stages once), combined with
    ``combine`` (wall time: summed; peak memory: ``max``), largest first."""
    kinds: dict[str, float] = {}
    for run in runs.values():
        for key, stage in run["stages"].items():
            if stage["shared_from"] or stage[field] is None:
                continue
            kind = key.split("/")[-1] if not key.startswith("eval/") else "eval"
            kind = "influence" if "influence" in key else kind
            kinds[kind] = combine(kinds[kind], stage[field]) if kind in kinds else stage[field]
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1]))


def main() -> None:
    parser = make_parser(NAME, __doc__.split("\n\n")[0])
    parser.add_argument(
        "--runs-dir", type=Path, default=None, help="read this finished demo instead of running one"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch runs directory")
    args = parser.parse_args()
    report = new_report(NAME, args)
    folder = "demo-quick" if args.quick else "demo"
    process: dict[str, Any] = {}
    scratch: Path | None = None
    if args.runs_dir is None:
        args.scratch_dir.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="e2e-", dir=args.scratch_dir))
        command = demo_command(args, scratch)
        report["config"]["demo_command"] = " ".join(command)
        process = run_demo(command, scratch / "demo.log")
        root = scratch / folder
    else:
        root = args.runs_dir / folder
        report["config"]["read_from"] = str(root)
    runs = read_runs(root)
    if not runs:
        raise SystemExit(f"no run manifests under {root}")
    report["results"] = {
        "process": process,
        "runs": runs,
        "manifest_span_s": manifest_span(runs),
        "wall_by_kind_s": stage_kinds(runs),
        "peak_rss_by_kind_mb": stage_kinds(runs, "peak_rss_mb", max),
    }
    report["summary"] = summary_rows(report["results"])
    finish(NAME, args, report)
    if scratch is not None and not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    if process.get("returncode"):
        print(f"FAILED: the demo exited with status {process['returncode']}", file=sys.stderr)
        sys.exit(1)


def demo_peak(r: dict[str, Any]) -> float:
    """The demo's peak resident memory: the child's high-water mark or a stage's peak, whichever is
    larger (the stage measurements reset the kernel's high-water mark, see the module docstring)."""
    return max([r["process"]["peak_rss_mb"], *r["peak_rss_by_kind_mb"].values()])


def summary_rows(r: dict[str, Any]) -> list[dict[str, str]]:
    p, runs = r["process"], r["runs"]
    rows = []
    if p:
        rows += [
            summary_row("demo wall time (s)", p["wall_s"]),
            summary_row("CPU time (s) / utilisation", f"{p['cpu_s']:.0f} / {p['cpu_utilisation']:.2f}"),
            summary_row("peak RSS (MiB, largest of the process and its stages)", demo_peak(r)),
            summary_row("exit status", p["returncode"]),
        ]
    rows.append(summary_row("first run created -> last stage finished (s)", r["manifest_span_s"]))
    for name, run in runs.items():
        final = run["final"] or {}
        scores = ", ".join(f"{k} {v:.3f}" for k, v in final.items())
        rows.append(summary_row(f"{name}: stages done", f"{run['stages_done']}/{len(run['stages'])}"))
        rows.append(summary_row(f"{name}: stage wall time (s, own stages)", run["own_stage_wall_s"]))
        rows.append(summary_row(f"{name}: test scores", scores or "(unfinished)"))
    top = list(r["wall_by_kind_s"].items())[:6]
    rows.append(summary_row("largest stage kinds (s)", ", ".join(f"{k} {v:.0f}" for k, v in top)))
    peaks = list(r["peak_rss_by_kind_mb"].items())
    rows.append(
        summary_row(
            "peak RSS by stage kind (MiB)",
            ", ".join(f"{k} {v:,.0f}" for k, v in peaks) or "(not recorded by this demo)",
        )
    )
    return rows


if __name__ == "__main__":
    main()
