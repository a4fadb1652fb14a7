"""Console helpers: numbers rounded for people in stage summaries."""

from __future__ import annotations

import numpy as np
import pytest

from dits.progress import StageTimer, console, human


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (79.20833333333333, "79.2"),
        (0.5416666666666666, "0.542"),
        (0.675, "0.675"),
        (1.0, "1"),
        (1234.56, "1,235"),
        (12345, "12,345"),
        (np.int64(4000), "4,000"),
        (np.float32(0.25), "0.25"),
        (2e-5, "2e-05"),
        (True, "True"),
        (None, "None"),
        ("sft", "sft"),
    ],
)
def test_human_rounds_numbers_and_leaves_the_rest(value: object, shown: str) -> None:
    assert human(value) == shown


def test_stage_summary_prints_rounded_numbers() -> None:
    with console.capture() as captured:
        line = StageTimer("eval").summary(n=1200, mean_tokens=79.20833333333333, answered=0.5416666666666666)
    assert line.startswith("eval: n 1,200, mean tokens 79.2, answered 0.542, wall time ")
    assert captured.get().strip() == line
