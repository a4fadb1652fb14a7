"""System prompts of the two agents and the iteration-0 format-prompt pool (all in our own words).

Placeholders use `string.Template` syntax (``$name``, ``$partner``) so braces in task text are harmless.
Information-exchange agents are symmetric peers; in debate tasks Alice solves and Bob criticises.
The question and each agent's private information are not part of the system prompt: they open the
conversation as the first user message (see `dits.mas.render`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from string import Template

from dits.tasks.types import AnswerFormat, Family

NAMES = {"alice": "Alice", "bob": "Bob"}
PARTNER = {"alice": "bob", "bob": "alice"}

QA_PROMPT = Template(
    "You are $name. You and $partner answer a question together; each of you has different "
    "information and cannot see the other's. Share the facts that help, in few words, and end every "
    "message with your best answer as $answer_slot. The conversation ends when you both give the same answer."
)

SOLVER_PROMPT = Template(
    "You are $name. Solve the problem step by step, in few words. $partner checks your work; "
    "fix any mistake $partner finds. End every message with the final answer as $answer_slot."
)

CRITIC_PROMPT = Template(
    "You are $name. $partner solves the problem. Check the steps in few words and point out any "
    "mistake. Then end with the final answer you believe is right, as $answer_slot."
)

ANSWER_SLOTS: dict[AnswerFormat, str] = {"tag": "<A>answer</A>", "boxed": "\\boxed{answer}"}


def format_answer(answer: str, answer_format: AnswerFormat) -> str:
    """``answer`` written the way the agents are asked to state answers."""
    return ANSWER_SLOTS[answer_format].replace("answer", answer)


@dataclass(frozen=True)
class FormatHint:
    """One entry of the iteration-0 pool: a communication format suggested to the agents."""

    name: str
    text: str


FORMAT_POOL: tuple[FormatHint, ...] = (
    FormatHint("key-value", "Write facts as key: value pairs separated by ';'."),
    FormatHint("json", 'Write facts as a compact JSON object, e.g. {"who": "...", "year": 1950}.'),
    FormatHint("bullets", "Write one fact per line, starting each line with '-'."),
    FormatHint("arrows", "Write facts as arrows, e.g. Film -> director -> Name."),
    FormatHint("triples", "Write facts as (subject | relation | object) triples."),
    FormatHint("table", "Write facts as a one-line table: | entity | fact |."),
    FormatHint("telegraph", "Write in telegraph style: drop all small words."),
    FormatHint("abbrev", "Use abbreviations, e.g. b. for born, dir. for directed by."),
    FormatHint("numbered", "Number your facts: 1) ... 2) ..."),
    FormatHint("code", "Write facts as Python assignments, e.g. born_year = 1950."),
)


def system_prompt(
    family: Family,
    speaker: str,
    answer_format: AnswerFormat,
    format_hint: FormatHint | None = None,
) -> str:
    """The system prompt of ``speaker`` ("alice" | "bob"), optionally with an iteration-0 format hint.

    In debate tasks the hint is only given to the solver (Alice); the critic keeps its fixed prompt.
    """
    fields = {
        "name": NAMES[speaker],
        "partner": NAMES[PARTNER[speaker]],
        "answer_slot": ANSWER_SLOTS[answer_format],
    }
    if family == "qa":
        text = QA_PROMPT.safe_substitute(fields)
    elif speaker == "alice":
        text = SOLVER_PROMPT.safe_substitute(fields)
    else:
        text = CRITIC_PROMPT.safe_substitute(fields)
    if format_hint is not None and (family == "qa" or speaker == "alice"):
        text += f"\nFormat: {format_hint.text}"
    return text


@dataclass(frozen=True)
class Demonstration:
    """A worked example exchange: a tiny made-up problem, what the partner said (if anything) and the
    reply we want. `dits.mas.render` renders it exactly like a real conversation."""

    question: str
    answers: tuple[str, ...]
    own_information: tuple[str, ...]
    partner_said: str | None
    reply: str


def demonstration(family: Family, speaker: str, answer_format: AnswerFormat) -> Demonstration:
    """The worked example for a family and speaker.

    Small chat models follow a demonstrated reply far better than written rules (the untrained 135M
    model almost never states ``<A>...</A>`` without one). Switch off with ``dialogue.demonstration``.
    """
    slot = functools.partial(format_answer, answer_format=answer_format)
    if family == "qa":
        return Demonstration(
            "In which city was the author of the book Red Sky born?",
            ("Oslo",),
            ("Red Sky was written by Ann Fox.", "Max Ray was born in Kiev."),
            "I know: Bo Lee was born in Rome. Ann Fox was born in Oslo.",
            "Red Sky was written by Ann Fox, and Ann Fox was born in Oslo. " + slot("Oslo"),
        )
    if answer_format == "boxed":
        question = "Sam has 3 boxes with 4 pens each. He gives away 5 pens. How many pens are left?"
        if speaker == "alice":
            return Demonstration(question, ("7",), (), None, "3 * 4 = 12 pens. 12 - 5 = 7. " + slot("7"))
        return Demonstration(
            question,
            ("7",),
            (),
            "3 * 4 = 12 pens. 12 - 5 = 8. " + slot("8"),
            "Mistake: 12 - 5 = 7. " + slot("7"),
        )
    question = "Which gas do plants take in to make food? Choose from: oxygen, carbon dioxide, helium"
    if speaker == "alice":
        return Demonstration(
            question,
            ("carbon dioxide",),
            (),
            None,
            "Plants take in carbon dioxide. " + slot("carbon dioxide"),
        )
    return Demonstration(
        question,
        ("carbon dioxide",),
        (),
        "Plants take in oxygen. " + slot("oxygen"),
        "Mistake: plants take in carbon dioxide. " + slot("carbon dioxide"),
    )
