"""The `Batch` call, the `parallel` combinator and `run_programs` with batches."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from dits.engines.base import SamplingParams
from dits.engines.batching import Batch, NllCall, Program, parallel, run_programs
from dits.engines.fake import FakeEngine
from dits.mas.dialogue import Dialogue
from test_search_support import make_instance, make_system, seeded_responder


def echo(name: str, steps: int) -> Generator[Any, Any, list[Any]]:
    got = []
    for step in range(steps):
        got.append((yield NllCall([f"{name}{step}"])))
    return got


def pair_step(name: str) -> Generator[Any, Any, list[Any]]:
    """Yields a Batch of two calls once."""
    return (yield Batch([NllCall([f"{name}-x"]), NllCall([f"{name}-y"])]))


def test_parallel_batches_pending_calls_and_keeps_order() -> None:
    program = parallel([echo("a", 1), echo("b", 3), echo("c", 0), pair_step("d"), echo("e", 2)])
    sizes = []
    batch = next(program)
    try:
        while True:
            sizes.append(len(batch.calls))
            batch = program.send([call.texts for call in batch.calls])  # reply = the call's own texts
    except StopIteration as stop:
        result = stop.value
    assert sizes == [5, 2, 1]  # a, b, d-x, d-y, e | b, e | b
    assert result == [
        [["a0"]],
        [["b0"], ["b1"], ["b2"]],
        [],
        [["d-x"], ["d-y"]],
        [["e0"], ["e1"]],
    ]


def test_parallel_of_nothing_returns_at_once() -> None:
    program = parallel([])
    try:
        next(program)
    except StopIteration as stop:
        assert stop.value == []
    else:  # pragma: no cover - the assertion below explains the failure
        raise AssertionError("parallel([]) yielded a call")


def test_batched_programs_match_one_by_one_with_fewer_engine_calls() -> None:
    system, params = make_system(), SamplingParams(temperature=0.7)
    instances = [make_instance(f"q{i}") for i in range(4)]

    def dialogue(i: int) -> Program[Dialogue]:
        return system.converse(instances[i], params, seed=100 + i)

    one_by_one = FakeEngine(seeded_responder)
    expected = [run_programs([dialogue(i)], one_by_one)[0] for i in range(4)]

    engine = FakeEngine(seeded_responder)
    done: list[int] = []
    got = run_programs(
        [parallel([dialogue(0), dialogue(1)]), dialogue(2), parallel([dialogue(3)])],
        engine,
        on_done=lambda index, _result: done.append(index),
    )
    assert got == [[expected[0], expected[1]], expected[2], [expected[3]]]
    assert sorted(done) == [0, 1, 2]
    assert len(engine.calls[0][0]) == 4  # every dialogue's first turn in one engine call
    assert len(engine.calls) == max(len(d.turns) for d in expected)  # one call per wave
    assert len(engine.calls) < len(one_by_one.calls)

    serial = FakeEngine(seeded_responder)
    assert run_programs([parallel([dialogue(0), dialogue(1)]), dialogue(2)], serial, max_active=1) == got[:2]
    assert max(len(requests) for requests, _ in serial.calls) == 2
