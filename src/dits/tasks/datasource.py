"""Real datasets: rows from the Hugging Face Hub or local JSON/JSONL files, carved into our three splits.

Splits (the same rule for every real dataset):

* ``test``: the official evaluation split, in file order, cut to the option ``test_limit`` (None = all).
* ``validation``: the last ``validation_size`` rows of the official train split (or of the file given as
  ``data_files["validation"]``). It is the influence set, so it must never be trained on:
* ``train``: the official train split minus that slice, and minus any row whose question also occurs in
  the validation slice. Disjoint from ``validation`` by construction.

Rows come from the Hub (``datasets.load_dataset``) when no ``data_files`` are given, otherwise only from
the given files (keys ``train`` / ``validation`` / ``test``); a split without a file is an error that names
the config key to set.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from dits.errors import DitsError
from dits.tasks.base import Task, TaskInstance
from dits.tasks.options import TaskOptions, parse_options
from dits.tasks.types import SPLITS, AnswerFormat, MetricName, Split

Row = dict[str, Any]
Rows = Sequence[Row]
"""A ``datasets.Dataset`` or a list of dicts: anything with ``len`` and integer indexing to a dict."""


@dataclass(frozen=True)
class HubSource:
    """Where a dataset lives on the Hub, and which Hub splits are our ``train`` and ``test``."""

    path: str
    config: str | None
    train: str
    test: str


class DatasetOptions(TaskOptions):
    validation_size: int = Field(200, ge=1, description="rows of the validation slice")
    test_limit: int | None = Field(None, ge=1, description="first N test rows (None: all)")


def check_data_files(task: str, data_files: Mapping[str, str | Path] | None) -> dict[str, Path] | None:
    """Validate the split keys and that every file exists."""
    if data_files is None:
        return None
    checked = {}
    for key, path in data_files.items():
        if key not in SPLITS:
            raise DitsError(f"task {task}: unknown data_files key {key!r}; use {', '.join(SPLITS)}")
        checked[key] = check_file(task, Path(path), f"task.data_files.{key}")
    return checked


def check_file(task: str, path: Path, key: str) -> Path:
    if not path.is_file():
        raise DitsError(f"task {task}: data file not found: {path} (set by {key})")
    return path


def load_hub_rows(task: str, hub: HubSource, hub_split: str, hint: str) -> Rows:
    """One split of a Hub dataset; a failure raises :class:`DitsError` ending with ``hint``."""
    import datasets

    try:
        return datasets.load_dataset(hub.path, hub.config, split=hub_split)
    except Exception as error:
        raise DitsError(
            f"task {task}: could not load {hub.path} ({hub.config}) split {hub_split!r} from the Hugging Face "
            f"Hub ({type(error).__name__}: {error}). {hint}"
        ) from error


def load_json_rows(task: str, path: Path) -> Rows:
    """Rows of a JSON-lines file or of a JSON array file, read with ``datasets``."""
    import datasets

    datasets.disable_progress_bars()  # a local file loads in a blink; its bar would only be noise
    try:
        return datasets.load_dataset("json", data_files=str(path), split="train")
    except Exception as error:
        cause = error.__cause__ or error
        raise DitsError(
            f"task {task}: cannot read {path} as JSON lines or a JSON array ({type(cause).__name__}: {cause})"
        ) from error


def append_choices(question: str, choices: Sequence[str]) -> str:
    """The question followed by its answer options, one per line."""
    listed = "\n".join(f"- {choice}" for choice in choices)
    return f"{question}\nChoose your answer from these options:\n{listed}"


class DatasetTask(Task):
    """A real dataset. Subclasses set the class attributes and turn one row into an instance."""

    metric: ClassVar[MetricName]
    answer_format: ClassVar[AnswerFormat]
    hub: ClassVar[HubSource | None] = None
    Options: ClassVar[type[DatasetOptions]] = DatasetOptions

    def __init__(self, data_files: Mapping[str, str | Path] | None = None, **options: Any) -> None:
        self.options = parse_options(self.name, self.Options, options)
        self.data_files = check_data_files(self.name, data_files)
        if self.data_files is None and self.hub is None:
            raise DitsError(
                f"task {self.name} is not on the Hugging Face Hub: set task.data_files.train and "
                "task.data_files.test to the official JSON/JSONL files"
            )
        self._rows_cache: dict[str, Rows] = {}
        self._validation_questions: set[str] | None = None

    @abstractmethod
    def build(self, row: Row, split: Split, key: str) -> TaskInstance | None:
        """The instance of one row (None to skip a row without a usable answer).

        ``key`` is ``"<source split>-<row index>"``, stable for a given file: the id of rows without one.
        """

    def instances(self, split: Split) -> Iterator[TaskInstance]:
        if split not in SPLITS:
            raise DitsError(f"task {self.name}: unknown split {split!r}; use {', '.join(SPLITS)}")
        source, rows, order = self._selection(split)
        excluded = self._questions_of_validation() if split == "train" else set()
        for index in order:
            try:
                instance = self.build(rows[index], split, f"{source}-{index}")
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
                raise DitsError(
                    f"task {self.name}: row {index} of {self._origin(source)} is not in a layout this task "
                    f"reads ({type(exc).__name__}: {exc}); use the dataset's official files"
                ) from None
            if instance is not None and instance.question not in excluded:
                yield instance

    def _origin(self, source: str) -> str:
        """Where the rows of ``source`` come from: its local file, or the Hub dataset."""
        if self.data_files is not None:
            return str(self.data_files[source])
        assert self.hub is not None
        return f"{self.hub.path} ({source} split of the Hub copy)"

    def order(self, rows: Rows, source: str) -> list[int]:
        """Row indices of a source in the order they are used (subclasses may filter or shuffle)."""
        return list(range(len(rows)))

    def _questions_of_validation(self) -> set[str]:
        if self._validation_questions is None:
            self._validation_questions = {instance.question for instance in self.instances("validation")}
        return self._validation_questions

    def _selection(self, split: Split) -> tuple[str, Rows, list[int]]:
        if split == "test":
            rows = self._rows("test", split)
            return "test", rows, self.order(rows, "test")[: self.options.test_limit]
        size = self.options.validation_size
        if self.data_files is not None and "validation" in self.data_files:
            source = "validation" if split == "validation" else "train"
            rows = self._rows(source, split)
            order = self.order(rows, source)
            return source, rows, order[-size:] if split == "validation" else order
        rows = self._rows("train", split)
        order = self.order(rows, "train")
        if len(order) <= size:
            raise DitsError(
                f"task {self.name}: the train data has {len(order)} rows, not more than validation_size={size}, "
                "so nothing would be left to train on; lower the option validation_size"
            )
        return "train", rows, order[-size:] if split == "validation" else order[:-size]

    def _rows(self, source: str, split: Split) -> Rows:
        if source not in self._rows_cache:
            self._rows_cache[source] = self._load(source, split)
        return self._rows_cache[source]

    def _load(self, source: str, split: Split) -> Rows:
        if self.data_files is None:
            assert self.hub is not None
            hub_split = self.hub.test if source == "test" else self.hub.train
            hint = f"To work offline set task.data_files.{split} to a local JSON/JSONL copy."
            return load_hub_rows(self.name, self.hub, hub_split, hint)
        if source not in self.data_files:
            hint = (
                " (or task.data_files.train, the validation slice is carved from it)"
                if split == "validation"
                else ""
            )
            raise DitsError(
                f"task {self.name}: no data file for split {split!r}; set task.data_files.{split}{hint}"
            )
        return self.read_file(self.data_files[source])

    def read_file(self, path: Path) -> Rows:
        """Rows of one local file (subclasses override for other layouts)."""
        return load_json_rows(self.name, path)
