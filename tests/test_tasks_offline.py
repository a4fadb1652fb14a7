"""The loaders on files laid out like the offline dataset copies: ``tests/fixtures/offline``.

Each folder there holds one dataset's files, one per split, in the schema of its offline copy, with
invented rows. CBT's offline layouts (JSONL rows and the original text file) are the ones
``test_cbt_text_and_json_layouts_agree`` in ``test_tasks_datasets.py`` reads.
"""

from pathlib import Path
from typing import Any

from dits.tasks.base import TaskInstance
from dits.tasks.registry import get_task
from dits.tasks.types import Split

OFFLINE = Path(__file__).parent / "fixtures" / "offline"
NO_EVIDENCE = {"alice": (), "bob": ()}


def load(name: str, split: Split, files: dict[str, str], **options: Any) -> list[TaskInstance]:
    """The ``split`` instances of task ``name``; ``files`` maps splits to paths under ``OFFLINE``."""
    data_files = {key: str(OFFLINE / path) for key, path in files.items()}
    return list(get_task(name, data_files=data_files, **options).instances(split))


def gold_per_agent(instance: TaskInstance) -> list[int]:
    """How many supporting paragraphs Alice and Bob each hold."""
    gold = tuple(title + ": " for title in instance.meta["supporting_titles"])
    return [sum(p.startswith(gold) for p in instance.context[agent]) for agent in ("alice", "bob")]


def test_hotpotqa_dev_copy():
    files = {"test": "hotpotqa/validation.jsonl"}
    instances = load("hotpotqa", "test", files, test_limit=None)
    ids = [f"hp00000000000000000000a{k}" for k in range(1, 6)]
    assert [i.id for i in instances] == ids
    assert load("hotpotqa", "test", files) == instances  # fewer rows than the default test_limit
    assert [i.id for i in load("hotpotqa", "test", files, test_limit=2)] == ids[:2]
    first = instances[0]
    assert first.answers == ("1862",) and first.meta["type"] == "bridge"
    paragraphs = first.context["alice"] + first.context["bob"]
    assert len(paragraphs) == 10 and all(": " in paragraph for paragraph in paragraphs)
    assert "Maren Quist: Maren Quist (1931 – 2004) was a poet. She grew up on Skellan Island." in paragraphs
    # two gold paragraphs, one per agent; a supporting title absent from the context; 4 and 0 paragraphs
    assert [sorted(gold_per_agent(i)) for i in instances] == [[1, 1], [1, 1], [0, 1], [1, 1], [0, 0]]
    assert instances[2].meta["supporting_titles"] == ["Tobias Renn"]
    assert len(instances[3].context["alice"] + instances[3].context["bob"]) == 4
    assert instances[4].context == NO_EVIDENCE


def test_2wikimultihopqa_dev_copy():
    instances = load("2wikimultihopqa", "test", {"test": "2wikimultihopqa/dev.jsonl"})
    assert [i.meta["type"] for i in instances] == [
        "compositional",
        "comparison",
        "bridge_comparison",
        "inference",
        "comparison",
    ]
    assert instances[0].answers == ("Joss Pell",) and instances[0].id == "2w000000000000000000000000000001"
    assert all(len(i.context["alice"] + i.context["bob"]) == 10 for i in instances)
    # the evidence is always spread over both agents, also with four gold titles or a title used twice
    assert [sorted(gold_per_agent(i)) for i in instances] == [[1, 1], [1, 1], [2, 2], [1, 1], [1, 2]]
    assert instances[4].meta["supporting_titles"] == ["Hale Morrow", "Tilde Brandt", "Hale Morrow"]


def test_triviaqa_copies_have_no_evidence():
    validation = load("triviaqa", "test", {"test": "triviaqa/validation.jsonl"})
    assert [i.id for i in validation] == ["3f9a1c0e7b2d", "81d04be2a9c6", "c5e7f3a01d48"]
    assert all(i.context == NO_EVIDENCE and i.meta == {"evidence": False} for i in validation)
    assert validation[0].answers == ("Brightsilver", "Bright silver", "brightsilver")  # gold first
    files = {"train": "triviaqa/train.jsonl"}
    train = load("triviaqa", "train", files, validation_size=2)
    held_out = load("triviaqa", "validation", files, validation_size=2)
    assert [i.id for i in train] == ["0", "1", "2", "3"] and [i.id for i in held_out] == ["4", "5"]
    assert all(i.context == NO_EVIDENCE for i in train + held_out)
    assert train[0].answers == ("Nightwren", "night wren", "The Nightwren")


def test_gsm8k_train_and_test_files():
    files = {"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"}
    test = load("gsm8k", "test", files)
    assert [i.answers for i in test] == [("18",), ("60",), ("30",)]
    train = load("gsm8k", "train", files, validation_size=2)
    validation = load("gsm8k", "validation", files, validation_size=2)
    assert [i.id for i in train] == ["train-0", "train-1", "train-2", "train-3"]
    assert [i.id for i in validation] == ["train-4", "train-5"]
    assert not {i.question for i in train} & {i.question for i in validation}


def test_math_test_split():
    instances = load("math", "test", {"test": "math/test.jsonl"})
    assert [i.id for i in instances] == [
        "test/algebra/901.json",
        "test/counting_and_probability/902.json",
        "test/geometry/903.json",
        "test/intermediate_algebra/904.json",
    ]
    assert [i.answers[0] for i in instances] == ["5", r"\frac{1}{4}", "40", r"(-\infty,2]"]  # last box
    assert instances[1].meta == {"level": "Level 2", "type": "Counting & Probability"}


def test_arc_challenge_test_split():
    instances = load("arc-challenge", "test", {"test": "arc_challenge/test.jsonl"})
    assert [i.answers for i in instances] == [("a gale-cup",), ("seeds",), ("cork-moss",)]
    assert [len(i.meta["choices"]) for i in instances] == [4, 3, 5]
    assert all(f"- {i.answers[0]}" in i.question for i in instances)


def test_mmlu_test_and_carved_validation():
    files = {"train": "mmlu/validation.jsonl", "test": "mmlu/test.jsonl"}
    assert len(load("mmlu", "test", files)) == 5  # fewer rows than the default test_limit
    test = load("mmlu", "test", files, test_limit=3)
    assert [i.id for i in test] == ["test-3", "test-1", "test-2"]  # the fixed shuffle, then the limit
    assert [i.answers for i in test] == [("choice 14a",), ("choice 12a",), ("choice 13b",)]
    assert all(f"- {i.answers[0]}" in i.question for i in test)
    train = load("mmlu", "train", files, validation_size=2)
    validation = load("mmlu", "validation", files, validation_size=2)
    assert [i.id for i in validation] == ["train-0", "train-5"]
    # row 2 repeats row 5 (same question and choices, another subject), which is in the validation slice
    assert [i.id for i in train] == ["train-1", "train-3", "train-4", "train-6"]
    assert not {i.question for i in train} & {i.question for i in validation}
