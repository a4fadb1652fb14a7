"""Task names -> tasks: ``get_task`` for configs and the CLI, ``list_tasks`` for ``dits tasks list``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dits.errors import DitsError
from dits.tasks.base import Task
from dits.tasks.datasource import DatasetTask
from dits.tasks.debate import GSM8K, MATH, MMLU, ARCChallenge
from dits.tasks.jsonl import PREFIX, JsonlTask
from dits.tasks.qa import CBT, HotpotQA, TriviaQA, TwoWikiMultiHopQA
from dits.tasks.synthetic import SyntheticDebate, SyntheticIE, SyntheticTask

DATASETS: dict[str, type[DatasetTask]] = {
    cls.name: cls for cls in (HotpotQA, TwoWikiMultiHopQA, TriviaQA, CBT, GSM8K, MATH, ARCChallenge, MMLU)
}
SYNTHETIC: dict[str, type[SyntheticTask]] = {cls.name: cls for cls in (SyntheticIE, SyntheticDebate)}


@dataclass(frozen=True)
class TaskInfo:
    """One line of ``dits tasks list``."""

    name: str
    family: str
    metric: str
    description: str


def known_names() -> list[str]:
    return [*DATASETS, *SYNTHETIC, f"{PREFIX}PATH"]


def get_task(name: str, data_files: Mapping[str, str | Path] | None = None, **options: Any) -> Task:
    """The task called ``name``, with its ``data_files`` (real datasets only) and validated ``options``."""
    if name.startswith(PREFIX):
        if data_files or options:
            raise DitsError(
                f"task {name}: a jsonl task takes no data_files or options (its file is the name)"
            )
        return JsonlTask(name[len(PREFIX) :])
    if name in SYNTHETIC:
        if data_files:
            raise DitsError(f"task {name} is generated, it reads no data files: remove task.data_files")
        return SYNTHETIC[name](**options)
    if name in DATASETS:
        return DATASETS[name](data_files, **options)
    raise DitsError(f"unknown task {name!r}; known tasks: {', '.join(known_names())}")


def list_tasks() -> list[TaskInfo]:
    """Every built-in task and the ``jsonl:PATH`` pattern."""
    infos = [
        TaskInfo(cls.name, cls.family, cls.metric, cls.description)
        for cls in (*DATASETS.values(), *SYNTHETIC.values())
    ]
    infos.append(
        TaskInfo(
            f"{PREFIX}PATH",
            "qa | debate",
            "per line (default f1 for qa, em for debate)",
            "your own data: one JSON object per line (id, family, question, answers, context, ...)",
        )
    )
    return infos
