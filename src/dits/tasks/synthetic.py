"""Built-in procedurally generated tasks: seeded, unlimited, with difficulty knobs.

* ``synth-ie`` (family ``qa``, metric ``f1``, ``<A>`` tags): information exchange in the style of
  2WikiMultiHopQA over invented people, films and cities. ``comparison``: "Who was born first, X or Y?"
  (Alice holds one birth year, Bob the other); ``composition``: "In which city was the director of the
  film F born?" (Alice: F was directed by P; Bob: P was born in C); ``lookup``, the easiest: "In which
  city was P born?" (one agent holds the answer, the other a fact about P that does not answer it).
  Each agent also gets ``distractors`` facts of the same kinds about other invented entities.
* ``synth-debate`` (family ``debate``, metric ``numeric``, ``\\boxed{}``): arithmetic word problems with
  ``steps`` operations (``add``/``sub``/``mul``) on numbers up to ``max_value``.

Instance ``index`` of split ``s`` is drawn from a generator seeded by (task, seed option, s, index) and
kept only if the stable hash of its question falls in ``s`` (80/10/10), so a question text never occurs
in two splits: train, validation and test are disjoint by construction, and each split's stream is
unbounded (take what you need with ``itertools.islice``). Defaults are easy (one step, small numbers,
one distractor): the target is a 135M chat model.
"""

from __future__ import annotations

import itertools
import random
from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import replace
from typing import ClassVar, Literal

from pydantic import Field

from dits.errors import DitsError
from dits.tasks.base import Task, TaskInstance
from dits.tasks.options import TaskOptions, parse_options
from dits.tasks.seeding import hash_split, seeded_rng
from dits.tasks.types import SPLITS, AnswerFormat, MetricName, Split


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


FIRST_NAMES = _words(
    "Nora Omar Lena Hugo Mira Tobias Elise Ravi Ines Felix Alma Jonas Priya Milo Sofia "
    "Anton Clara Emil Yara Leon Greta Pablo Ada Oskar Selma Theo Wren Idris Maren Luca"
)
LAST_NAMES = _words(
    "Whitby Castell Brandt Marrow Fenwick Halloway Dunmore Ashcombe Kessler Varga Lindqvist Moreau "
    "Pellham Rourke Saltis Thorne Vance Wexley Yardley Corvin Ebbert Galloway Harlan Ivers Jaskel "
    "Kittridge Lowell Merrin Norwood Prewitt"
)
CITIES = _words(
    "Lorvik Brindale Castmoor Eldhaven Fennmouth Galloran Hollisford Ivenbury Jorvale Kestermoor Lindwick "
    "Marrowby Northolm Pellbrook Quenford Ravensholt Saltmere Thornwick Ulverdale Valebridge Westerholm "
    "Yarrowby Zellmoor Ambergate"
)
FILM_ADJECTIVES = _words(
    "Silver Quiet Hollow Crimson Distant Paper Golden Broken Hidden Winter Burning Silent Velvet Iron "
    "Painted Wandering Forgotten Glass Northern Midnight"
)
FILM_NOUNS = _words(
    "Harbor Garden Lantern River Mirror Orchard Tower Bridge Meadow Letter Compass Island Violin "
    "Train Kingdom Summer Window Voyage Feather Road"
)
ITEMS = _words("apple pencil sticker marble book cookie coin shell card stamp")
PEOPLE = tuple(f"{first} {last}" for first in FIRST_NAMES for last in LAST_NAMES)
FILMS = tuple(f"The {adjective} {noun}" for adjective in FILM_ADJECTIVES for noun in FILM_NOUNS)

Kind = Literal["comparison", "composition", "lookup"]
Operation = Literal["add", "sub", "mul"]
_MAX_MISSES = 10_000


class SyntheticOptions(TaskOptions):
    seed: int = Field(0, description="seed of the instance stream")


class SyntheticTask(Task):
    """Shared machinery: seeded drafts, hash partition of questions into splits, sequential ids."""

    metric: ClassVar[MetricName]
    answer_format: ClassVar[AnswerFormat]
    Options: ClassVar[type[SyntheticOptions]]
    endless = True

    def __init__(self, **options: object) -> None:
        self.options = parse_options(self.name, self.Options, options)

    @abstractmethod
    def draft(self, rng: random.Random) -> TaskInstance | None:
        """One candidate instance (its id is set later), or None when the draw is unusable."""

    def instances(self, split: Split) -> Iterator[TaskInstance]:
        if split not in SPLITS:
            raise DitsError(f"task {self.name}: unknown split {split!r}; use {', '.join(SPLITS)}")
        kept = misses = 0
        for index in itertools.count():
            candidate = self.draft(seeded_rng(self.name, self.options.seed, split, index))
            if candidate is None or hash_split(candidate.question) != split:
                misses += 1
                if misses > _MAX_MISSES:
                    raise DitsError(
                        f"task {self.name}: no new {split} instance in {_MAX_MISSES} draws; the options allow "
                        "too few distinct questions (raise max_value, steps or the allowed kinds)"
                    )
                continue
            misses = 0
            yield replace(candidate, id=f"{split}-{kept}")
            kept += 1

    def make(
        self, question: str, answer: str, context: dict[str, tuple[str, ...]], **meta: object
    ) -> TaskInstance:
        return TaskInstance(
            id="",
            task=self.name,
            family=self.family,
            question=question,
            answers=(answer,),
            metric=self.metric,
            answer_format=self.answer_format,
            context=context,
            meta=meta,
        )


class SyntheticIEOptions(SyntheticOptions):
    distractors: int = Field(1, ge=0, le=20, description="distractor facts per agent")
    kinds: tuple[Kind, ...] = Field(("comparison", "composition"), min_length=1, description="question kinds")


class SyntheticIE(SyntheticTask):
    name = "synth-ie"
    family = "qa"
    metric = "f1"
    answer_format = "tag"
    description = "synthetic information exchange: birth-year comparisons, film-director-city chains, lookups"
    Options: ClassVar[type[SyntheticOptions]] = SyntheticIEOptions
    options: SyntheticIEOptions

    def draft(self, rng: random.Random) -> TaskInstance:
        kind = rng.choice(self.options.kinds)
        need = 2 * self.options.distractors + 2  # enough fresh entities for every fact
        people, films = iter(rng.sample(PEOPLE, need)), iter(rng.sample(FILMS, need))
        if kind == "comparison":
            first, second = next(people), next(people)
            years = rng.sample(range(1900, 2000), 2)
            question = f"Who was born first, {first} or {second}?"
            answer = first if years[0] < years[1] else second
            own = [f"{first} was born in {years[0]}.", f"{second} was born in {years[1]}."]
            rng.shuffle(own)
        else:
            film, director, city = next(films), next(people), rng.choice(CITIES)
            question = f"In which city was the director of the film {film} born?"
            answer = city
            own = [f"{film} was directed by {director}.", f"{director} was born in {city}."]
            if kind == "lookup":  # same facts, but the question names the person: one hop
                question = f"In which city was {director} born?"
                rng.shuffle(own)

        def distractor() -> str:
            if kind == "comparison":
                return f"{next(people)} was born in {rng.randrange(1900, 2000)}."
            if rng.random() < 0.5:
                return f"{next(films)} was directed by {next(people)}."
            return f"{next(people)} was born in {rng.choice(CITIES)}."

        context = {}
        for agent, fact in zip(("alice", "bob"), own, strict=True):
            facts = [fact] + [distractor() for _ in range(self.options.distractors)]
            rng.shuffle(facts)
            context[agent] = tuple(facts)
        return self.make(question, answer, context, kind=kind, distractors=self.options.distractors)


class SyntheticDebateOptions(SyntheticOptions):
    steps: int = Field(1, ge=1, le=6, description="arithmetic operations per problem")
    max_value: int = Field(10, ge=2, le=1000, description="largest number in the problem")
    operations: tuple[Operation, ...] = Field(("add", "sub"), min_length=1, description="allowed operations")


class SyntheticDebate(SyntheticTask):
    name = "synth-debate"
    family = "debate"
    metric = "numeric"
    answer_format = "boxed"
    description = "synthetic arithmetic word problems (1-6 steps of add / sub / mul) for solver and critic"
    Options: ClassVar[type[SyntheticOptions]] = SyntheticDebateOptions
    options: SyntheticDebateOptions

    def draft(self, rng: random.Random) -> TaskInstance | None:
        name, item = rng.choice(FIRST_NAMES), rng.choice(ITEMS)
        items = f"{item}s"
        top = self.options.max_value
        value = rng.randint(1, top)
        sentences = [f"{name} has {_count(value, item)}."]
        used = []
        for _ in range(self.options.steps):
            allowed = [op for op in self.options.operations if op != "sub" or value > 0]
            if not allowed:
                return None
            operation = rng.choice(allowed)
            if operation == "add":
                amount = rng.randint(1, top)
                value += amount
                sentences.append(f"Then {name} gets {amount} more {items if amount > 1 else item}.")
            elif operation == "sub":
                amount = rng.randint(1, min(top, value))
                value -= amount
                sentences.append(f"Then {name} gives {_count(amount, item)} to a friend.")
            else:
                amount = rng.randint(2, min(top, 5))
                value *= amount
                sentences.append(f"Then the number of {items} {name} has becomes {amount} times as large.")
            used.append(operation)
        sentences.append(f"How many {items} does {name} have now?")
        return self.make(
            " ".join(sentences), str(value), {}, kind="arithmetic", steps=self.options.steps, operations=used
        )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
