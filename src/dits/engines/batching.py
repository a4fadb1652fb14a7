"""Wave batching: advance many independent programs together, one engine call per wave.

A *program* is a generator that yields engine calls (`GenerateCall` or `NllCall`, or a `Batch` of
several) and receives their results (`list[Completion]`, `list[float]`, or the list of replies of a
`Batch`) until it returns its result. Dialogues, tree searches,
iSFT sampling and probe validation are all written as programs, so every stage gets large batches
without knowing about batching. Because each request carries its own seed, results do not depend on
which programs happen to share a wave.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from dits.engines.base import Engine, GenerationRequest, SamplingParams

R = TypeVar("R")


@dataclass
class GenerateCall:
    """Ask the engine to continue one chat; the program receives ``params.n`` completions."""

    request: GenerationRequest
    params: SamplingParams


@dataclass
class NllCall:
    """Ask the engine for the mean token NLL of each text; the program receives a list of floats."""

    texts: list[str]


Call = GenerateCall | NllCall


@dataclass
class Batch:
    """Several calls issued at once; the program receives the list of their replies, in order."""

    calls: list[Call]


Step = Call | Batch
Program = Generator[Step, Any, R]


def _flatten(steps: Sequence[Step]) -> tuple[list[Call], list[range]]:
    """All calls of ``steps`` in one list, and the positions that belong to each step."""
    calls: list[Call] = []
    spans: list[range] = []
    for step in steps:
        own = step.calls if isinstance(step, Batch) else [step]
        spans.append(range(len(calls), len(calls) + len(own)))
        calls.extend(own)
    return calls, spans


def _reply(step: Step, replies: Sequence[Any], span: range) -> Any:
    """The reply a step expects: a list for a `Batch`, the bare reply for a single call."""
    return [replies[i] for i in span] if isinstance(step, Batch) else replies[span[0]]


def parallel(programs: Iterable[Program[Any]]) -> Generator[Batch, list[Any], list[Any]]:
    """Advance sub-programs together, one `Batch` per step; return their results in input order.

    This is how one program (e.g. a tree) runs several rollouts in the same wave.
    """
    subs = list(programs)
    results: list[Any] = [None] * len(subs)
    pending: dict[int, Step] = {}
    for index, program in enumerate(subs):
        try:
            pending[index] = next(program)
        except StopIteration as stop:
            results[index] = stop.value
    while pending:
        order = list(pending)
        calls, spans = _flatten([pending[i] for i in order])
        replies = yield Batch(calls)
        for index, span in zip(order, spans, strict=True):
            try:
                pending[index] = subs[index].send(_reply(pending[index], replies, span))
            except StopIteration as stop:
                del pending[index]
                results[index] = stop.value
    return results


def run_programs(
    programs: Iterable[Program[R]],
    engine: Engine,
    *,
    max_active: int | None = None,
    on_done: Callable[[int, R], None] | None = None,
) -> list[R]:
    """Run programs to completion, batching their pending calls into one engine call per wave.

    ``max_active`` bounds how many programs are in flight (memory); ``on_done(index, result)`` is called
    as soon as a program finishes, so callers can persist results before the others complete.
    Results are returned in input order.
    """
    results: dict[int, R] = {}
    for index, value in iter_programs(programs, engine, max_active=max_active):
        results[index] = value
        if on_done is not None:
            on_done(index, value)
    return [results[i] for i in sorted(results)]


def iter_programs(
    programs: Iterable[Program[R]], engine: Engine, *, max_active: int | None = None
) -> Iterator[tuple[int, R]]:
    """`run_programs` as a generator: yields ``(index, result)`` as each program finishes."""
    queue = iter(enumerate(programs))
    active: dict[int, tuple[Program[R], Step]] = {}
    finished: list[tuple[int, R]] = []

    def admit() -> None:
        while max_active is None or len(active) < max_active:
            try:
                index, program = next(queue)
            except StopIteration:
                return
            try:
                active[index] = (program, next(program))
            except StopIteration as stop:
                finished.append((index, stop.value))

    admit()
    yield from finished
    while active:
        finished.clear()
        order = list(active)
        calls, spans = _flatten([active[i][1] for i in order])
        by_position = _execute_wave(engine, dict(enumerate(calls)))
        for index, span in zip(order, spans, strict=True):
            program, step = active[index]
            try:
                active[index] = (program, program.send(_reply(step, by_position, span)))
            except StopIteration as stop:
                del active[index]
                finished.append((index, stop.value))
        admit()
        yield from finished


def _execute_wave(engine: Engine, calls: dict[int, Call]) -> dict[int, Any]:
    """One engine call per distinct sampling setting, one NLL call for all NLL requests."""
    replies: dict[int, Any] = {}
    by_params: dict[SamplingParams, list[tuple[int, GenerationRequest]]] = {}
    nll_calls: list[tuple[int, NllCall]] = []
    for index, call in calls.items():
        if isinstance(call, GenerateCall):
            by_params.setdefault(call.params, []).append((index, call.request))
        else:
            nll_calls.append((index, call))
    for params, indexed in by_params.items():
        outputs = engine.generate([request for _, request in indexed], params)
        replies.update(zip([index for index, _ in indexed], outputs, strict=True))
    texts = [text for _, call in nll_calls for text in call.texts]
    scores = iter(engine.nll(texts) if texts else [])
    for index, call in nll_calls:
        replies[index] = [next(scores) for _ in call.texts]
    return replies


def run_one(program: Program[R], engine: Engine) -> R:
    """Run a single program (convenience for tests and small jobs)."""
    return run_programs([program], engine)[0]
