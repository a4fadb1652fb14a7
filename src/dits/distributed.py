"""Beyond one machine: a run's programs and probe groups on Ray actors (``distributed.backend: ray``).

`Cluster` starts ``distributed.workers`` actors (`Worker`); each is a `dits.runtime.ModelHost` built from
the run's config: its own engine (``engine.kind``, on the CPUs or GPUs Ray reserves for it) and its own
two-agent system. Stage functions reach it through one seam, `dits.context.StageContext.map_programs`
(and `~dits.context.StageContext.probe_harness` for influence probes); with ``backend: none`` the seam
is `dits.engines.batching.run_programs` in this process and nothing here is used.

* **Work descriptions, not objects.** A worker receives a program factory (a module-level function, or a
  ``functools.partial`` of one over plain data: seeds, settings, a `dits.runtime.Policy` whose adapter
  folder it loads) and items (task instances, trees, groups); it builds the programs itself and
  streams each result back as its program finishes. The driver writes records as they arrive.
* **Deterministic partition.** Items are cut into contiguous chunks (`Cluster.chunk_size`: about
  ``CHUNKS_PER_WORKER`` per worker, none smaller than the engine's batch while a worker's share is
  larger; probe groups: ``influence.adapters_per_batch`` per chunk, fewer when a racing round has fewer
  groups than the workers could take); a free worker takes the next chunk. Every program draws its randomness
  from its own seed, so a result does not depend on the worker or on the other programs of its chunk:
  the stage logs get the same records as in one process, and the stages' final in-order rewrite makes
  them the same files.
* **Faults.** A worker that dies (killed, out of memory, node lost) is replaced by a fresh actor; the
  items of its chunk whose results had not arrived are scheduled again, and those that had are kept:
  every item is delivered once. More than ``MAX_DEATHS_PER_WORKER`` deaths per worker fail the run.
* **Probes.** The iteration's session is opened on the driver (θ* warm-up, F(θ*), calibration) and saved
  as usual. Each probe stage puts the session's files (``influence_session.json``, ``theta_star.pt``) and
  its pairs into the object store once; workers reopen the session from them as a resumed run does
  (and keep it while the session is the same). Groups go to the workers in chunks and come back to
  `dits.influence.estimator.run_groups` in group order, so ``influence_units.jsonl`` is the same file;
  each racing round is a barrier. Probe adapter states stay on the workers, so racing probes a round's
  survivors again (one optimizer step per group) instead of keeping their states.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from dits.config import DistributedConfig, RunConfig
from dits.engines.batching import Program, iter_programs
from dits.errors import DitsError
from dits.influence.estimator import Group, Harness, Probed
from dits.influence.probe import Optimizer
from dits.influence.session import SESSION_FILE, THETA_FILE, ProbeSession
from dits.runtime import ModelHost
from dits.search.pairs import PreferencePair

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger(__name__)

CHUNKS_PER_WORKER = 4
"""Programs are cut into about this many chunks per worker: fewer means larger waves, more means better
balance between workers (a tree search's trees differ in length)."""
MAX_DEATHS_PER_WORKER = 2
SessionOpener = Callable[[ModelHost, Path], ProbeSession]
"""Opens an iteration's probe session on a host from the session's saved files in a folder."""


def import_ray() -> Any:
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise DitsError(
            "distributed.backend=ray needs Ray: pip install 'dits[ray]' (or set distributed.backend=none)"
        ) from exc
    return ray


def check_resources(dist: DistributedConfig, total: Mapping[str, float]) -> None:
    """Fail with one line when the cluster's ``total`` resources cannot hold every worker (an actor that
    cannot be placed would wait forever)."""
    for key, resource in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
        per_worker = getattr(dist, key)
        need, have = dist.workers * per_worker, total.get(resource, 0.0)
        if need > have:
            raise DitsError(
                f"distributed.workers={dist.workers} x distributed.{key}={per_worker:g} needs {need:g} "
                f"{resource}s but the Ray cluster has {have:g}; lower distributed.workers or "
                f"distributed.{key}"
            )


def chunks(count: int, size: int) -> list[range]:
    """``range(count)`` cut into consecutive pieces of ``size`` (the last may be shorter)."""
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


@dataclass(frozen=True)
class ProbeWork:
    """What workers reopen a probe session from: the opener, the session's files by name (``key``: their
    digest, the session's identity) and the pairs the driver's `ProbeSession.groups` added."""

    key: str
    opener: SessionOpener
    files: dict[str, bytes]
    pairs: list[PreferencePair]


class Worker:
    """One Ray actor: a `ModelHost` of the run's config running chunks of programs and probe groups. A
    chunk is a list of ``(index, item)``; results stream back as ``(index, value)``."""

    def __init__(self, cfg: RunConfig) -> None:
        self.host = ModelHost(cfg)
        self._session: tuple[str, ProbeSession] | None = None
        self._work_ref = ""

    def pid(self) -> int:
        return os.getpid()

    def run(
        self,
        make: Callable[[ModelHost, Any], Program[Any]],
        chunk: list[tuple[int, Any]],
        max_active: int | None,
    ) -> Iterator[tuple[int, tuple[Any, int]]]:
        """Each program's result as it finishes, with the tokens generated since the previous one."""
        programs = [make(self.host, item) for _, item in chunk]
        engine = self.host.engine  # after the factories: serving a policy may replace the engine
        seen = engine.stats.generated_tokens
        for position, result in iter_programs(programs, engine, max_active=max_active):
            tokens, seen = engine.stats.generated_tokens - seen, engine.stats.generated_tokens
            yield chunk[position][0], (result, tokens)

    def measure(
        self,
        box: list[Any],
        chunk: list[tuple[int, Group]],
        lr: float,
        optimizer: Optimizer,
        units: Mapping[str, Sequence[int]],
        per_batch: int,
    ) -> Iterator[tuple[int, tuple[Any, list[Any], dict[str, float]]]]:
        """`Harness.measure` of the chunk's groups on the session in ``box`` (a `ProbeWork` reference):
        each group's probe measures, unit results and the work it cost."""
        session = self._open(box[0])
        index = {group.id: i for i, group in chunk}
        seen = _counters(session)
        for group, probed, results in session.harness.measure(
            [g for _, g in chunk], lr, optimizer, units, per_batch
        ):
            now = _counters(session)
            yield index[group.id], (probed.measures, results, {k: now[k] - seen[k] for k in now})
            seen = now

    def _open(self, ref: Any) -> ProbeSession:
        """The session of the `ProbeWork` ``ref`` (reopened when it is another session), with its pairs."""
        if ref.hex() != self._work_ref:
            import ray

            work: ProbeWork = ray.get(ref)
            if self._session is None or self._session[0] != work.key:
                if self._session is not None:
                    self._session[1].close()
                with tempfile.TemporaryDirectory(prefix="dits-probe-") as folder:
                    for name, data in work.files.items():
                        (Path(folder) / name).write_bytes(data)
                    self._session = (work.key, work.opener(self.host, Path(folder)))
            self._session[1].groups(work.pairs)
            self._work_ref = ref.hex()
        assert self._session is not None
        return self._session[1]


def _counters(session: ProbeSession) -> dict[str, float]:
    """The work counters of a session's harness and prober."""
    harness, stats = session.harness, session.prober.stats
    return {
        "dialogues": harness.dialogues,
        "tokens": harness.tokens,
        "probe_steps": stats.probe_steps,
        "probe_seconds": stats.probe_seconds,
    }


class Cluster:
    """The run's Ray workers: a local Ray started for the run (``distributed.address`` null), or the
    cluster at ``address``; a Ray already initialised in this process (tests) is used as it is."""

    def __init__(self, cfg: RunConfig) -> None:
        ray = import_ray()
        self.cfg = cfg
        dist = cfg.distributed
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            # "local": a new local Ray even when another one runs on this machine
            ray.init(address=dist.address or "local", runtime_env=_runtime_env(dist.address))
        try:
            check_resources(dist, ray.cluster_resources())
        except DitsError:
            if self._owns_ray:
                ray.shutdown()
            raise
        self._remote = ray.remote(Worker)
        self._lost = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError)
        self.actors = [self._start() for _ in range(dist.workers)]
        self.deaths = 0
        self.generated_tokens = 0

    def _start(self) -> Any:
        dist = self.cfg.distributed
        options = {"num_cpus": dist.num_cpus, "num_gpus": dist.num_gpus, "max_restarts": 0}
        return self._remote.options(**options).remote(self.cfg)

    def map_programs(
        self,
        make: Callable[[ModelHost, T], Program[R]],
        items: Sequence[T],
        *,
        max_active: int | None = None,
        on_done: Callable[[int, R], None] | None = None,
    ) -> list[R]:
        """`dits.context.StageContext.map_programs` on the workers (module docstring)."""
        results: dict[int, R] = {}

        def submit(actor: Any, chunk: list[tuple[int, T]]) -> Any:
            return actor.run.remote(make, chunk, max_active)

        for index, (result, tokens) in self.stream(items, self.chunk_size(len(items)), submit):
            self.generated_tokens += tokens
            results[index] = result
            if on_done is not None:
                on_done(index, result)
        return [results[i] for i in range(len(items))]

    def chunk_size(self, count: int) -> int:
        """Programs per chunk: ``CHUNKS_PER_WORKER`` chunks per worker, but never fewer programs than
        ``engine.batch_size`` while a worker's share has that many (a chunk's programs share waves)."""
        workers = len(self.actors)
        balanced = math.ceil(count / (workers * CHUNKS_PER_WORKER))
        return max(1, balanced, min(math.ceil(count / workers), self.cfg.engine.batch_size))

    def probe_harness(
        self, session: ProbeSession, opener: SessionOpener, folder: Path, pairs: Sequence[PreferencePair]
    ) -> Harness:
        """A stand-in for ``session.harness`` whose `Harness.measure` runs on the workers."""
        ray = import_ray()
        files = {name: (folder / name).read_bytes() for name in (SESSION_FILE, THETA_FILE)}
        key = hashlib.blake2b(b"".join(files.values()), digest_size=8).hexdigest()
        ref = ray.put(ProbeWork(key, opener, files, list(pairs)))
        return cast(Harness, RemoteHarness(self, session, ref))

    def stream(
        self, items: Sequence[T], size: int, submit: Callable[[Any, list[tuple[int, T]]], Any]
    ) -> Iterator[tuple[int, Any]]:
        """``(index, value)`` of every item as it arrives: chunks of ``size`` items go to free workers
        (``submit(actor, chunk)`` starts a streaming call); a dead worker is replaced and the items of its
        chunk that had not arrived are scheduled again."""
        ray = import_ray()
        queue = deque([[(i, items[i]) for i in span] for span in chunks(len(items), size)])
        free = deque(range(len(self.actors)))
        running: dict[Any, tuple[int, dict[int, T]]] = {}
        while queue or running:
            while queue and free:
                slot, chunk = free.popleft(), queue.popleft()
                running[submit(self.actors[slot], chunk)] = (slot, dict(chunk))
            (ready,), _ = ray.wait(list(running), num_returns=1)
            slot, left = running[ready]
            try:
                index, value = ray.get(next(ready))
            except StopIteration:
                del running[ready]
                free.append(slot)
                continue
            except self._lost as exc:
                if getattr(exc, "actor_init_failed", False):  # not a crash: every new worker would fail
                    raise DitsError(f"a Ray worker could not start: {_last_line(exc)}") from exc
                del running[ready]
                self._replace(slot, exc)
                free.append(slot)
                if left:
                    queue.appendleft(list(left.items()))
                continue
            except ray.exceptions.RayTaskError as exc:
                if isinstance(exc.cause, DitsError):
                    raise exc.cause from exc
                raise
            del left[index]
            yield index, value

    def _replace(self, slot: int, exc: Exception) -> None:
        """A fresh actor in place of the dead one at ``slot``."""
        self.deaths += 1
        reason = _last_line(exc)
        if self.deaths > MAX_DEATHS_PER_WORKER * len(self.actors):
            raise DitsError(
                f"distributed: {self.deaths} Ray workers died in this run (last: {reason}); see the Ray "
                "logs, and lower engine.batch_size or raise distributed.num_gpus/num_cpus per worker"
            )
        log.warning("Ray worker %d died (%s); its unfinished items go to a fresh worker", slot, reason)
        import_ray().kill(self.actors[slot])
        self.actors[slot] = self._start()

    def close(self) -> None:
        """Stop the workers (and the local Ray this cluster started)."""
        ray = import_ray()
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self._owns_ray:
            ray.shutdown()


class RemoteHarness:
    """A session's harness whose `Harness.measure` runs on the workers; every other attribute (θ*'s
    dialogues and scores, the counters) is the driver's harness's."""

    def __init__(self, cluster: Cluster, session: ProbeSession, work: Any) -> None:
        self._cluster, self._local, self._stats = cluster, session.harness, session.prober.stats
        self._box = [work]  # a reference inside a list reaches the workers unresolved

    def __getattr__(self, name: str) -> Any:
        return getattr(self._local, name)

    def measure(
        self,
        groups: Sequence[Group],
        lr: float,
        optimizer: Optimizer,
        units: Mapping[str, Sequence[int]],
        per_batch: int,
        *,
        probed_before: Mapping[str, Probed] | None = None,
    ) -> Iterator[tuple[Group, Probed, list[Any]]]:
        """`Harness.measure` on the workers, chunks of at most ``per_batch`` groups (fewer, so that every
        worker gets some), results in group order. Probe states stay on the workers (``probed_before``
        is not used; the `Probed` handed back carries the measures only)."""
        groups = list(groups)
        size = max(1, min(per_batch, math.ceil(len(groups) / len(self._cluster.actors))))

        def submit(actor: Any, chunk: list[tuple[int, Group]]) -> Any:
            wanted = {g.id: list(units[g.id]) for _, g in chunk}
            return actor.measure.remote(self._box, chunk, lr, optimizer, wanted, per_batch)

        arrived: dict[int, tuple[Any, list[Any]]] = {}
        done = 0
        for index, (measures, results, work) in self._cluster.stream(groups, size, submit):
            self._local.dialogues += int(work["dialogues"])
            self._local.tokens += int(work["tokens"])
            self._stats.probe_steps += int(work["probe_steps"])
            self._stats.probe_seconds += work["probe_seconds"]
            arrived[index] = (measures, results)
            while done in arrived:
                measures, results = arrived.pop(done)
                yield groups[done], Probed({}, measures), results
                done += 1


def _last_line(exc: Exception) -> str:
    """The last line of an exception's message (a remote traceback ends with the error itself)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _runtime_env(address: str | None) -> dict[str, Any] | None:
    """Workers of an existing cluster import this process's ``dits`` (shipped as a module); a local
    cluster's workers inherit this process's environment."""
    if address is None:
        return None
    import dits

    return {"py_modules": [str(Path(dits.__file__).parent)]}
