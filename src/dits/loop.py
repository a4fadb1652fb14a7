"""Iterative drivers (iSFT, iDPO, iSFT-DPO, DITS) as a sequence of resumable stages.

Every stage has a key such as ``iter_0/trees``; the manifest records it as done only after its outputs
are durable, and a re-run skips done stages and, inside a stage, finished task ids. All randomness is
derived from (run seed, stage, task id, ...), so a resumed run produces the same artefacts as an
uninterrupted one.

Policies are LoRA adapters on the base model (or full models with ``lora: false``); the engine keeps
them loaded side by side under their stage names.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from dits import __version__
from dits.config import RunConfig, dump_config, validate_config
from dits.engines.base import Engine, derive_seed
from dits.engines.batching import run_programs
from dits.engines.factory import make_engine
from dits.errors import DitsError
from dits.evaluate import evaluate, write_eval
from dits.isft import sample_instance, select_sft_dialogues
from dits.memory import peak_memory
from dits.models import ModelRef, resolve_model
from dits.progress import StageTimer, console, progress_bar
from dits.runtime import build_system, reward_weights, take
from dits.search.pairs import PreferencePair, extract_pairs
from dits.search.policy import InfluencePolicy, NodePolicy, QPolicy
from dits.search.runner import grow, round_sizes, token_budget
from dits.search.tree import Tree
from dits.store import RunStore, write_atomic
from dits.tasks.base import TaskInstance
from dits.train.records import dpo_rows, sft_rows

Policy = tuple[str, Path] | None
"""The current model: (adapter name in the engine, folder), or None for the base model."""


def plan_blocks(cfg: RunConfig) -> dict[str, tuple[int, int]]:
    """Which slice (offset, count) of the train split each synthesis stage consumes: one shared cursor,
    so every stage gets fresh tasks (Optima's sequential, wrap-free task stream)."""
    blocks: dict[str, tuple[int, int]] = {}
    cursor = 0

    def take_block(stage: str, count: int) -> None:
        nonlocal cursor
        blocks[stage] = (cursor, count)
        cursor += count

    if cfg.method == "idpo":
        take_block("init/samples", cfg.isft.tasks_per_iteration)
    for it in range(iterations(cfg)):
        if cfg.method != "idpo":
            take_block(f"iter_{it}/samples", cfg.isft.tasks_per_iteration)
        if cfg.method != "isft":
            take_block(f"iter_{it}/trees", cfg.search.tasks_per_iteration)
    return blocks


def iterations(cfg: RunConfig) -> int:
    return 1 if cfg.method == "dits-dpo" else cfg.loop.iterations


class Run:
    """One run directory: its config, store, task, two-agent system and (lazily) its engine."""

    def __init__(self, cfg: RunConfig, engine: Engine | None = None) -> None:
        self.cfg = cfg
        self.store = RunStore(cfg.run_dir)
        self._check_config()
        self.system = build_system(cfg)
        self.weights = reward_weights(cfg)
        self.blocks = plan_blocks(cfg)
        self._engine = engine

    def _check_config(self) -> None:
        """Refuse to resume a run directory whose saved config differs from ``cfg``. The saved config is
        read with today's schema first, so a run saved before a config key existed resumes as long as
        the new key keeps its default (the behaviour the run was started with)."""
        text = dump_config(self.cfg)
        path = self.store.path("config.yaml")
        if path.exists() and not _same_config(path.read_text(), text):
            raise DitsError(
                f"{self.store.root} holds a run with a different config; resume with the same config "
                "and overrides, or choose another name (name=...)"
            )
        if not path.exists():
            write_atomic(path, text)
            self.store.set_meta("dits_version", __version__)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(self.cfg.engine, self.cfg.model)
        return self._engine

    # ------------------------------------------------------------------ plumbing
    def stage(self, key: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run ``work`` unless the stage is done; record its summary (with tokens generated, wall time and
        peak memory)."""
        if self.store.is_done(key):
            return self.store.summary(key)
        self.store.mark_started(key)
        timer = StageTimer(key)
        tokens_before = self.engine.stats.generated_tokens if self._engine is not None else 0
        with peak_memory() as peaks:
            summary = work()
        tokens_after = self.engine.stats.generated_tokens if self._engine is not None else 0
        summary.setdefault("tokens_generated", tokens_after - tokens_before)
        summary.update(peaks())
        timer.summary(
            **{k: v for k, v in summary.items() if not isinstance(v, (dict, list)) and k != "wall_time"}
        )
        summary["wall_time"] = round(timer.seconds, 2)
        self.store.mark_done(key, summary)
        return summary

    def seed(self, *parts: object) -> int:
        return derive_seed(self.cfg.seed, *parts)

    def train_seed(self, *parts: object) -> int:
        """A seed for trainers (numpy and HF accept only 32-bit seeds)."""
        return self.seed(*parts) % 2**31

    def adapter(self, policy: Policy) -> str | None:
        """Make sure the policy's adapter is loaded in the engine; return its name (None = base)."""
        if policy is None:
            return None
        name, path = policy
        if not (Path(path) / "adapter_config.json").exists():  # a fully fine-tuned model: serve it instead
            served = getattr(self.engine, "ref", None)  # engines without models (fake) serve anything
            if served is not None and str(served.base) != str(path):
                self._engine = make_engine(self.cfg.engine, str(path), reference=self.cfg.model)
            return None
        if name not in self.engine.adapters():
            self.engine.load_adapter(name, path)  # type: ignore[attr-defined]
        return name

    def adapter_name(self, it: str, stage: str) -> str:
        """Engine-wide unique adapter name (runs may share an engine, e.g. in the demo)."""
        return re.sub(r"\W", "_", f"{self.cfg.name}_{it}_{stage}")

    def model_ref(self, policy: Policy) -> ModelRef:
        return resolve_model(self.cfg.model) if policy is None else resolve_model(str(policy[1]))

    def train_instances(self, stage: str) -> list[TaskInstance]:
        offset, count = self.blocks[stage]
        instances = take(self.system.task, "train", count, offset)
        if len(instances) < count:
            raise DitsError(
                f"task {self.cfg.task.name}: stage {stage} needs train tasks {offset}..{offset + count} but the "
                f"train split has only {offset + len(instances)}; lower isft/search.tasks_per_iteration"
            )
        return instances

    # ------------------------------------------------------------------ stages
    def evaluate(self, label: str, policy: Policy) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            instances = take(self.system.task, self.cfg.eval.split, self.cfg.eval.limit)
            records, summary = evaluate(
                self.system,
                instances,
                self.engine,
                model_label=label,
                split=self.cfg.eval.split,
                adapter=self.adapter(policy),
                seed=self.seed("eval"),
                self_consistency=self.cfg.eval.self_consistency,
                sc_temperature=self.cfg.eval.self_consistency_temperature,
            )
            write_eval(self.store.path("eval", f"{label}.json"), records, summary)
            return summary.to_dict()

        return self.stage(f"eval/{label}", work)

    def sample(self, it: str, policy: Policy, first: bool) -> list[dict[str, Any]]:
        """iSFT sampling: N dialogues per task with rewards, appended per task as they finish."""
        key = f"{it}/samples"
        log = self.store.log(it, "sft_samples.jsonl")
        instances = self.train_instances(key)

        def work() -> dict[str, Any]:
            done = log.ids()
            todo = [i for i in instances if i.id not in done]
            programs = [
                sample_instance(
                    self.system,
                    i,
                    self.cfg.isft,
                    self.weights,
                    seed=self.seed(it, "samples"),
                    first_iteration=first,
                    adapter=self.adapter(policy),
                )
                for i in todo
            ]
            with progress_bar(f"{it} iSFT sampling", len(todo)) as advance:
                run_programs(programs, self.engine, on_done=lambda _i, rec: (log.append(rec), advance(1)))
            records = _in_order(log.read(), instances)
            write_atomic(log.path, "".join(_json_line(r) for r in records))
            return {"tasks": len(records), "dialogues": sum(len(r["dialogues"]) for r in records)}

        self.stage(key, work)
        return _in_order(log.read(), instances)

    def train_sft(self, it: str, records: Sequence[dict[str, Any]], policy: Policy) -> Policy:
        """SFT on the best dialogues (from the base model, or continuing ``policy`` when not from initial)."""
        from dits.train.sft import train_sft

        out = self.store.path(it, "sft")

        def work() -> dict[str, Any]:
            chosen = select_sft_dialogues(records, self.cfg.isft)
            if not chosen:
                raise DitsError(
                    f"{it}: no sampled dialogue reached isft.min_reward={self.cfg.isft.min_reward}; "
                    "lower isft.min_reward or sample more (isft.samples_per_task)"
                )
            rows = [
                r
                for inst, d, _ in chosen
                for r in sft_rows(d, inst, demonstrate=self.cfg.dialogue.demonstration)
            ]
            init = None if self.cfg.loop.sft_from_initial or policy is None else policy[1]
            result = train_sft(
                self.cfg.model, rows, self.cfg.sft, out, seed=self.train_seed(it, "sft"), init_adapter=init
            )
            return {
                "tasks_kept": len(chosen),
                "rows": len(rows),
                "steps": result.steps,
                "final_loss": result.losses[-1] if result.losses else None,
                "output": str(out),
            }

        self.stage(f"{it}/sft", work)
        return (self.adapter_name(it, "sft"), out)

    def search_trees(self, it: str, policy: Policy) -> list[Tree]:
        """Token budget probe, then wave-batched tree search over a fresh block of tasks: Q-guided in one
        go, or (``search.guidance: influence``) in rounds with the pairs of each round probed before the
        next, so node priority mixes Q with measured influence."""
        instances = self.train_instances(f"{it}/trees")
        adapter = self.adapter(policy)
        budget = self.stage(
            f"{it}/token_budget",
            lambda: {
                "token_budget": token_budget(
                    self.system,
                    instances,
                    self.engine,
                    self.cfg.search,
                    self.seed(it, "budget"),
                    adapter=adapter,
                )
            },
        )["token_budget"]
        guided = self.cfg.search.guidance == "influence"
        sizes = round_sizes(self.cfg.search.expansions, self.cfg.search.rounds if guided else 1)
        trees = [Tree(instance) for instance in instances]
        for r, expansions in enumerate(sizes):
            last = r == len(sizes) - 1
            name = "trees.jsonl" if last else f"trees_round{r}.jsonl"
            key = f"{it}/trees" if last else f"{it}/trees/round_{r}"
            node_policy = self._node_policy(it, trees) if guided and r > 0 else QPolicy()
            trees = self._grow(key, it, name, trees, expansions, budget, node_policy, adapter)
            if not last:
                self._probe_round(it, r, policy, trees)
        return trees

    def _node_policy(self, it: str, trees: Sequence[Tree]) -> NodePolicy:
        """Q + γ_s·Î with the influence of every pair probed so far written onto its branch node."""
        from dits.influence.selection import assign_influence, influence_bounds
        from dits.influence.stage import probed_influence

        influence = probed_influence(self, it)
        assign_influence(trees, self._extract(trees), influence)
        return InfluencePolicy(self.cfg.search.influence_weight, bounds=influence_bounds(influence))

    def _probe_round(self, it: str, r: int, policy: Policy, trees: Sequence[Tree]) -> None:
        from dits.influence.stage import probe

        probe(self, f"{it}/influence/round_{r}", it, policy, self._extract(trees))

    def _extract(self, trees: Sequence[Tree]) -> list[PreferencePair]:
        demonstrate = self.cfg.dialogue.demonstration
        return [p for t in trees for p in extract_pairs(t, self.cfg.pairs, demonstrate=demonstrate)]

    def _grow(
        self,
        key: str,
        it: str,
        name: str,
        trees: list[Tree],
        expansions: int,
        budget: float,
        node_policy: NodePolicy,
        adapter: str | None,
    ) -> list[Tree]:
        """Stage ``key``: grow every tree by ``expansions`` (finished trees appended to ``name``)."""
        log = self.store.log(it, name)
        instances = [t.instance for t in trees]

        def work() -> dict[str, Any]:
            done = log.ids()
            todo = [copy.deepcopy(t) for t in trees if t.id not in done]
            with progress_bar(f"{key} tree search", len(todo)) as advance:
                grow(
                    self.system,
                    todo,
                    self.engine,
                    expansions,
                    self.cfg.search,
                    self.weights,
                    budget,
                    seed=self.seed(it, "search"),
                    policy=node_policy,
                    adapter=adapter,
                    on_tree_done=lambda tree: (log.append({"id": tree.id, **tree.to_dict()}), advance(1)),
                )
            grown = _in_order(log.read(), instances)
            write_atomic(log.path, "".join(_json_line(t) for t in grown))
            return {"trees": len(grown), "nodes": sum(len(t["nodes"]) for t in grown), "token_budget": budget}

        self.stage(key, work)
        return [Tree.from_dict(t) for t in _in_order(log.read(), instances)]

    def pairs(self, it: str, trees: Sequence[Tree]) -> list[PreferencePair]:
        log = self.store.log(it, "pairs.jsonl")

        def work() -> dict[str, Any]:
            pairs = [
                p
                for t in trees
                for p in extract_pairs(t, self.cfg.pairs, demonstrate=self.cfg.dialogue.demonstration)
            ]
            write_atomic(log.path, "".join(_json_line(p.to_dict()) for p in pairs))
            return {"pairs": len(pairs)}

        self.stage(f"{it}/pairs", work)
        return [PreferencePair.from_dict(r) for r in log.read()]

    def train_dpo(self, it: str, policy: Policy, pairs: Sequence[PreferencePair]) -> Policy:
        from dits.train.dpo import train_dpo

        out = self.store.path(it, "dpo")

        def work() -> dict[str, Any]:
            if not pairs:
                raise DitsError(
                    f"{it}: the search produced no preference pair that passed the prefilters; lower "
                    "pairs.min_chosen_value / pairs.min_gap or search more tasks"
                )
            result = train_dpo(
                self.model_ref(policy), dpo_rows(pairs), self.cfg.dpo, out, seed=self.train_seed(it, "dpo")
            )
            return {
                "pairs": len(pairs),
                "steps": result.steps,
                "dropped": result.dropped,
                "final_loss": result.losses[-1] if result.losses else None,
                "output": str(out),
            }

        self.stage(f"{it}/dpo", work)
        return (self.adapter_name(it, "dpo"), out)

    def influence_and_selection(
        self, it: str, policy: Policy, pairs: list[PreferencePair]
    ) -> list[PreferencePair]:
        """DITS: influence of every candidate group, then H = Q + γ·minmax(I), top α (or an ablation)."""
        from dits.influence.stage import select

        return select(self, it, policy, pairs)


def _json_line(record: dict[str, Any]) -> str:
    import json

    return json.dumps(record, ensure_ascii=False) + "\n"


def _in_order(records: Sequence[dict[str, Any]], instances: Sequence[TaskInstance]) -> list[dict[str, Any]]:
    """Records sorted into the order of ``instances`` (resumed stages finish in another order)."""
    by_id = {str(r["id"]): r for r in records}
    return [by_id[i.id] for i in instances if i.id in by_id]


def _same_config(saved: str, current: str) -> bool:
    """Whether a saved config (YAML) is ``current`` once keys added since it was saved take their
    defaults; a saved key that no longer exists, or any changed value, makes them differ."""
    try:
        return dump_config(validate_config(yaml.safe_load(saved) or {}, "saved config")) == current
    except (DitsError, yaml.YAMLError):
        return False


def run(cfg: RunConfig, engine: Engine | None = None) -> dict[str, Any]:
    """The whole iterative pipeline of ``cfg`` (resumes if the run directory has finished stages)."""
    r = Run(cfg, engine)
    console.rule(f"dits run {cfg.name}: {cfg.method}, {cfg.model}, task {cfg.task.name}")
    results = {"base": r.evaluate("base", None)}
    policy: Policy = None
    if cfg.method == "idpo":
        policy = r.train_sft("init", r.sample("init", None, first=True), None)
    for k in range(iterations(cfg)):
        it = f"iter_{k}"
        if cfg.method != "idpo":
            policy = r.train_sft(it, r.sample(it, policy, first=k == 0), policy)
        if cfg.method != "isft":
            pairs = r.pairs(it, r.search_trees(it, policy))
            if cfg.method in ("dits", "dits-dpo"):
                pairs = r.influence_and_selection(it, policy, pairs)
            policy = r.train_dpo(it, policy, pairs)
        results[it] = r.evaluate(it, policy)
    console.rule("results")
    for label, summary in results.items():
        console.print(f"{label:8s} score {summary['score']:.3f}  mean tokens {summary['mean_tokens']:.1f}")
    r.store.set_meta("final", {k: v["score"] for k, v in results.items()})
    return results
