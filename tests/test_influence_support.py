"""Shared helpers for the influence tests: a text-sensitive task, an engine with an "SFT" adapter, pairs."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator

import torch
from peft import LoraConfig

from dits.config import DialogueConfig, InfluenceConfig, TrainConfig
from dits.engines.base import AdapterWeights
from dits.engines.hf import HFEngine
from dits.mas.dialogue import TwoAgentSystem
from dits.mas.render import agent_view
from dits.search.pairs import PreferencePair
from dits.tasks.base import Task, TaskInstance
from dits.tasks.types import Split

POLICY = "sft"
WORDS = ("surely", "well", "hmm", "okay", "listen", "indeed", "city", "river", "tower", "maybe", "never")
DPO = TrainConfig(beta=0.1, max_length=256)
FAST = InfluenceConfig(
    validation_tasks=3,
    group_size=2,
    warmup_steps=2,
    warmup_batch_size=2,
    probe_lr=0.02,
    adapters_per_batch=3,
    racing_initial_tasks=1,
)


class HashTask(Task):
    """A task any text scores on: the "answer" is the utterance's start, scored by a hash in [0, 1], so a
    changed dialogue almost always changes the score (the random model never writes <A> tags)."""

    name = "text-hash"
    family = "qa"

    def instances(self, split: Split) -> Iterator[TaskInstance]:
        for i in range(6):
            yield TaskInstance(
                id=f"{split}-{i}",
                task=self.name,
                family="qa",
                question=f"Which city is number {i}?",
                answers=("x",),
                metric="f1",
                answer_format="tag",
                context={"alice": (f"City {i} is north.",), "bob": (f"City {i} is Lorvik.",)},
            )

    def extract(self, text: str, instance: TaskInstance) -> str | None:
        return text.strip()[:24] or None

    def score(self, prediction: str | None, instance: TaskInstance) -> float:
        if not prediction:
            return 0.0
        return int(hashlib.md5(prediction.encode()).hexdigest(), 16) % 1000 / 999


def make_system() -> TwoAgentSystem:
    return TwoAgentSystem(
        HashTask(),
        DialogueConfig(max_turns=2, max_utterance_tokens=4, stop_on_overlong=False, demonstration=False),
    )


def make_engine(model: str) -> HFEngine:
    """tiny-random with a seeded random (non-zero) LoRA adapter ``POLICY`` playing the SFT model."""
    engine = HFEngine(model, batch_size=16)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False
    )
    torch.manual_seed(0)
    engine.add_adapter(POLICY, AdapterWeights(config, {}))
    engine.default_adapter = POLICY
    return engine


def make_pairs(trees: int = 4, per_tree: int = 2) -> list[PreferencePair]:
    """``per_tree`` pairs at the root of each of ``trees`` training instances (Alice's first turn)."""
    pairs, rng = [], random.Random(0)
    for instance in list(HashTask().instances("train"))[:trees]:
        prompt = agent_view(instance, "alice", [], demonstrate=False)
        for k in range(per_tree):
            pairs.append(
                PreferencePair(
                    id=f"{instance.id}/{k}",
                    tree_id=instance.id,
                    node_id=k,
                    instance_id=instance.id,
                    speaker="alice",
                    prompt=prompt,
                    chosen=f"{' '.join(rng.sample(WORDS, 3))} <A>Lorvik</A>",
                    rejected=" ".join(rng.sample(WORDS, 4)),
                    chosen_value=1.0 - 0.1 * k,
                    rejected_value=0.0,
                    meta={"context_messages": len(prompt)},
                )
            )
    return pairs


def validation(n: int = 6) -> list[TaskInstance]:
    return list(HashTask().instances("validation"))[:n]
