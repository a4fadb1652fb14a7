"""What every stage function receives: `StageContext` — the run's config, executor, store, two-agent
system, reward settings, the engine, seeds and the train-task cursor.

Stage functions live in their domains (`dits.isft`, `dits.search.stages`, `dits.influence.stages`,
`dits.train.stages`, `dits.evaluate`) and take a context; recipes (`dits.recipes`) call them in order.

Models of a run are `Policy` values: a trained LoRA adapter or full model (its engine-wide name and its
folder), or ``None`` for the run's initial model (``cfg.model``). `StageContext.serve` makes a policy
available to the engine and returns the adapter name its requests carry.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from dits.config import INFLUENCE_METHODS, RunConfig
from dits.engines.base import Engine, require
from dits.engines.batching import Program, run_programs
from dits.errors import DitsError
from dits.executor import Run, StageWork
from dits.models import ModelRef, resolve_model
from dits.runtime import ModelHost, Policy, check_limit, take
from dits.tasks.base import TaskInstance

if TYPE_CHECKING:
    from dits.distributed import Cluster, SessionOpener
    from dits.influence.estimator import Harness
    from dits.influence.session import ProbeSession
    from dits.search.pairs import PreferencePair

__all__ = ["Policy", "StageContext"]

T = TypeVar("T")
R = TypeVar("R")
ProgramFactory = Callable[[ModelHost, T], Program[R]]
"""Builds one item's program on a `ModelHost` (the driver's context or a worker): a module-level function
(or a `functools.partial` of one over plain data), so that it can be sent to a worker by name."""


class StageContext(ModelHost):
    """The run a stage works in, held by this process until `close` (or the end of a ``with`` block).
    The engine is created on first use (``engine``), or given; with ``distributed.backend: ray`` the
    stages' programs and probe groups run on the workers of `dits.distributed.Cluster` instead
    (`map_programs`, `probe_harness`). ``redo``: see `dits.executor.Run`.

    Everything a config names is checked before the run directory is touched: the task (and its data
    files), the model, and that a given engine can do what the method needs."""

    def __init__(self, cfg: RunConfig, engine: Engine | None = None, *, redo: str | None = None) -> None:
        super().__init__(cfg, engine)
        check_limit(self.system.task, cfg.eval.limit)
        resolve_model(cfg.model)
        if engine is not None and cfg.method in INFLUENCE_METHODS:
            require(engine, "trainable_model", f"method {cfg.method} (influence probes)")
        self.run = Run(cfg, redo=redo)
        self.store = self.run.store
        self._cursor = 0
        self._cluster: Cluster | None = None
        self.live: dict[str, Any] = {}
        """Objects built once per process and shared by several stages (e.g. an iteration's θ*)."""

    def close(self) -> None:
        """Stop the run's workers and release the run directory (the engine stays usable)."""
        try:
            self.stop_workers()
        finally:
            self.run.close()

    def __enter__(self) -> StageContext:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ distribution
    @property
    def cluster(self) -> Cluster:
        """The run's Ray workers (started on first use)."""
        if self._cluster is None:
            from dits.distributed import Cluster

            self._cluster = Cluster(self.cfg)
        return self._cluster

    def map_programs(
        self,
        make: ProgramFactory[T, R],
        items: Sequence[T],
        *,
        max_active: int | None = None,
        on_done: Callable[[int, R], None] | None = None,
    ) -> list[R]:
        """Run ``make(host, item)`` for every item to completion; results in input order, ``on_done(index,
        result)`` as each finishes. ``distributed.backend: none`` runs them here (`run_programs`); ``ray``
        partitions ``items`` over the workers, each running its share with ``max_active`` in flight."""
        if self.cfg.distributed.backend == "none":
            programs = [make(self, item) for item in items]  # first: serving a policy may replace the engine
            return run_programs(programs, self.engine, max_active=max_active, on_done=on_done)
        return self.cluster.map_programs(make, items, max_active=max_active, on_done=on_done)

    def probe_harness(
        self,
        session: ProbeSession,
        opener: SessionOpener,
        folder: Path,
        pairs: Sequence[PreferencePair],
    ) -> Harness:
        """What measures the probe groups of ``session``: its harness (``distributed.backend: none``), or
        one that sends them to the workers (``ray``), each reopening the session with ``opener`` from its
        files in ``folder`` and adding ``pairs`` as ``session.groups(pairs)`` did here."""
        if self.cfg.distributed.backend == "none":
            return session.harness
        return self.cluster.probe_harness(session, opener, folder, pairs)

    def stop_workers(self) -> None:
        """Stop the run's workers, if any were started (the next inference stage starts new ones)."""
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def policy(self, iteration: str, stage: str) -> Policy:
        """The policy stage ``iteration/stage`` trains (its folder in the run directory)."""
        name = re.sub(r"\W", "_", f"{self.cfg.name}_{iteration}_{stage}")
        return Policy(name, self.store.path(iteration, stage))

    def model_ref(self, policy: Policy | None) -> ModelRef:
        """What training stages start from: the initial model, or the policy's folder."""
        return resolve_model(self.cfg.model if policy is None else str(policy.path))

    # ------------------------------------------------------------------ stages
    def stage(self, key: str, work: StageWork, outputs: Sequence[Path] = ()) -> dict[str, Any]:
        """Run stage ``key`` through the executor (skipped when done), counting the engine's tokens;
        ``outputs``: the files and folders it writes in the run directory (recorded and verified)."""
        return self.run.stage(key, work, outputs=outputs, tokens=self._generated_tokens)

    def _generated_tokens(self) -> int:
        local = self._engine.stats.generated_tokens if self._engine is not None else 0
        return local + (self._cluster.generated_tokens if self._cluster is not None else 0)

    def seed(self, *parts: object) -> int:
        return self.run.seed(*parts)

    def train_seed(self, *parts: object) -> int:
        return self.run.train_seed(*parts)

    def replica_seed(self, *parts: object) -> int:
        """Seeds of the stages after SFT (search, influence, selection, DPO): they change with
        ``replicate``, the SFT model and the tasks do not."""
        return self.run.replica_seed(*parts)

    # ------------------------------------------------------------------ tasks
    def train_tasks(self, stage: str, count: int) -> list[TaskInstance]:
        """The next ``count`` train tasks, for stage ``stage``. One cursor runs over the train split in
        the order the recipe calls its synthesis stages (Optima's sequential, wrap-free task stream), so
        every stage gets fresh tasks; stages call this whether or not they are already done, so a
        resumed run gives every stage the same tasks."""
        offset = self._cursor
        instances = take(self.system.task, "train", count, offset)
        if len(instances) < count:
            raise DitsError(
                f"task {self.cfg.task.name}: stage {stage} needs train tasks {offset}..{offset + count} but the "
                f"train split has only {offset + len(instances)}; lower isft/search.tasks_per_iteration"
            )
        self._cursor += count
        return instances

    def tasks(self, split: str, limit: int | None) -> list[TaskInstance]:
        """The first ``limit`` instances of a split (validation, test)."""
        return take(self.system.task, split, limit)
