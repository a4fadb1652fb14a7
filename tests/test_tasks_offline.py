"""The eight loaders on the real offline copies in shared/datasets (skipped where that folder is absent)."""

from pathlib import Path

import pytest

from dits.tasks.registry import get_task

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="shared/datasets is not available")


def load(name, split, **files_and_options):
    files = {key: str(DATA / path) for key, path in files_and_options.pop("files").items()}
    return list(get_task(name, data_files=files, **files_and_options).instances(split))


def test_hotpotqa_dev_copy():
    instances = load("hotpotqa", "test", files={"test": "hotpotqa/validation.jsonl"}, test_limit=None)
    assert len(instances) == 957 and len({i.id for i in instances}) == 957
    first = instances[0]
    assert first.answers == ("Robert Erskine Childers DSC",)
    assert len(first.context["alice"]) + len(first.context["bob"]) == 10
    assert all(": " in paragraph for paragraph in first.context["alice"] + first.context["bob"])
    assert len(load("hotpotqa", "test", files={"test": "hotpotqa/validation.jsonl"})) == 957  # < test_limit


def test_2wikimultihopqa_dev_copy():
    instances = load("2wikimultihopqa", "test", files={"test": "2wikimultihopqa/dev.jsonl"})
    assert len(instances) == 500
    for instance in instances[:50]:
        gold = tuple(title + ": " for title in instance.meta["supporting_titles"])
        holders = [
            agent for agent in ("alice", "bob") if any(p.startswith(gold) for p in instance.context[agent])
        ]
        assert holders == ["alice", "bob"]  # the evidence is always spread over both agents


def test_triviaqa_copies_have_no_evidence():
    validation = load("triviaqa", "test", files={"test": "triviaqa/validation.sample150.jsonl"})
    assert len(validation) == 150
    assert all(i.context == {"alice": (), "bob": ()} for i in validation)
    assert validation[0].answers[0] == "Tequila"
    train = load("triviaqa", "train", files={"train": "triviaqa/train.first2000.jsonl"})
    assert len(train) == 1800


def test_cbt_excerpt_both_formats():
    as_json = load("cbt", "test", files={"test": "cbt/CN.test.jsonl"})
    as_text = load("cbt", "test", files={"test": "cbt/raw_excerpt/cbtest_CN_test_2500ex.txt"})
    assert len(as_json) == 2 and as_json == as_text
    assert as_json[0].answers == ("man",)
    assert len(as_json[0].context["alice"]) == len(as_json[0].context["bob"]) == 10


def test_gsm8k_complete():
    files = {"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"}
    test = load("gsm8k", "test", files=files)
    assert len(test) == 1319 and test[0].answers == ("18",)
    train, validation = load("gsm8k", "train", files=files), load("gsm8k", "validation", files=files)
    assert len(train) == 7273 and len(validation) == 200
    assert not {i.question for i in train} & {i.question for i in validation}


def test_math_test_split():
    instances = load("math", "test", files={"test": "math/test.jsonl"})
    assert len(instances) == 5000
    assert instances[0].id == "test/algebra/1.json" and instances[0].answers == ("2",)
    assert all(instance.answers[0] for instance in instances)


def test_arc_challenge_test_split():
    instances = load("arc-challenge", "test", files={"test": "arc_challenge/test.jsonl"})
    assert len(instances) == 1172
    assert instances[0].answers == ("Planetary days will become shorter.",)
    assert all(f"- {i.answers[0]}" in i.question for i in instances)


def test_mmlu_test_and_carved_validation():
    files = {"train": "mmlu/validation.jsonl", "test": "mmlu/test.jsonl"}
    test = load("mmlu", "test", files=files)
    assert len(test) == 1000 and len({i.id for i in test}) == 1000
    assert all(f"- {i.answers[0]}" in i.question for i in test)
    train, validation = load("mmlu", "train", files=files), load("mmlu", "validation", files=files)
    assert len(validation) == 200 and 1300 < len(train) <= 1331
    assert not {i.question for i in train} & {i.question for i in validation}
