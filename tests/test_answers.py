import pytest

from dits.tasks.answers import extract_answer, last_boxed, normalize_final_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is <A>Paris</A>.", "Paris"),
        ("<A>Rome</A> no wait <A>Paris</A>", "Paris"),
        ("<A>\n  two\n  lines \n</A>", "two\n  lines"),
        ("<A>x < 5 and y > 2</A>", "x < 5 and y > 2"),
        ("<A>a <b>bold</b> c</A>", "a <b>bold</b> c"),
        ("<A>Paris</A> and the format is <A></A>", "Paris"),
        ("<A>  </A>", None),
        ("<A></A>", None),
        ("no tag at all", None),
        ("<A>draft <A>final</A>", "final"),
        ("I think <A>Paris", "Paris"),
        ("I think <A>Paris</A", "Paris"),
        ("I think <A>Paris</", "Paris"),
        ("<A>Rome</A> then <A>Paris", "Paris"),
        ("<A>Rome</A> then <A>rambling\nover several lines", "Rome"),
        ("<A>rambling\nover lines", None),
        ("lower case <a>Paris</a>", None),
    ],
)
def test_tag_extraction(text, expected):
    assert extract_answer(text, "tag") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so $\boxed{42}$.", "42"),
        (r"\boxed{1} first, then \boxed{2}", "2"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}"),
        (r"set \boxed{\{1, 2\}}", r"\{1,2\}"),
        (r"\boxed 5$ done", "5"),
        (r"\fbox{7}", "7"),
        (r"\boxed {8}", "8"),
        (r"\boxed{3} then a cut-off \boxed{4", "3"),
        (r"\boxed{12", None),
        (r"\boxed{}", None),
        ("no box", None),
        (r"\boxed{\text{(C)}}", "(C)"),
        (r"\boxed{x = \dfrac12}", r"\frac{1}{2}"),
        (r"\boxed{10\text{ cm}^2}", "10"),
    ],
)
def test_boxed_extraction(text, expected):
    assert extract_answer(text, "boxed") == expected


def test_last_boxed_returns_raw_content():
    assert last_boxed(r"a \boxed{x^{2}} b") == "x^{2}"
    assert last_boxed(r"\boxedx") is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("x = 5", "5"),
        (r"\text{Monday}", "Monday"),
        (r"\$5.00", "5.00"),
        (r"$\frac{1}{2}$", r"\frac{1}{2}"),
        (r"\dfrac{3}{4}", r"\frac{3}{4}"),
        (r"\tfrac{8\pi}5", r"\frac{8\pi}{5}"),
        (r"\frac12", r"\frac{1}{2}"),
        (r"\frac1{2}", r"\frac{1}{2}"),
        (r"\sqrt2", r"\sqrt{2}"),
        (r"2\sqrt[3]{2}", r"2\sqrt[3]{2}"),
        ("1,234", "1234"),
        ("-12,345.5", "-12345.5"),
        ("1,2,3", "1,2,3"),
        (r"5,\!866,\!608", "5866608"),
        (r"14{,}916", "14916"),
        ("90^\\circ", "90"),
        (r"118 \text{ dollars}", "118"),
        (r"25 \, \text{km}", "25"),
        (r"210\text{ ways}", "210"),
        ("5.", "5"),
        (r"\left( 3, -2 \right)", "(3,-2)"),
        (r"\left[ \frac{3}{2}, 2 \right)", r"[\frac{3}{2},2)"),
        (r"\begin{pmatrix} 1 \\ -2 \end{pmatrix}", r"\begin{pmatrix}1\\-2\end{pmatrix}"),
        (r"a + b", "a+b"),  # articles are not removed: "a" is a variable here
        (r"\text{ a.m.}", "a.m"),
    ],
)
def test_normalize_final_answer(raw, expected):
    assert normalize_final_answer(raw) == expected


@pytest.mark.parametrize("raw", [r"\dfrac12", "1,234 dollars", r"\left(1,\frac{1}{2}\right)", r"\text{(C)}"])
def test_normalize_is_idempotent(raw):
    once = normalize_final_answer(raw)
    assert normalize_final_answer(once) == once


def test_unknown_format_is_rejected():
    with pytest.raises(ValueError, match="unknown answer format"):
        extract_answer("<A>x</A>", "xml")  # type: ignore[arg-type]
