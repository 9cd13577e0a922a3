"""service.cds_cards.markdown: escape() makes any input literal text; the builders keep blocks apart.

Every hostile string (conftest.HOSTILE) is rendered with markdown-it-py, CommonMark and a GFM-like
configuration (linkify, tables, strikethrough, typographer, raw HTML on), and must read back exactly.
"""

from __future__ import annotations

import pytest

from service.cds_cards.markdown import (
    Markdown,
    bullet_list,
    document,
    emphasis,
    escape,
    heading,
    md,
    paragraph,
    strong,
)


# --------------------------------------------------------------------------------------------------
# escape()
# --------------------------------------------------------------------------------------------------
def test_escaped_input_renders_as_one_literal_paragraph(hostile, markdown_check):
    markdown_check.assert_literal(escape(hostile), hostile)


def test_escaped_input_is_literal_in_every_position_of_a_card(hostile, markdown_check):
    """Headings, paragraphs, list items, bold and italic runs, templates: the input still reads back exactly
    and never opens a block, a link or HTML."""
    text = " ".join(markdown_check.normalise(hostile).split())
    detail = document([
        heading(md("Heading {}", hostile)),
        paragraph(escape(hostile)),
        paragraph(md("{}: {}", hostile, hostile)),
        bullet_list([escape(hostile), md("**Label:** {} — {}", hostile, "after")]),
        paragraph(strong(md("Bold {}", hostile))),
        bullet_list([md("second list {}", hostile)]),
        paragraph(emphasis(md("Rule {}", hostile))),
    ])
    blocks = markdown_check.assert_card_markdown(detail, [hostile])
    # Compared with whitespace collapsed: "Heading {}" of "  x" keeps the template's space and one of the input's.
    assert [(b.kind, tuple(" ".join(line.split()) for line in b.lines)) for b in blocks] == [
        ("heading", (f"Heading {text}",)),
        ("paragraph", (text,)),
        ("paragraph", (f"{text}: {text}",)),
        ("bullet_list", (text, f"Label: {text} — after")),
        ("paragraph", (f"Bold {text}",)),
        ("bullet_list", (f"second list {text}",)),
        ("paragraph", (f"Rule {text}",)),
    ]


def test_escape_output_holds_no_raw_html_character_and_no_line_break(hostile):
    escaped = escape(hostile)
    assert "<" not in escaped and ">" not in escaped
    assert escaped.replace("&amp;", "").replace("&lt;", "").replace("&gt;", "").count("&") == 0
    assert not any(c in escaped for c in "\n\r\t\x0b\x0c\x00\u2028\u2029\u202e")
    assert "  " not in escaped


def test_escape_backslash_escapes_every_other_ascii_punctuation_character():
    punctuation = "!\"#$%'()*+,-./:;=?@[\\]^_`{|}~"
    assert escape(punctuation) == "".join("\\" + c for c in punctuation)
    assert escape("a<b>&c") == "a&lt;b&gt;&amp;c"
    assert escape("plain words 123 äöü") == "plain words 123 äöü"


def test_escape_collapses_control_characters_and_runs_of_spaces():
    assert escape("a\n\n# H") == "a \\# H"
    assert escape("a \t\r\n  b") == "a b"
    assert escape("\x00\x1f\x7f\x85 x") == " x"
    assert escape("rtl \u202eabc\u202c") == "rtl abc "


def test_escape_returns_markdown_and_passes_markdown_through():
    once = escape("a.b <c>")
    assert isinstance(once, Markdown)
    assert escape(once) == once  # escape(escape(s)) == escape(s): the mark says it is already markdown
    # A plain str is always escaped, even if it holds escaped text (the mark is gone): backslashes doubled.
    assert escape(str(once)) == "a\\\\\\.b &amp;lt\\;c&amp;gt\\;"
    assert not isinstance(once + "x", Markdown)


@pytest.mark.parametrize("value", [3.5, 7, None, b"bytes", ["a"]])
def test_escape_takes_only_strings(value):
    with pytest.raises(TypeError):
        escape(value)


# --------------------------------------------------------------------------------------------------
# md()
# --------------------------------------------------------------------------------------------------
def test_md_escapes_values_not_the_template():
    assert md("**{}:** {:g} mg", "<b>x</b>", 640.0) == "**&lt;b&gt;x&lt;\\/b&gt;:** 640 mg"
    assert md("{name} at {when}", name="_a_", when="2026-03-05") == "\\_a\\_ at 2026\\-03\\-05"
    assert md("{:.1f} {!r}", 38.55, "x") == "38\\.5 \\'x\\'"  # the spec (and conversion) first, then escaping
    assert isinstance(md("x"), Markdown)


def test_md_inserts_markdown_values_as_they_are():
    dose = md(" {:g} mg", 640.0)
    assert md("{}{} ({})", "tocilizumab", dose, "in-progress") == "tocilizumab 640 mg (in\\-progress)"  # the parentheses are the template's
    assert md("{}", strong(escape("Evidence"))) == "**Evidence**"
    with pytest.raises(ValueError):
        md("{:>10}", escape("x"))


# --------------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------------
def test_builders_make_one_line_blocks():
    assert heading(escape("Evidence")) == "### Evidence"
    assert heading(escape("Evidence"), level=2) == "## Evidence"
    assert paragraph(md("**Onset:** {}", "day 4")) == "**Onset:** day 4"
    assert bullet_list([escape("a"), md("{}", "b.c")]) == "- a\n- b\\.c"
    assert bullet_list([]) == ""
    assert strong(escape(" x ")) == "**x**"
    assert emphasis(escape("x")) == "*x*"
    for built in (heading("x"), paragraph("x"), bullet_list(["x"]), strong("x"), emphasis("x"), document(["x"])):
        assert isinstance(built, Markdown)


@pytest.mark.parametrize("level", [0, 7])
def test_heading_levels(level):
    with pytest.raises(ValueError):
        heading("x", level=level)


@pytest.mark.parametrize("builder", [heading, paragraph, strong, emphasis, lambda text: bullet_list([text])])
@pytest.mark.parametrize("text", ["two\nlines", "carriage\rreturn", "", "   ", "- list", "* list", "+ list",
                                  "# heading", "> quote", "1. ordered", "2) ordered", "---", "* * *", "```", "~~~",
                                  "<div>", "[ref]: /url", "| a | b |", "    - indented list"])
def test_builders_reject_text_that_is_not_one_plain_line(builder, text):
    """Unescaped programmer text that would open a block (or fold lines) is a bug: refuse it loudly."""
    with pytest.raises(ValueError):
        builder(text)


def test_heading_refuses_a_closing_sequence_it_would_lose():
    with pytest.raises(ValueError):
        heading("ends with #")
    assert heading("C#") == "### C#"
    assert heading(escape("ends with #")) == "### ends with \\#"


def test_document_separates_blocks_by_one_blank_line(markdown_check):
    detail = document([
        paragraph(strong(escape("Current grade: grade 2"))),
        bullet_list([escape("fever: yes"), escape("oxygen: 2")]),
        "",
        paragraph(strong(escape("Evidence"))),
        bullet_list([escape("Observation/t1")]),
        heading(escape("Recommended")),
        bullet_list([escape("Alert the ICU.")]),
        paragraph(emphasis(escape("Rule crs-astct 1.0.0"))),
    ])
    assert "\n\n\n" not in detail and not detail.startswith("\n") and not detail.endswith("\n")
    blocks = markdown_check.assert_card_markdown(detail)
    assert [(b.kind, len(b.lines)) for b in blocks] == [
        ("paragraph", 1), ("bullet_list", 2), ("paragraph", 1), ("bullet_list", 1), ("heading", 1),
        ("bullet_list", 1), ("paragraph", 1)]


def test_document_keeps_adjacent_lists_apart(markdown_check):
    detail = document([bullet_list(["a", "b"]), bullet_list(["c"]), bullet_list(["d", "e"]), paragraph("f")])
    assert detail == "- a\n- b\n\n* c\n\n- d\n- e\n\nf"
    blocks = markdown_check.assert_card_markdown(detail)
    assert [b.lines for b in blocks] == [("a", "b"), ("c",), ("d", "e"), ("f",)]


@pytest.mark.parametrize("block", ["a\n\nb", "a\nb", "- a\nb", "- a\n\n- b", "a\r\nb"])
def test_document_rejects_blocks_that_are_not_builder_output(block):
    with pytest.raises(ValueError):
        document([block])
