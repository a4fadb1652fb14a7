"""Each workload's cost against the machine: positions computed vs positions needed, wall vs ceiling.

Workloads (demo config: synth-ie, 4 turns × 48 tokens), each the real code of its stage:

* ``evaluation`` — greedy two-agent dialogues on E test tasks (`dits.evaluate.evaluate`);
* ``sampling`` — iSFT sampling, first iteration (format pool): T train tasks × N dialogues and their
  rewards (`dits.isft.sample_instance` programs under `run_programs`);
* ``search`` — Optima's token budget T_norm, then the wave-batched tree search (`dits.search.runner`);
* ``probes`` — θ*'s greedy validation dialogues on V tasks, then the same dialogues under K probe
  adapters, each replaying θ*'s dialogue as drafts (what `dits.influence.estimator.Harness` does). θ* is
  a seeded random LoRA on the base, a probe θ* plus one seeded sign-like step (`random_loras`).

Every workload runs twice, each time on a fresh engine: the engine as configured (prefix reuse, drafts)
and with caches off (``engine.kv_cache_mb=0``, no drafts). Measured through public hooks only — the
engine's observers (`BatchEvent`: every forward pass) and a wrapper around the instance's ``generate``
that records each request and its completions:

* **positions computed**: input positions of every prefill and decode pass, and the mean rows of a
  decode pass; NLL scoring apart (its positions, the texts scored and how many were distinct);
* **distinct positions needed**: distinct (adapter, token prefix) positions of everything the work fed
  the model — a per-adapter trie of every request's rendered prompt followed by the completion's
  tokens that were fed back (all of them when it ended on the stop token, else all but the last);
* **redundancy** = computed ÷ distinct;
* **physical ceiling** = distinct ÷ the machine's batched forward rate (a plain forward of 8 × 256
  chat-template tokens, no cache, median of a few repeats), and **wall ÷ ceiling**. The decode rate
  (one token for each of 32 rows against ~400 cached positions) is reported next to it;
* speed-up of the configured engine over caches off, and how many dialogues (trees) came out with
  identical text on both paths (a batched pass and a cached one can order floating-point sums
  differently, which may flip a rare near-tie; those are counted, not hidden).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from peft import get_peft_model_state_dict

from common import (
    Stopwatch,
    bench_config,
    elapsed,
    finish,
    fmt,
    make_parser,
    new_report,
    ratio,
    restore_method,
    sized,
    summary_row,
    timed_method,
)
from dits.engines.base import (
    AdapterWeights,
    BatchEvent,
    Completion,
    GenerationRequest,
    Message,
    SamplingParams,
)
from dits.engines.batching import run_programs
from dits.engines.factory import make_engine
from dits.engines.hf import HFEngine
from dits.evaluate import evaluate
from dits.isft import sample_instance
from dits.mas.dialogue import Dialogue, TwoAgentSystem
from dits.runtime import build_system, take
from dits.search.policy import QPolicy
from dits.search.runner import search, token_budget
from dits.search.tree import Tree
from dits.tasks.base import TaskInstance
from dits.train.common import lora_config
from dits.utils import derive_seed

NAME = "throughput"
WORKLOADS = ("evaluation", "sampling", "search", "probes")
PATHS = {"reuse": "prefix reuse + drafts", "off": "caches off"}
SIZES = {  # (full, quick)
    "eval_tasks": (32, 8),
    "sample_tasks": (16, 4),
    "samples": (6, 4),
    "trees": (16, 4),
    "expansions": (4, 2),
    "rollouts": (2, 2),
    "probes": (8, 4),
    "validation": (12, 4),
    "repeats": (5, 3),
}
FORWARD_SHAPE = (8, 256)
"""Rows × tokens of the plain forward that measures the machine's batched rate."""
DECODE_SHAPE = (32, 400)
"""Rows × cached positions of the decode steps that measure the machine's decode rate."""
THETA = "theta_star"
SHAPES = "lora_shapes"
GREEDY = SamplingParams()


# ------------------------------------------------------------------------------------------ recording
def prompt_ids(engine: HFEngine, messages: list[Message]) -> list[int]:
    """The chat template's token ids of ``messages`` with the generation prompt, as the engine feeds them."""
    ids = engine.tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=True, return_dict=False
    )
    return list(ids)


def fed_tokens(completion: Completion, params: SamplingParams) -> tuple[int, ...]:
    """The generated tokens fed back to the model: all when the completion ended on the stop token (the
    last one was fed to choose it), all but the last otherwise (chosen, never fed)."""
    on_stop_token = completion.finish_reason == "stop" and not params.stop
    return completion.token_ids if on_stop_token else completion.token_ids[:-1]


class PositionTrie:
    """Distinct (adapter, token prefix) positions: one trie of token ids per adapter, `count` nodes."""

    def __init__(self) -> None:
        self.roots: dict[str | None, dict[int, Any]] = {}
        self.count = 0

    def add(self, adapter: str | None, tokens: Sequence[int]) -> None:
        node = self.roots.setdefault(adapter, {})
        for token in tokens:
            child = node.get(token)
            if child is None:
                child = node[token] = {}
                self.count += 1
            node = child


@dataclass
class PassTotals:
    """Forward passes of one kind: how many, rows, real and padded positions, seconds."""

    passes: int = 0
    rows: int = 0
    positions: int = 0
    padded: int = 0
    seconds: float = 0.0

    def add(self, event: BatchEvent) -> None:
        self.passes += 1
        self.rows += event.rows
        self.positions += event.positions
        self.padded += event.padded
        self.seconds += event.seconds


@dataclass
class Recorder:
    """Every forward pass (an observer), every ``generate`` call (requests, params, completions) and every
    text scored by ``nll`` of an engine while the ``with`` block runs; the instance's methods are restored
    afterwards."""

    engine: HFEngine
    passes: dict[str, PassTotals] = field(
        default_factory=lambda: {kind: PassTotals() for kind in ("prefill", "decode", "nll")}
    )
    calls: list[tuple[list[GenerationRequest], SamplingParams, list[list[Completion]]]] = field(
        default_factory=list
    )
    generate: Stopwatch = field(default_factory=Stopwatch)
    nll: Stopwatch = field(default_factory=Stopwatch)
    scored: list[str] = field(default_factory=list)

    def __enter__(self) -> Recorder:
        self.engine.stats.observers.append(self._observe)
        timed_method(self.engine, "generate", self.generate, after=self._record)
        timed_method(self.engine, "nll", self.nll, after=lambda _r, _s, texts: self.scored.extend(texts))
        return self

    def __exit__(self, *_: object) -> None:
        for name in ("generate", "nll"):
            restore_method(self.engine, name)
        self.engine.stats.observers.remove(self._observe)

    def _observe(self, event: BatchEvent) -> None:
        self.passes[event.kind].add(event)

    def _record(
        self,
        completions: list[list[Completion]],
        _seconds: float,
        requests: Sequence[GenerationRequest],
        params: SamplingParams,
    ) -> None:
        self.calls.append((list(requests), params, completions))

    def distinct_positions(self) -> int:
        """Distinct (adapter, prefix) positions of every sequence fed to the model (rendered afterwards,
        outside the timed work)."""
        trie = PositionTrie()
        for requests, params, completions in self.calls:
            for request, replies in zip(requests, completions, strict=True):
                prompt = prompt_ids(self.engine, request.messages)
                for completion in replies:
                    trie.add(request.adapter, prompt + list(fed_tokens(completion, params)))
        return trie.count


# ------------------------------------------------------------------------------------------ machine
def chat_rows(
    engine: HFEngine, system: TwoAgentSystem, instances: Sequence[TaskInstance], shape: tuple[int, int]
) -> torch.Tensor:
    """``rows × length`` real chat-template tokens: first-turn prompts of ``instances``, back to back."""
    rows, length = shape
    stream: list[int] = []
    for instance in itertools.cycle(instances):
        if len(stream) >= rows * length:
            break
        stream += prompt_ids(engine, system.view(instance, []))
    return torch.tensor(stream[: rows * length], device=engine.device).view(rows, length)


def median_seconds(step: Callable[[], None], repeats: int) -> float:
    """Median wall time of ``step`` over ``repeats`` runs, after one untimed warm-up run (GPU work waited
    for)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None
    step()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.inference_mode()
def machine_rates(
    engine: HFEngine, system: TwoAgentSystem, instances: Sequence[TaskInstance], repeats: int
) -> dict[str, Any]:
    """The machine's batched forward rate (tokens/s of a plain, cacheless forward of `FORWARD_SHAPE`) and
    decode rate (rows/s of one-token steps of `DECODE_SHAPE` rows against their cached positions)."""
    model = engine.model
    batch = chat_rows(engine, system, instances, FORWARD_SHAPE)
    forward = median_seconds(lambda: model(input_ids=batch, use_cache=False, logits_to_keep=1), repeats)
    context = chat_rows(engine, system, instances, DECODE_SHAPE)
    out = model(input_ids=context, use_cache=True, logits_to_keep=1)
    state = {"cache": out.cache, "next": out.logits[:, -1:].argmax(-1)}

    def decode_step() -> None:
        step = model(input_ids=state["next"], cache=state["cache"], use_cache=True, logits_to_keep=1)
        state["next"] = step.logits[:, -1:].argmax(-1)

    decode = median_seconds(decode_step, repeats)
    return {
        "forward_shape": list(FORWARD_SHAPE),
        "forward_s": forward,
        "forward_tokens_per_s": batch.numel() / forward,
        "decode_shape": list(DECODE_SHAPE),
        "decode_step_s": decode,
        "decode_tokens_per_s": DECODE_SHAPE[0] / decode,
        "repeats": repeats,
    }


def random_loras(engine: HFEngine, cfg: Any, seed: int) -> dict[str, AdapterWeights]:
    """θ* and ``influence.adapters_per_batch`` probe adapters, seeded. θ* is a fresh LoRA
    (``dpo.lora_settings``: PEFT's initial ``A``) whose ``B`` ~ N(0, (warm-up steps × warm-up lr)²), about
    where the warm-up's sign-like Adam steps take it; a probe is θ* plus one sign-like step of the probe lr
    (``influence.probe_lr``, or the middle of its calibration grid) on every weight, as one fresh Adam
    step is. The shapes come from a placeholder adapter on ``engine``, removed again."""
    influence = cfg.influence
    config = lora_config(cfg.dpo.lora_settings)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed % 2**31)
        engine.add_adapter(SHAPES, AdapterWeights(config, {}))
    template = get_peft_model_state_dict(engine.trainable_model(), adapter_name=SHAPES)
    engine.remove_adapter(SHAPES)
    generator = torch.Generator().manual_seed(seed)
    scale = influence.warmup_steps * influence.warmup_lr
    step = statistics.median(influence.probe_lr_grid) if influence.probe_lr == "auto" else influence.probe_lr

    def noise(like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape, generator=generator)

    theta = {k: noise(v) * scale if "lora_B" in k else v.clone() for k, v in template.items()}
    states = {THETA: theta}
    for index in range(influence.adapters_per_batch):
        states[f"probe{index}"] = {k: v + step * noise(v).sign() for k, v in theta.items()}
    return {name: AdapterWeights(config, state) for name, state in states.items()}


# ------------------------------------------------------------------------------------------ workloads
def dialogue_text(dialogue: dict[str, Any]) -> str:
    """What the identity check compares of a dialogue (`Dialogue.to_dict`): every turn's text, the answer."""
    return json.dumps([dialogue["final_answer"], [turn["text"] for turn in dialogue["turns"]]])


def tree_text(tree: Tree) -> str:
    """What the identity check compares of a tree: every node's parent and utterance."""
    return json.dumps([[node.parent, node.text] for node in tree.nodes])


@dataclass
class Played:
    """What a workload produced: its units (dialogues or trees) as text, and anything else to report."""

    unit: str
    texts: list[str]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Bench:
    """What every workload needs: the config, the two agents, the probe adapters (θ* first)."""

    cfg: Any
    system: TwoAgentSystem
    adapters: dict[str, AdapterWeights] = field(default_factory=dict)

    def seed(self, workload: str) -> int:
        return derive_seed(self.cfg.seed, NAME, workload)


Work = Callable[[], Played]
"""A workload ready to run on one engine (set up already, so that only the work itself is timed)."""


def evaluation(bench: Bench, engine: HFEngine, drafts: bool) -> Work:
    """Greedy dialogues on ``eval.limit`` test tasks."""
    instances = take(bench.system.task, "test", bench.cfg.eval.limit)

    def run() -> Played:
        records, _ = evaluate(bench.system, instances, engine, seed=bench.seed("evaluation"))
        return Played("dialogues", [dialogue_text(d) for r in records for d in r["dialogues"]])

    return run


def sampling(bench: Bench, engine: HFEngine, drafts: bool) -> Work:
    """iSFT's first iteration: ``isft.samples_per_task`` dialogues on each of ``isft.tasks_per_iteration``
    train tasks, then their rewards."""
    cfg = bench.cfg
    instances = take(bench.system.task, "train", cfg.isft.tasks_per_iteration)

    def run() -> Played:
        programs = [
            sample_instance(
                bench.system,
                instance,
                cfg.isft,
                cfg.reward,
                seed=bench.seed("sampling"),
                first_iteration=True,
                adapter=None,
            )
            for instance in instances
        ]
        records = run_programs(programs, engine)
        return Played("dialogues", [dialogue_text(d) for r in records for d in r["dialogues"]])

    return run


def tree_search(bench: Bench, engine: HFEngine, drafts: bool) -> Work:
    """T_norm (`token_budget`), then a search over ``search.tasks_per_iteration`` train tasks."""
    cfg, seed = bench.cfg, bench.seed("search")
    instances = take(bench.system.task, "train", cfg.search.tasks_per_iteration)

    def run() -> Played:
        budget = token_budget(bench.system, instances, engine, cfg.search, seed)
        trees = search(
            bench.system, instances, engine, cfg.search, cfg.reward, budget, seed=seed, policy=QPolicy()
        )
        return Played("trees", [tree_text(t) for t in trees], {"token_budget": budget})

    return run


def play(
    bench: Bench,
    engine: HFEngine,
    tasks: Sequence[TaskInstance],
    adapters: Sequence[str],
    references: Sequence[Dialogue] | None,
) -> list[Dialogue]:
    """Greedy validation dialogues of ``tasks`` under each adapter, in the same waves (``references``:
    θ*'s dialogues of the same tasks, replayed as drafts)."""
    programs = [
        bench.system.converse(
            task,
            GREEDY,
            seed=derive_seed(bench.seed("probes"), task.id),
            adapter=adapter,
            reference=references[i] if references else None,
        )
        for adapter in adapters
        for i, task in enumerate(tasks)
    ]
    return run_programs(programs, engine)


def probes(bench: Bench, engine: HFEngine, drafts: bool) -> Work:
    """θ*'s greedy dialogues on ``influence.validation_tasks`` validation tasks, then the same under every
    probe adapter (θ*'s as drafts when ``drafts``)."""
    for name, weights in bench.adapters.items():
        engine.add_adapter(name, weights)
    tasks = take(bench.system.task, "validation", bench.cfg.influence.validation_tasks)
    names = [name for name in bench.adapters if name != THETA]

    def run() -> Played:
        base = play(bench, engine, tasks, [THETA], None)
        probed = play(bench, engine, tasks, names, base if drafts else None)
        theta = [dialogue_text(d.to_dict()) for d in base]
        texts = [dialogue_text(d.to_dict()) for d in probed]
        changed = sum(text != theta[i % len(theta)] for i, text in enumerate(texts))  # adapter-major order
        return Played(
            "dialogues", theta + texts, {"probe_dialogues": len(texts), "probe_dialogues_changed": changed}
        )

    return run


SETUPS: dict[str, Callable[[Bench, HFEngine, bool], Work]] = {
    "evaluation": evaluation,
    "sampling": sampling,
    "search": tree_search,
    "probes": probes,
}


# ------------------------------------------------------------------------------------------ measuring
def new_engine(cfg: Any, reuse: bool) -> HFEngine:
    """A fresh engine as configured, or with prefix reuse off (earlier engines' memory freed first: an
    engine and its decoder refer to each other, so only the cycle collector frees them)."""
    gc.collect()
    engine_cfg = cfg.engine if reuse else cfg.engine.model_copy(update={"kv_cache_mb": 0})
    engine = make_engine(engine_cfg, cfg.model)
    if not isinstance(engine, HFEngine):
        raise SystemExit("bench/throughput.py measures the in-process engine: use engine.kind=hf")
    return engine


def measure(bench: Bench, workload: str, path: str, rates: dict[str, Any]) -> tuple[dict[str, Any], Played]:
    """One workload on a fresh engine (``path`` reuse: as configured; off: no prefix reuse, no drafts)."""
    reuse = path == "reuse"
    engine = new_engine(bench.cfg, reuse)
    work = SETUPS[workload](bench, engine, reuse)
    with Recorder(engine) as recorder, elapsed() as seconds:
        played = work()
    wall = seconds()
    passes = recorder.passes
    computed = passes["prefill"].positions + passes["decode"].positions
    forward = passes["prefill"].seconds + passes["decode"].seconds
    distinct = recorder.distinct_positions()
    ceiling = distinct / rates["forward_tokens_per_s"]
    result = {
        "wall_s": wall,
        "units": len(played.texts),
        "generated_tokens": engine.stats.generated_tokens,
        "positions_computed": computed,
        "nll_positions": passes["nll"].positions,
        "nll_texts": len(recorder.scored),
        "distinct_nll_texts": len(set(recorder.scored)),
        "mean_rows_per_decode_pass": ratio(passes["decode"].rows, passes["decode"].passes),
        "distinct_positions": distinct,
        "redundancy": ratio(computed, distinct),
        "ceiling_s": ceiling,
        "wall_over_ceiling": ratio(wall, ceiling),
        "time_split": {
            "forward": ratio(forward, wall),
            "engine_overhead": ratio(recorder.generate.seconds - forward, wall),
            "nll_scoring": ratio(recorder.nll.seconds, wall),
            "outside_engine": ratio(wall - recorder.generate.seconds - recorder.nll.seconds, wall),
        },
        "passes": {kind: asdict(totals) for kind, totals in passes.items()},
        "generate_calls": recorder.generate.calls,
        "decoder": asdict(engine.decoder.stats),
        "prefix_tree": asdict(engine.prefixes.stats),
        **played.extra,
    }
    print(
        f"  {workload} [{PATHS[path]}]: {wall:.1f}s, {len(played.texts)} {played.unit}, "
        f"{computed:,} positions computed / {distinct:,} distinct, wall / ceiling {ratio(wall, ceiling):.2f}"
    )
    return result, played


def compare(reuse: Played, off: Played) -> dict[str, Any]:
    """How many units came out with the same text on both paths."""
    same = sum(a == b for a, b in zip(reuse.texts, off.texts, strict=True))
    return {
        "unit": reuse.unit,
        "compared": len(reuse.texts),
        "identical": same,
        "fraction": ratio(same, len(reuse.texts)),
    }


def run_workload(bench: Bench, workload: str, rates: dict[str, Any]) -> dict[str, Any]:
    """Both paths of one workload, the speed-up and the identity check."""
    reuse, played_reuse = measure(bench, workload, "reuse", rates)
    off, played_off = measure(bench, workload, "off", rates)
    return {
        "reuse": reuse,
        "off": off,
        "speedup": ratio(off["wall_s"], reuse["wall_s"]),
        "identical": compare(played_reuse, played_off),
    }


# ------------------------------------------------------------------------------------------ report
TIME_SPLIT = ("forward", "engine_overhead", "nll_scoring", "outside_engine")


def both(name: str, workload: dict[str, Any], label: str, key: str, goal: str = "") -> dict[str, str]:
    """A summary row with a measure of both paths: ``reuse / caches off``."""
    reuse, off = workload["reuse"][key], workload["off"][key]
    return summary_row(f"{name}: {label}, reuse / caches off", f"{fmt(reuse)} / {fmt(off)}", goal)


def workload_rows(name: str, w: dict[str, Any]) -> list[dict[str, str]]:
    """One workload's summary rows."""
    reuse, same = w["reuse"], w["identical"]
    rows = [
        both(name, w, "wall s", "wall_s"),
        summary_row(f"{name}: speed-up from prefix reuse and drafts", w["speedup"]),
        both(name, w, "generated tokens", "generated_tokens"),
        both(name, w, "positions computed (prefill + decode)", "positions_computed"),
        both(name, w, "distinct positions needed", "distinct_positions"),
        both(name, w, "redundancy = computed / distinct", "redundancy", "goal <= 1.3 (reuse)"),
        summary_row(
            f"{name}: NLL scoring positions (not in the above); texts scored / distinct",
            f"{reuse['nll_positions']:,}; {reuse['nll_texts']:,} / {reuse['distinct_nll_texts']:,}",
        ),
        both(name, w, "mean rows per decode pass", "mean_rows_per_decode_pass"),
        summary_row(f"{name}: physical ceiling s = distinct / forward rate", reuse["ceiling_s"]),
        both(
            name, w, "wall / ceiling", "wall_over_ceiling", "goal <= 1.5 (reuse)" if name == "search" else ""
        ),
        summary_row(
            f"{name}: reuse wall: forward / engine overhead / NLL scoring / outside the engine",
            " / ".join(f"{reuse['time_split'][k]:.0%}" for k in TIME_SPLIT),
        ),
        summary_row(
            f"{name}: {same['unit']} with identical text on both paths",
            f"{same['identical']}/{same['compared']} ({same['fraction']:.0%})",
        ),
    ]
    if name == "probes":
        decoder = reuse["decoder"]
        rows.append(
            summary_row(
                "probes: probe dialogues that differ from θ*'s; draft tokens accepted",
                f"{reuse['probe_dialogues_changed']}/{reuse['probe_dialogues']}; "
                f"{decoder['accepted_draft_tokens']:,} of {decoder['draft_tokens']:,}",
                "depends on the probe step size (influence.probe_lr)",
            )
        )
    return rows


def summary_rows(results: dict[str, Any]) -> list[dict[str, str]]:
    rates = results["machine"]
    rows = [
        summary_row(
            f"machine: batched forward rate, {FORWARD_SHAPE[0]} x {FORWARD_SHAPE[1]} tokens (tok/s)",
            rates["forward_tokens_per_s"],
        ),
        summary_row(
            f"machine: decode rate, {DECODE_SHAPE[0]} rows x ~{DECODE_SHAPE[1]} cached (tok/s)",
            rates["decode_tokens_per_s"],
        ),
    ]
    for name, workload in results["workloads"].items():
        rows += workload_rows(name, workload)
    return rows


def parse_args() -> argparse.Namespace:
    parser = make_parser(NAME, __doc__.split("\n\n")[0])
    parser.add_argument(
        "--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS), help="which to run"
    )
    parser.add_argument("--eval-tasks", type=int, help="evaluation: test tasks E; full 32, quick 8")
    parser.add_argument("--sample-tasks", type=int, help="sampling: train tasks T; full 16, quick 4")
    parser.add_argument("--samples", type=int, help="sampling: dialogues N per task; full 6, quick 4")
    parser.add_argument("--trees", type=int, help="search: trees; full 16, quick 4")
    parser.add_argument("--expansions", type=int, help="search: expansions per tree; full 4, quick 2")
    parser.add_argument("--rollouts", type=int, help="search: rollouts per expansion; 2")
    parser.add_argument("--probes", type=int, help="probes: probe adapters K; full 8, quick 4")
    parser.add_argument("--validation", type=int, help="probes: validation tasks V; full 12, quick 4")
    parser.add_argument("--repeats", type=int, help="timed repeats of the machine's rates; full 5, quick 3")
    args = parser.parse_args()
    sized(args, SIZES)
    return args


def main() -> None:
    args = parse_args()
    sizes = [
        f"eval.limit={args.eval_tasks}",
        f"isft.tasks_per_iteration={args.sample_tasks}",
        f"isft.samples_per_task={args.samples}",
        f"search.tasks_per_iteration={args.trees}",
        f"search.expansions={args.expansions}",
        f"search.rollouts_per_expansion={args.rollouts}",
        f"influence.adapters_per_batch={args.probes}",
        f"influence.validation_tasks={args.validation}",
    ]
    cfg = bench_config(args.model, args.overrides, sizes)
    report = new_report(NAME, args)
    report["config"] = {
        k: getattr(cfg, k).model_dump() for k in ("engine", "dialogue", "isft", "search", "influence", "eval")
    }
    bench = Bench(cfg, build_system(cfg))
    engine = new_engine(cfg, reuse=True)
    rates = machine_rates(engine, bench.system, take(bench.system.task, "test", 8), args.repeats)
    print(
        f"machine: forward {rates['forward_tokens_per_s']:,.0f} tok/s, decode {rates['decode_tokens_per_s']:,.0f} tok/s"
    )
    if "probes" in args.workloads:
        bench.adapters = random_loras(engine, cfg, bench.seed("adapters"))
    del engine
    workloads = {name: run_workload(bench, name, rates) for name in WORKLOADS if name in args.workloads}
    report["results"] = {"machine": rates, "workloads": workloads}
    report["summary"] = summary_rows(report["results"])
    finish(NAME, args, report)


if __name__ == "__main__":
    main()
