"""The DITS paper's claims at small scale: synth-ie, one shared pool of tree-search pairs.

One scratch run (the run's own stages (`dits.context.StageContext`), demo config, kept under ``bench/results/tmp`` so an interrupted
benchmark resumes): iSFT sampling → SFT → tree search with the SFT model → preference pairs (Optima's
prefilters). A fraction of whole trees is held out for the DPO-loss proxy; the rest is the pool. The
influence of every group of the pool is estimated twice, on two DISJOINT halves A and B of the V
validation tasks (same θ*, same groups, same probe step: the step size is calibrated on A and reused
on B); the estimate on all V tasks is their size-weighted mean (exactly what the exact estimator gives
on A ∪ B, since the validation dialogues are greedy and independent).

Claims (from the DITS paper and its authors' released logs and notebooks):

* (a) Q does not predict influence: Pearson / Spearman of group influence vs group mean Q (paper: |r| < 0.1–0.2);
* (b) loss-based influence is a poor proxy: held-out DPO-loss change vs influence (paper: |r| < 0.2), and
  the first-order proxy vs influence;
* (c) the estimator is stable: influence on A vs on B (paper: r = 0.94 for 100 vs 1000 tasks), with ties;
* (d) selection ablation, one DPO round from the same SFT model: full / random 50 % / Q-top 50 % /
  DITS γ=0 / DITS γ=1 (`dits.influence.selection.select_pairs`), test score mean ± sd over seeds (DPO
  training seed and the random subset's seed), paired differences vs random (paper: influence-based >
  random ≥ Q-based).

Everything that comes out is reported, including results that contradict the paper.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from statistics import fmean
from typing import Any

from common import (
    finish,
    make_parser,
    mean_sd,
    new_report,
    pm,
    scratch_config,
    scratch_run,
    sized,
    summary_row,
)
from dits.config import InfluenceConfig, RunConfig, SelectionConfig
from dits.context import Policy, StageContext
from dits.evaluate import evaluation_stage
from dits.influence.report import agreement
from dits.influence.selection import select_pairs
from dits.influence.session import open_session
from dits.influence.stages import pairs_per_batch
from dits.isft import sample_stage
from dits.search.pairs import PreferencePair
from dits.search.stages import pairs_stage, search_stage
from dits.train.dpo import train_dpo
from dits.train.records import dpo_rows
from dits.train.stages import sft_stage
from dits.utils import write_atomic

NAME = "claims"
SIZES = {  # (full, quick)
    "sft_tasks": (32, 16),
    "trees": (48, 16),
    "validation": (24, 8),
    "seeds": (3, 3),
    "eval_limit": (40, 16),
}
STRATEGIES: dict[str, dict[str, Any]] = {
    "full": {"strategy": "full"},
    "random": {"strategy": "random"},
    "q": {"strategy": "q"},
    "dits_gamma0": {"strategy": "influence", "gamma": 0.0},
    "dits_gamma1": {"strategy": "dits", "gamma": 1.0},
}
PAPER_VS_RANDOM = {  # the paper's selection ablation: one DPO round from SFT at 8B, six datasets
    "full": "paper: < 0 on 3 of 6 datasets",
    "q": "paper: <= 0 on 4 of 6 (Q no better than random)",
    "dits_gamma0": "paper: > 0 on 5 of 6",
    "dits_gamma1": "paper: > 0 on 6 of 6",
}
STRATEGY_LABELS = {
    "full": "full set",
    "random": "random α",
    "q": "Q-top α",
    "dits_gamma0": "DITS γ=0 (influence)",
    "dits_gamma1": "DITS γ=1 (Q + influence)",
}


# ------------------------------------------------------------------------------------------ setup
def parse_args() -> argparse.Namespace:
    parser = make_parser(NAME, __doc__.split("\n\n")[0])
    parser.add_argument(
        "--sft-tasks", type=int, help="iSFT tasks (x isft.samples_per_task); full 32, quick 16"
    )
    parser.add_argument("--trees", type=int, help="search trees (pool size); full 48, quick 16")
    parser.add_argument(
        "--validation", type=int, help="V validation tasks, split in halves; full 24, quick 8"
    )
    parser.add_argument(
        "--group-size", type=int, default=None, help="pairs per probe group (default: config, 2)"
    )
    parser.add_argument(
        "--holdout-fraction", type=float, default=0.2, help="pairs held out for the loss proxy"
    )
    parser.add_argument("--probe-lr", default="auto", help="probe step size or auto (calibrated on half A)")
    parser.add_argument("--alpha", type=float, default=0.5, help="fraction kept by the ablation subsets")
    parser.add_argument(
        "--seeds", type=int, help="DPO seeds per strategy; 3 (0: claims a-c only, no ablation)"
    )
    parser.add_argument(
        "--validation-samples",
        type=int,
        default=None,
        help="K dialogues per validation task (influence.validation_samples; default: config, 1 greedy)",
    )
    parser.add_argument(
        "--validation-pool",
        type=int,
        default=None,
        help="validation tasks θ* plays before keeping the V informative ones (influence.validation_pool; "
        "unlike --set, it does not move the scratch run, so the pool of pairs is reused)",
    )
    parser.add_argument(
        "--difference",
        choices=("forward", "central"),
        default=None,
        help="finite difference of the estimate (influence.difference; default: config, forward)",
    )
    parser.add_argument("--eval-limit", type=int, help="test tasks per evaluation; full 40, quick 16")
    parser.add_argument(
        "--compare-to",
        type=Path,
        default=None,
        help="another claims results file on the same pool: report how the two estimates agree per group",
    )
    parser.add_argument("--fresh", action="store_true", help="delete the scratch run first")
    parser.add_argument("--plan", action="store_true", help="print the estimated work and exit")
    args = parser.parse_args()
    sized(args, SIZES)
    if args.validation < 2:
        parser.error("--validation must be >= 2 (it is split in two halves)")
    return args


def make_config(args: argparse.Namespace) -> RunConfig:
    """The scratch run's config (demo config + sizes); influence and ablation settings stay out of it."""
    return scratch_config(
        NAME,
        args,
        [
            f"isft.tasks_per_iteration={args.sft_tasks}",
            f"search.tasks_per_iteration={args.trees}",
            f"eval.limit={args.eval_limit}",
        ],
    )


# Influence settings a command-line option overrides only when given (the option's dest = the config key).
OPTIONAL_INFLUENCE_ARGS = ("group_size", "validation_samples", "difference", "validation_pool")


def influence_config(cfg: RunConfig, args: argparse.Namespace) -> InfluenceConfig:
    """The run's influence settings with this benchmark's sizes (V = ``--validation``, both halves)."""
    update: dict[str, Any] = {
        "validation_tasks": args.validation,
        "probe_lr": args.probe_lr if args.probe_lr == "auto" else float(args.probe_lr),
        "proxy_holdout_fraction": args.holdout_fraction,
        "first_order_proxy": True,
    }
    for key in OPTIONAL_INFLUENCE_ARGS:  # given on the command line: override the config
        if getattr(args, key):
            update[key] = getattr(args, key)
    return InfluenceConfig.model_validate(cfg.influence.model_dump() | update)


def signature(*parts: Any) -> str:
    """A short digest of the settings a cached stage depends on (part of its stage key)."""
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=4).hexdigest()


SECONDS_PER_DIALOGUE = 3.5
"""SmolLM2-135M, 2 CPU cores, demo dialogue settings, waves of 16-32 rows (iSFT sampling of the quick
demo: 64 dialogues with their NLL scoring in 234 s). Used only for the printed estimate."""
SECONDS_PER_TRAIN_STEP = 3.0  # measured: TRL DPO step with LoRA at batch 4, SmolLM2-135M fp32, 2 CPU cores
SECONDS_PER_TRAINING = 15.0  # loading the model and saving the adapter, per SFT/DPO run
PAIRS_PER_TREE = 1.5  # a guess: the real number is printed once the search has run


def plan(c: RunConfig, args: argparse.Namespace) -> dict[str, float]:
    """Dialogues, training steps and a rough time (SmolLM2 on 2 cores) per part of the benchmark."""
    half, trees = args.validation // 2, c.search.tasks_per_iteration
    pool = PAIRS_PER_TREE * trees * (1 - args.holdout_fraction)
    groups = pool / (args.group_size or c.influence.group_size)
    runs = len(STRATEGIES) * args.seeds
    dialogues = {
        "isft_sampling": c.isft.tasks_per_iteration * c.isft.samples_per_task,
        "tree_search": c.search.token_budget_tasks
        + trees * c.search.expansions * c.search.rollouts_per_expansion,
        "influence": 2 * (1 + groups) * half + 2.5 * 4 * half,  # + calibration, about half the grid
        "evaluation": (1 + runs) * (c.eval.limit or 0),
    }
    sft_steps = c.isft.tasks_per_iteration * c.isft.keep_top_fraction * 2 / c.sft.batch_size * c.sft.epochs
    dpo_steps = args.seeds * (1 + 4 * args.alpha) * pool / c.dpo.batch_size * c.dpo.epochs
    minutes = {k: v * SECONDS_PER_DIALOGUE / 60 for k, v in dialogues.items()}
    minutes["training"] = (
        (sft_steps + dpo_steps) * SECONDS_PER_TRAIN_STEP + (1 + runs) * SECONDS_PER_TRAINING
    ) / 60
    return {
        "dialogues": sum(dialogues.values()),
        "groups": groups,
        "dpo_runs": runs,
        **{f"{k}_min": v for k, v in minutes.items()},
    }


def print_plan(c: RunConfig, args: argparse.Namespace) -> dict[str, float]:
    """Estimated work, printed before anything runs; returns the estimate."""
    est = plan(c, args)
    trees = c.search.tasks_per_iteration
    total = sum(v for k, v in est.items() if k.endswith("_min"))
    print(
        f"plan ({c.run_dir}; stages already done there are skipped):\n"
        f"  iSFT sampling  {c.isft.tasks_per_iteration} tasks x {c.isft.samples_per_task} dialogues, SFT {c.sft.epochs:g} epochs"
        f"  ~{est['isft_sampling_min']:.0f} min\n"
        f"  tree search    {trees} trees x {c.search.expansions} expansions x {c.search.rollouts_per_expansion} rollouts"
        f"  ~{est['tree_search_min']:.0f} min\n"
        f"  influence      ~{est['groups']:.0f} groups x 2 halves x {args.validation // 2} validation tasks + calibration"
        f"  ~{est['influence_min']:.0f} min\n"
        f"  ablation       {len(STRATEGIES)} strategies x {args.seeds} seeds = {est['dpo_runs']} DPO runs"
        f" ({c.dpo.epochs:g} epochs), training total ~{est['training_min']:.0f} min\n"
        f"  evaluation     {1 + est['dpo_runs']} x {c.eval.limit} test dialogues  ~{est['evaluation_min']:.0f} min\n"
        f"  about {est['dialogues']:.0f} dialogues; rough total for SmolLM2-135M on 2 CPU cores: {total:.0f} min"
    )
    return est


def cached(ctx: StageContext, key: str, path: Path, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A resumable stage whose result is a JSON file: computed once, read back afterwards."""

    def work() -> dict[str, Any]:
        write_atomic(path, json.dumps(compute()))
        return {"file": str(path)}

    ctx.stage(key, work)
    return json.loads(path.read_text())


def unload(ctx: StageContext, name: str | None) -> None:
    """Remove an adapter from the run's engine."""
    if name is not None and name in ctx.engine.adapters():
        ctx.engine.remove_adapter(name)


# ------------------------------------------------------------------------------------------ pool
def build_pool(ctx: StageContext) -> tuple[Policy, list[PreferencePair]]:
    """SFT model and its tree-search pairs, through the run's own stages."""
    it = "iter_0"
    policy = sft_stage(ctx, it, sample_stage(ctx, it, None, first=True), None)
    pairs = pairs_stage(ctx, it, search_stage(ctx, it, policy))
    if not pairs:
        raise SystemExit(
            "the search produced no preference pair; search more trees (--trees) or relax pairs.*"
        )
    return policy, pairs


def estimate_halves(
    ctx: StageContext, policy: Policy, pairs: list[PreferencePair], args: argparse.Namespace, sig: str
) -> dict[str, Any]:
    """The iteration session on the V validation tasks (θ*, calibration, informative tasks when
    ``influence.validation_pool`` > V), then every group measured on two disjoint halves of those tasks
    (alternate tasks: A = 1st, 3rd, …; B = 2nd, 4th, …) with the same θ* and step size."""
    cfg = influence_config(ctx.cfg, args)
    folder = ctx.store.path("bench", sig)

    def compute() -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as scratch:
            session = open_session(
                Path(scratch),
                ctx.engine,
                ctx.system,
                pairs,
                ctx.tasks("validation", max(cfg.validation_tasks, cfg.validation_pool)),
                cfg,
                ctx.cfg.dpo,
                policy=ctx.serve(policy),
                seed=ctx.seed("bench", "influence"),
                lora=ctx.cfg.dpo.lora_settings,
                first_order=True,
                pairs_per_batch=pairs_per_batch(ctx.cfg),
            )
            try:
                groups = session.groups(pairs)
                tasks = session.harness.tasks
                halves = {}
                for name, part in (("a", tasks[0::2]), ("b", tasks[1::2])):
                    started = time.perf_counter()
                    harness = session.on_tasks(part, cfg)
                    measured = session.measure(groups, cfg, harness=harness)
                    halves[name] = {
                        "validation_ids": [t.id for t in part],
                        "base_score": harness.base_score,
                        "groups": [g.to_dict() for g in measured],
                        "wall_time": time.perf_counter() - started,
                    }
                return {
                    "session": session.record.to_dict(),
                    "probed": [p.id for p in pairs if session.probed(p) and p.id in session.prober.pairs],
                    "heldout": [p.id for p in pairs if p.tree_id in session.record.holdout_trees],
                    "warmup": [p.id for p in pairs if p.tree_id in session.record.warmup_trees],
                    **halves,
                }
            finally:
                session.close()

    return cached(ctx, f"bench/{sig}/influence", folder / "influence.json", compute)


def group_table(
    a: dict[str, Any], b: dict[str, Any], pairs: Sequence[PreferencePair]
) -> list[dict[str, Any]]:
    """One row per group: influence on A, B and all V (size-weighted mean), mean Q, the proxies."""
    q = {p.id: p.chosen_value for p in pairs}
    na, nb = len(a["validation_ids"]), len(b["validation_ids"])
    in_b = {g["group"]: g for g in b["groups"]}
    rows = []
    for ga in a["groups"]:
        gb = in_b[ga["group"]]
        rows.append(
            {
                "group": ga["group"],
                "pairs": ga["pair_ids"],
                "q_mean": fmean(q[i] for i in ga["pair_ids"]),
                "influence_a": ga["influence"],
                "influence_b": gb["influence"],
                "influence": (na * ga["influence"] + nb * gb["influence"]) / (na + nb),
                "loss_proxy": ga["loss_proxy"],
                "loss_proxy_b": gb["loss_proxy"],
                "first_order": (na * ga["first_order"] + nb * gb["first_order"]) / (na + nb),
                "changed": ga["changed"] + gb["changed"],
            }
        )
    return rows


def correlate(rows: Sequence[dict[str, Any]], x: str, y: str) -> dict[str, Any]:
    """`agreement` (Spearman with average ranks for ties, Pearson) of two columns over the groups."""
    values = [r for r in rows if r[x] is not None and r[y] is not None]
    result = agreement({r["group"]: r[x] for r in values}, {r["group"]: r[y] for r in values})
    return result.__dict__


def ties(values: Sequence[float]) -> dict[str, Any]:
    rounded = [round(v, 12) for v in values]
    counts = {v: rounded.count(v) for v in set(rounded)}
    tied = sum(c for c in counts.values() if c > 1)
    return {"distinct": len(counts), "tie_fraction": tied / len(values) if values else float("nan")}


def claims_abc(
    rows: Sequence[dict[str, Any]], a: dict[str, Any], b: dict[str, Any], session: dict[str, Any]
) -> dict[str, Any]:
    """Claims (a)–(c) from the per-group table."""
    return {
        "a_influence_vs_q": correlate(rows, "influence", "q_mean"),
        "a_influence_vs_q_half_a": correlate(rows, "influence_a", "q_mean"),
        "b_influence_vs_loss_proxy": correlate(rows, "influence", "loss_proxy"),
        "b_influence_vs_first_order": correlate(rows, "influence", "first_order"),
        "b_loss_proxy_same_on_both_halves": all(r["loss_proxy"] == r["loss_proxy_b"] for r in rows),
        "c_half_a_vs_half_b": correlate(rows, "influence_a", "influence_b"),
        "c_ties": {
            "half_a": ties([r["influence_a"] for r in rows]),
            "half_b": ties([r["influence_b"] for r in rows]),
            "all_v": ties([r["influence"] for r in rows]),
        },
        "base_score_half_a": a["base_score"],
        "base_score_half_b": b["base_score"],
        "sft_score_validation": session["sft_score"],
        "theta_score_validation": session["base_score"],
        "probe_lr": session["lr"],
        "calibration_note": session["calibration_note"],
        "calibration": session["calibration"],
        "validation_pool": session["pool_size"],
        "moved_tasks": session["moved_tasks"],
    }


# ------------------------------------------------------------------------------------------ ablation
def subsets(
    ctx: StageContext,
    pool: Sequence[PreferencePair],
    influence: dict[str, float],
    alpha: float,
    seed_index: int,
) -> dict[str, list[PreferencePair]]:
    """The pairs each strategy keeps (only the random one depends on the seed)."""
    return {
        name: select_pairs(
            list(pool),
            influence,
            SelectionConfig(alpha=alpha, **spec),
            seed=ctx.seed("bench", "random", seed_index),
        )
        for name, spec in STRATEGIES.items()
    }


def train_and_eval(
    ctx: StageContext, policy: Policy, chosen: list[PreferencePair], label: str, seed_index: int
) -> dict[str, Any]:
    """One DPO round from the SFT model on ``chosen`` (seed = the seed index's DPO seed, shared by all
    strategies), then the test evaluation; both resumable stages of the scratch ctx."""
    assert policy is not None
    out = ctx.store.path("bench", "ablation", label, "dpo")

    def work() -> dict[str, Any]:
        seed = ctx.train_seed("bench", "dpo", seed_index)
        result = train_dpo(ctx.model_ref(policy), dpo_rows(chosen), ctx.cfg.dpo, out, seed=seed)
        return {"pairs": len(chosen), "steps": result.steps, "seed": seed, "output": str(out)}

    trained = ctx.stage(f"bench/ablation/{label}/dpo", work)
    adapter = re.sub(r"\W", "_", f"abl_{label}")
    summary = evaluation_stage(ctx, f"ablation-{label}", Policy(adapter, out))
    unload(ctx, adapter)
    return {"score": summary["score"], "mean_tokens": summary["mean_tokens"], "pairs": trained["pairs"]}


def describe(chosen: Sequence[PreferencePair], influence: dict[str, float]) -> dict[str, Any]:
    return {
        "pairs": len(chosen),
        "mean_q": fmean(p.chosen_value for p in chosen) if chosen else None,
        "mean_influence": fmean(influence[p.id] for p in chosen) if chosen else None,
    }


def ablation(
    ctx: StageContext,
    policy: Policy,
    pool: Sequence[PreferencePair],
    influence: dict[str, float],
    args: argparse.Namespace,
    sig: str,
) -> dict[str, Any]:
    """Claim (d): every strategy x seed, scores, and paired differences against random."""
    scores: dict[str, list[float]] = {name: [] for name in STRATEGIES}
    tokens: dict[str, list[float]] = {name: [] for name in STRATEGIES}
    chosen_stats: dict[str, Any] = {}
    for s in range(args.seeds):
        for name, chosen in subsets(ctx, pool, influence, args.alpha, s).items():
            # the stage key names the chosen pairs in their order, so a change of selection retrains
            label = f"{sig}-{name}-{signature([p.id for p in chosen])}-s{s}"
            result = train_and_eval(ctx, policy, chosen, label, s)
            scores[name].append(result["score"])
            tokens[name].append(result["mean_tokens"])
            chosen_stats.setdefault(name, []).append(describe(chosen, influence))
    paired = {
        name: [x - r for x, r in zip(values, scores["random"], strict=True)]
        for name, values in scores.items()
        if name != "random"
    }
    return {
        "scores": scores,
        "mean_tokens": tokens,
        "subsets": chosen_stats,
        "mean_sd": {name: mean_sd(v) for name, v in scores.items()},
        "paired_vs_random": {
            name: {"diffs": d, "mean_sd": mean_sd(d), "wins": sum(x > 0 for x in d)}
            for name, d in paired.items()
        },
    }


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    args = parse_args()
    report = new_report(NAME, args)
    cfg = make_config(args)
    report["config"]["estimate"] = print_plan(cfg, args)
    if args.plan:
        return
    report["config"] |= {"run_dir": str(cfg.run_dir), "run": cfg.model_dump(mode="json")}
    ctx = scratch_run(cfg, args.fresh)
    reused = [key for key, stage in ctx.store.stages().items() if stage.get("status") == "done"]

    policy, pairs = build_pool(ctx)
    sft_eval = evaluation_stage(ctx, "sft", policy)
    sig = signature(influence_config(cfg, args).model_dump(), args.holdout_fraction)
    estimated = estimate_halves(ctx, policy, pairs, args, sig)
    a, b = estimated["a"], estimated["b"]
    rows = group_table(a, b, pairs)
    if len(rows) < 10:
        print(f"warning: only {len(rows)} groups; correlations are very noisy (search more trees: --trees)")
    probed = {pid: r["influence"] for r in rows for pid in r["pairs"]}
    neutral = fmean(probed.values())
    held = set(estimated["heldout"])
    pool = [p for p in pairs if p.id not in held]  # held-out proxy pairs never train
    influence = {p.id: probed.get(p.id, neutral) for p in pool}  # warm-up pairs: the mean, as the stage does
    report["results"] = {
        "pairs": len(pairs),
        "pool_pairs": len(pool),
        "probed_pairs": len(estimated["probed"]),
        "warmup_pairs": len(estimated["warmup"]),
        "heldout_pairs": len(held),
        "groups": len(rows),
        "validation_halves": [len(a["validation_ids"]), len(b["validation_ids"])],
        "validation_samples": influence_config(cfg, args).validation_samples,
        "difference": influence_config(cfg, args).difference,
        "sft_eval": sft_eval,
        "claims": claims_abc(rows, a, b, estimated["session"]),
        "ablation": ablation(ctx, policy, pool, influence, args, signature(sig, args.alpha))
        if args.seeds
        else None,
        "group_table": rows,
        "influence_wall_s": [a["wall_time"], b["wall_time"]],
        "compared_to": compare(rows, args.compare_to) if args.compare_to else None,
        "stages_reused": reused,
    }
    report["summary"] = summary_rows(report["results"])
    finish(NAME, args, report)


def compare(rows: Sequence[dict[str, Any]], other: Path) -> dict[str, Any]:
    """Per-group agreement (all V) of this run's influence with another claims run's on the same groups."""
    theirs = {g["group"]: g["influence"] for g in json.loads(other.read_text())["results"]["group_table"]}
    agreed = agreement({r["group"]: r["influence"] for r in rows}, theirs)
    if agreed.n == 0:
        raise SystemExit(f"--compare-to {other}: no group in common (another pool?)")
    return {"file": other.name, **agreed.__dict__}


def interval(r: float, n: int, spearman: bool = False) -> tuple[float, float]:
    """Approximate 95 % interval of a correlation over ``n`` points (Fisher z; Spearman with the
    Bonett–Wright variance 1 + ρ²/2); NaN where undefined (n ≤ 3, or r NaN)."""
    if n <= 3 or math.isnan(r):
        return math.nan, math.nan
    z = math.atanh(max(min(r, 0.999999), -0.999999))
    se = math.sqrt((1 + r * r / 2 if spearman else 1.0) / (n - 3))
    return math.tanh(z - 1.96 * se), math.tanh(z + 1.96 * se)


def corr(value: dict[str, Any]) -> str:
    """``r=… [lo, hi], ρ=… [lo, hi] (n=…)`` with 95 % intervals."""
    n = value["n"]
    parts = []
    for name, key in (("r", "pearson"), ("ρ", "spearman")):
        low, high = interval(value[key], n, spearman=key == "spearman")
        parts.append(f"{name}={value[key]:.3f} [{low:.2f}, {high:.2f}]")
    return f"{', '.join(parts)} (n={n})"


def summary_rows(r: dict[str, Any]) -> list[dict[str, str]]:
    c, abl = r["claims"], r["ablation"]
    tie = c["c_ties"]
    rows = [
        summary_row(
            "pairs / pool / held out / groups",
            f"{r['pairs']} / {r['pool_pairs']} / {r['heldout_pairs']} / {r['groups']}",
        ),
        summary_row("SFT model test score", r["sft_eval"]["score"]),
        summary_row("(a) influence vs group mean Q", corr(c["a_influence_vs_q"]), "paper |r| < 0.1-0.2"),
        summary_row(
            "(b) influence vs DPO-loss change (held out)",
            corr(c["b_influence_vs_loss_proxy"]),
            "paper |r| < 0.2",
        ),
        summary_row("(b) influence vs first-order proxy", corr(c["b_influence_vs_first_order"])),
        summary_row(
            "(c) influence on half A vs half B",
            corr(c["c_half_a_vs_half_b"]),
            "paper r = 0.94 (100 vs 1000 tasks)",
        ),
        summary_row(
            "(c) distinct values / tie fraction (A, B)",
            f"{tie['half_a']['distinct']}/{tie['half_a']['tie_fraction']:.2f}, {tie['half_b']['distinct']}/{tie['half_b']['tie_fraction']:.2f}",
        ),
        summary_row("probe lr", c["probe_lr"]),
        summary_row(
            "validation pool drawn / tasks a calibration probe moved",
            f"{c['validation_pool']} / {c['moved_tasks']}"
            + ("" if c["validation_pool"] > sum(r["validation_halves"]) else " (no selection: pool = V)"),
        ),
        summary_row(
            "validation tasks per half x dialogues per task, difference",
            f"{r['validation_halves'][0]} x {r.get('validation_samples', 1)}, {r.get('difference', 'forward')}",
        ),
    ]
    for name, label in STRATEGY_LABELS.items() if abl else ():
        rows.append(summary_row(f"(d) {label}: test score", pm(abl["scores"][name])))
    for name, paired in abl["paired_vs_random"].items() if abl else ():
        n = len(paired["diffs"])
        rows.append(
            summary_row(
                f"(d) {STRATEGY_LABELS[name]} - random (paired)",
                f"{pm(paired['diffs'])}, wins {paired['wins']}/{n}",
                PAPER_VS_RANDOM[name],
            )
        )
    if r.get("compared_to"):
        rows.append(
            summary_row(f"influence vs {r['compared_to']['file']} (per group)", corr(r["compared_to"]))
        )
    rows.append(summary_row("stages reused from an earlier invocation", len(r["stages_reused"])))
    return rows


if __name__ == "__main__":
    main()
