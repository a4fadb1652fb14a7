"""The stage executor of a run directory: config check, memoised stages, seeds, per-stage accounting.

A stage has a key such as ``iter_0/trees`` and a body (``work``) that returns its summary. `Run.stage`
runs the body unless the manifest already records the stage as done, and records the summary with the
tokens the engine generated, the wall time and the peak memory of the stage. A stage is marked done
only after its body returned, i.e. after its outputs are durable; a re-run skips done stages, and
stage bodies skip the records they already wrote (the task ids, trees or groups in their log).

All randomness is derived from (run seed, stage, task id, ...) with `dits.utils.derive_seed`, so a
resumed run produces the same artefacts as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml

from dits import __version__
from dits.config import RunConfig, dump_config, run_identity, validate_config
from dits.errors import DitsError
from dits.memory import peak_memory
from dits.progress import StageTimer
from dits.store import RunStore
from dits.utils import derive_seed, write_atomic

StageWork = Callable[[], dict[str, Any]]
"""A stage body: does the work (skipping what its logs already hold) and returns the stage summary."""


class Run:
    """One run directory (``cfg.run_dir``): its saved config, its store and the stages done in it."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.store = RunStore(cfg.run_dir)
        self._check_config()

    def _check_config(self) -> None:
        """Refuse to resume a run directory whose saved config differs from ``cfg``. The saved config is
        read with today's schema first, so a run saved before a config key existed resumes as long as
        the new key keeps its default (the behaviour the run was started with); where inference runs
        (`dits.config.DistributedConfig.PLACEMENT`) may change."""
        text = dump_config(self.cfg)
        path = self.store.path("config.yaml")
        if path.exists() and not _same_config(path.read_text(), run_identity(self.cfg)):
            raise DitsError(
                f"{self.store.root} holds a run with a different config; resume with the same config "
                "and overrides, or choose another name (name=...)"
            )
        if not path.exists():
            write_atomic(path, text)
            self.store.set_meta("dits_version", __version__)

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

    def stage(self, key: str, work: StageWork, *, tokens: Callable[[], int] = lambda: 0) -> dict[str, Any]:
        """Run ``work`` unless stage ``key`` is done; return its summary, recorded with the tokens
        generated (``tokens()`` after minus before), wall time and peak memory."""
        if self.store.is_done(key):
            return self.store.summary(key)
        self.store.mark_started(key)
        timer = StageTimer(key)
        tokens_before = tokens()
        with peak_memory() as peaks:
            summary = work()
        summary.setdefault("tokens_generated", tokens() - tokens_before)
        summary.update(peaks())
        timer.summary(
            **{k: v for k, v in summary.items() if not isinstance(v, (dict, list)) and k != "wall_time"}
        )
        summary["wall_time"] = round(timer.seconds, 2)
        self.store.mark_done(key, summary)
        return summary


def _same_config(saved: str, current: str) -> bool:
    """Whether a saved config (YAML) has the `run_identity` ``current`` once keys added since it was saved
    take their defaults; a saved key that no longer exists, or any changed value, makes them differ."""
    try:
        return run_identity(validate_config(yaml.safe_load(saved) or {}, "saved config")) == current
    except (DitsError, yaml.YAMLError):
        return False
