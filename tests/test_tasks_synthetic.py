import itertools
import re

import pytest

from dits.errors import DitsError
from dits.tasks.synthetic import SyntheticDebate, SyntheticIE


def take(task, split, n):
    return list(itertools.islice(task.instances(split), n))


@pytest.mark.parametrize(
    "task",
    [
        SyntheticIE(),
        SyntheticIE(kinds=["composition"], distractors=0),
        SyntheticIE(kinds=["lookup"], distractors=0),
        SyntheticDebate(),
        SyntheticDebate(max_value=2, operations=["add"]),  # a tiny question space: still disjoint
    ],
    ids=["ie", "ie-composition", "ie-lookup", "debate", "debate-tiny"],
)
def test_splits_are_disjoint_and_deterministic(task):
    questions = {
        split: {i.question for i in take(task, split, 150)} for split in ("train", "validation", "test")
    }
    assert not questions["train"] & questions["validation"]
    assert not questions["train"] & questions["test"]
    assert not questions["validation"] & questions["test"]
    assert take(task, "test", 20) == take(type(task)(**task.options.model_dump()), "test", 20)
    assert [i.id for i in take(task, "validation", 3)] == ["validation-0", "validation-1", "validation-2"]


def test_seed_option_changes_the_stream():
    assert take(SyntheticIE(), "train", 5) != take(SyntheticIE(seed=1), "train", 5)


def test_ie_comparison_facts_answer_the_question():
    instances = [i for i in take(SyntheticIE(kinds=["comparison"], distractors=2), "train", 40)]
    for instance in instances:
        first, second = re.fullmatch(r"Who was born first, (.+) or (.+)\?", instance.question).groups()
        facts = dict(
            re.fullmatch(r"(.+) was born in (\d{4})\.", fact).groups()
            for agent in ("alice", "bob")
            for fact in instance.context[agent]
        )
        assert instance.answers == ((first if facts[first] < facts[second] else second),)
        # each agent holds exactly one of the two people, plus its distractors
        for agent in ("alice", "bob"):
            assert len(instance.context[agent]) == 3
            assert sum(fact.startswith((first + " ", second + " ")) for fact in instance.context[agent]) == 1
        assert instance.meta == {"kind": "comparison", "distractors": 2}
        assert instance.family == "qa" and instance.metric == "f1" and instance.answer_format == "tag"


def test_ie_composition_needs_both_agents():
    for instance in take(SyntheticIE(kinds=["composition"]), "test", 30):
        film = re.fullmatch(
            r"In which city was the director of the film (.+) born\?", instance.question
        ).group(1)
        (directed,) = [f for f in instance.context["alice"] if f.startswith(film + " was directed by ")]
        director = directed.removeprefix(film + " was directed by ").rstrip(".")
        (born,) = [f for f in instance.context["bob"] if f.startswith(director + " was born in ")]
        assert instance.answers == (born.removeprefix(director + " was born in ").rstrip("."),)
        assert not any(f.startswith(director + " ") for f in instance.context["alice"])
        assert instance.meta["kind"] == "composition"


def test_ie_lookup_has_the_answer_on_exactly_one_side():
    holders = set()
    for instance in take(SyntheticIE(kinds=["lookup"], distractors=1), "train", 40):
        person = re.fullmatch(r"In which city was (.+) born\?", instance.question).group(1)
        answering = [
            agent
            for agent in ("alice", "bob")
            for fact in instance.context[agent]
            if fact == f"{person} was born in {instance.answers[0]}."
        ]
        assert len(answering) == 1
        other = "bob" if answering == ["alice"] else "alice"
        assert any(fact.endswith(f"directed by {person}.") for fact in instance.context[other])
        holders.add(answering[0])
        assert instance.meta["kind"] == "lookup"
    assert holders == {"alice", "bob"}


@pytest.mark.parametrize("options", [{}, {"steps": 3, "operations": ["add", "sub", "mul"], "max_value": 20}])
def test_debate_answers_are_the_arithmetic_result(options):
    task = SyntheticDebate(**options)
    for instance in take(task, "train", 50):
        sentences = instance.question.split(". ")
        value = int(re.search(r"has (\d+) ", sentences[0]).group(1))
        for sentence in sentences[1:-1]:
            number = int(re.search(r"(\d+)", sentence).group(1))
            if " gets " in sentence:
                value += number
            elif " gives " in sentence:
                value -= number
            else:
                value *= number
        assert instance.answers == (str(value),) and value >= 0
        assert len(instance.meta["operations"]) == instance.meta["steps"] == options.get("steps", 1)
        assert (
            instance.family == "debate" and instance.metric == "numeric" and instance.answer_format == "boxed"
        )


def test_default_debate_problems_are_easy():
    for instance in take(SyntheticDebate(), "train", 50):
        assert len(instance.meta["operations"]) == 1
        assert all(int(n) <= 10 for n in re.findall(r"\d+", instance.question))
        assert instance.meta["operations"][0] in ("add", "sub")


def test_bad_options_and_impossible_knobs():
    with pytest.raises(
        DitsError, match="unknown option 'depth'.*Valid options: seed, steps, max_value, operations"
    ):
        SyntheticDebate(depth=2)
    with pytest.raises(DitsError, match="option 'kinds.0'"):
        SyntheticIE(kinds=["riddle"])
    with pytest.raises(DitsError, match="option 'distractors'"):
        SyntheticIE(distractors=-1)
    with pytest.raises(DitsError, match="unknown split"):
        next(SyntheticIE().instances("dev"))  # type: ignore[arg-type]
