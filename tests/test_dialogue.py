"""The turn protocol, termination rules and the per-agent views."""

from __future__ import annotations

from dits.config import DialogueConfig
from dits.engines.base import SamplingParams
from dits.engines.batching import run_one
from dits.engines.fake import FakeEngine, cycling_responder
from dits.mas.dialogue import Turn, TwoAgentSystem, impersonates, stop_reason
from dits.mas.prompts import FORMAT_POOL
from dits.mas.render import agent_view


def turn(speaker: str, text: str, answer: str | None = None, overlong: bool = False) -> Turn:
    return Turn(speaker, text, len(text.split()), answer, overlong)


def test_agreement_ends_on_same_answer_as_the_last_one() -> None:
    rules = DialogueConfig(max_turns=10)
    turns = [turn("alice", "x", "paris"), turn("bob", "y", "rome")]
    assert stop_reason(turns, rules) is None
    turns.append(turn("alice", "z", "rome"))
    assert stop_reason(turns, rules) == "agreement"


def test_answer_after_answerless_turn_repeating_own_answer_ends() -> None:
    turns = [turn("alice", "a", "7"), turn("bob", "looks fine"), turn("alice", "b", "7")]
    assert stop_reason(turns, DialogueConfig()) == "agreement"


def test_caps() -> None:
    assert stop_reason([turn("alice", "a"), turn("bob", "b")], DialogueConfig(max_turns=2)) == "turn_cap"
    assert stop_reason([turn("alice", "a b c d")], DialogueConfig(max_total_tokens=3)) == "token_cap"
    assert stop_reason([turn("alice", "a", overlong=True)], DialogueConfig()) == "overlong"
    assert stop_reason([turn("alice", "a", overlong=True)], DialogueConfig(stop_on_overlong=False)) is None


def test_converse_alternates_speakers_and_keeps_last_answer_at_turn_cap(capitals) -> None:
    engine = FakeEngine(cycling_responder(["I think <A>paris</A>", "Bob: no idea", "<A>rome</A>"]))
    system = TwoAgentSystem(capitals, DialogueConfig(max_turns=3))
    instance = next(capitals.instances("test"))
    dialogue = run_one(system.converse(instance, SamplingParams(), seed=1), engine)
    assert [t.speaker for t in dialogue.turns] == ["alice", "bob", "alice"]
    assert dialogue.turns[1].text == "no idea"  # own name prefix stripped
    assert dialogue.stop_reason == "turn_cap"
    assert dialogue.final_answer == "rome"
    assert system.score(dialogue, instance) == 0.0


def test_converse_seeds_depend_only_on_dialogue_seed_and_turn(capitals) -> None:
    engine = FakeEngine(cycling_responder(["<A>paris</A>"]))
    system = TwoAgentSystem(capitals, DialogueConfig())
    instance = next(capitals.instances("test"))
    run_one(system.converse(instance, SamplingParams(), seed=5), engine)
    first = [requests[0].seed for requests, _ in engine.calls]
    engine.calls.clear()
    run_one(system.converse(instance, SamplingParams(), seed=5), engine)
    assert [requests[0].seed for requests, _ in engine.calls] == first
    assert len(set(first)) == len(first) == 2


def test_views_put_own_turns_as_assistant_and_partner_turns_as_user(capitals) -> None:
    instance = next(capitals.instances("test"))
    turns = [turn("alice", "France in Europe."), turn("bob", "Capital Paris. <A>paris</A>")]
    alice = agent_view(instance, "alice", turns, demonstrate=False)
    bob = agent_view(instance, "bob", turns, demonstrate=False)
    assert [m["role"] for m in alice] == ["system", "user", "assistant", "user"]
    assert alice[-1]["content"] == "Bob: Capital Paris. <A>paris</A>"
    assert "Europe" in alice[1]["content"] and "Paris" not in alice[1]["content"]
    assert [m["role"] for m in bob] == ["system", "user", "assistant"]
    assert bob[1]["content"].endswith("Alice: France in Europe.")
    assert "You are Bob" in bob[0]["content"]


def test_format_hint_only_reaches_the_solver_in_debate(capitals) -> None:
    from dits.mas.prompts import system_prompt

    hint = FORMAT_POOL[0]
    assert hint.text in system_prompt("qa", "bob", "tag", hint)
    assert hint.text in system_prompt("debate", "alice", "boxed", hint)
    assert hint.text not in system_prompt("debate", "bob", "boxed", hint)


def test_rendered_prefix_is_a_token_prefix_of_the_longer_dialogue(capitals, tiny_model) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    instance = next(capitals.instances("test"))
    turns = [
        turn("alice", "a1"),
        turn("bob", "b1"),
        turn("alice", "a2"),
        turn("bob", "b2"),
        turn("alice", "a3"),
    ]
    for cut in range(len(turns)):  # the view at each turn, as generated, is a prefix of every later view
        speaker = turns[cut].speaker
        shorter = agent_view(instance, speaker, turns[:cut])
        short_ids = tokenizer.apply_chat_template(
            shorter, tokenize=True, add_generation_prompt=True, return_dict=False
        )
        for end in range(cut + 1, len(turns) + 1):
            longer = agent_view(instance, speaker, turns[:end])
            long_ids = tokenizer.apply_chat_template(longer, tokenize=True, return_dict=False)
            assert long_ids[: len(short_ids)] == short_ids, (speaker, cut, end)


def test_impersonation() -> None:
    assert impersonates(turn("alice", "Paris. Bob: yes Paris"))
    assert impersonates(turn("bob", "ok. Bob: again"))
    assert not impersonates(turn("alice", "Bob, what do you know?"))
