"""Information-exchange QA datasets: each agent holds part of the evidence (family ``qa``, metric F1).

* ``hotpotqa`` / ``2wikimultihopqa``: whole paragraphs rendered ``"Title: sentence sentence..."``; the
  supporting paragraphs are shuffled and dealt alternately (random first agent), every other paragraph
  goes to a random agent; each agent keeps the dataset's paragraph order. Both layouts are read: the
  original JSON (``context`` = ``[[title, sentences], ...]``, ``supporting_facts`` = ``[[title, i], ...]``)
  and the Hub's (``context`` = ``{"title": [...], "sentences": [...]}``).
* ``triviaqa`` (``rc``): the web search snippets, shuffled and dealt alternately (Alice gets the extra
  one); the answers are the answer value and all its aliases. Rows without search results, as in the
  question/answer-only offline copies, give instances with EMPTY contexts (no agent sees evidence).
  Reads the Hub layout, the official layout (``Question``, ``Answer``, ``SearchResults``; also the
  official ``{"Data": [...]}`` file) and question/answer-only rows (``qid``/``question``/``aliases`` or
  ``question_id``/``turns``/``answer``).
* ``cbt`` (CN): the question with its blank ``XXXXX`` and the 10 candidates; Alice gets the first half of
  the 20 story sentences, Bob the second half. Reads the Hub rows (JSON/JSONL) and the original
  ``cbtest_*.txt`` text files.

Every random split is seeded from (task, split, instance id): the same instance always gets the same split.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from dits.errors import DitsError
from dits.tasks.base import TaskInstance
from dits.tasks.datasource import DatasetOptions, DatasetTask, HubSource, Row, Rows, append_choices
from dits.tasks.seeding import seeded_rng
from dits.tasks.types import Split
from dits.utils import text_lines


class QAOptions(DatasetOptions):
    test_limit: int | None = Field(1000, ge=1, description="first N test rows (None: all)")


def deal_paragraphs(
    paragraphs: Sequence[str], gold: Sequence[int], seed_parts: tuple[object, ...]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split paragraphs between Alice and Bob: gold ones alternate, the others go to a random agent."""
    rng = seeded_rng(*seed_parts)
    shuffled = list(dict.fromkeys(gold))
    rng.shuffle(shuffled)
    first = rng.randrange(2)
    owner = {index: (first + position) % 2 for position, index in enumerate(shuffled)}
    for index in range(len(paragraphs)):
        owner.setdefault(index, rng.randrange(2))
    return tuple(
        tuple(text for index, text in enumerate(paragraphs) if owner[index] == agent) for agent in (0, 1)
    )


def _deal_alternately(
    items: Sequence[str], seed_parts: tuple[object, ...]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    shuffled = list(items)
    seeded_rng(*seed_parts).shuffle(shuffled)
    return tuple(shuffled[0::2]), tuple(shuffled[1::2])


def _unique(values: Sequence[Any]) -> tuple[str, ...]:
    return tuple(
        dict.fromkeys(str(value).strip() for value in values if value is not None and str(value).strip())
    )


class _MultiHopTask(DatasetTask):
    family = "qa"
    metric = "f1"
    answer_format = "tag"
    Options: ClassVar[type[DatasetOptions]] = QAOptions

    def build(self, row: Row, split: Split, key: str) -> TaskInstance | None:
        context, facts = row["context"], row["supporting_facts"]
        if isinstance(context, dict):
            pairs = list(zip(context["title"], context["sentences"], strict=True))
        else:
            pairs = [(title, sentences) for title, sentences in context]
        support = set(facts["title"] if isinstance(facts, dict) else [title for title, _ in facts])
        paragraphs = [
            f"{title}: " + " ".join(s.strip() for s in sentences if s.strip()) for title, sentences in pairs
        ]
        gold = [index for index, (title, _) in enumerate(pairs) if title in support]
        instance_id = str(row.get("_id") or row.get("id") or key)
        alice, bob = deal_paragraphs(paragraphs, gold, (self.name, split, instance_id))
        return TaskInstance(
            id=instance_id,
            task=self.name,
            family=self.family,
            question=row["question"].strip(),
            answers=(row["answer"].strip(),),
            metric=self.metric,
            answer_format=self.answer_format,
            context={"alice": alice, "bob": bob},
            meta={"type": row.get("type"), "supporting_titles": [pairs[index][0] for index in gold]},
        )


class HotpotQA(_MultiHopTask):
    name = "hotpotqa"
    description = (
        "HotpotQA (distractor): multi-hop questions over 10 Wikipedia paragraphs split between agents"
    )
    hub = HubSource("hotpotqa/hotpot_qa", "distractor", train="train", test="validation")


class TwoWikiMultiHopQA(_MultiHopTask):
    name = "2wikimultihopqa"
    description = (
        "2WikiMultiHopQA: comparison/compositional questions over 10 paragraphs split between agents "
        "(local files only: official train.json / dev.json)"
    )


class TriviaQA(DatasetTask):
    name = "triviaqa"
    family = "qa"
    metric = "f1"
    answer_format = "tag"
    description = (
        "TriviaQA (rc): trivia questions, web search snippets dealt between agents; rows without search "
        "results (e.g. question/answer-only copies) give empty contexts"
    )
    hub = HubSource("mandarjoshi/trivia_qa", "rc", train="train", test="validation")
    Options: ClassVar[type[DatasetOptions]] = QAOptions

    def read_file(self, path: Path) -> Rows:
        rows = super().read_file(path)
        if len(rows) == 1 and isinstance(rows[0].get("Data"), list):  # the official {"Data": [...]} file
            return rows[0]["Data"]
        return rows

    def build(self, row: Row, split: Split, key: str) -> TaskInstance | None:
        question = row.get("question") or row.get("Question") or (row.get("turns") or [""])[0]
        answer = row.get("answer", row.get("Answer"))
        if isinstance(answer, dict):
            answers = _unique(
                [
                    answer.get("value", answer.get("Value")),
                    *(answer.get("aliases") or answer.get("Aliases") or []),
                ]
            )
        else:
            answers = _unique([row.get("gold_answer"), *(answer or []), *(row.get("aliases") or [])])
        if not question or not answers:
            return None
        results = row.get("search_results", row.get("SearchResults")) or {}
        if isinstance(results, dict):
            snippets = results.get("description") or []
        else:
            snippets = [result.get("Description") for result in results]
        snippets = [snippet.strip() for snippet in snippets if snippet and snippet.strip()]
        ids = (row.get(field) for field in ("question_id", "QuestionId", "qid"))
        instance_id = str(next((value for value in ids if value is not None), key))
        alice, bob = _deal_alternately(snippets, (self.name, split, instance_id))
        return TaskInstance(
            id=instance_id,
            task=self.name,
            family=self.family,
            question=question.strip(),
            answers=answers,
            metric=self.metric,
            answer_format=self.answer_format,
            context={"alice": alice, "bob": bob},
            meta={"evidence": bool(snippets)},
        )


class CBT(DatasetTask):
    name = "cbt"
    family = "qa"
    metric = "f1"
    answer_format = "tag"
    description = (
        "Children's Book Test (common nouns): fill the blank; the 20-sentence story is split between agents"
    )
    hub = HubSource("cam-cst/cbt", "CN", train="train", test="test")
    Options: ClassVar[type[DatasetOptions]] = QAOptions

    def read_file(self, path: Path) -> Rows:
        return read_cbt_text(path) if path.suffix == ".txt" else super().read_file(path)

    def build(self, row: Row, split: Split, key: str) -> TaskInstance | None:
        sentences = [sentence.strip() for sentence in row["sentences"]]
        half = (len(sentences) + 1) // 2
        question = f"Which word fills the blank XXXXX in: {row['question'].strip()}"
        options = [option.strip() for option in row["options"]]
        return TaskInstance(
            id=key,
            task=self.name,
            family=self.family,
            question=append_choices(question, options),
            answers=(row["answer"].strip(),),
            metric=self.metric,
            answer_format=self.answer_format,
            context={"alice": tuple(sentences[:half]), "bob": tuple(sentences[half:])},
            meta={"options": options},
        )


def read_cbt_text(path: Path) -> list[Row]:
    """Rows of an original CBT file: ``N sentence`` lines, then ``21 question<TAB>answer<TAB><TAB>a|b|...``.

    A trailing example without its question line (a truncated file) is dropped.
    """
    rows: list[Row] = []
    sentences: list[str] = []
    for number, raw in text_lines(path):
        line = raw.rstrip("\n")
        if not line.strip():
            continue
        label, _, text = line.partition(" ")
        if not label.isdigit():
            raise DitsError(f"{path}:{number}: expected a numbered CBT line, got {line[:60]!r}")
        if "\t" not in text:
            sentences = [] if label == "1" else sentences
            sentences.append(text)
            continue
        fields = text.split("\t")
        if len(fields) < 4:
            raise DitsError(f"{path}:{number}: a CBT question line needs question, answer and candidates")
        rows.append(
            {
                "sentences": sentences,
                "question": fields[0],
                "answer": fields[1],
                "options": fields[3].split("|"),
            }
        )
        sentences = []
    return rows
