"""Config loading, overrides and errors."""

from __future__ import annotations

import pytest

from dits.config import dump_config, load_config, validate_config
from dits.errors import DitsError


def test_overrides_are_typed_and_nested(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: x\nsearch:\n  expansions: 4\n")
    cfg = load_config(path, ["search.expansions=2", "loop.iterations=1", "task.options.steps=2"])
    assert cfg.search.expansions == 2 and cfg.loop.iterations == 1
    assert cfg.task.options == {"steps": 2}
    assert load_config(None, []).name == "run"


def test_unknown_key_names_the_dotted_key(tmp_path) -> None:
    with pytest.raises(DitsError, match="search.expansion"):
        validate_config({"search": {"expansion": 3}})
    with pytest.raises(DitsError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(DitsError, match="key=value"):
        load_config(None, ["loop.iterations"])


def test_bad_value_names_the_key() -> None:
    with pytest.raises(DitsError, match="loop.iterations"):
        validate_config({"loop": {"iterations": 0}})


def test_dump_round_trips(tmp_path) -> None:
    cfg = load_config(None, ["name=abc", "selection.gamma=0"])
    path = tmp_path / "r.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


def test_dits_searches_guided_by_influence_by_default_and_silent_no_ops_are_refused() -> None:
    dits = load_config(None, ["method=dits"])
    assert dits.guided_search and dits.search_rounds == 2
    optima = load_config(None, ["method=isft-dpo"])
    assert not optima.guided_search and optima.search_rounds == 1
    assert not load_config(None, ["method=dits", "search.guidance=q"]).guided_search
    with pytest.raises(DitsError, match="search.rounds >= 2"):
        load_config(None, ["method=dits", "search.rounds=1"])  # guided, but nothing to steer
    with pytest.raises(DitsError, match="does nothing"):
        load_config(None, ["method=isft-dpo", "search.rounds=3"])  # rounds only split a guided search
    with pytest.raises(DitsError, match="needs method dits"):
        load_config(None, ["method=isft-dpo", "search.guidance=influence"])
    with pytest.raises(DitsError, match="exceeds search.expansions"):
        load_config(None, ["method=dits", "search.expansions=2", "search.rounds=3"])
