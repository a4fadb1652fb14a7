"""Helpers every benchmark shares: the command line, the run config, machine facts, timers, JSON output.

Every benchmark script takes ``--model``, ``--quick``, ``--out`` and ``--set KEY=VALUE`` (any dotted
config override, applied on top of the demo config `dits/configs/demo.yaml`), writes one JSON file with
``meta`` (date, machine, exact command line), ``config``, ``results`` and ``summary`` (the rows
`bench/run_all.py` renders into ``bench/RESULTS.md``), and prints a short summary.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dits.utils import write_atomic

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
TMP_DIR = RESULTS_DIR / "tmp"
DEFAULT_MODEL = "smollm2-135m"

TINY_OVERRIDES = (
    "isft.min_reward=-10",
    "pairs.min_chosen_value=-10",
    "pairs.min_gap=-10",
)
"""With ``tiny-random`` (random weights, every score 0) nothing would pass the iSFT floor ε or the pair
prefilters; these let the code paths run. They are applied only for that model."""


# ------------------------------------------------------------------------------------------ CLI
def make_parser(name: str, description: str) -> argparse.ArgumentParser:
    """The arguments every benchmark shares; ``name`` sets the default output file."""
    parser = argparse.ArgumentParser(prog=f"bench/{name}.py", description=description)
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help="built-in name, model/adapter folder or hub id"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke-scale run; see --help)")
    parser.add_argument(
        "--out", type=Path, default=None, help=f"JSON results (default bench/results/{name}[-quick].json)"
    )
    parser.add_argument(
        "--scratch-dir",
        type=Path,
        default=TMP_DIR,
        help="where scratch runs live (default bench/results/tmp; finished stages there are reused)",
    )
    add_overrides_option(
        parser, "config override on top of the demo config (repeatable), e.g. engine.batch_size=16"
    )
    return parser


def add_overrides_option(parser: argparse.ArgumentParser, help: str) -> None:
    """``--set KEY=VALUE`` (repeatable) into ``args.overrides``."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help
    )


def sized(args: argparse.Namespace, defaults: dict[str, tuple[Any, Any]]) -> None:
    """Fill every ``args.<key>`` left at None with ``defaults[key] = (full, quick)``."""
    for key, (full, quick) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)


def out_path(name: str, args: argparse.Namespace) -> Path:
    return args.out or RESULTS_DIR / f"{name}{'-quick' if args.quick else ''}.json"


POOL_OVERRIDES = ("pairs.min_chosen_value=-10", "pairs.min_gap=0.1")
"""The candidate pools of the probe and claims benchmarks: at these sizes Optima's prefilters (chosen
Q ≥ 0.3, gap ≥ 0.2 in the demo config) keep about one pair per four SmolLM2-135M trees, too few to rank.
The pools keep every best-vs-worst pair with a gap ≥ 0.1 instead (still the top half per tree);
``--set pairs.min_chosen_value=0.3 --set pairs.min_gap=0.2`` restores the demo's filter."""


def scratch_config(name: str, args: argparse.Namespace, extra: Sequence[str] = ()) -> Any:
    """The config of a scratch run under ``args.scratch_dir``, named after the benchmark, the model,
    the scale and a digest of the settings that differ from the defaults: the same invocation resumes
    its finished stages, any other setting gets its own directory, and a config key added later with
    its default does not move the run (the run's executor still refuses a directory whose config
    differs)."""
    cfg = bench_config(
        args.model, args.overrides, ["method=dits-dpo", "search.guidance=q", *POOL_OVERRIDES, *extra]
    )
    settings = json.dumps(cfg.model_dump(mode="json", exclude_defaults=True), sort_keys=True)
    digest = hashlib.blake2b(settings.encode(), digest_size=4).hexdigest()
    model = Path(args.model).name if os.sep in args.model else args.model
    folder = Path(args.scratch_dir) / f"{name}-{model}{'-quick' if args.quick else ''}-{digest}"
    cfg.name, cfg.runs_dir = folder.name, str(folder.parent)
    return cfg


def scratch_run(cfg: Any, fresh: bool = False) -> Any:
    """The `dits.context.StageContext` of a `scratch_config` (its directory deleted first when ``fresh``)."""
    from dits.context import StageContext

    if fresh:
        shutil.rmtree(cfg.run_dir, ignore_errors=True)
    return StageContext(cfg)


def bench_config(model: str, overrides: Sequence[str], extra: Sequence[str] = ()) -> Any:
    """The demo config with ``model``, the benchmark's own settings ``extra``, then (tiny-random only)
    `TINY_OVERRIDES`, then the user's overrides."""
    from dits.config import load_config
    from dits.demo import demo_config_path

    tiny = list(TINY_OVERRIDES) if model == "tiny-random" else []
    return load_config(demo_config_path(), [f"model={model}", *extra, *tiny, *overrides])


# ------------------------------------------------------------------------------------------ machine
def cpu_model() -> str:
    """The CPU model name (from /proc/cpuinfo on Linux, else `platform.processor`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """Where and with what a benchmark ran."""
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    for package in ("transformers", "peft", "trl", "dits"):
        try:
            info[package] = __import__(package).__version__
        except Exception:  # noqa: BLE001 - a missing package is just not reported
            info[package] = None
    return info


def repo_relative(text: str) -> str:
    """``text`` with this checkout's location removed (results files are committed; no machine paths)."""
    return text.replace(f"{BENCH_DIR.parent}{os.sep}", "")


def code_revision() -> str | None:
    """The checkout's commit (``+changes`` when the package or benchmarks differ from it), None outside git."""
    root = BENCH_DIR.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout

    try:
        commit = git("rev-parse", "--short=12", "HEAD").strip()
        changed = git("status", "--porcelain", "--", "src", "bench/*.py").strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+changes" if changed else "")


def command_line() -> str:
    """The exact command that ran this benchmark (paths are made relative when the report is written)."""
    return shlex.join([sys.executable, *sys.argv])


def new_report(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The skeleton of a results file: benchmark name, date, machine, command line, arguments."""
    return {
        "benchmark": name,
        "meta": {
            "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": command_line(),
            "revision": code_revision(),
            "quick": bool(args.quick),
            "model": args.model,
            "machine": machine_info(),
        },
        "args": dict(vars(args)),
        "config": {},
        "results": {},
        "summary": [],
    }


# ------------------------------------------------------------------------------------------ output
def summary_row(metric: str, value: Any, goal: str = "") -> dict[str, str]:
    """One line of a benchmark's summary table (metric, formatted value, goal or paper value)."""
    return {"metric": metric, "value": fmt(value), "goal": goal}


def fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Write ``report`` as JSON (atomically; NaN becomes null)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(_clean(report), indent=1, ensure_ascii=False) + "\n")


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf → None, tuples → lists, paths → strings relative to the repository."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        return repo_relative(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return repo_relative(str(value))
    return value


def print_summary(report: dict[str, Any], path: Path) -> None:
    """The human-readable summary: one line per summary row, then where the JSON went."""
    meta = report["meta"]
    machine = meta["machine"]
    print(f"\n== {report['benchmark']} ({'quick' if meta['quick'] else 'full'}, {meta['model']}) ==")
    print(
        f"{machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} ({machine['torch_threads']} threads)"
    )
    width = max((len(r["metric"]) for r in report["summary"]), default=0)
    for row in report["summary"]:
        goal = f"   [{row['goal']}]" if row["goal"] else ""
        print(f"  {row['metric']:<{width}}  {row['value']}{goal}")
    print(f"results: {path}")


def finish(name: str, args: argparse.Namespace, report: dict[str, Any]) -> Path:
    """Write the results file and print the summary; returns the path."""
    path = out_path(name, args)
    write_report(path, report)
    print_summary(report, path)
    return path


# ------------------------------------------------------------------------------------------ timing
@dataclass
class Stopwatch:
    """Accumulated wall time and call count of one kind of work."""

    seconds: float = 0.0
    calls: int = 0

    def to_dict(self) -> dict[str, float]:
        return {"seconds": self.seconds, "calls": self.calls}


@dataclass
class Stopwatches:
    """Named stopwatches."""

    watches: dict[str, Stopwatch] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Stopwatch:
        return self.watches.setdefault(name, Stopwatch())

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {k: v.to_dict() for k, v in self.watches.items()}


def timed_method(owner: Any, name: str, watch: Stopwatch, after: Callable[..., None] | None = None) -> None:
    """Replace ``owner.name`` (an instance or a class attribute) by a wrapper that times every call and,
    with ``after``, calls ``after(result, seconds, *args, **kwargs)`` outside the timed span."""
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        result = original(*args, **kwargs)
        seconds = time.perf_counter() - start
        watch.seconds += seconds
        watch.calls += 1
        if after is not None:
            after(result, seconds, *args, **kwargs)
        return result

    wrapper.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(owner, name, wrapper)


def restore_method(owner: Any, name: str) -> None:
    """Undo `timed_method`."""
    setattr(owner, name, getattr(owner, name).__wrapped__)


@contextmanager
def elapsed() -> Iterator[Callable[[], float]]:
    """``with elapsed() as seconds: ...; seconds()`` — wall time of the block (frozen at its end)."""
    start = time.perf_counter()
    end: list[float] = []
    yield lambda: (end[0] if end else time.perf_counter()) - start
    end.append(time.perf_counter())


# ------------------------------------------------------------------------------------------ stats
def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (sd 0 for one value, NaN for none)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def pm(values: Sequence[float], digits: int = 3) -> str:
    """``"mean ± sd (n=k)"``."""
    mean, sd = mean_sd(values)
    return f"{mean:.{digits}f} ± {sd:.{digits}f} (n={len(values)})"
