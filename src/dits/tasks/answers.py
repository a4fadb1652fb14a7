"""Answer extraction from agent utterances: ``<A>...</A>`` tags and LaTeX ``\\boxed{...}``.

Tag rules: the answer is the content of the last complete ``<A>...</A>`` (multi-line content allowed,
whitespace stripped; an ``<A>`` nested inside an unclosed one restarts the answer). Empty tags are
skipped, so ``<A>Paris</A> ... <A></A>`` still answers "Paris". An unclosed final ``<A>`` (a reply cut
by a token limit or by a ``</A>`` stop string) counts only when its content is one non-empty line that
runs to the end of the text; a dangling partial close (``</``, ``</A``) is dropped. Anything longer is too
likely to be rambling to be read as an answer.

Boxed rules: the content of the last well-formed ``\\boxed{...}`` / ``\\fbox{...}`` (braces matched,
``\\{`` and ``\\}`` escapes skipped) or ``\\boxed 5``, passed through :func:`normalize_final_answer`.
"""

from __future__ import annotations

import re

from dits.tasks.types import AnswerFormat

_TAG = re.compile(r"<A>((?:(?!<A>).)*?)</A>", re.DOTALL)
_PARTIAL_CLOSE = re.compile(r"<(?:/A?)?$")
_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def extract_answer(text: str, fmt: AnswerFormat) -> str | None:
    """The last answer stated in ``text`` in format ``fmt``, or None when there is none."""
    if fmt == "tag":
        return _last_tag(text)
    if fmt == "boxed":
        content = last_boxed(text)
        return (normalize_final_answer(content) or None) if content is not None else None
    raise ValueError(f"unknown answer format {fmt!r}; expected 'tag' or 'boxed'")


def _last_tag(text: str) -> str | None:
    closed = list(_TAG.finditer(text))
    last_open = text.rfind("<A>")
    if last_open >= 0 and last_open >= (closed[-1].end() if closed else 0):
        tail = _PARTIAL_CLOSE.sub("", text[last_open + 3 :].rstrip()).strip()
        if tail and "\n" not in tail:
            return tail
    for match in reversed(closed):
        content = match.group(1).strip()
        if content:
            return content
    return None


def matching_brace(text: str, start: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``start`` (escaped braces skipped), or None if unclosed."""
    depth = 0
    index = start
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return index
        index += 1
    return None


def last_boxed(text: str) -> str | None:
    """Raw content of the last well-formed ``\\boxed``/``\\fbox`` in ``text`` (not normalised)."""
    for match in reversed(list(_BOX.finditer(text))):
        rest = text[match.end() :]
        body = rest.lstrip()
        if body.startswith("{"):
            offset = match.end() + len(rest) - len(body)
            close = matching_brace(text, offset)
            if close is not None:
                return text[offset + 1 : close]
        elif rest[:1].isspace():
            value = re.split(r"[$\n]", body, maxsplit=1)[0].strip()
            if value:
                return value
    return None


# --- Minerva-style normalisation of a final answer (our own rules, see the docstring) --------------------

_REWRITES: tuple[tuple[str, str], ...] = (
    ("\\text{and}", ","),
    ("\\dfrac", "\\frac"),
    ("\\tfrac", "\\frac"),
    ("\\$", ""),
    ("\\ldots", ""),
    ("\\dots", ""),
    ("^{\\circ}", ""),
    ("^\\circ", ""),
    ("{,}", ""),
    ('"', ""),
)
_WRAPPERS = ("text", "textbf", "textit", "mbox", "mathrm", "overline", "boxed", "fbox")
_WRAPPER = re.compile(r"\\(?:" + "|".join(_WRAPPERS) + r")\s*\{")
_SPACING = re.compile(r"(?<!\\)\\[,!;: ]")  # \, \! \; \: and "\ ", not the row break \\
_SIZERS = re.compile(r"\\(?:left|right)(?![A-Za-z])")
_UNITS = re.compile(
    r"(?<![A-Za-z\\])(?:dollars?|cents?|units?|square|sq|inch(?:es)?|feet|foot|ft|yards?|miles?|mph|km|cm|mm|"
    r"meters?|metres?|grams?|gm|kg|pounds?|lbs|hours?|minutes?|seconds?|days?|degrees?|points?|digits?|"
    r"ways|integers|students|edges|meals|multiples|th)(?:\^\{?[23]\}?)?(?![A-Za-z])"
)
_ARG_TOKEN = re.compile(r"\\(?:[A-Za-z]+|.)|.", re.DOTALL)
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def normalize_final_answer(answer: str) -> str:
    """Canonical form of a final math answer, so that equal answers compare equal as strings.

    Keeps the text after the last ``=``; unwraps ``\\text{}``-like wrappers and ``\\boxed{}``; drops ``$``,
    ``\\left``/``\\right``, spacing commands, degree signs and unit words (dollars, cm, degrees...);
    rewrites ``\\dfrac``/``\\tfrac`` as ``\\frac`` and the shorthands ``\\frac12``/``\\sqrt2`` with braces;
    removes whitespace, thousands commas of plain numbers and a trailing period. Unlike the Minerva
    original, unit words are removed only as whole words (``\\left`` keeps its ``ft``) and articles are
    kept (removing ``a`` would destroy the variable ``a``).
    """
    text = answer.split("=")[-1]
    for old, new in _REWRITES:
        text = text.replace(old, new)
    text = _SPACING.sub("", text)
    text = _unwrap(text)
    text = _SIZERS.sub("", text)
    text = _UNITS.sub("", text)
    if text.count("$") >= 2:
        first = text.index("$")
        text = text[first + 1 : text.index("$", first + 1)]
    text = re.sub(r"\s+", "", text.replace("$", ""))
    text = _brace_shorthand(text, "\\frac", 2)
    text = _brace_shorthand(text, "\\sqrt", 1)
    if _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    return text.rstrip(".")


def _unwrap(text: str) -> str:
    """Replace each ``\\text{X}`` (and the other wrappers) by ``X``, innermost content kept."""
    while match := _WRAPPER.search(text):
        close = matching_brace(text, match.end() - 1)
        if close is None:
            return text
        text = text[: match.start()] + text[match.end() : close] + text[close + 1 :]
    return text


def _brace_shorthand(text: str, command: str, n_args: int) -> str:
    """Give ``command`` braced arguments: ``\\frac12`` -> ``\\frac{1}{2}``, ``\\sqrt2`` -> ``\\sqrt{2}``."""
    out: list[str] = []
    index = 0
    while (found := text.find(command, index)) >= 0:
        cursor = found + len(command)
        if cursor < len(text) and text[cursor].isalpha():  # another command, e.g. \fracture
            out.append(text[index:cursor])
            index = cursor
            continue
        out.append(text[index:cursor])
        for _ in range(n_args):
            if cursor >= len(text) or text[cursor] == "[":
                break
            if text[cursor] == "{":
                close = matching_brace(text, cursor)
                end = len(text) if close is None else close + 1
                out.append(text[cursor:end])
            else:
                end = _ARG_TOKEN.match(text, cursor).end()
                out.append("{" + text[cursor:end] + "}")
            cursor = end
        index = cursor
    out.append(text[index:])
    return "".join(out)
