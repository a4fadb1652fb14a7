"""Influence probes: how fast the estimator measures the same groups, and that every way gives the
same values.

Candidate pairs come from a real (small) tree search on ``synth-ie`` with the model, built by the run's
own stages (`dits.search.stages`: search → pairs) in a scratch run directory (kept, so a re-run reuses
the search). The pair prefilters are opened up (every branch point of every tree is a pair): this
benchmark measures speed, and it needs K groups whatever the model's quality.

Then one iteration session (`dits.influence.session.open_session`: θ* warm-up, F(SFT), F(θ*), the
calibrated step) is opened — its time is the stage's fixed cost — and the same K groups × V validation
tasks are estimated with the session's own `measure`, in these modes:

* ``decoded`` — the way before drafts and prefix reuse: K adapters per batch, every validation token
  decoded, no cached prefixes (the engine's prefix tree switched off);
* ``naive`` — one adapter at a time (probe step, then its V dialogues), drafts and prefix reuse on;
* ``no drafts`` — K adapters per batch, prefix reuse on, every token decoded;
* ``batched`` — K adapters per batch, drafts and prefix reuse on (what the influence stage does);
* ``racing`` — successive halving over the same groups, batched.

Every exact mode must give IDENTICAL results (every field of every group and a digest of every
validation dialogue). Reported: speed-ups of ``batched`` over ``decoded`` (goal ≥ 5×), over ``naive``
and over ``no drafts``; cost per group; racing's speed-up and agreement with exact; the probe step's
scoring with each pair's prompt run once (`pair_logps`) against both sides whole (`sequence_logps`).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
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
from dits.influence.estimator import Group, UnitResult, racing_schedule
from dits.influence.probe import pair_logps, sequence_logps, shared_prompt_length
from dits.influence.report import GroupInfluence, agreement
from dits.influence.session import ProbeSession, open_session
from dits.influence.stages import pairs_per_batch
from dits.search.pairs import PreferencePair
from dits.search.stages import pairs_stage, search_stage

NAME = "probe"
SIZES = {  # (full, quick)
    "groups": (16, 8),
    "validation": (16, 8),
    "trees": (16, 12),
    "expansions": (4, 3),
    "calibration_groups": (6, 4),
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
        "calibration_groups": args.calibration_groups,
        "probe_lr": args.probe_lr if args.probe_lr == "auto" else float(args.probe_lr),
    }
    if args.group_size:
        update["group_size"] = args.group_size
    return InfluenceConfig.model_validate(ctx.cfg.influence.model_dump() | update)


def measure(name: str, session: ProbeSession, groups: list[Group], cfg: InfluenceConfig) -> Mode:
    """The session's `measure` once, with the work it did (dialogues, tokens, probe steps) as deltas of
    the harness's and prober's counters and a digest of every group's validation dialogues."""
    harness, prober = session.harness, session.prober
    before = (harness.dialogues, harness.tokens, prober.stats.probe_steps, prober.stats.probe_seconds)
    units: list[UnitResult] = []
    with elapsed() as seconds:
        results = session.measure(groups, cfg, on_unit=units.append)
    after = (harness.dialogues, harness.tokens, prober.stats.probe_steps, prober.stats.probe_seconds)
    d = [a - b for a, b in zip(after, before, strict=True)]
    print(f"  {name}: {seconds():.1f}s, {d[0]} dialogues, {d[1]} tokens, {d[2]} probe steps")
    digests: dict[str, Any] = {}
    for unit in sorted(units, key=lambda u: (u.group, u.unit)):
        digests.setdefault(unit.group, hashlib.blake2b(digest_size=8)).update(unit.digest.encode())
    return Mode(
        name, results, seconds(), d[0], d[1], d[2], d[3], {g: h.hexdigest() for g, h in digests.items()}
    )


def compare(reference: Mode, others: list[Mode]) -> dict[str, Any]:
    """Field-by-field comparison of every group's result in each mode with ``reference``, plus the digest
    of its validation dialogues (the identical-results check). The ``distinct_*`` counts show whether
    the check had anything to tell apart (a model that writes the same thing for every probe makes it
    vacuous)."""
    mismatches = []
    for other in others:
        for a, b in zip(reference.groups, other.groups, strict=True):
            da = a.to_dict() | {"dialogues_digest": reference.digests.get(a.group)}
            db = b.to_dict() | {"dialogues_digest": other.digests.get(b.group)}
            fields = sorted(k for k in da if da[k] != db[k])
            if fields:
                mismatches.append(
                    {"mode": other.name, "group": a.group, "fields": {k: [da[k], db[k]] for k in fields}}
                )
    groups = reference.groups
    return {
        "modes_compared": [reference.name, *(o.name for o in others)],
        "groups_compared": len(groups),
        "fields_compared": [*sorted(groups[0].to_dict()), "dialogues_digest"] if groups else [],
        "distinct_dialogue_sets": len(set(reference.digests.values())),
        "distinct_scores_after": len({g.score_after for g in groups}),
        "groups_with_changed_dialogues": sum(g.changed > 0 for g in groups),
        "identical": not mismatches and all(len(o.groups) == len(groups) > 0 for o in others),
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
    parser.add_argument("--calibration-groups", type=int, help="groups tried per lr; full 6, quick 4")
    parser.add_argument(
        "--racing-initial", type=int, help="racing: tasks in the first round; full 4, quick 2"
    )
    parser.add_argument("--fresh", action="store_true", help="delete the scratch run (redo the search)")
    args = parser.parse_args()
    sized(args, SIZES)
    return args


@dataclass
class Setup:
    """What every mode shares: the iteration session (θ*, F(θ*), the step), the groups, the fixed cost."""

    session: ProbeSession
    groups: list[Group]
    seconds: float


def prepare(ctx: StageContext, cfg: InfluenceConfig, pairs: list[PreferencePair], folder: Any) -> Setup:
    """The session an influence stage opens (reference log-probs, θ* warm-up, F(SFT), θ*'s validation
    dialogues, calibration), timed as the stage's fixed cost, and the K groups (the caller closes the
    session)."""
    require(ctx.engine, "trainable_model", "the probe benchmark")
    with elapsed() as seconds:
        session = open_session(
            folder,
            ctx.engine,
            ctx.system,
            pairs,
            ctx.tasks("validation", cfg.validation_tasks),
            cfg,
            ctx.cfg.dpo,
            policy=None,
            seed=ctx.seed("bench", NAME),
            lora=ctx.cfg.dpo.lora_settings,
            pairs_per_batch=pairs_per_batch(ctx.cfg),
        )
    groups = session.groups(pairs)[: cfg.adapters_per_batch]
    if len(groups) < cfg.adapters_per_batch:
        print(f"warning: only {len(groups)} groups (search more trees: --trees)", file=sys.stderr)
    print(f"probe lr {session.record.lr:g} ({session.record.calibration_note}); fixed cost {seconds():.1f}s")
    return Setup(session, groups, seconds())


def prompt_sharing(setup: Setup) -> dict[str, Any]:
    """Forward + backward of each group's pairs (θ* in training mode), scored with every pair's prompt
    run once and with both sides whole, in alternating order; seconds, tokens run, largest difference."""
    prober = setup.session.prober
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


def run_modes(setup: Setup, cfg: InfluenceConfig) -> dict[str, Mode]:
    """Every mode (module docstring) over the same groups from the same θ* and step."""
    session, groups, harness = setup.session, setup.groups, setup.session.harness
    engine: Any = session.prober.engine
    k = len(groups)
    batched = cfg.model_copy(update={"adapters_per_batch": k, "estimator": "exact"})
    modes: dict[str, Mode] = {}
    budget = engine.prefixes.budget_bytes
    harness.drafts = False
    engine.prefixes.clear()
    engine.prefixes.budget_bytes = 0
    try:
        modes["decoded"] = measure("decoded (no drafts, no prefix reuse)", session, groups, batched)
    finally:
        engine.prefixes.budget_bytes = budget
    modes["no_drafts"] = measure("no drafts (prefix reuse on)", session, groups, batched)
    harness.drafts = True
    modes["naive"] = measure(
        "naive (1 adapter at a time)", session, groups, batched.model_copy(update={"adapters_per_batch": 1})
    )
    modes["batched"] = measure(f"batched ({k} per batch, drafts)", session, groups, batched)
    racing = batched.model_copy(update={"estimator": "racing"})
    schedule = racing_schedule(cfg.racing_initial_tasks * cfg.validation_samples, len(harness.units))
    modes["racing"] = measure(f"racing {schedule}", session, groups, racing)
    return modes


def results(setup: Setup, modes: dict[str, Mode], cfg: InfluenceConfig) -> dict[str, Any]:
    """Speed-ups, costs per group, the identical-results check, racing's agreement with exact."""
    batched, racing = modes["batched"], modes["racing"]
    exact = {g.group: g.influence for g in batched.groups}
    record = setup.session.record
    return {
        "pairs_probed": len(setup.session.prober.pairs),
        "unfit_pairs": len(setup.session.prober.unfit),
        "groups": len(setup.groups),
        "group_size": cfg.group_size,
        "validation_tasks": len(setup.session.harness.tasks),
        "probe_lr": record.lr,
        "calibration": [row.to_dict() for row in record.calibration],
        "calibration_note": record.calibration_note,
        "base_score": record.base_score,
        "sft_score": record.sft_score,
        "fixed_cost_s": setup.seconds,
        **{name: mode.to_dict() for name, mode in modes.items()},
        "racing_schedule": racing_schedule(
            cfg.racing_initial_tasks * cfg.validation_samples, len(setup.session.harness.units)
        ),
        "identical_check": compare(batched, [modes["decoded"], modes["no_drafts"], modes["naive"]]),
        "speedup_vs_decoded": ratio(modes["decoded"].seconds, batched.seconds),
        "speedup_vs_naive": ratio(modes["naive"].seconds, batched.seconds),
        "speedup_of_drafts": ratio(modes["no_drafts"].seconds, batched.seconds),
        "speedup_whole_stage_vs_decoded": ratio(
            setup.seconds + modes["decoded"].seconds, setup.seconds + batched.seconds
        ),
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
        f"{args.groups * args.validation} dialogues in each of 4 exact modes, racing fewer; calibration <= "
        f"{len(cfg.probe_lr_grid)} lr x {args.calibration_groups} groups x V"
    )
    with tempfile.TemporaryDirectory() as folder:  # a fresh session every time: its cost is measured
        setup = prepare(ctx, cfg, pairs, Path(folder))
        try:
            sharing = prompt_sharing(setup)
            modes = run_modes(setup, cfg)
        finally:
            setup.session.close()
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
            f"FAILED: the exact modes differ in {len(check['mismatches'])} groups",
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
            "decoded = no drafts = naive = batched, every field + dialogues of every group",
            f"{check['identical']} ({check['groups_compared']} groups, "
            f"{check['distinct_dialogue_sets']} distinct dialogue sets)",
            "required",
        ),
        summary_row(
            "speed-up batched (drafts, prefix reuse) vs decoded", r["speedup_vs_decoded"], "goal >= 5"
        ),
        summary_row("speed-up batched vs one adapter at a time", r["speedup_vs_naive"]),
        summary_row("speed-up from drafts alone (prefix reuse on in both)", r["speedup_of_drafts"]),
        summary_row(
            "speed-up for the whole stage vs decoded (with the session's fixed cost)",
            r["speedup_whole_stage_vs_decoded"],
        ),
        summary_row("fixed cost: warm-up, F(SFT), F(θ*), calibration (s)", r["fixed_cost_s"]),
        summary_row("decoded: s per group", r["decoded"]["seconds_per_group"]),
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
