"""Progress bars with an ETA for long stages (rich), and a one-line summary at the end."""

from __future__ import annotations

import numbers
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


def human(value: object) -> str:
    """``value`` for people: integers with thousands separators, reals to 3 significant digits (whole
    numbers from 100 up), anything else as ``str``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return str(value)
    if isinstance(value, numbers.Integral) or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[..., None]]:
    """A bar for ``total`` units of work; yields ``advance(n=1, status=None)``, where ``status`` replaces
    the short text shown after the ETA (e.g. the latest loss)."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    )
    with Progress(*columns, console=console, transient=False, disable=total <= 0) as bar:
        task = bar.add_task(description, total=total, status="")

        def advance(n: int = 1, status: str | None = None) -> None:
            bar.update(task, advance=n, **({} if status is None else {"status": status}))

        yield advance


class StageTimer:
    """Measures a stage and prints its one-line summary."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def summary(self, **facts: object) -> str:
        """Print and return ``name: fact value, ..., wall time``, numbers rounded by `human`."""
        parts = ", ".join(f"{k.replace('_', ' ')} {human(v)}" for k, v in facts.items())
        line = f"{self.name}: {parts}, wall time {self.seconds:.1f}s"
        console.print(line)
        return line
