"""Run every benchmark in sequence (one subprocess each) and rewrite the generated part of RESULTS.md.

    .venv/bin/python bench/run_all.py [--quick] [--model M] [--only throughput probe] [--render-only]

Each benchmark writes ``bench/results/<name>[-quick].json``; afterwards the part of ``bench/RESULTS.md``
between ``<!-- results:start -->`` and ``<!-- results:end -->`` is replaced by one table per results
file found (full-scale results first, then quick ones; a file ``<name>[-quick]-LABEL.json``, the same
benchmark run with other settings through ``--out``, gets its own table after the main one). Everything outside the markers — the
hand-written explanation above, the owner's commentary below — is left alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import BENCH_DIR, DEFAULT_MODEL, RESULTS_DIR, add_overrides_option, write_report

BENCHMARKS = ("throughput", "probe", "claims", "budget", "engines", "e2e")
START, END = "<!-- results:start -->", "<!-- results:end -->"
STATUS_FILE = "run_all-status.json"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run_all.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="quick sizes for every benchmark")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    parser.add_argument(
        "--render-only", action="store_true", help="only rewrite RESULTS.md from the JSON files"
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--markdown", type=Path, default=BENCH_DIR / "RESULTS.md")
    parser.add_argument("--e2e-runs-dir", type=Path, default=None, help="e2e: read this finished demo")
    add_overrides_option(parser, "config override passed to every benchmark (repeatable)")
    return parser.parse_args()


def result_path(results_dir: Path, name: str, quick: bool) -> Path:
    return results_dir / f"{name}{'-quick' if quick else ''}.json"


def command(name: str, args: argparse.Namespace) -> list[str]:
    """The subprocess command line of one benchmark."""
    cmd = [sys.executable, str(BENCH_DIR / f"{name}.py"), "--model", args.model]
    cmd += ["--quick"] if args.quick else []
    cmd += ["--out", str(result_path(args.results_dir, name, args.quick))]
    cmd += [f"--set={o}" for o in args.overrides]
    if name == "e2e" and args.e2e_runs_dir is not None:
        cmd += ["--runs-dir", str(args.e2e_runs_dir)]
    return cmd


def run_benchmarks(args: argparse.Namespace) -> dict[str, Any]:
    """Run the chosen benchmarks one after another; a failure does not stop the others."""
    status: dict[str, Any] = {}
    for name in args.only:
        cmd = command(name, args)
        print(f"\n### {name}: {' '.join(cmd)}", flush=True)
        start = time.perf_counter()
        returncode = subprocess.run(cmd, check=False).returncode
        status[name] = {"returncode": returncode, "wall_s": time.perf_counter() - start, "quick": args.quick}
        print(f"### {name}: exit {returncode} after {status[name]['wall_s']:.0f}s", flush=True)
    return status


# ------------------------------------------------------------------------------------------ markdown
def cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]


def load(values: list[float] | None) -> str:
    """The load average, which shows whether something else was competing for the cores."""
    return ", ".join(f"{v:.2f}" for v in values) if values else "unknown"


def variant_paths(results_dir: Path, name: str, quick: bool) -> list[Path]:
    """Results of the same benchmark run with other settings, ``NAME[-quick]-LABEL.json``, by label."""
    main = result_path(results_dir, name, quick)
    found = sorted(results_dir.glob(f"{main.stem}-*.json"))
    return [p for p in found if quick or not p.stem.startswith(f"{name}-quick")]


def section(report: dict[str, Any], status: dict[str, Any] | None, variant: str = "") -> list[str]:
    """One benchmark's results: where, when and how it ran, then its summary rows."""
    meta, machine = report["meta"], report["meta"]["machine"]
    scale = "quick" if meta["quick"] else "full"
    label = f", {variant}" if variant else ""
    lines = [f"### {report['benchmark']} ({scale}, {meta['model']}{label})", ""]
    if status and status.get("returncode"):
        lines += [f"**The last `run_all` of this benchmark exited with status {status['returncode']}.**", ""]
    cpu = f"{machine['cpu']}, {machine['cores']} cores ({machine.get('cores_usable')} usable)"
    rows = [
        ("date", meta["date"]),
        ("machine", f"{cpu}, torch {machine['torch']}, {machine['torch_threads']} threads"),
        ("load average at start (1, 5, 15 min)", load(machine.get("load_average"))),
        ("command", f"`{meta['command']}`"),
        ("code revision", meta.get("revision") or "not recorded"),
    ]
    lines += table(("run", ""), rows + ([("note", meta["summary_note"])] if meta.get("summary_note") else []))
    lines.append("")
    lines += table(
        ("metric", "value", "goal / paper"), [(r["metric"], r["value"], r["goal"]) for r in report["summary"]]
    )
    return lines + [""]


def render(results_dir: Path, status: dict[str, Any]) -> str:
    """The generated block: every results file found, full scale first."""
    lines = [START, ""]
    found = False
    for quick in (False, True):
        for name in BENCHMARKS:
            path = result_path(results_dir, name, quick)
            if path.exists():
                found = True
                known = status.get(name) if status.get(name, {}).get("quick") == quick else None
                lines += section(json.loads(path.read_text()), known)
            for variant in variant_paths(results_dir, name, quick):
                label = variant.stem.removeprefix(path.stem + "-")
                lines += section(json.loads(variant.read_text()), None, label)
    if not found:
        lines += ["_No results yet: run `make bench` (quick) or `.venv/bin/python bench/run_all.py`._", ""]
    return "\n".join([*lines, END])


def rewrite(markdown: Path, block: str) -> None:
    """Replace the text between the markers (appending the markers if the file has none)."""
    text = markdown.read_text() if markdown.exists() else ""
    if START in text and END in text:
        head, rest = text.split(START, 1)
        tail = rest.split(END, 1)[1]
    else:
        head, tail = text + ("\n" if text and not text.endswith("\n") else ""), "\n"
    markdown.write_text(head + block + tail)


def main() -> None:
    args = parse_args()
    status_path = args.results_dir / STATUS_FILE
    status = json.loads(status_path.read_text()) if status_path.exists() else {}
    if not args.render_only:
        status.update(run_benchmarks(args))
        write_report(status_path, status)
    rewrite(args.markdown, render(args.results_dir, status))
    print(f"\nrewrote the results in {args.markdown}")
    failed = [name for name in args.only if status.get(name, {}).get("returncode")]
    if failed and not args.render_only:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
