"""The stage executor of a run directory: lock, config check, verified resume, memoised stages, seeds,
per-stage accounting.

A stage has a key such as ``iter_0/trees``, a body (``work``) that returns its summary, and the outputs
it declares (paths in the run directory). `Run.stage` runs the body unless the manifest already records
the stage as done, and records the summary with the tokens the engine generated, the wall time and the
peak memory of the stage, and a digest of every output (`dits.artefacts`). A stage is marked done only
after its body returned, i.e. after its outputs are durable; a re-run skips done stages, and stage
bodies skip the records they already wrote (the task ids, trees or groups in their log).

Opening a run takes its lock (`dits.lock`), removes what killed processes left (temp files, work
folders), refuses a different config, and checks every finished stage's outputs against their records:
a missing or damaged one stops the run with one line naming it and the stage to redo
(``dits run CONFIG --redo STAGE``: that stage and every stage after it run again).

Accounting adds up across resumes: while a stage runs, the manifest records what its attempts have
spent so far (updated at every record a log of the stage appends), and the next attempt continues the
count. Work after a killed attempt's last record is not counted.

All randomness is derived from (run seed, stage, task id, ...) with `dits.utils.derive_seed`, so a
resumed run produces the same artefacts as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

import yaml

from dits import __version__
from dits.artefacts import remove_leftovers
from dits.config import DistributedConfig, RunConfig, dump_config, validate_config
from dits.errors import DitsError
from dits.lock import RunLock
from dits.memory import peak_memory
from dits.progress import StageTimer, console
from dits.store import JsonlLog, RunStore
from dits.utils import derive_seed, write_atomic

StageWork = Callable[[], dict[str, Any]]
"""A stage body: does the work (skipping what its logs already hold) and returns the stage summary."""


class Run:
    """One run directory (``cfg.run_dir``), held by this process: its saved config, its store and the
    stages done in it. ``redo``: forget that stage and the ones after it first. `close` releases it."""

    def __init__(self, cfg: RunConfig, *, redo: str | None = None) -> None:
        self.cfg = cfg
        self.lock = RunLock(cfg.run_dir)
        try:
            self._open(redo)
        except BaseException:
            self.lock.release()
            raise

    def _open(self, redo: str | None) -> None:
        root = self.cfg.run_dir
        leftovers = remove_leftovers(root)
        if leftovers:
            console.print(
                f"{root}: removed {len(leftovers)} temp files or work folders of an interrupted run",
                soft_wrap=True,
            )
        self.store = RunStore(root)
        self._check_config()
        if redo is not None:
            dropped = ", ".join(self.store.redo(redo))
            console.print(f"--redo {redo}: these stages run again: {dropped}", soft_wrap=True)
        damage = self.store.damaged()
        if damage:
            stage, rel, issue = damage[0]
            more = f" ({len(damage) - 1} more damaged outputs after it)" if len(damage) > 1 else ""
            raise DitsError(
                f"{self.store.path(rel)} {issue}; it is an output of the finished stage {stage}{more}: "
                f"run that stage and the ones after it again with `dits run CONFIG ... --redo {stage}`"
            )

    def close(self) -> None:
        """Release the run directory (its lock)."""
        self.lock.release()

    def _check_config(self) -> None:
        """Refuse to resume a run directory whose saved config differs from ``cfg``. The saved config is
        read with today's schema first, so a run saved before a config key existed resumes as long as
        the new key keeps its default (the behaviour the run was started with). Where the run lives
        (``runs_dir``, ``name``) and where inference runs (`dits.config.DistributedConfig.PLACEMENT`) may
        differ: a moved run directory resumes, on other workers too."""
        path = self.store.path("config.yaml")
        if not path.exists():
            write_atomic(path, dump_config(self.cfg))
            self.store.set_meta("dits_version", __version__)
            return
        difference = _config_difference(path.read_text(errors="replace"), self.cfg)
        if difference:
            raise DitsError(
                f"{self.store.root} holds a run with a different config ({difference}); resume with the "
                "same config and overrides, or choose another name (name=...)"
            )

    def seed(self, *parts: object) -> int:
        """The seed of one random choice of this run, named by ``parts``."""
        return derive_seed(self.cfg.seed, *parts)

    def train_seed(self, *parts: object) -> int:
        """A seed for trainers (numpy and HF accept only 32-bit seeds)."""
        return self.seed(*parts) % 2**31

    def replica_seed(self, *parts: object) -> int:
        """The seed of a choice that replicates vary (``replicate``; the same as `seed` for replicate 0)."""
        if self.cfg.replicate == 0:
            return self.seed(*parts)
        return self.seed("replicate", self.cfg.replicate, *parts)

    def stage(
        self,
        key: str,
        work: StageWork,
        *,
        outputs: Sequence[Path] = (),
        tokens: Callable[[], int] = lambda: 0,
    ) -> dict[str, Any]:
        """Run ``work`` unless stage ``key`` is done; return its summary, recorded with the tokens
        generated (``tokens()`` after minus before, plus earlier attempts'), wall time (likewise), peak
        memory and the records of ``outputs`` (paths in the run directory). A torn last line of an
        output log (a kill mid-write) is dropped before the stage continues."""
        if self.store.is_done(key):
            return self.store.summary(key)
        declared = [self.store.relative(path) for path in outputs]
        earlier = self.store.mark_started(key, declared)
        for rel in declared:
            dropped = JsonlLog(self.store.path(rel)).repair() if rel.endswith(".jsonl") else 0
            if dropped:
                console.print(
                    f"{key}: dropped the torn last line of {rel} ({dropped} bytes, an interrupted write)",
                    soft_wrap=True,
                )
        timer = StageTimer(key)
        tokens_before = tokens()

        def spent() -> dict[str, Any]:
            return {
                "tokens_generated": earlier["tokens_generated"] + tokens() - tokens_before,
                "wall_time": round(earlier["wall_time"] + timer.seconds, 2),
                "attempts": earlier["attempts"],
            }

        outer, self.store.on_record = self.store.on_record, lambda: self.store.set_partial(key, spent())
        try:
            with peak_memory() as peaks:
                summary = work()
        except BaseException:
            with suppress(OSError):
                self.store.set_partial(key, spent())
            raise
        finally:
            self.store.on_record = outer
        total = spent()
        summary.setdefault("tokens_generated", total["tokens_generated"])
        summary.update(peaks())
        timer.summary(
            **{k: v for k, v in summary.items() if not isinstance(v, (dict, list)) and k != "wall_time"}
        )
        summary["wall_time"] = total["wall_time"]
        if total["attempts"] > 1:
            summary["attempts"] = total["attempts"]
        self.store.mark_done(key, summary)
        return summary


def _config_difference(saved: str, current: RunConfig) -> str | None:
    """How a saved config (YAML) differs from ``current`` once keys added since it was saved take their
    defaults and the run's place (``runs_dir``, ``name``) is ignored (None: it does not); a saved key that
    no longer exists, or any changed value, is a difference."""
    try:
        old = validate_config(yaml.safe_load(saved) or {}, "the saved config")
    except DitsError as exc:
        return str(exc)
    except yaml.YAMLError:
        return "the saved config.yaml is not valid YAML"
    placement = {key: getattr(current.distributed, key) for key in DistributedConfig.PLACEMENT}
    place = {
        "runs_dir": current.runs_dir,
        "name": current.name,
        "distributed": old.distributed.model_copy(update=placement),
    }
    return _first_difference(old.model_copy(update=place).model_dump(), current.model_dump())


def _first_difference(saved: Any, now: Any, prefix: str = "") -> str | None:
    """The first dotted key whose value differs, as ``key: saved → now``."""
    if isinstance(saved, dict) and isinstance(now, dict):
        for key in dict.fromkeys([*saved, *now]):
            found = _first_difference(saved.get(key), now.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    return None if saved == now else f"{prefix.rstrip('.')}: {saved!r} saved, {now!r} now"
