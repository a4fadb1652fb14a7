"""Progress bars with an ETA for long stages (rich), and a one-line summary at the end."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A bar for ``total`` units of work; yields ``advance(n)``."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False, disable=total <= 0) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


class StageTimer:
    """Measures a stage and prints its one-line summary."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def summary(self, **facts: object) -> str:
        parts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in facts.items())
        line = f"{self.name}: {parts}, wall time {self.seconds:.1f}s"
        console.print(line)
        return line
