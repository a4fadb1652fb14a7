"""Ray workers on one machine: tree search and influence probes in one process, on 1 and on 2 workers.

Each mode runs the same stages in a fresh scratch run (the demo config, ``search.guidance=q``, a fixed
probe step ``influence.probe_lr`` so that every group is measured by the stage): token budget → trees →
pairs → the iteration's probe session on the driver (θ* warm-up, F(θ*): the stage's fixed cost, not
timed) → the influence stage (exact estimator, every group). Timed: the ``trees`` and ``influence``
stages (their wall time in the run's manifest). The ``token_budget`` stage, first to use the workers,
also carries their start and model load; it is reported, not counted.

A third workload measures what the distribution itself costs per record: iSFT sampling of many tasks
(after a first sampling stage that starts the workers) with the scripted engine (``engine.kind=fake``: no model, so the stage's time is the driver's and Ray's
own work — scheduling, pickling, the durable ``log.append`` of every record).

Reported per mode: seconds, trees/s, groups/s and records/s, and for Ray the overhead against one
process (1 worker) and the speed-up of 2 workers over 1. Every mode must write the same
``trees.jsonl``, ``influence.jsonl``, ``influence_units.jsonl`` and ``sft_samples.jsonl`` (compared by
digest).

On a 2-core machine two workers share the cores with the driver and with each other, so expect little:
the point is the per-worker rate and the fixed costs that `docs/distributed.md` scales from. The local
Ray started here listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from typing import Any

from common import finish, make_parser, new_report, ratio, scratch_config, scratch_run, sized, summary_row

NAME = "distributed"
IT = "iter_0"
SIZES = {  # (full, quick)
    "trees": (16, 4),
    "expansions": (4, 2),
    "validation": (8, 2),
    "records": (4096, 1024),
    "workers": (2, 2),
}
FILES = ("trees.jsonl", "influence.jsonl", "influence_units.jsonl")
FAKE = ("engine.kind=fake", "isft.samples_per_task=2", "dialogue.demonstration=false")


def parse_args() -> argparse.Namespace:
    parser = make_parser(NAME, __doc__.split("\n\n")[0])
    parser.add_argument("--trees", type=int, default=None, help="search trees (16; quick 4)")
    parser.add_argument("--expansions", type=int, default=None, help="expansions per tree (4; quick 2)")
    parser.add_argument("--validation", type=int, default=None, help="validation tasks V (8; quick 2)")
    parser.add_argument("--records", type=int, default=None, help="scripted iSFT tasks (4096; quick 1024)")
    parser.add_argument("--workers", type=int, default=None, help="the larger Ray pool (2)")
    args = parser.parse_args()
    sized(args, SIZES)
    return args


def settings(args: argparse.Namespace) -> list[str]:
    """The stages' sizes (every candidate pair is probed: θ* warms up on all of them)."""
    return [
        f"search.tasks_per_iteration={args.trees}",
        f"search.expansions={args.expansions}",
        f"search.token_budget_tasks={min(args.trees, 8)}",
        f"influence.validation_tasks={args.validation}",
        "influence.probe_lr=0.001",
        "influence.warmup_fraction=0",
    ]


def run_mode(args: argparse.Namespace, placement: list[str]) -> dict[str, Any]:
    """The stages in a fresh scratch run placed by ``placement``; their times and artefact digests."""
    from dits.influence.stages import influence_stage, probe_session
    from dits.search.stages import pairs_stage, search_stage

    ctx = scratch_run(scratch_config(NAME, args, [*settings(args), *placement]), fresh=True)
    try:
        trees = search_stage(ctx, IT, None)
        pairs = pairs_stage(ctx, IT, trees)
        probe_session(ctx, IT, None, pairs)
        influence_stage(ctx, f"{IT}/influence", IT, None, pairs)
    finally:
        ctx.close()
    stages = {key: entry["summary"] for key, entry in ctx.store.stages().items()}
    digest = hashlib.blake2b(digest_size=8)
    for name in FILES:
        digest.update(ctx.store.path(IT, name).read_bytes())
    search, probes = stages[f"{IT}/trees"], stages[f"{IT}/influence"]
    return {
        **sample_records(args, placement),
        "startup_and_budget_seconds": stages[f"{IT}/token_budget"]["wall_time"],
        "search_seconds": search["wall_time"],
        "trees": search["trees"],
        "nodes": search["nodes"],
        "search_tokens": search["tokens_generated"],
        "probe_seconds": probes["wall_time"],
        "groups": probes["groups"],
        "validation_dialogues": probes["validation_dialogues"],
        "trees_per_second": ratio(search["trees"], search["wall_time"]),
        "groups_per_second": ratio(probes["groups"], probes["wall_time"]),
        "digest": digest.hexdigest(),
    }


def sample_records(args: argparse.Namespace, placement: list[str]) -> dict[str, Any]:
    """iSFT sampling of ``args.records`` tasks with the scripted engine (the per-record overhead)."""
    from dits.isft import sample_stage

    extra = [*FAKE, f"isft.tasks_per_iteration={args.records}", *placement]
    ctx = scratch_run(scratch_config(f"{NAME}-records", args, extra), fresh=True)
    try:
        sample_stage(ctx, "warmup", None, first=True)  # starts the workers: not timed
        sample_stage(ctx, IT, None, first=True)
    finally:
        ctx.close()
    seconds = ctx.store.summary(f"{IT}/samples")["wall_time"]
    return {
        "records": args.records,
        "records_seconds": seconds,
        "records_per_second": ratio(args.records, seconds),
        "records_digest": hashlib.blake2b(ctx.store.path(IT, "sft_samples.jsonl").read_bytes()).hexdigest(),
    }


def start_ray(workers: int) -> Any:
    """A local Ray for every mode (on 127.0.0.1 only, no usage report)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # the node's address is the loopback one
    from dits.distributed import import_ray

    ray = import_ray()
    ray.init(
        address="local",
        num_cpus=max(workers, os.cpu_count() or 1),
        include_dashboard=False,
        log_to_driver=False,
    )
    return ray


def main() -> None:
    args = parse_args()
    report = new_report(NAME, args)
    report["config"] = {"settings": settings(args)}
    ray = start_ray(args.workers)
    modes = {"one process": []}
    for workers in sorted({1, args.workers}):
        modes[f"ray, {workers} worker{'s' if workers > 1 else ''}"] = [
            "distributed.backend=ray",
            f"distributed.workers={workers}",
        ]
    try:
        results = {label: run_mode(args, placement) for label, placement in modes.items()}
    finally:
        ray.shutdown()
    one, single, pool = (results[label] for label in modes)
    report["results"] = {
        "modes": results,
        "identical": len({(r["digest"], r["records_digest"]) for r in results.values()}) == 1,
        "search_overhead_1_worker": ratio(single["search_seconds"], one["search_seconds"]),
        "probe_overhead_1_worker": ratio(single["probe_seconds"], one["probe_seconds"]),
        "records_overhead_1_worker": ratio(single["records_seconds"], one["records_seconds"]),
        "search_speedup_workers": ratio(single["search_seconds"], pool["search_seconds"]),
        "probe_speedup_workers": ratio(single["probe_seconds"], pool["probe_seconds"]),
        "records_speedup_workers": ratio(single["records_seconds"], pool["records_seconds"]),
        "driver_ms_per_record": 1000 * ratio(pool["records_seconds"], pool["records"]),
    }
    report["meta"]["load_average_after"] = list(os.getloadavg())  # other users' work skews the ratios
    report["summary"] = summary_rows(report["results"], args.workers)
    finish(NAME, args, report)
    if not report["results"]["identical"]:
        print("FAILED: the modes wrote different trees or influence records", file=sys.stderr)
        sys.exit(1)


def summary_rows(r: dict[str, Any], workers: int) -> list[dict[str, str]]:
    modes = r["modes"]
    rows = [summary_row("same trees, influence and unit records in every mode", r["identical"])]
    for label, mode in modes.items():
        rows.append(
            summary_row(
                f"{label}: search s ({mode['trees']} trees) / probes s ({mode['groups']} groups)",
                f"{mode['search_seconds']:.1f} / {mode['probe_seconds']:.1f} "
                f"(+{mode['startup_and_budget_seconds']:.1f} s start-up and budget)",
            )
        )
        rows.append(
            summary_row(
                f"{label}: scripted iSFT records/s ({mode['records']} tasks)", mode["records_per_second"]
            )
        )
    rows += [
        summary_row("1 worker vs one process, search (time ratio)", r["search_overhead_1_worker"]),
        summary_row("1 worker vs one process, probes (time ratio)", r["probe_overhead_1_worker"]),
        summary_row(
            f"{workers} workers vs 1, search speed-up", r["search_speedup_workers"], f"ideal {workers}"
        ),
        summary_row(
            f"{workers} workers vs 1, probe speed-up", r["probe_speedup_workers"], f"ideal {workers}"
        ),
        summary_row("1 worker vs one process, scripted records (time ratio)", r["records_overhead_1_worker"]),
        summary_row(f"{workers} workers: driver time per scripted record (ms)", r["driver_ms_per_record"]),
    ]
    return rows


if __name__ == "__main__":
    main()
