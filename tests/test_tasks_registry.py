from pathlib import Path

import pytest

from dits.errors import DitsError
from dits.tasks.jsonl import JsonlTask
from dits.tasks.registry import get_task, list_tasks
from dits.tasks.synthetic import SyntheticIE

FIXTURES = Path(__file__).parent / "fixtures" / "tasks"
REAL = ["hotpotqa", "2wikimultihopqa", "triviaqa", "cbt", "gsm8k", "math", "arc-challenge", "mmlu"]


def test_list_tasks_covers_every_name():
    infos = {info.name: info for info in list_tasks()}
    assert set(REAL + ["synth-ie", "synth-debate", "jsonl:PATH"]) == set(infos)
    assert infos["hotpotqa"].family == "qa" and infos["hotpotqa"].metric == "f1"
    assert infos["math"].family == "debate" and infos["math"].metric == "math"
    assert infos["gsm8k"].metric == "numeric" and infos["mmlu"].metric == "em"
    assert all(info.description for info in infos.values())


@pytest.mark.parametrize("name", REAL)
def test_every_real_task_is_built_from_local_files(name):
    task = get_task(name, data_files={"test": str(FIXTURES / "gsm8k.jsonl")}, validation_size=5)
    assert task.name == name
    assert task.options.validation_size == 5


def test_synthetic_and_jsonl_names():
    task = get_task("synth-ie", distractors=2)
    assert isinstance(task, SyntheticIE) and task.options.distractors == 2
    jsonl = get_task(f"jsonl:{FIXTURES / 'user_qa.jsonl'}")
    assert isinstance(jsonl, JsonlTask) and jsonl.family == "qa"


def test_unknown_names_and_options_are_user_errors():
    with pytest.raises(
        DitsError, match="unknown task 'hotpot'; known tasks: hotpotqa, 2wikimultihopqa, .*jsonl:PATH"
    ):
        get_task("hotpot")
    with pytest.raises(
        DitsError, match="task gsm8k: unknown option 'limit'. Valid options: validation_size, test_limit"
    ):
        get_task("gsm8k", limit=3)
    with pytest.raises(DitsError, match="option 'validation_size'"):
        get_task("gsm8k", data_files={"test": str(FIXTURES / "gsm8k.jsonl")}, validation_size=0)
    with pytest.raises(DitsError, match="shuffle_seed, exclude_arc, arc_files"):
        get_task("mmlu", seed=1)
    with pytest.raises(DitsError, match="reads no data files"):
        get_task("synth-debate", data_files={"train": "x.jsonl"})
    with pytest.raises(DitsError, match="takes no data_files or options"):
        get_task(f"jsonl:{FIXTURES / 'user_qa.jsonl'}", seed=1)
