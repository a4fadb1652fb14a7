"""`dits` in a process that kills itself with SIGKILL at a chosen point (for `test_faults`).

Usage: ``python tests/fault_child.py EVENT@STAGE:N dits-arguments...``: the N-th EVENT while stage
STAGE runs ends the process with ``kill -9`` (no cleanup, no ``finally``), exactly like a kill from
outside, but at a reproducible point. Events:

* ``record`` — in the middle of appending a JSONL record: half the line is written, then the kill;
* ``step`` — at an optimizer step of the stage's training;
* ``renamed`` — right after the trained model folder is renamed into place (before the stage is done);
* ``generate`` — at a generate call of the (fake) engine;
* ``done`` — right after the stage is marked done (``N`` is ignored).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from transformers import Trainer

from dits import cli, store
from dits.engines import fake
from dits.train import common

spec, *arguments = sys.argv[1:]
event, rest = spec.split("@", 1)
stage, count = rest.rsplit(":", 1)
state = {"stage": None, "seen": 0}


def kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def happened() -> bool:
    """Count one ``event`` (while ``stage`` runs); whether it is the one to die at."""
    if state["stage"] != stage:
        return False
    state["seen"] += 1
    return state["seen"] >= int(count)


def patch(owner: Any, name: str, before: bool, what: str) -> None:
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if before and event == what and happened():
            kill()
        result = original(*args, **kwargs)
        if not before and event == what and happened():
            kill()
        return result

    setattr(owner, name, wrapper)


original_started, original_done = store.RunStore.mark_started, store.RunStore.mark_done


def mark_started(self: store.RunStore, key: str, *args: Any) -> Any:
    state["stage"] = key
    return original_started(self, key, *args)


def mark_done(self: store.RunStore, key: str, summary: dict[str, Any]) -> None:
    original_done(self, key, summary)
    if event == "done" and key == stage:
        kill()


def torn_write(fd: int, data: bytes) -> int:
    """The ``record`` event: write half the line, then die."""
    if data.startswith(b"{") and happened():
        os.write(fd, data[: len(data) // 2])
        kill()
    return os.write(fd, data)


store.RunStore.mark_started = mark_started  # type: ignore[method-assign]
store.RunStore.mark_done = mark_done  # type: ignore[method-assign]
if event == "record":
    store.write_all = lambda fd, data: (torn_write(fd, data), None)[1]  # type: ignore[assignment]
patch(Trainer, "training_step", True, "step")
patch(common, "_replace_dir", False, "renamed")
patch(fake.FakeEngine, "generate", True, "generate")
sys.argv = ["dits", *arguments]
cli.main()
