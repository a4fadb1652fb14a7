import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from dits.errors import DitsError
from dits.tasks.math_equiv import MathVerifier
from dits.tasks.metrics import (
    exact_match,
    f1_score,
    math_match,
    normalize_text,
    numeric_match,
    parse_number,
    score_answer,
)


def test_normalize_text_is_squad_style():
    assert normalize_text("The  Eiffel-Tower, in Paris!") == "eiffeltower in paris"
    assert normalize_text("An apple a day") == "apple day"
    assert normalize_text("Café “Noir”") == "café noir"


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        ("Paris", "paris", 1.0),
        ("the Eiffel Tower", "Eiffel Tower!", 1.0),
        ("Nora", "Nora Whitby", 2 / 3),
        ("Nora Whitby was born first", "Nora Whitby", 4 / 7),
        ("London", "Paris", 0.0),
        ("the", "a", 1.0),  # both normalise to nothing
        ("the", "Paris", 0.0),
        ("paris paris", "paris", 2 / 3),
    ],
)
def test_f1(prediction, gold, expected):
    assert f1_score(prediction, gold) == pytest.approx(expected)


def test_exact_match_normalises():
    assert exact_match("  The Paris. ", "paris") == 1.0
    assert exact_match("Paris France", "Paris") == 0.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,234", (1234.0, False)),
        ("$5", (5.0, False)),
        ("-3.50", (-3.5, False)),
        ("-$5", (-5.0, False)),
        ("$-5", (-5.0, False)),
        ("\u22124", (-4.0, False)),
        (".5", (0.5, False)),
        ("about 12 apples, not 13", (12.0, False)),
        ("5-3", (5.0, False)),
        ("x-3", (3.0, False)),
        ("50%", (50.0, True)),
        (r"50\%", (50.0, True)),
        ("3/4", (0.75, False)),
        (r"\frac{3}{4}", (0.75, False)),
        ("1,2", (1.0, False)),
        ("no number", None),
        ("2/0", None),
    ],
)
def test_parse_number(text, expected):
    assert parse_number(text) == expected


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        ("5.0", "5", 1.0),
        ("1,234", "1234", 1.0),
        ("$18", "18", 1.0),
        ("-3.50", "-3.5", 1.0),
        ("50%", "50", 1.0),
        ("50%", "0.5", 1.0),
        ("0.5", "50%", 1.0),
        ("18 dollars", "17", 0.0),
        ("eighteen", "18", 0.0),
        ("0.1", "0.10000000001", 1.0),
    ],
)
def test_numeric(prediction, gold, expected):
    assert numeric_match(prediction, gold) == expected


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        (r"\dfrac{1}{2}", r"\frac12", 1.0),  # equal after normalisation, no helper process needed
        (r"\text{(C)}", "(C)", 1.0),
        ("5.0", "5", 1.0),
        ("0.5", r"\frac{1}{2}", 1.0),
        ("(x+1)^2", "x^2+2x+1", 1.0),
        (r"\{2,1\}", r"\{1,2\}", 1.0),
        ("2", "3", 0.0),
        ("", "3", 0.0),
    ],
)
def test_math(prediction, gold, expected):
    assert math_match(prediction, gold) == expected


def test_score_answer_takes_best_alias_and_zero_for_missing():
    assert score_answer("Sunset Blvd", ["Sunset Boulevard", "Sunset Blvd"], "em") == 1.0
    assert score_answer("Sunset", ["Sunset Boulevard", "Boulevard"], "f1") == pytest.approx(2 / 3)
    assert score_answer(None, ["x"], "f1") == 0.0
    assert score_answer("   ", ["x"], "em") == 0.0
    assert score_answer("x", [], "em") == 0.0
    for metric in ("f1", "em", "numeric", "math"):
        assert 0.0 <= score_answer("12", ["12", "13"], metric) <= 1.0


def test_unknown_metric_is_a_user_error():
    with pytest.raises(DitsError, match="unknown metric 'bleu'"):
        score_answer("x", ["x"], "bleu")  # type: ignore[arg-type]


def test_math_scoring_works_in_worker_threads():
    cases = [
        ("0.5", r"\frac{1}{2}", 1.0),
        (r"\sqrt{2}/2", r"\frac{\sqrt{2}}{2}", 1.0),
        ("x^2-1", "(x-1)(x+1)", 1.0),
        ("7", "8", 0.0),
    ]
    with ThreadPoolExecutor(max_workers=3) as pool:
        scores = list(pool.map(lambda case: score_answer(case[0], [case[1]], "math"), cases))
    assert scores == [expected for *_, expected in cases]


def test_pathological_expression_times_out_and_the_verifier_recovers():
    verifier = MathVerifier(max_helpers=1)
    try:
        assert verifier.equivalent("1", "1.0")  # helper started and answering
        start = time.monotonic()
        assert not verifier.equivalent("9^{9^{9^{9}}}", "9^{9^{9^{8}}}", timeout=0.5)
        assert time.monotonic() - start < 5
        assert verifier.equivalent(r"\frac{1}{2}", "0.5")  # a fresh helper replaced the killed one
    finally:
        verifier.close()
