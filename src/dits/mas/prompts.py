"""System prompts of the two agents and the iteration-0 format-prompt pool (all in our own words).

Placeholders use `string.Template` syntax (``$name``, ``$partner``) so braces in task text are harmless.
Information-exchange agents are symmetric peers; in debate tasks Alice solves and Bob criticises.
The question and each agent's private information are not part of the system prompt: they open the
conversation as the first user message (see `dits.mas.render`).
"""

from __future__ import annotations

from dataclasses import dataclass
from string import Template

from dits.tasks.base import AnswerFormat, Family

NAMES = {"alice": "Alice", "bob": "Bob"}
PARTNER = {"alice": "bob", "bob": "alice"}

QA_PROMPT = Template(
    "You are $name. You and your partner $partner answer a question together. "
    "Each of you sees different information, and $partner cannot see yours.\n"
    "Rules:\n"
    "1. Tell $partner the facts from your information that help answer the question.\n"
    "2. Be brief: short notes, no greetings, no repetition.\n"
    "3. Once you know the answer, end your message with $answer_slot. "
    "The conversation ends when you both give the same answer."
)

SOLVER_PROMPT = Template(
    "You are $name, a careful problem solver. Your partner $partner checks your work.\n"
    "Rules:\n"
    "1. Solve the problem step by step, briefly.\n"
    "2. If $partner points out a mistake, fix it.\n"
    "3. End your message with the final answer as $answer_slot."
)

CRITIC_PROMPT = Template(
    "You are $name, a strict reviewer. Your partner $partner is solving the problem.\n"
    "Rules:\n"
    "1. Check each step of $partner's solution and point out any mistake, briefly.\n"
    "2. If the solution is correct, say so and repeat its final answer as $answer_slot."
)

ANSWER_SLOTS: dict[AnswerFormat, str] = {"tag": "<A>answer</A>", "boxed": "\\boxed{answer}"}


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
