"""The shared utilities: one seed derivation, one min–max rule, correlations, prefixes, atomic writes."""

from __future__ import annotations

import math
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dits.utils import common_prefix_length, derive_seed, minmax, pearson, spearman, write_atomic


def test_seeds_are_stable_typed_and_ordered() -> None:
    assert derive_seed(1, "a") == derive_seed(1, "a")
    assert derive_seed(1, "a") != derive_seed("1", "a")  # repr keeps types apart
    assert derive_seed(1, "a") != derive_seed("a", 1)
    assert 0 <= derive_seed("x") < 2**63


@given(st.dictionaries(st.text(max_size=3), st.floats(-1e6, 1e6), min_size=1))
def test_minmax_maps_into_the_unit_interval_and_keeps_order(values: dict[str, float]) -> None:
    scaled = minmax(values)
    assert all(0.0 <= v <= 1.0 for v in scaled.values())
    for a in values:
        for b in values:
            if values[a] < values[b]:
                assert scaled[a] <= scaled[b]


def test_minmax_ties_give_the_middle_and_bounds_clip() -> None:
    assert minmax({"a": 2.0, "b": 2.0}) == {"a": 0.5, "b": 0.5}
    assert minmax({"a": -1.0, "b": 0.5, "c": 3.0}, bounds=(0.0, 1.0)) == {"a": 0.0, "b": 0.5, "c": 1.0}
    assert minmax({}) == {}


def test_correlations() -> None:
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [1, 8, 27]) == pytest.approx(1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)  # ties share a rank
    assert math.isnan(pearson([1, 2], [1, 2]))  # too few points
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))  # a constant side


def test_common_prefix_length() -> None:
    assert common_prefix_length([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix_length([[1, 2, 3], [1, 2, 3]], limit=1) == 1
    assert common_prefix_length([]) == 0


def test_write_atomic_replaces_and_leaves_no_temp_file(tmp_path) -> None:
    path = tmp_path / "sub" / "file.json"
    write_atomic(path, "one")
    write_atomic(path, "two")
    assert path.read_text() == "two"
    assert os.listdir(path.parent) == ["file.json"]
