"""Every shipped config validates, and the paper recipes carry the reference values."""

from __future__ import annotations

from pathlib import Path

import pytest

from dits.config import load_config
from dits.demo import demo_config_path
from dits.tasks.registry import known_names

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", [*CONFIGS, demo_config_path()], ids=lambda p: p.name)
def test_config_validates(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.task.name in known_names()
    assert cfg.name


def test_paper_recipes_cover_eight_datasets_and_four_methods() -> None:
    paper = [p for p in CONFIGS if p.parent.name == "paper"]
    assert len(paper) == 8 * 4
    hotpot = load_config(next(p for p in paper if p.name == "hotpotqa-dits.yaml"))
    assert (hotpot.influence.group_size, hotpot.influence.validation_tasks, hotpot.selection.alpha) == (
        5,
        20,
        0.5,
    )
    assert (hotpot.search.expansions, hotpot.search.rollouts_per_expansion, hotpot.dpo.learning_rate) == (
        8,
        3,
        5e-7,
    )
    assert load_config(next(p for p in paper if p.name == "gsm8k-idpo.yaml")).dpo.nll_weight == 1.0
