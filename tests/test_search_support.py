"""Shared helpers for the search tests: a tiny task, a seeded responder, hand-built trees."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Sequence

from dits.config import DialogueConfig
from dits.engines.base import GenerationRequest, SamplingParams
from dits.mas.dialogue import TwoAgentSystem
from dits.mas.turn import SPEAKERS, Turn
from dits.search.tree import ROOT, Tree
from dits.tasks.base import Task, TaskInstance
from dits.tasks.types import Split

ANSWER = re.compile(r"<A>(.*?)</A>", re.S)

Spec = Sequence[tuple[str, float, "Spec"]]
"""A hand-built subtree: (utterance, Q, children) per child."""


class ToyTask(Task):
    """Capital-city questions; answers in <A>…</A>; exact match."""

    name = "toy"
    family = "qa"

    def instances(self, split: Split) -> Iterator[TaskInstance]:
        return (make_instance(f"{split}-{i}") for i in range(3))

    def extract(self, text: str, instance: TaskInstance) -> str | None:
        found = ANSWER.findall(text)
        return found[-1].strip().lower() if found else None

    def score(self, prediction: str | None, instance: TaskInstance) -> float:
        return float(prediction in instance.answers)


def make_instance(instance_id: str = "q1", question: str = "What is the capital of France?") -> TaskInstance:
    return TaskInstance(
        id=instance_id,
        task="toy",
        family="qa",
        question=question,
        answers=("paris",),
        metric="em",
        answer_format="tag",
        context={"alice": ("France is a country in Europe.",), "bob": ("The capital of France is Paris.",)},
    )


def make_system(max_turns: int = 4) -> TwoAgentSystem:
    return TwoAgentSystem(ToyTask(), DialogueConfig(max_turns=max_turns, max_utterance_tokens=32))


UTTERANCES = (
    "<A>paris</A>",
    "I think the answer is <A>paris</A>",
    "<A>london</A>",
    "Let me check my notes about the city first.",
    "My notes mention a river, the Seine, and a tower.",
    "<A>rome</A>",
)


def seeded_responder(request: GenerationRequest, params: SamplingParams, rng: random.Random) -> str:
    """Depends only on the request's seed (through ``rng``)."""
    return rng.choice(UTTERANCES)


def build_tree(spec: Spec, instance: TaskInstance | None = None) -> Tree:
    """A tree with the given children under the root; speakers alternate by depth; visits = 1."""
    tree = Tree(instance or make_instance())

    def add(parent: int, children: Spec) -> None:
        for text, value, grandchildren in children:
            depth = len(tree.path_turns(parent))
            node_id = tree.add_child(parent, Turn(SPEAKERS[depth % 2], text, len(text.split())))
            tree.nodes[node_id].value = value
            tree.nodes[node_id].visits = 1
            add(node_id, grandchildren)

    add(ROOT, spec)
    return tree
