"""Tokens/s of the wave-batched tree search against the engine's own ceiling, and where the rest goes.

What runs: the real `dits.search.runner.search` on ``synth-ie`` (demo config: 4 turns × 48 tokens,
temperature 0.7) with the HF engine at one batch size. Wrappers record every wave (`HFEngine.generate`),
every micro-batch (`HFEngine._generate_batch`: prompt token ids, generated lengths, decoding steps) and
the time inside `model.generate`, the seeded sampler and NLL scoring.

The ceiling: the micro-batches the search actually sent are replayed, in the same composition (same
prompt token ids, same rows together, same batch size), through plain `model.generate` — greedy, the
engine's cache implementation, no logits processors, no shared-prefix reuse, and
``min_new_tokens = max_new_tokens = round(mean generated length of that micro-batch)``, so every row is
busy for every decoding step and the ceiling produces the same number of tokens as the engine did. This
is the most honest "same work, no waste" reference we can build: the search pays for early finishers,
sampling, NLL scoring, chat rendering and its own Python, the ceiling for none of them; the engine's
shared-prefix KV reuse is the only thing the ceiling lacks (so the engine part may exceed 1). A second
ceiling fills every batch to ``--batch-size`` rows (prompts taken from the search in order), to show
what the partially filled tail waves of a search cost.

Ratios (all in one process, one machine): search tok/s ÷ ceiling tok/s (goal ≥ 0.8), engine tok/s
(time inside `generate` only) ÷ ceiling tok/s.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from common import (
    Stopwatches,
    bench_config,
    elapsed,
    finish,
    make_parser,
    new_report,
    ratio,
    restore_method,
    sized,
    summary_row,
    timed_method,
)
from dits.engines.hf import MIN_SHARED_PREFIX, HFEngine, SeededSampler, shared_prefix_length
from dits.runtime import build_system, take
from dits.search.policy import QPolicy
from dits.search.runner import search, token_budget

NAME = "throughput"
TORCH_FILES = ("/torch/", "/transformers/", "/peft/", "/accelerate/")
TORCH_BUILTINS = ("torch", "Tensor")
SIZES = {  # (full, quick)
    "trees": (16, 8),
    "expansions": (4, 2),
    "rollouts": (2, 2),
    "batch_size": (32, 32),
    "full_batches": (4, 2),
}


@dataclass
class MicroBatch:
    """One `_generate_batch` call of the engine, as the search sent it."""

    rows: int
    width: int
    shared: int
    adapters: int
    max_new_tokens: int
    greedy: bool
    prompt_lengths: list[int]
    generated: list[int]
    steps: int
    seconds: float
    generate_seconds: float
    prompts: list[list[int]] = field(repr=False, default_factory=list)

    @property
    def slots(self) -> int:
        """Decoding positions computed: every row runs until the slowest row of the batch is done."""
        return self.rows * self.steps

    @property
    def padding(self) -> int:
        return sum(self.width - n for n in self.prompt_lengths)

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        del data["prompts"]
        return data


class Recorder:
    """Times and records what an `HFEngine` does while a search runs (install, run, `uninstall`)."""

    def __init__(self, engine: HFEngine) -> None:
        self.engine = engine
        self.watches = Stopwatches()
        self.batches: list[MicroBatch] = []
        self._generated: list[tuple[int, float]] = []  # (decoding steps, seconds) of model.generate calls
        self._model = engine.model
        timed_method(engine, "generate", self.watches["wave"])
        timed_method(engine, "nll", self.watches["nll"])
        timed_method(engine, "_generate_batch", self.watches["micro_batch"], after=self._record)
        timed_method(self._model, "generate", self.watches["model_generate"], after=self._model_generate)
        timed_method(SeededSampler, "__call__", self.watches["sampler"])

    def uninstall(self) -> None:
        for name in ("generate", "nll", "_generate_batch"):
            restore_method(self.engine, name)
        restore_method(self._model, "generate")
        restore_method(SeededSampler, "__call__")

    def _model_generate(self, output: torch.Tensor, seconds: float, *args: Any, **kwargs: Any) -> None:
        self._generated.append((output.shape[1] - kwargs["input_ids"].shape[1], seconds))

    def _record(
        self,
        completions: list[Any],
        seconds: float,
        prompts: list[list[int]],
        adapters: list[str],
        seeds: Any,
        params: Any,
    ) -> None:
        steps, generate_seconds = self._generated.pop()
        shared = shared_prefix_length(prompts) if self.engine.cache == "static" and len(prompts) > 1 else 0
        self.batches.append(
            MicroBatch(
                rows=len(prompts),
                width=max(len(p) for p in prompts),
                shared=shared if shared >= MIN_SHARED_PREFIX else 0,
                adapters=len(set(adapters)),
                max_new_tokens=params.max_new_tokens,
                greedy=params.greedy,
                prompt_lengths=[len(p) for p in prompts],
                generated=[c.num_tokens for c in completions],
                steps=steps,
                seconds=seconds,
                generate_seconds=generate_seconds,
                prompts=[list(p) for p in prompts],
            )
        )


@torch.inference_mode()
def plain_generate(engine: HFEngine, prompts: list[list[int]], new_tokens: int) -> float:
    """Seconds of one plain, left-padded, greedy `model.generate` producing exactly ``new_tokens`` per row."""
    pad = engine.tokenizer.pad_token_id
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=engine.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=engine.device)
    with elapsed() as seconds:
        engine.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=pad,
            cache_implementation=engine.cache,
        )
    return seconds()


def replay_ceiling(engine: HFEngine, batches: list[MicroBatch]) -> dict[str, Any]:
    """Every recorded micro-batch again through plain `generate`, at its mean generated length."""
    tokens = seconds = 0.0
    for batch in batches:
        new = max(1, round(sum(batch.generated) / batch.rows))
        seconds += plain_generate(engine, batch.prompts, new)
        tokens += new * batch.rows
    return {
        "batches": len(batches),
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": ratio(tokens, seconds),
    }


def full_batch_ceiling(engine: HFEngine, batches: list[MicroBatch], size: int, count: int) -> dict[str, Any]:
    """``count`` batches of exactly ``size`` of the search's prompts (evenly spaced through the run), each
    generating the search's overall mean generated length."""
    prompts = [p for b in batches for p in b.prompts]
    generated = [n for b in batches for n in b.generated]
    new = max(1, round(sum(generated) / len(generated)))
    chunks = [prompts[i : i + size] for i in range(0, len(prompts) - size + 1, size)]
    if not chunks:
        return {"batches": 0, "rows": size, "new_tokens": new, "tokens_per_s": float("nan")}
    step = max(1, len(chunks) // count)
    chosen = chunks[::step][:count]
    seconds = sum(plain_generate(engine, chunk, new) for chunk in chosen)
    tokens = new * size * len(chosen)
    return {
        "batches": len(chosen),
        "rows": size,
        "new_tokens": new,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
    }


def waste(batches: list[MicroBatch], saved: float) -> dict[str, Any]:
    """Early-finish waste, prompt padding, prefill saved by shared-prefix reuse, batch fill."""
    slots = sum(b.slots for b in batches)
    useful = sum(sum(b.generated) for b in batches)
    positions = sum(b.rows * b.width for b in batches)
    rows = sum(b.rows for b in batches)
    largest = max((b.rows for b in batches), default=0)
    return {
        "micro_batches": len(batches),
        "rows": rows,
        "mean_rows_per_micro_batch": ratio(rows, len(batches)),
        "rows_in_full_micro_batches": ratio(sum(b.rows for b in batches if b.rows == largest), rows),
        "decode_slots": slots,
        "useful_tokens": useful,
        "early_finish_waste": 1 - ratio(useful, slots),
        "mean_generated": ratio(useful, rows),
        "mean_steps": ratio(sum(b.steps for b in batches), len(batches)),
        "prompt_tokens": sum(sum(b.prompt_lengths) for b in batches),
        "prompt_positions": positions,
        "prompt_padding_fraction": ratio(sum(b.padding for b in batches), positions),
        "prefill_tokens_saved": saved,
        "prefill_saved_fraction": ratio(saved, positions),
        "mean_prompt_length": ratio(sum(sum(b.prompt_lengths) for b in batches), rows),
        "mean_shared_prefix": ratio(sum(b.shared for b in batches), len(batches)),
    }


def breakdown(wall: float, watches: Stopwatches) -> dict[str, float]:
    """Search wall time split into: plain model.generate (sampler inside it), micro-batch overhead
    (tensors, shared-prefix prefill, decoding text), wave overhead (chat templates, sorting), NLL
    scoring, and everything outside the engine (tree bookkeeping, rewards, programs)."""
    wave, micro, model = (watches[k].seconds for k in ("wave", "micro_batch", "model_generate"))
    parts = {
        "model_generate_without_sampler": model - watches["sampler"].seconds,
        "sampler": watches["sampler"].seconds,
        "micro_batch_overhead": micro - model,
        "wave_overhead": wave - micro,
        "nll_scoring": watches["nll"].seconds,
        "outside_engine": wall - wave - watches["nll"].seconds,
    }
    return {k: {"seconds": v, "fraction": ratio(v, wall)} for k, v in parts.items()}


def profile_search(run_search: Any, top: int = 20) -> list[dict[str, Any]]:
    """The top ``top`` functions by own time outside torch/transformers/peft, from a profiled search."""
    profiler = cProfile.Profile()
    profiler.runcall(run_search)
    stats = pstats.Stats(profiler, stream=io.StringIO())
    rows = []
    for (file, line, func), (_, calls, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        if any(lib in file for lib in TORCH_FILES) or (
            file == "~" and any(t in func for t in TORCH_BUILTINS)
        ):
            continue
        rows.append(
            {
                "function": f"{Path(file).name}:{line}:{func}",
                "calls": calls,
                "own_s": own,
                "cum_s": cumulative,
            }
        )
    return sorted(rows, key=lambda r: -r["own_s"])[:top]


def parse_args() -> argparse.Namespace:
    parser = make_parser(NAME, __doc__.split("\n\n")[0])
    parser.add_argument("--trees", type=int, help="search trees (train tasks); full 16, quick 8")
    parser.add_argument("--expansions", type=int, help="expansions per tree; full 4, quick 2")
    parser.add_argument("--rollouts", type=int, help="rollouts per expansion; 2")
    parser.add_argument("--batch-size", type=int, help="engine micro-batch rows; 32")
    parser.add_argument(
        "--full-batches", type=int, help="batches timed for the full-batch ceiling; full 4, quick 2"
    )
    parser.add_argument(
        "--max-replay", type=int, default=None, help="replay at most this many micro-batches (random sample)"
    )
    parser.add_argument("--profile", action="store_true", help="also run the search once more under cProfile")
    args = parser.parse_args()
    sized(args, SIZES)
    return args


@dataclass
class SearchRun:
    """One measured search: wall time, tokens, prefill saved, and what the recorder saw."""

    wall: float
    tokens: int
    saved: float
    recorder: Recorder


def measure_search(engine: HFEngine, run_search: Callable[[], None]) -> SearchRun:
    """Run the search once with the recorder installed; counters as deltas."""
    saved_before = engine.stats.extra.get("prefill_tokens_saved", 0)
    tokens_before = engine.stats.generated_tokens
    recorder = Recorder(engine)
    try:
        with elapsed() as seconds:
            run_search()
    finally:
        recorder.uninstall()
    saved = engine.stats.extra.get("prefill_tokens_saved", 0) - saved_before
    return SearchRun(seconds(), engine.stats.generated_tokens - tokens_before, saved, recorder)


def results(
    measured: SearchRun, ceiling: dict[str, Any], full: dict[str, Any], budget: float
) -> dict[str, Any]:
    """Rates, the three ratios, the time breakdown and the waste of one measured search."""
    search_tps = measured.tokens / measured.wall
    engine_tps = ratio(measured.tokens, measured.recorder.watches["wave"].seconds)
    batches = measured.recorder.batches
    return {
        "search": {
            "wall_s": measured.wall,
            "tokens": measured.tokens,
            "tokens_per_s": search_tps,
            "token_budget": budget,
        },
        "engine_tokens_per_s": engine_tps,
        "ceiling_same_batches": ceiling,
        "ceiling_full_batches": full,
        "ratio_search_vs_ceiling": ratio(search_tps, ceiling["tokens_per_s"]),
        "ratio_engine_vs_ceiling": ratio(engine_tps, ceiling["tokens_per_s"]),
        "ratio_search_vs_full_batch_ceiling": ratio(search_tps, full["tokens_per_s"]),
        "time_breakdown": breakdown(measured.wall, measured.recorder.watches),
        "stopwatches": measured.recorder.watches.to_dict(),
        "waste": waste(batches, measured.saved),
        "micro_batches": [b.summary() for b in batches],
    }


def main() -> None:
    args = parse_args()
    sizes = [
        f"search.tasks_per_iteration={args.trees}",
        f"search.expansions={args.expansions}",
        f"search.rollouts_per_expansion={args.rollouts}",
        f"engine.batch_size={args.batch_size}",
    ]
    cfg = bench_config(args.model, args.overrides, sizes)
    report = new_report(NAME, args)
    report["config"] = {k: getattr(cfg, k).model_dump() for k in ("search", "dialogue", "engine")}
    s = cfg.search
    print(
        f"work: {s.tasks_per_iteration} trees x {s.expansions} expansions x {s.rollouts_per_expansion} rollouts "
        f"(<= {cfg.dialogue.max_turns} turns x {cfg.dialogue.max_utterance_tokens} tokens), then the same "
        "micro-batches again through plain generate (the ceiling)"
    )
    e = cfg.engine
    engine = HFEngine(cfg.model, batch_size=e.batch_size, device=e.device, dtype=e.dtype, cache=e.cache)
    system = build_system(cfg)
    instances = take(system.task, "train", s.tasks_per_iteration)
    budget = token_budget(system, instances, engine, s, cfg.seed)  # T_norm as the pipeline does; warms up

    def run_search() -> None:
        search(system, instances, engine, s, cfg.reward, budget, seed=cfg.seed, policy=QPolicy())

    measured = measure_search(engine, run_search)
    batches = measured.recorder.batches
    replayed = batches
    if args.max_replay is not None and len(batches) > args.max_replay:
        replayed = random.Random(0).sample(batches, args.max_replay)
    print(
        f"search: {measured.tokens} tokens in {measured.wall:.1f}s; replaying {len(replayed)} micro-batches"
    )
    ceiling = replay_ceiling(engine, replayed)
    full = full_batch_ceiling(engine, batches, e.batch_size, args.full_batches)
    report["results"] = results(measured, ceiling, full, budget)
    if args.profile:
        print("profiling a second search (cProfile) ...")
        report["results"]["profile_top_outside_torch"] = top = profile_search(run_search)
        for row in top[:10]:
            print(
                f"  {row['own_s']:8.2f}s own  {row['cum_s']:8.2f}s cum  {row['calls']:>8} calls  {row['function']}"
            )
    report["summary"] = summary_rows(report["results"])
    finish(NAME, args, report)


def summary_rows(r: dict[str, Any]) -> list[dict[str, str]]:
    t, w = r["time_breakdown"], r["waste"]
    return [
        summary_row("search tokens/s (wall)", r["search"]["tokens_per_s"]),
        summary_row(
            "ceiling tokens/s (same micro-batches, plain generate)", r["ceiling_same_batches"]["tokens_per_s"]
        ),
        summary_row("ratio search / ceiling", r["ratio_search_vs_ceiling"], "goal >= 0.8"),
        summary_row("ratio engine (inside generate) / ceiling", r["ratio_engine_vs_ceiling"]),
        summary_row("ratio search / full-batch ceiling", r["ratio_search_vs_full_batch_ceiling"]),
        summary_row(
            "time: model.generate (excl. sampler)", f"{t['model_generate_without_sampler']['fraction']:.1%}"
        ),
        summary_row("time: seeded sampler", f"{t['sampler']['fraction']:.1%}"),
        summary_row(
            "time: micro-batch overhead (prefix prefill, tensors)",
            f"{t['micro_batch_overhead']['fraction']:.1%}",
        ),
        summary_row("time: wave overhead (chat templates, sorting)", f"{t['wave_overhead']['fraction']:.1%}"),
        summary_row("time: NLL scoring", f"{t['nll_scoring']['fraction']:.1%}"),
        summary_row("time: outside the engine (tree, rewards)", f"{t['outside_engine']['fraction']:.1%}"),
        summary_row("early-finish waste (decode slots of finished rows)", f"{w['early_finish_waste']:.1%}"),
        summary_row("prompt padding fraction", f"{w['prompt_padding_fraction']:.1%}"),
        summary_row(
            "prefill positions saved by shared-prefix reuse",
            f"{w['prefill_saved_fraction']:.1%} ({w['prefill_tokens_saved']:,.0f})",
        ),
        summary_row(
            "micro-batches / mean rows", f"{w['micro_batches']} / {w['mean_rows_per_micro_batch']:.1f}"
        ),
    ]


if __name__ == "__main__":
    main()
