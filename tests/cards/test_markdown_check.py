"""The card markdown checker (markdown_check.py) rejects what it must: it is what the card tests rely on."""

from __future__ import annotations

import pytest

from service.cds_cards.markdown import bullet_list, document, escape, md, paragraph, strong

BAD_DETAILS = {
    # the reported bug: bold pseudo-headings with no blank line fold into the previous list item
    "heading-folded-into-list": "**Current grade: grade 2**\n- fever: yes\n**Evidence**\n- Observation/t1",
    "paragraph-over-two-lines": "first line\nsecond line",
    "hard-break": "first line  \nsecond line",
    "raw-html-inline": "Evidence <img src=x onerror=alert(1)>",
    "raw-html-block": "<div>x</div>",
    "script": "<script>alert(1)</script>",
    "link": "[x](http://evil.com)",
    "reference-link": "[x]\n\n[x]: http://evil.com",
    "autolink": "see <http://evil.com>",
    "linkify-url": "see http://evil.com/x",
    "linkify-www": "see www.evil.com",
    "linkify-email": "mail user@evil.com",
    "image": "![i](http://e/x.png)",
    "code-span": "location `Bundle.entry[0]`",
    "strikethrough": "~~struck~~",
    "loose-list": "- a\n\n- b",
    "nested-list": "- a\n  - b",
    "heading-in-item": "- # h",
    "quote-in-item": "- > q",
    "paragraph-continuing-an-item": "- a\n  continued",
    "blockquote": "> quote",
    "fence": "```\ncode\n```",
    "indented-code": "    code",
    "thematic-break": "a\n\n---",
    "setext-heading": "Title\n===",
    "table": "| a | b |\n|---|---|\n| 1 | 2 |",
    "ordered-list": "1. one\n2. two",
    "all-bold-item": "**Evidence**\n\n- **Recommended**",
    "empty": "",
    "blank": "  \n ",
}


@pytest.mark.parametrize("detail", BAD_DETAILS.values(), ids=BAD_DETAILS.keys())
def test_checker_rejects_bad_details(detail, assert_card_markdown):
    with pytest.raises(AssertionError):
        assert_card_markdown(detail)


@pytest.mark.parametrize("detail, unescaped", [
    ("Observation/**bold** at 12:00", "**bold**"),
    ("Observation/t1\\_x at 12:00 and [x]", "[x]"),
    ("MedicationAdministration/a - b", "a\n\n- b"),
    ("code loinc.org|# heading", "# heading"),
])
def test_checker_rejects_unescaped_input(detail, unescaped, assert_card_markdown):
    assert_card_markdown(detail)  # fine as markdown on its own ...
    with pytest.raises(AssertionError):
        assert_card_markdown(detail, [unescaped])  # ... but the input was not escaped


def test_checker_accepts_a_well_built_card_with_escaped_input(assert_card_markdown, hostile_strings):
    detail = document([
        paragraph(md("**Current grade (last 24 h): {}** — window {} to {}", "grade 2", "2026-03-06T12:00:00+01:00", "x")),
        bullet_list([md("{}: {}", "fever >= 38.0 °C", "yes")]),
        paragraph(strong(escape("Evidence"))),
        bullet_list(md("{} at {} — {}", "body-temperature 38.5 Cel", "2026-03-06", f"Observation/{h}") for h in hostile_strings),
        paragraph(md("_Rule {} {}_", "crs-astct", "1.0.0")),
    ])
    blocks = assert_card_markdown(detail, hostile_strings)
    assert [b.kind for b in blocks] == ["paragraph", "bullet_list", "paragraph", "bullet_list", "paragraph"]
    assert len(blocks[3].lines) == len(hostile_strings)


@pytest.mark.parametrize("summary", [
    "x" * 140,
    "CRS grade 2\nmax grade 3",
    "CRS grade 2 <img src=x>",
    "CRS grade 2 \\(ASTCT\\)",
    "CRS **grade 2**",
    "CRS grade 2 see www.evil.com",
    "CRS grade 2 see http://evil.com",
    "",
])
def test_summary_checker_rejects(summary, assert_plain_summary):
    with pytest.raises(AssertionError):
        assert_plain_summary(summary)


def test_summary_checker_accepts_todays_summaries(assert_plain_summary):
    assert_plain_summary("CRS grade 2 (ASTCT) in the last 24 h; max grade 3 since day 0")
    assert_plain_summary("CRS cannot be assessed: no temperature in the last 24 h")
    with pytest.raises(AssertionError):
        assert_plain_summary("CRS grade 2: tocilizumab (given 2026-03-05)", ["(given 2026-03-05)"])
