"""Task metrics. Every score is in [0, 1]; :func:`score_answer` takes the max over the gold aliases.

* ``f1``: SQuAD-style word F1 after :func:`normalize_text` (lower case, punctuation and the articles
  a/an/the removed, whitespace tokens).
* ``em``: exact match of the same normalised strings.
* ``numeric``: the first number of the prediction equals the gold number (``1,234``, ``$5``, ``-3.50``,
  ``5.0`` == ``5``, ``\\frac{3}{4}`` == ``0.75``; ``50%`` matches a gold of 50 or of 0.5).
* ``math``: :func:`~dits.tasks.answers.normalize_final_answer` string equality, then plain-number
  equality, then symbolic equivalence by ``math-verify`` in a helper process with a real timeout
  (see :mod:`dits.tasks.math_equiv`), so it is safe to call from any thread.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence

from dits.errors import DitsError
from dits.tasks.answers import normalize_final_answer
from dits.tasks.math_equiv import DEFAULT_TIMEOUT, math_equivalent
from dits.tasks.types import MetricName

_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_FRAC = re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}")
_NUMBER = re.compile(
    r"(?:(?<![\w)])(?P<sign>[-\u2212]))?(?:\$(?P<sign2>-)?)?"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?:\s*/\s*(?P<den>\d+(?:\.\d+)?))?(?P<pct>\s*(?:%|\\%|percent\b))?"
)
_PLAIN_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")


def normalize_text(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(
        char
        for char in text.lower()
        if char not in string.punctuation and not unicodedata.category(char).startswith("P")
    )
    return " ".join(_ARTICLES.sub(" ", text).split())


def f1_score(prediction: str, gold: str) -> float:
    """Word-overlap F1 between the normalised prediction and gold."""
    predicted, expected = normalize_text(prediction).split(), normalize_text(gold).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the normalised prediction equals the normalised gold."""
    return float(normalize_text(prediction) == normalize_text(gold))


def parse_number(text: str) -> tuple[float, bool] | None:
    """The first number in ``text`` and whether it is a percentage, or None when there is none."""
    match = _NUMBER.search(_FRAC.sub(r"\1/\2", text))
    if match is None:
        return None
    value = float(match["num"].replace(",", ""))
    if match["den"] is not None:
        denominator = float(match["den"])
        if denominator == 0:
            return None
        value /= denominator
    if match["sign"] or match["sign2"]:
        value = -value
    return value, match["pct"] is not None


def numeric_match(prediction: str, gold: str) -> float:
    """1.0 when the first number of the prediction equals the first number of the gold."""
    predicted, expected = parse_number(prediction), parse_number(gold)
    if predicted is None or expected is None:
        return 0.0
    return float(any(_close(a, b) for a in _readings(*predicted) for b in _readings(*expected)))


def _readings(value: float, percent: bool) -> tuple[float, ...]:
    return (value, value / 100) if percent else (value,)


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def math_match(prediction: str, gold: str, timeout: float = DEFAULT_TIMEOUT) -> float:
    """1.0 when the two answers are the same mathematical object (see the module docstring)."""
    predicted, expected = normalize_final_answer(prediction), normalize_final_answer(gold)
    if not predicted or not expected:
        return 0.0
    if predicted == expected:
        return 1.0
    if _PLAIN_NUMBER.fullmatch(predicted) and _PLAIN_NUMBER.fullmatch(expected):
        return float(_close(float(predicted), float(expected)))
    return float(math_equivalent(expected, predicted, timeout))


METRICS: dict[str, Callable[[str, str], float]] = {
    "f1": f1_score,
    "em": exact_match,
    "numeric": numeric_match,
    "math": math_match,
}


def score_answer(prediction: str | None, answers: Sequence[str], metric: MetricName) -> float:
    """Score of ``prediction`` in [0, 1]: the best over the gold ``answers``; no answer scores 0."""
    scorer = METRICS.get(metric)
    if scorer is None:
        raise DitsError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if prediction is None or not prediction.strip():
        return 0.0
    best = 0.0
    for gold in answers:
        best = max(best, scorer(prediction, gold))
        if best >= 1.0:
            break
    return best
