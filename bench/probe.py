"""Influence probes: batched multi-adapter estimation against one adapter at a time, and racing.

Candidate pairs come from a real (small) tree search on ``synth-ie`` with the model, built by the
the run's own stages (`dits.search.stages`: search → pairs) in a scratch run directory (kept, so a re-run
reuses the search). The pair prefilters are opened up (every branch point of every tree is a pair):
this benchmark measures speed, and it needs K groups whatever the model's quality.

Then, from one θ* (the estimator's warm-up) and one probe step size (calibrated as the influence stage
does, or ``--probe-lr``), the same K groups × V validation tasks are estimated three times with the
estimator's own pieces (`Harness`, `run_groups`):

* naive — ``per_batch=1``: probe step for a group, then its V validation dialogues alone, then the next;
* batched — ``per_batch=K``: K probe steps, then all K × V dialogues in the same engine calls
  (mixed-adapter batches); its per-group results must be IDENTICAL to the naive ones (every field of
  every group: influence, score after, changed dialogues, tokens, loss);
* racing — successive halving (``influence.racing_*``) over the same groups, batched.

Reported: speed-up batched vs naive on the group phase (goal ≥ 4× on a 2-core CPU) and for the whole
stage (adding the fixed cost of warm-up, θ*'s own dialogues and calibration), cost per group (seconds,
validation tokens, probe-step seconds), racing's speed-up over exact and its Spearman/Pearson agreement
with the exact estimate (`dits.influence.report.agreement`). Also the probe step's scoring with each
pair's prompt run once (`pair_logps`, what probes use) against scoring both sides whole
(`sequence_logps`): forward + backward on every group's pairs, alternating, with the largest difference.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from common import (
    elapsed,
    finish,
    make_parser,
    new_report,
    ratio,
    scratch_config,
    scratch_run,
    sized,
    summary_row,
)
from dits.config import InfluenceConfig
from dits.context import StageContext
from dits.engines.base import require
from dits.influence import estimator
from dits.influence.estimator import Group, Harness, calibrate, make_groups, racing_schedule, run_groups
from dits.influence.probe import Prober, pair_logps, sequence_logps, shared_prompt_length
from dits.influence.report import GroupInfluence, agreement
from dits.influence.stages import pairs_per_batch
from dits.runtime import take
from dits.search.pairs import PreferencePair
from dits.search.stages import pairs_stage, search_stage

NAME = "probe"
SIZES = {  # (full, quick)
    "groups": (16, 8),
    "validation": (16, 8),
    "trees": (16, 12),
    "expansions": (4, 3),
    "calibration_groups": (4, 2),
    "racing_initial": (4, 2),
}


@dataclass
class Mode:
    """One estimation pass over the groups: results and what it cost."""

    name: str
    groups: list[GroupInfluence]
    seconds: float
    dialogues: int
    tokens: int
    probe_steps: int
    probe_seconds: float
    digests: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        k = max(len(self.groups), 1)
        return {
            "seconds": self.seconds,
            "dialogues": self.dialogues,
            "validation_tokens": self.tokens,
            "probe_steps": self.probe_steps,
            "probe_step_seconds": self.probe_seconds,
            "seconds_per_group": self.seconds / k,
            "tokens_per_group": self.tokens / k,
            "tokens_per_s": ratio(self.tokens, self.seconds),
            "groups": [g.to_dict() | {"dialogues_digest": self.digests.get(g.group)} for g in self.groups],
        }


def build_pairs(args: argparse.Namespace) -> tuple[StageContext, list[PreferencePair], bool]:
    """The scratch run, its candidate pairs (tree search with the model, then pair extraction), and
    whether the search was reused from an earlier invocation."""
    cfg = scratch_config(
        NAME,
        args,
        [
            f"search.tasks_per_iteration={args.trees}",
            f"search.expansions={args.expansions}",
            "pairs.min_chosen_value=-10",
            "pairs.min_gap=-10",
            "pairs.top_fraction_per_tree=1.0",
        ],
    )
    ctx = scratch_run(cfg, args.fresh)
    reused = ctx.store.is_done("iter_0/trees")
    pairs = pairs_stage(ctx, "iter_0", search_stage(ctx, "iter_0", None))
    return ctx, pairs, reused


def influence_config(ctx: StageContext, args: argparse.Namespace) -> InfluenceConfig:
    """The run's influence settings with this benchmark's sizes (kept out of the run's config, so that
    changing them reuses the scratch run's search)."""
    update: dict[str, Any] = {
        "validation_tasks": args.validation,
        "adapters_per_batch": args.groups,
        "racing_initial_tasks": args.racing_initial,
        "probe_lr": args.probe_lr if args.probe_lr == "auto" else float(args.probe_lr),
    }
    if args.group_size:
        update["group_size"] = args.group_size
    return InfluenceConfig.model_validate(ctx.cfg.influence.model_dump() | update)


def measure(
    name: str, harness: Harness, groups: list[Group], step: tuple[float, Any], schedule: list[int], **kw: Any
) -> Mode:
    """`run_groups` once (``step`` = (lr, optimizer)), with the work it did (dialogues, tokens, probe
    steps) as deltas of the harness's and prober's counters."""
    prober = harness.prober
    before = (harness.dialogues, harness.tokens, prober.stats.probe_steps, prober.stats.probe_seconds)
    with dialogue_digests() as digests, elapsed() as seconds:
        results = run_groups(harness, groups, *step, schedule, **kw)
    after = (harness.dialogues, harness.tokens, prober.stats.probe_steps, prober.stats.probe_seconds)
    d = [a - b for a, b in zip(after, before, strict=True)]
    print(f"  {name}: {seconds():.1f}s, {d[0]} dialogues, {d[1]} tokens, {d[2]} probe steps")
    return Mode(name, results, seconds(), d[0], d[1], d[2], d[3], digests)


@contextmanager
def dialogue_digests() -> Iterator[dict[str, str]]:
    """Group id → digest of the validation dialogues (every turn's text, the final answer) the estimator
    scored for that group, captured from its per-group tally; filled in when the block ends. Lets the
    identical-results check compare what was generated, not only the scores (which can all be 0)."""
    hashes: dict[str, Any] = {}
    original = estimator._Tally.add

    def add(tally: Any, harness: Harness, probed: Any, dialogues: list[Any], tasks: range) -> None:
        digest = hashes.setdefault(tally.group.id, hashlib.blake2b(digest_size=8))
        for dialogue in dialogues:
            digest.update(json.dumps([dialogue.final_answer, [t.text for t in dialogue.turns]]).encode())
        original(tally, harness, probed, dialogues, tasks)

    estimator._Tally.add = add  # type: ignore[method-assign]
    digests: dict[str, str] = {}
    try:
        yield digests
    finally:
        estimator._Tally.add = original  # type: ignore[method-assign]
        digests.update({group: h.hexdigest() for group, h in hashes.items()})


def compare(naive: Mode, batched: Mode) -> dict[str, Any]:
    """Field-by-field comparison of every group's result in two modes, plus the digest of its validation
    dialogues (the identical-results check). The ``distinct_*`` counts show whether the check had
    anything to tell apart (a model that writes the same thing for every probe makes it vacuous)."""
    mismatches = []
    for a, b in zip(naive.groups, batched.groups, strict=True):
        da = a.to_dict() | {"dialogues_digest": naive.digests.get(a.group)}
        db = b.to_dict() | {"dialogues_digest": batched.digests.get(b.group)}
        fields = sorted(k for k in da if da[k] != db[k])
        if fields:
            mismatches.append({"group": a.group, "fields": {k: [da[k], db[k]] for k in fields}})
    groups = naive.groups
    return {
        "groups_compared": len(groups),
        "fields_compared": [*sorted(groups[0].to_dict()), "dialogues_digest"] if groups else [],
        "distinct_dialogue_sets": len(set(naive.digests.values())),
        "distinct_scores_after": len({g.score_after for g in groups}),
        "groups_with_changed_dialogues": sum(g.changed > 0 for g in groups),
        "identical": not mismatches and len(groups) == len(batched.groups) > 0,
        "mismatches": mismatches,
    }


def parse_args() -> argparse.Namespace:
    parser = make_parser(NAME, __doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, help="K groups = adapters per batch; full 16, quick 8")
    parser.add_argument("--validation", type=int, help="V validation tasks; full 16, quick 8")
    parser.add_argument("--group-size", type=int, default=None, help="pairs per group (default: config, 2)")
    parser.add_argument("--trees", type=int, help="search trees that supply the pairs; full 16, quick 12")
    parser.add_argument("--expansions", type=int, help="expansions per tree; full 4, quick 3")
    parser.add_argument(
        "--probe-lr", default="auto", help="probe step size, or auto (calibrated as the stage does)"
    )
    parser.add_argument("--calibration-groups", type=int, help="groups tried per lr; full 4, quick 2")
    parser.add_argument(
        "--racing-initial", type=int, help="racing: tasks in the first round; full 4, quick 2"
    )
    parser.add_argument("--fresh", action="store_true", help="delete the scratch run (redo the search)")
    args = parser.parse_args()
    sized(args, SIZES)
    return args


@dataclass
class Setup:
    """What every mode shares: θ* (prober), F(θ*) (harness), the groups, the probe step, the fixed cost."""

    prober: Prober
    harness: Harness
    groups: list[Group]
    lr: float
    calibration: list[Any]
    note: str
    seconds: dict[str, float]


def prepare(ctx: StageContext, cfg: InfluenceConfig, pairs: list[PreferencePair], args: argparse.Namespace) -> Setup:
    """Reference log-probs, θ* warm-up, θ*'s validation dialogues, the groups and the probe step size,
    each timed (the fixed cost of an influence stage; the caller must `Prober.close`)."""
    engine = ctx.engine
    require(engine, "trainable_model", "the probe benchmark")
    seed = ctx.seed("bench", NAME)
    seconds: dict[str, float] = {}
    with elapsed() as t:
        prober = Prober(
            engine,
            pairs,
            ctx.cfg.dpo,
            policy=None,
            lora=ctx.cfg.dpo.lora_settings,
            seed=seed,
            pairs_per_batch=pairs_per_batch(ctx.cfg),
        )
    seconds["reference_logps_s"] = t()
    pool = [p.id for p in pairs if p.id in prober.pairs]
    with elapsed() as t:
        prober.warm_up(pool, cfg.warmup_steps, cfg.warmup_lr, cfg.warmup_batch_size)
    seconds["warmup_s"] = t()
    with elapsed() as t:
        validation = take(ctx.system.task, "validation", cfg.validation_tasks)
        harness = Harness(prober, ctx.system, validation, seed=seed, first_order=False, drafts=cfg.drafts)
    seconds["theta_star_dialogues_s"] = t()
    groups = make_groups(pool, cfg.group_size, seed)[: cfg.adapters_per_batch]
    if len(groups) < cfg.adapters_per_batch:
        print(f"warning: only {len(groups)} groups (search more trees: --trees)", file=sys.stderr)
    with elapsed() as t:
        if cfg.probe_lr == "auto":
            lr, table, note = calibrate(harness, groups, cfg, n_groups=args.calibration_groups)
        else:
            lr, table, note = float(cfg.probe_lr), [], "fixed by --probe-lr"
    seconds["calibration_s"] = t()
    print(f"probe lr {lr:g} ({note}); fixed cost {sum(seconds.values()):.1f}s")
    return Setup(prober, harness, groups, lr, table, note, seconds)


def prompt_sharing(setup: Setup) -> dict[str, Any]:
    """Forward + backward of each group's pairs (θ* in training mode), scored with every pair's prompt
    run once and with both sides whole, in alternating order; seconds, tokens run, largest difference."""
    prober = setup.prober
    pad = prober.engine.tokenizer.pad_token_id
    seconds, tokens, largest = {"shared": 0.0, "whole": 0.0}, {"shared": 0, "whole": 0}, 0.0
    with prober.training():
        for index, group in enumerate(setup.groups):
            pairs = [prober.pairs[i] for i in group.pair_ids]
            sides = [s for p in pairs for s in (p.chosen, p.rejected)]
            values = {}
            for name in ("shared", "whole") if index % 2 == 0 else ("whole", "shared"):
                start = time.perf_counter()
                logps, _ = (
                    pair_logps(prober.model, pairs, pad)
                    if name == "shared"
                    else sequence_logps(prober.model, sides, pad)
                )
                logps.sum().backward()
                seconds[name] += time.perf_counter() - start
                values[name] = logps.detach()
                for param in prober.params.values():
                    param.grad = None
            largest = max(largest, float((values["shared"] - values["whole"]).abs().max()))
            tokens["whole"] += sum(len(s.ids) for s in sides)
            tokens["shared"] += sum(len(s.ids) for s in sides) - sum(shared_prompt_length(p) for p in pairs)
    return {
        "seconds": seconds,
        "tokens": tokens,
        "speedup": ratio(seconds["whole"], seconds["shared"]),
        "token_fraction": ratio(tokens["shared"], tokens["whole"]),
        "max_abs_logp_difference": largest,
    }


def run_modes(setup: Setup, cfg: InfluenceConfig) -> tuple[Mode, Mode, Mode]:
    """Naive, batched and racing estimates of the same groups from the same θ* and step."""
    groups, harness = setup.groups, setup.harness
    k, v, step = len(groups), len(harness.tasks), (setup.lr, cfg.probe_optimizer)
    naive = measure("naive (1 adapter at a time)", harness, groups, step, [v], keep_fraction=1.0, per_batch=1)
    batched = measure(f"batched ({k} per batch)", harness, groups, step, [v], keep_fraction=1.0, per_batch=k)
    schedule = racing_schedule(cfg.racing_initial_tasks, v)
    keep = cfg.racing_keep_fraction
    racing = measure(
        f"racing {schedule}",
        harness,
        groups,
        step,
        schedule,
        keep_fraction=keep,
        per_batch=k,
        state_budget_bytes=cfg.racing_state_budget_bytes,
    )
    return naive, batched, racing


def results(setup: Setup, modes: tuple[Mode, Mode, Mode], cfg: InfluenceConfig) -> dict[str, Any]:
    """Speed-ups, costs per group, the identical-results check, racing's agreement with exact."""
    naive, batched, racing = modes
    exact = {g.group: g.influence for g in batched.groups}
    fixed = sum(setup.seconds.values())
    return {
        "pairs_probed": len(setup.prober.pairs),
        "unfit_pairs": len(setup.prober.unfit),
        "groups": len(setup.groups),
        "group_size": cfg.group_size,
        "validation_tasks": len(setup.harness.tasks),
        "probe_lr": setup.lr,
        "calibration": [row.to_dict() for row in setup.calibration],
        "calibration_note": setup.note,
        "base_score": setup.harness.base_score,
        "fixed_cost": setup.seconds,
        "naive": naive.to_dict(),
        "batched": batched.to_dict(),
        "racing": racing.to_dict()
        | {"schedule": racing_schedule(cfg.racing_initial_tasks, len(setup.harness.tasks))},
        "identical_check": compare(naive, batched),
        "speedup_group_phase": ratio(naive.seconds, batched.seconds),
        "speedup_whole_stage": ratio(fixed + naive.seconds, fixed + batched.seconds),
        "racing_speedup_vs_exact": ratio(batched.seconds, racing.seconds),
        "racing_dialogue_fraction": ratio(racing.dialogues, batched.dialogues),
        "racing_agreement": agreement(exact, {g.group: g.influence for g in racing.groups}).__dict__,
        "exact_distinct_values": len(set(exact.values())),
    }


def main() -> None:
    args = parse_args()
    report = new_report(NAME, args)
    ctx, pairs, reused = build_pairs(args)
    cfg = influence_config(ctx, args)
    report["config"] = {
        "influence": cfg.model_dump(),
        "dpo": ctx.cfg.dpo.model_dump(),
        "run_dir": str(ctx.store.root),
    }
    print(
        f"work: {len(pairs)} candidate pairs -> up to {args.groups} groups of {cfg.group_size}; "
        f"{args.validation} validation tasks; naive and batched each play K x V = "
        f"{args.groups * args.validation} dialogues, racing fewer; calibration <= "
        f"{len(cfg.probe_lr_grid)} lr x {args.calibration_groups} groups x V"
    )
    setup = prepare(ctx, cfg, pairs, args)
    try:
        sharing = prompt_sharing(setup)
        modes = run_modes(setup, cfg)
    finally:
        setup.prober.close()
    report["results"] = {
        "pairs": len(pairs),
        "search_reused": reused,
        **results(setup, modes, cfg),
        "prompt_sharing": sharing,
    }
    report["summary"] = summary_rows(report["results"])
    finish(NAME, args, report)
    check = report["results"]["identical_check"]
    if not check["identical"]:
        print(
            f"FAILED: batched and naive estimates differ in {len(check['mismatches'])} groups",
            file=sys.stderr,
        )
        sys.exit(1)


def summary_rows(r: dict[str, Any]) -> list[dict[str, str]]:
    check, agree, share = r["identical_check"], r["racing_agreement"], r["prompt_sharing"]
    return [
        summary_row(
            "groups K x validation tasks V (group size)",
            f"{r['groups']} x {r['validation_tasks']} ({r['group_size']})",
        ),
        summary_row(
            "batched = naive, every field + dialogues of every group",
            f"{check['identical']} ({check['groups_compared']} groups, "
            f"{check['distinct_dialogue_sets']} distinct dialogue sets)",
            "required",
        ),
        summary_row("speed-up batched vs naive (group phase)", r["speedup_group_phase"], "goal >= 4"),
        summary_row(
            "speed-up for the whole stage (with warm-up, F(θ*), calibration)", r["speedup_whole_stage"]
        ),
        summary_row("naive: s per group", r["naive"]["seconds_per_group"]),
        summary_row("batched: s per group", r["batched"]["seconds_per_group"]),
        summary_row("validation tokens per group", r["batched"]["tokens_per_group"]),
        summary_row("probe step s per group", ratio(r["batched"]["probe_step_seconds"], r["groups"])),
        summary_row(
            "probe scoring: prompt once ÷ both sides whole, speed-up (tokens run)",
            f"{share['speedup']:.2f}x ({share['token_fraction']:.0%} of the tokens, "
            f"max |Δ log p| {share['max_abs_logp_difference']:.1e})",
        ),
        summary_row("racing speed-up vs exact (batched)", r["racing_speedup_vs_exact"]),
        summary_row("racing dialogues / exact dialogues", r["racing_dialogue_fraction"]),
        summary_row(
            "racing vs exact: Spearman / Pearson", f"{agree['spearman']:.3f} / {agree['pearson']:.3f}"
        ),
        summary_row("distinct exact influence values", r["exact_distinct_values"]),
        summary_row("probe lr", r["probe_lr"]),
    ]


if __name__ == "__main__":
    main()
