"""``jsonl:PATH``: a user's own task, one JSON object per line (blank lines are ignored).

Schema::

    {"id": "q1", "family": "qa", "question": "...", "answers": ["gold", "alias"],
     "context": {"alice": ["paragraph", ...], "bob": ["paragraph", ...]}, "split": "train"}

* ``id`` (non-empty string, unique), ``family`` (``qa`` | ``debate``; the same on every line),
  ``question`` (non-empty string) and ``answers`` (non-empty list of strings) are required.
* ``context`` is required for ``qa`` (both ``alice`` and ``bob`` lists of strings) and not allowed for
  ``debate``.
* ``metric`` (``f1`` | ``em`` | ``numeric`` | ``math``; default ``f1`` for qa, ``em`` for debate),
  ``answer_format`` (``tag`` | ``boxed``; default ``tag``) and ``split`` (``train`` | ``validation`` |
  ``test``) are optional. Without ``split`` a line goes to train/validation/test (80/10/10) by a stable
  hash of its id, so the assignment never changes between runs.
* Any other key is kept in the instance's ``meta``.

The whole file is checked when the task is created; the first bad line raises :class:`DitsError` with
the file, the 1-based line number and what is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

from dits.errors import DitsError
from dits.tasks.base import Task, TaskInstance
from dits.tasks.seeding import hash_split
from dits.tasks.types import AGENTS, SPLITS, AnswerFormat, Family, MetricName, Split
from dits.utils import text_lines

PREFIX = "jsonl:"
_KNOWN = {"id", "family", "question", "answers", "context", "metric", "answer_format", "split"}
_DEFAULT_METRIC: dict[str, MetricName] = {"qa": "f1", "debate": "em"}


class JsonlTask(Task):
    """Instances read from a JSONL file in the schema above."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.name = f"{PREFIX}{path}"
        if not self.path.is_file():
            raise DitsError(f"task {self.name}: file not found: {self.path}")
        self._by_split: dict[str, list[TaskInstance]] = {split: [] for split in SPLITS}
        first_line: dict[str, int] = {}
        family: Family | None = None
        for number, line in text_lines(self.path):
            if not line.strip():
                continue
            where = f"{self.path}:{number}"
            instance, split = _parse_line(line, where, self.name)
            if instance.id in first_line:
                raise DitsError(
                    f"{where}: duplicate id {instance.id!r} (first used on line {first_line[instance.id]})"
                )
            if family is not None and instance.family != family:
                raise DitsError(
                    f"{where}: family {instance.family!r} differs from the earlier lines ({family!r}); "
                    "one file holds one family"
                )
            first_line[instance.id] = number
            family = instance.family
            self._by_split[split].append(instance)
        if family is None:
            raise DitsError(f"task {self.name}: {self.path} has no instances")
        self.family = family
        counts = ", ".join(f"{len(items)} {split}" for split, items in self._by_split.items())
        self.description = f"user task from {self.path} ({counts})"

    def instances(self, split: Split) -> Iterator[TaskInstance]:
        if split not in SPLITS:
            raise DitsError(f"task {self.name}: unknown split {split!r}; use {', '.join(SPLITS)}")
        return iter(self._by_split[split])


def _parse_line(line: str, where: str, task: str) -> tuple[TaskInstance, str]:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as error:
        raise DitsError(f"{where}: bad JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(data, dict):
        raise DitsError(f"{where}: expected a JSON object, got {type(data).__name__}")
    for key in ("id", "family", "question", "answers"):
        if key not in data:
            raise DitsError(f"{where}: missing key {key!r}")
    instance_id = _text(data, "id", where)
    family = _choice(data["family"], "family", get_args(Family), where)
    question = _text(data, "question", where)
    answers = _texts(data["answers"], "answers", where, nonempty=True)
    if not answers:
        raise DitsError(f"{where}: 'answers' must hold at least one answer")
    metric = _choice(data.get("metric", _DEFAULT_METRIC[family]), "metric", get_args(MetricName), where)
    answer_format = _choice(data.get("answer_format", "tag"), "answer_format", get_args(AnswerFormat), where)
    split = _choice(data["split"], "split", SPLITS, where) if "split" in data else hash_split(instance_id)
    context: dict[str, tuple[str, ...]] = {}
    if family == "qa":
        raw = data.get("context")
        if not isinstance(raw, dict) or set(raw) != set(AGENTS):
            raise DitsError(f"{where}: family 'qa' needs 'context' = {{\"alice\": [...], \"bob\": [...]}}")
        context = {agent: _texts(raw[agent], f"context.{agent}", where) for agent in AGENTS}
    elif data.get("context"):
        raise DitsError(f"{where}: family 'debate' takes no 'context' (both agents see only the question)")
    instance = TaskInstance(
        id=instance_id,
        task=task,
        family=family,
        question=question,
        answers=answers,
        metric=metric,
        answer_format=answer_format,
        context=context,
        meta={key: value for key, value in data.items() if key not in _KNOWN},
    )
    return instance, split


def _text(data: dict[str, Any], key: str, where: str) -> str:
    value = data[key]
    if not isinstance(value, str) or not value.strip():
        raise DitsError(f"{where}: {key!r} must be a non-empty string, got {value!r}")
    return value


def _texts(value: Any, key: str, where: str, nonempty: bool = False) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise DitsError(f"{where}: {key!r} must be a list of strings, got {value!r}")
    if nonempty and not all(item.strip() for item in value):
        raise DitsError(f"{where}: {key!r} must not contain empty strings")
    return tuple(value)


def _choice(value: Any, key: str, allowed: tuple[str, ...], where: str) -> Any:
    if value not in allowed:
        raise DitsError(f"{where}: {key!r} must be one of {', '.join(allowed)}; got {value!r}")
    return value
