"""Per-agent views of a dialogue: the one place where turns become chat messages.

Every stage (sampling, SFT records, tree search, DPO pairs, evaluation, probes) renders through
`agent_view`, so the model always sees the same text for the same situation (the reference code
renders SFT and search prompts differently from generation).

View of agent X: ``system`` = X's system prompt, then (optionally) a worked example exchange; the next
``user`` message opens the conversation with the question and X's private information; X's own turns are ``assistant`` messages and the
partner's turns are ``user`` messages prefixed with the partner's name. Rendering a longer dialogue
only appends messages, so a rendered prefix is a token prefix of the rendered whole.
"""

from __future__ import annotations

from collections.abc import Sequence

from dits.engines.base import Message
from dits.mas.prompts import ANSWER_SLOTS, NAMES, PARTNER, FormatHint, demonstration, system_prompt
from dits.mas.turn import Turn
from dits.tasks.base import TaskInstance


def render_context(paragraphs: Sequence[str]) -> str:
    """An agent's private information as text (one paragraph per line)."""
    return "\n".join(f"- {p.strip()}" for p in paragraphs if p.strip())


def opening_message(instance: TaskInstance, speaker: str) -> str:
    """The first user message of ``speaker``'s view: the question, the speaker's own information and a
    one-line reminder of the answer format (small models forget it otherwise)."""
    reminder = f"(End your reply with {ANSWER_SLOTS[instance.answer_format]}.)"
    if instance.family == "debate":
        return f"Problem: {instance.question}\n{reminder}"
    info = render_context(instance.context.get(speaker, ())) or "(none)"
    return f"Question: {instance.question}\nYour information:\n{info}\n{reminder}"


def demonstration_messages(instance: TaskInstance, speaker: str) -> list[Message]:
    """The worked example exchange, rendered like a real opening (user) and reply (assistant)."""
    demo = demonstration(instance.family, speaker, instance.answer_format)
    example = TaskInstance(
        id="demo",
        task="demo",
        family=instance.family,
        question=demo.question,
        answers=demo.answers,
        metric=instance.metric,
        answer_format=instance.answer_format,
        context={speaker: demo.own_information} if demo.own_information else {},
    )
    opening = opening_message(example, speaker)
    if demo.partner_said is not None:
        opening += f"\n\n{NAMES[PARTNER[speaker]]}: {demo.partner_said}"
    return [{"role": "user", "content": opening}, {"role": "assistant", "content": demo.reply}]


def agent_view(
    instance: TaskInstance,
    speaker: str,
    turns: Sequence[Turn],
    format_hint: FormatHint | None = None,
    *,
    demonstrate: bool = True,
) -> list[Message]:
    """The chat ``speaker`` sees after ``turns`` (own turns as assistant, partner turns as user).

    With ``demonstrate`` a worked example exchange precedes the real conversation.
    """
    family, fmt = instance.family, instance.answer_format
    messages: list[Message] = [
        {"role": "system", "content": system_prompt(family, speaker, fmt, format_hint)}
    ]
    if demonstrate:
        messages += demonstration_messages(instance, speaker)
    messages.append({"role": "user", "content": opening_message(instance, speaker)})
    for turn in turns:
        if turn.speaker == speaker:
            messages.append({"role": "assistant", "content": turn.text})
            continue
        said = f"{NAMES[turn.speaker]}: {turn.text}"
        if messages[-1]["role"] == "user":  # the partner spoke first: join it to the opening message
            messages[-1] = {"role": "user", "content": messages[-1]["content"] + "\n\n" + said}
        else:
            messages.append({"role": "user", "content": said})
    return messages
