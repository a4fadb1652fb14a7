"""The budget claim: at equal generated tokens, is inference better spent on influence than on rollouts?

The DITS paper's headline finding is that inference spent on estimating influence buys more than the
same inference spent on more tree-search rollouts. Here, on synth-ie with the demo config:

One scratch base run does iSFT sampling → SFT (iteration 0); every arm starts from that SFT model
(its stages are copied in, not recomputed). For each budget level (``trees × level`` search trees) and
each replicate (``replicate=r``: the seeds of search, influence, selection and DPO change, the SFT
model and the tasks do not, so replicates are paired), one DPO round per arm, each in its own run
directory:

* ``optima`` — Q-guided search with ``--rollouts-optima`` rollouts per expansion, DPO on every pair;
* ``dits`` — influence-guided search (2 rounds) with ``--rollouts-dits`` (fewer) rollouts, the influence
  of every group of pairs, selection (Q + γ·minmax(I), top α), DPO;
* ``dits-unguided`` — the same with a Q-guided search (guided vs unguided search at equal budget).

Reported per arm and level: the test score after the DPO round (mean ± sd over replicates), the tokens
generated after SFT (search rollouts, token budget, influence validation dialogues), wall time, and
paired differences to ``optima`` (and guided ``dits`` to ``dits-unguided``) at the same level; a plot
of score against tokens (``bench/results/budget[-quick].png``). Whatever comes out is reported.
"""

from __future__ import annotations

import argparse
import math
import shutil
from typing import Any

from common import (
    RESULTS_DIR,
    finish,
    make_parser,
    mean_sd,
    new_report,
    pm,
    scratch_config,
    sized,
    summary_row,
)
from dits.config import RunConfig, with_overrides
from dits.context import StageContext
from dits.demo import share_stages
from dits.engines.factory import make_engine
from dits.evaluate import evaluation_stage
from dits.isft import sample_stage
from dits.recipes import run
from dits.store import RunStore
from dits.train.stages import sft_stage

NAME = "budget"
SIZES = {  # (full, quick)
    "trees": (16, 8),
    "levels": ([1, 2, 3], [1, 2]),
    "replicates": (3, 3),
    "sft_tasks": (32, 16),
    "eval_limit": (40, 24),
    "validation": (16, 8),
}
ARMS = {
    "optima": ["method=isft-dpo"],
    "dits": ["method=dits-dpo", "search.guidance=influence"],
    "dits-unguided": ["method=dits-dpo", "search.guidance=q"],
}
# Paired differences reported per arm: result key -> (the arm compared with at the same level, the paper).
PAIRED_REFERENCES = {
    "dits": {
        "minus_optima": ("optima", "paper: > 0 at equal budget"),
        "minus_unguided": ("dits-unguided", "paper: guided > unguided"),
    },
    "dits-unguided": {"minus_optima": ("optima", "paper: > 0 at equal budget")},
}
SFT_STAGES = ("eval/base", "iter_0/samples", "iter_0/sft")
SFT_FILES = ("eval/base.json", "iter_0/sft_samples.jsonl", "iter_0/sft")
"""What every arm takes from the base run instead of computing it (identical by construction: same
seed, same tasks; ``replicate`` does not touch them)."""


def parse_args() -> argparse.Namespace:
    parser = make_parser(NAME, __doc__.split("\n\n")[0])
    parser.add_argument("--trees", type=int, help="search trees at budget level 1; full 16, quick 8")
    parser.add_argument("--levels", type=int, nargs="+", help="budget levels (tree multipliers); full 1 2 3")
    parser.add_argument("--replicates", type=int, help="replicates per arm and level; 3")
    parser.add_argument("--rollouts-optima", type=int, default=3, help="Optima's rollouts per expansion")
    parser.add_argument("--rollouts-dits", type=int, default=2, help="DITS's rollouts per expansion")
    parser.add_argument("--arms", nargs="+", choices=sorted(ARMS), default=list(ARMS))
    parser.add_argument("--sft-tasks", type=int, help="iSFT tasks of the shared SFT; full 32, quick 16")
    parser.add_argument("--eval-limit", type=int, help="test tasks per evaluation; full 40, quick 24")
    parser.add_argument("--validation", type=int, help="V validation tasks of the influence estimate")
    parser.add_argument("--fresh", action="store_true", help="delete the scratch runs first")
    args = parser.parse_args()
    sized(args, SIZES)
    return args


def base_config(args: argparse.Namespace) -> RunConfig:
    """The shared SFT run (demo config, Optima's prefilters)."""
    return scratch_config(
        NAME,
        args,
        [
            "method=isft-dpo",
            f"isft.tasks_per_iteration={args.sft_tasks}",
            f"eval.limit={args.eval_limit}",
            f"influence.validation_tasks={args.validation}",
            "loop.iterations=1",
            "pairs.min_chosen_value=0.3",
            "pairs.min_gap=0.2",
        ],
    )


def arm_config(base: RunConfig, arm: str, level: int, replicate: int, args: argparse.Namespace) -> RunConfig:
    """One arm's run: the base config with the arm's method and search sizes, in its own directory."""
    rollouts = args.rollouts_optima if arm == "optima" else args.rollouts_dits
    return with_overrides(
        base,
        [
            *ARMS[arm],
            f"search.tasks_per_iteration={args.trees * level}",
            f"search.rollouts_per_expansion={rollouts}",
            f"replicate={replicate}",
            f"name={base.name}-{arm}-L{level}-r{replicate}",
        ],
    )


def generated_after_sft(cfg: RunConfig) -> dict[str, float]:
    """Tokens generated by the stages after SFT (search, token budget, influence) and their wall time."""
    stages = RunStore(cfg.run_dir).stages()
    tokens = wall = 0.0
    for key, stage in stages.items():
        summary = stage.get("summary", {})
        if key.startswith("eval/") or key.endswith(("/samples", "/sft", "/dpo")) or "shared_from" in summary:
            continue
        tokens += summary.get("tokens_generated", 0) or 0
        wall += summary.get("wall_time", 0.0) or 0.0
    return {"tokens": tokens, "wall_s": wall}


def shared_sft(base: RunConfig, engine: Any) -> float:
    """The base run's test evaluation of the initial model and its SFT model (iteration 0); returns the
    SFT model's test score."""
    with StageContext(base, engine) as ctx:  # released at once: arm runs in other processes read it too
        evaluation_stage(ctx, "base", None)
        sft = sft_stage(ctx, "iter_0", sample_stage(ctx, "iter_0", None, first=True), None)
        return evaluation_stage(ctx, "sft", sft)["score"]


def main() -> None:
    args = parse_args()
    report = new_report(NAME, args)
    base = base_config(args)
    if args.fresh:
        for folder in base.run_dir.parent.glob(f"{base.name}*"):
            shutil.rmtree(folder, ignore_errors=True)
    report["config"] |= {"base": base.model_dump(mode="json")}
    engine = make_engine(base.engine, base.model)
    sft_score = shared_sft(base, engine)
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {arm: {} for arm in args.arms}
    for level in args.levels:
        for replicate in range(args.replicates):
            for arm in args.arms:
                cfg = arm_config(base, arm, level, replicate, args)
                share_stages(base, cfg, SFT_STAGES, SFT_FILES)
                results = run(cfg, engine)
                row = {"score": results["iter_0"]["score"], **generated_after_sft(cfg), "run": cfg.name}
                print(f"{arm} level {level} replicate {replicate}: {row}")
                runs[arm].setdefault(level, []).append(row)
    report["results"] = {"sft_score": sft_score, "runs": runs, "arms": summarise(runs)}
    plot(report["results"]["arms"], args)
    report["summary"] = summary_rows(report["results"])
    finish(NAME, args, report)


def summarise(runs: dict[str, dict[int, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Mean ± sd of score and tokens per arm and level; paired score differences (PAIRED_REFERENCES)."""
    out: dict[str, Any] = {}
    for arm, levels in runs.items():
        out[arm] = {}
        for level, rows in levels.items():
            scores = [r["score"] for r in rows]
            entry: dict[str, Any] = {
                "score": mean_sd(scores),
                "scores": scores,
                "tokens": mean_sd([r["tokens"] for r in rows]),
                "wall_s": mean_sd([r["wall_s"] for r in rows]),
            }
            for key, (reference_arm, _) in PAIRED_REFERENCES.get(arm, {}).items():
                reference = runs.get(reference_arm, {}).get(level)
                if reference:
                    diffs = [r["score"] - o["score"] for r, o in zip(rows, reference, strict=True)]
                    entry[key] = {
                        "reference": reference_arm,
                        "diffs": diffs,
                        "mean_sd": mean_sd(diffs),
                        "wins": sum(d > 0 for d in diffs),
                    }
            out[arm][level] = entry
    return out


def plot(arms: dict[str, Any], args: argparse.Namespace) -> None:
    """Score against tokens generated after SFT, one line per arm (error bars: sd over replicates)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for arm, levels in arms.items():
        points = sorted((v["tokens"][0], v["score"][0], v["score"][1]) for v in levels.values())
        ax.errorbar(
            [p[0] for p in points],
            [p[1] for p in points],
            yerr=[p[2] for p in points],
            marker="o",
            capsize=3,
            label=arm,
        )
    ax.set_xlabel("tokens generated after SFT (search + influence)")
    ax.set_ylabel("test score after one DPO round")
    ax.legend()
    path = (args.out.parent if args.out else RESULTS_DIR) / f"{NAME}{'-quick' if args.quick else ''}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    print(f"plot: {path}")


def summary_rows(r: dict[str, Any]) -> list[dict[str, str]]:
    rows = [summary_row("SFT model test score", r["sft_score"])]
    for arm, levels in r["arms"].items():
        for level, v in sorted(levels.items(), key=lambda item: int(item[0])):
            tokens = v["tokens"][0]
            rows.append(
                summary_row(
                    f"{arm}, level {level}: test score (tokens after SFT)",
                    f"{pm(v['scores'])} ({tokens:,.0f})" if not math.isnan(tokens) else pm(v["scores"]),
                )
            )
            for key, (reference_arm, paper) in PAIRED_REFERENCES.get(arm, {}).items():
                if key in v:
                    d = v[key]
                    rows.append(
                        summary_row(
                            f"{arm} - {reference_arm}, level {level} (paired)",
                            f"{pm(d['diffs'])}, wins {d['wins']}/{len(d['diffs'])}",
                            paper,
                        )
                    )
    return rows


if __name__ == "__main__":
    main()
