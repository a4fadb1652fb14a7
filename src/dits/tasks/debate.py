"""Debate datasets: a solver and a critic work on the same question, no private context (family ``debate``).

* ``gsm8k``: the gold is the number after ``####``; metric ``numeric``, answers ``\\boxed{}``.
* ``math``: the gold is the normalised last ``\\boxed{}`` of the solution; metric ``math``, answers
  ``\\boxed{}``. Local files only (official JSON/JSONL rows with ``problem`` and ``solution``).
* ``arc-challenge``: the question with its choices appended; the gold is the text of the correct choice;
  metric ``em``, answers ``<A>...</A>``.
* ``mmlu``: like ARC; the train split is ``auxiliary_train``. Questions that also appear in ARC-Challenge
  are dropped when ARC data is available: from the Hub when MMLU itself comes from the Hub, else from the
  files of the option ``arc_files`` (without them nothing is dropped; the official MMLU test has no ARC
  questions, the auxiliary train has many). Every split is shuffled with a fixed seed
  (option ``shuffle_seed``) before the validation and test slices are cut.

Rows without a usable answer (no ``####``, no ``\\boxed{}``, an unknown answer key) are skipped.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from dits.tasks.answers import last_boxed, normalize_final_answer
from dits.tasks.base import TaskInstance
from dits.tasks.datasource import (
    DatasetOptions,
    DatasetTask,
    HubSource,
    Row,
    Rows,
    append_choices,
    check_file,
    load_hub_rows,
    load_json_rows,
)
from dits.tasks.types import Split


class _DebateTask(DatasetTask):
    family = "debate"

    def instance(self, key: str, question: str, answer: str, **meta: Any) -> TaskInstance:
        return TaskInstance(
            id=key,
            task=self.name,
            family=self.family,
            question=question.strip(),
            answers=(answer,),
            metric=self.metric,
            answer_format=self.answer_format,
            meta=meta,
        )


class GSM8K(_DebateTask):
    name = "gsm8k"
    metric = "numeric"
    answer_format = "boxed"
    description = "GSM8K: grade-school math word problems; the answer is a number"
    hub = HubSource("openai/gsm8k", "main", train="train", test="test")

    def build(self, row: Row, split: Split, key: str) -> TaskInstance | None:
        _, marker, answer = row["answer"].rpartition("####")
        if not marker or not answer.strip():
            return None
        return self.instance(key, row["question"], answer.strip())


class MATH(_DebateTask):
    name = "math"
    metric = "math"
    answer_format = "boxed"
    description = "MATH: competition mathematics; LaTeX answers checked for equivalence (local files only)"

    def build(self, row: Row, split: Split, key: str) -> TaskInstance | None:
        boxed = last_boxed(row["solution"])
        answer = normalize_final_answer(boxed) if boxed is not None else ""
        if not answer:
            return None
        return self.instance(
            str(row.get("unique_id") or key),
            row["problem"],
            answer,
            level=row.get("level"),
            type=row.get("type"),
        )


class ARCChallenge(_DebateTask):
    name = "arc-challenge"
    metric = "em"
    answer_format = "tag"
    description = "ARC-Challenge: grade-school science multiple choice; answer with the text of the choice"
    hub = HubSource("allenai/ai2_arc", "ARC-Challenge", train="train", test="test")

    def build(self, row: Row, split: Split, key: str) -> TaskInstance | None:
        texts = [text.strip() for text in row["choices"]["text"]]
        labels = [str(label) for label in row["choices"]["label"]]
        if str(row["answerKey"]) not in labels:
            return None
        answer = texts[labels.index(str(row["answerKey"]))]
        return self.instance(
            str(row.get("id") or key), append_choices(row["question"], texts), answer, choices=list(texts)
        )


class MMLUOptions(DatasetOptions):
    test_limit: int | None = Field(1000, ge=1, description="first N test rows after the shuffle (None: all)")
    shuffle_seed: int = Field(42, description="seed of the fixed shuffle of every split")
    exclude_arc: bool = Field(True, description="drop questions that also appear in ARC-Challenge")
    arc_files: tuple[str, ...] = Field((), description="local ARC-Challenge JSON/JSONL files to exclude")


class MMLU(_DebateTask):
    name = "mmlu"
    metric = "em"
    answer_format = "tag"
    description = (
        "MMLU: 57-subject multiple choice (train: auxiliary_train); answer with the text of the choice"
    )
    hub = HubSource("cais/mmlu", "all", train="auxiliary_train", test="test")
    Options: ClassVar[type[DatasetOptions]] = MMLUOptions
    options: MMLUOptions

    def __init__(self, data_files: Mapping[str, str | Path] | None = None, **options: Any) -> None:
        super().__init__(data_files, **options)
        for path in self.options.arc_files:
            check_file(self.name, Path(path), "the option arc_files")
        self._arc_questions: set[str] | None = None

    def build(self, row: Row, split: Split, key: str) -> TaskInstance | None:
        row = _flat(row)
        choices, answer = [str(choice).strip() for choice in row["choices"]], row["answer"]
        index = "ABCD".index(answer) if isinstance(answer, str) and answer in "ABCD" else answer
        if not isinstance(index, int) or not 0 <= index < len(choices):
            return None
        return self.instance(
            key,
            append_choices(row["question"], choices),
            choices[index],
            subject=row.get("subject"),
            choices=choices,
        )

    def order(self, rows: Rows, source: str) -> list[int]:
        excluded = self._arc()
        keep = list(range(len(rows)))
        if excluded:
            keep = [index for index in keep if _flat(rows[index])["question"].strip() not in excluded]
        random.Random(self.options.shuffle_seed).shuffle(keep)
        return keep

    def _arc(self) -> set[str]:
        if self._arc_questions is None:
            sources: list[Rows] = []
            if self.options.exclude_arc and self.options.arc_files:
                sources = [load_json_rows(self.name, Path(path)) for path in self.options.arc_files]
            elif self.options.exclude_arc and self.data_files is None:
                hub = ARCChallenge.hub
                assert hub is not None
                hint = "Set the option exclude_arc to false, or give ARC-Challenge files in the option arc_files."
                sources = [
                    load_hub_rows(self.name, hub, split, hint) for split in ("train", "validation", "test")
                ]
            self._arc_questions = {row["question"].strip() for rows in sources for row in rows}
        return self._arc_questions


def _flat(row: Row) -> Row:
    """MMLU's ``auxiliary_train`` config nests each row under ``"train"``."""
    return row["train"] if "question" not in row and isinstance(row.get("train"), dict) else row
