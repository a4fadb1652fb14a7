import json
from pathlib import Path

import pytest

from dits.errors import DitsError
from dits.tasks.jsonl import JsonlTask
from dits.tasks.seeding import hash_split

FIXTURE = Path(__file__).parent / "fixtures" / "tasks" / "user_qa.jsonl"

GOOD_QA = {
    "id": "q1",
    "family": "qa",
    "question": "Where?",
    "answers": ["here"],
    "context": {"alice": ["a"], "bob": ["b"]},
}
GOOD_DEBATE = {"id": "d1", "family": "debate", "question": "2+2?", "answers": ["4"]}


def write(tmp_path, *lines):
    path = tmp_path / "task.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_fixture_schema_defaults_splits_and_meta():
    task = JsonlTask(FIXTURE)
    assert task.family == "qa" and task.name == f"jsonl:{FIXTURE}"
    where = {i.id: (split, i) for split in ("train", "validation", "test") for i in task.instances(split)}
    assert {key: split for key, (split, _) in where.items()} == {
        "u1": "train",
        "u2": "test",
        "u3": hash_split("u3"),
    }
    u1, u2, u3 = (where[key][1] for key in ("u1", "u2", "u3"))
    assert (
        u1.metric == "f1" and u1.answer_format == "tag" and u1.answers == ("Dunmere", "the town of Dunmere")
    )
    assert u1.context == {"alice": ("Tam is a miller.",), "bob": ("The miller lives in Dunmere.",)}
    assert u1.meta == {"source": "invented"} and u2.meta == {}
    assert u2.metric == "em"
    assert u3.metric == "numeric" and u3.answer_format == "boxed"
    assert task.score(task.extract(r"\boxed{2}", u3), u3) == 1.0
    assert "train" in task.description and str(FIXTURE) in task.description


def test_debate_defaults_to_em_and_hash_split_is_roughly_80_10_10(tmp_path):
    lines = [{**GOOD_DEBATE, "id": f"d{i}"} for i in range(1000)]
    task = JsonlTask(write(tmp_path, *lines))
    counts = {split: len(list(task.instances(split))) for split in ("train", "validation", "test")}
    assert sum(counts.values()) == 1000
    assert 740 < counts["train"] < 860 and 60 < counts["validation"] < 140 and 60 < counts["test"] < 140
    instance = next(task.instances("train"))
    assert instance.metric == "em" and instance.context == {} and task.family == "debate"
    again = JsonlTask(write(tmp_path, *lines))
    assert [i.id for i in again.instances("test")] == [i.id for i in task.instances("test")]


def test_blank_lines_are_ignored_and_errors_count_them(tmp_path):
    path = write(tmp_path, GOOD_DEBATE, "", {**GOOD_DEBATE, "id": "d2", "answers": "4"})
    with pytest.raises(DitsError, match=r"task\.jsonl:3: 'answers' must be a list of strings"):
        JsonlTask(path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "bad JSON"),
        ("[1, 2]", "expected a JSON object"),
        ({k: v for k, v in GOOD_DEBATE.items() if k != "question"}, "missing key 'question'"),
        ({k: v for k, v in GOOD_DEBATE.items() if k != "answers"}, "missing key 'answers'"),
        ({**GOOD_DEBATE, "id": 7}, "'id' must be a non-empty string"),
        ({**GOOD_DEBATE, "question": ""}, "'question' must be a non-empty string"),
        ({**GOOD_DEBATE, "answers": []}, "at least one answer"),
        ({**GOOD_DEBATE, "answers": ["4", ""]}, "must not contain empty strings"),
        ({**GOOD_DEBATE, "family": "chat"}, "'family' must be one of qa, debate; got 'chat'"),
        ({**GOOD_DEBATE, "metric": "bleu"}, "'metric' must be one of f1, em, numeric, math"),
        ({**GOOD_DEBATE, "answer_format": "xml"}, "'answer_format' must be one of tag, boxed"),
        ({**GOOD_DEBATE, "split": "dev"}, "'split' must be one of train, validation, test"),
        ({**GOOD_DEBATE, "context": {"alice": ["x"], "bob": []}}, "family 'debate' takes no 'context'"),
        ({k: v for k, v in GOOD_QA.items() if k != "context"}, "family 'qa' needs 'context'"),
        ({**GOOD_QA, "context": {"alice": ["x"]}}, "family 'qa' needs 'context'"),
        ({**GOOD_QA, "context": {"alice": "x", "bob": []}}, "'context.alice' must be a list of strings"),
    ],
)
def test_malformed_line_names_file_line_and_problem(tmp_path, line, message):
    first = GOOD_QA if isinstance(line, dict) and line.get("family") == "qa" else GOOD_DEBATE
    first = {**first, "id": "first"}
    path = write(tmp_path, first, line)
    with pytest.raises(DitsError, match=r"task\.jsonl:2: ") as error:
        JsonlTask(path)
    assert message in str(error.value)


def test_duplicate_id_mixed_family_empty_and_missing_file(tmp_path):
    with pytest.raises(DitsError, match=r":2: duplicate id 'd1' \(first used on line 1\)"):
        JsonlTask(write(tmp_path, GOOD_DEBATE, GOOD_DEBATE))
    with pytest.raises(DitsError, match=r":2: family 'qa' differs from the earlier lines \('debate'\)"):
        JsonlTask(write(tmp_path, GOOD_DEBATE, GOOD_QA))
    with pytest.raises(DitsError, match="has no instances"):
        JsonlTask(write(tmp_path, ""))
    with pytest.raises(DitsError, match="file not found"):
        JsonlTask(tmp_path / "absent.jsonl")
