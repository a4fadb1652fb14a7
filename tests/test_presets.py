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


@pytest.mark.parametrize(("preset", "demo_run"), [("synth-ie-isft-dpo", 0), ("synth-ie-dits", 1)])
def test_cpu_synth_ie_presets_are_the_quick_demo_runs(preset: str, demo_run: int) -> None:
    """The README reports the quick demo's measurements for these presets: they must stay the same runs."""
    from dits.demo import demo_configs

    demo = demo_configs(True, "runs", [])[demo_run].model_dump()
    shipped = load_config(next(p for p in CONFIGS if p.stem == preset)).model_dump()
    ignored = {"name", "runs_dir"} | ({"influence", "selection"} if shipped["method"] != "dits" else set())
    assert {k: v for k, v in shipped.items() if k not in ignored} == {
        k: v for k, v in demo.items() if k not in ignored
    }
