"""Tasks: where instances come from, how answers are extracted and scored.

Nothing in `dits.tasks` imports torch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from dits.tasks.answers import extract_answer
from dits.tasks.metrics import score_answer
from dits.tasks.types import AnswerFormat, Family, MetricName, Split


@dataclass(frozen=True)
class TaskInstance:
    """One problem for the two-agent system.

    ``context`` maps an agent ("alice" / "bob") to the paragraphs only that agent sees; it is empty for
    debate tasks. ``answers`` lists the gold answer and its aliases (scores take the max over them).
    """

    id: str
    task: str
    family: Family
    question: str
    answers: tuple[str, ...]
    metric: MetricName
    answer_format: AnswerFormat
    context: dict[str, tuple[str, ...]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["answers"] = list(self.answers)
        data["context"] = {agent: list(paras) for agent, paras in self.context.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskInstance:
        return cls(
            id=data["id"],
            task=data["task"],
            family=data["family"],
            question=data["question"],
            answers=tuple(data["answers"]),
            metric=data["metric"],
            answer_format=data["answer_format"],
            context={agent: tuple(paras) for agent, paras in data.get("context", {}).items()},
            meta=dict(data.get("meta", {})),
        )


class Task(ABC):
    """A named source of instances with a fixed family, metric and answer format."""

    name: str
    family: Family
    description: str = ""
    endless: bool = False
    """Whether its splits never end (generated tasks): reading a whole split needs a limit."""

    @abstractmethod
    def instances(self, split: Split) -> Iterator[TaskInstance]:
        """Instances of ``split`` in a fixed, deterministic order (may be unbounded for synthetic tasks)."""

    def extract(self, text: str, instance: TaskInstance) -> str | None:
        """The answer stated in ``text`` (the last one), or None if there is none."""
        return extract_answer(text, instance.answer_format)

    def score(self, prediction: str | None, instance: TaskInstance) -> float:
        """Task metric in [0, 1] of ``prediction`` against the instance's gold answers."""
        return score_answer(prediction, instance.answers, instance.metric)
