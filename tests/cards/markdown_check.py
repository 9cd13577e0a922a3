"""Render card markdown with markdown-it-py and check it: the structure a clinician reads and its safety.

Loaded by file path from tests/cards/conftest.py (the suite runs with --import-mode=importlib) and exposed
there as fixtures; it can also be imported by path from other suites.

Two renderers stand in for the EHRs' browsers:

* ``commonmark``: ``MarkdownIt("commonmark")`` (raw HTML passes through, as in a renderer that allows it);
* ``gfm``: CommonMark + raw HTML + linkify (bare URLs, www., e-mail addresses) + tables + strikethrough +
  typographer (replacements, smart quotes), i.e. what a GitHub-like renderer adds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable

from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markdown_it.token import Token

#: Inline tokens input text may produce: literal text only.
LITERAL_INLINE = frozenset({"text", "text_special"})
#: Inline tokens a card may contain (from its own templates): text, bold and italics. No code spans (escaping
#: does not work inside them), no links or images (links belong in card.links), no raw HTML, no line breaks.
CARD_INLINE = LITERAL_INLINE | {"strong_open", "strong_close", "em_open", "em_close"}
#: Tags the rendered card HTML may contain, all without attributes.
CARD_TAGS = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "li", "strong", "em"})
_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9-]*)([^>]*)>")
# What escape() turns into spaces: control characters, line/paragraph separators, bidi formatting characters.
_SPACE_LIKE = {code: " " for code in [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, 0x061C, 0x200E,
                                      0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]}
_ASCII_PUNCTUATION = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_ESCAPE_OR_ENTITY = re.compile(r"\\[!-/:-@\[-`{-~]|&(?:amp|lt|gt);")


@lru_cache(maxsize=None)
def renderers() -> dict[str, MarkdownIt]:
    gfm = MarkdownIt("commonmark", {"html": True, "linkify": True, "typographer": True})
    gfm.enable(["linkify", "table", "strikethrough", "replacements", "smartquotes"])
    return {"commonmark": MarkdownIt("commonmark"), "gfm": gfm}


def normalise(text: str) -> str:
    """What a string must read as once rendered: control and separator characters as spaces, runs of spaces
    collapsed, leading and trailing whitespace dropped (as the renderer does)."""
    return re.sub(" {2,}", " ", text.translate(_SPACE_LIKE)).strip()


def has_markup_characters(text: str) -> bool:
    """True when the raw string cannot appear unchanged in correctly escaped markdown."""
    return any(c in _ASCII_PUNCTUATION or ord(c) in _SPACE_LIKE for c in text)


def _unmarked(text: str) -> str:
    """Backslash escapes and the entities escaping uses, each replaced by U+FFFC."""
    return _ESCAPE_OR_ENTITY.sub("\ufffc", text)


def inline_text(token: Token) -> str:
    """The plain text of an inline token (text as the reader sees it; markup dropped)."""
    return "".join(child.content for child in token.children or () if child.type in LITERAL_INLINE)


def _walk(tokens: Iterable[Token]) -> Iterable[Token]:
    for token in tokens:
        yield token
        if token.children:
            yield from _walk(token.children)


def assert_literal(markdown: str, original: str) -> None:
    """``markdown`` renders, in every renderer, as one paragraph reading exactly ``original`` (normalised),
    with no token other than literal text and HTML that is exactly that text HTML-escaped."""
    expected = normalise(original)
    for name, renderer in renderers().items():
        tokens = renderer.parse(markdown)
        types = [t.type for t in tokens]
        assert types == ["paragraph_open", "inline", "paragraph_close"], (name, original, markdown, types)
        children = [c.type for c in tokens[1].children or ()]
        assert set(children) <= LITERAL_INLINE, (name, original, markdown, children)
        assert inline_text(tokens[1]) == expected, (name, original, markdown, inline_text(tokens[1]))
        html = renderer.render(markdown)
        assert html == f"<p>{escapeHtml(expected)}</p>\n", (name, original, markdown, html)


@dataclass(frozen=True)
class Block:
    kind: str  # "heading" | "paragraph" | "bullet_list"
    lines: tuple[str, ...]  # the plain text of the heading or paragraph, or of each list item
    level: int = 0  # heading level


def _line_of(inline: Token, where: str, name: str) -> str:
    assert inline.type == "inline", (name, where, inline.type)
    kinds = [c.type for c in inline.children or ()]
    bad = [k for k in kinds if k not in CARD_INLINE]
    assert not bad, f"[{name}] {where} {inline.content!r}: tokens {bad} (a line break, raw HTML, link, image, code or strikethrough)"
    return inline_text(inline)


def _one_source_line(token: Token, where: str, name: str) -> None:
    start, end = token.map or (0, 0)
    assert end - start == 1, f"[{name}] {where}: {token.type} over source lines {start + 1}-{end} (one line each)"


def card_blocks(detail: str, name: str = "commonmark") -> list[Block]:
    """Parse a card detail into its blocks, asserting the structure (see assert_card_markdown)."""
    tokens = renderers()[name].parse(detail)
    blocks: list[Block] = []
    i = 0

    def expect(index: int, kind: str, where: str) -> Token:
        assert index < len(tokens), f"[{name}] {where}: document ends, expected {kind}"
        token = tokens[index]
        assert token.type == kind, f"[{name}] {where}: {token.type} (line {token.map}) where {kind} was expected"
        return token

    while i < len(tokens):
        token = tokens[i]
        where = f"block {len(blocks) + 1} (source line {(token.map or [0])[0] + 1})"
        if token.type in ("heading_open", "paragraph_open"):
            kind = token.type.removesuffix("_open")
            _one_source_line(token, where, name)
            line = _line_of(expect(i + 1, "inline", where), where, name)
            expect(i + 2, f"{kind}_close", where)
            assert line.strip(), f"[{name}] {where}: empty {kind}"
            blocks.append(Block(kind, (line,), int(token.tag[1]) if kind == "heading" else 0))
            i += 3
        elif token.type == "bullet_list_open":
            items: list[str] = []
            i += 1
            while tokens[i].type != "bullet_list_close":
                item_where = f"{where}, item {len(items) + 1}"
                expect(i, "list_item_open", item_where)
                paragraph = expect(i + 1, "paragraph_open", item_where + " (one paragraph per item)")
                _one_source_line(paragraph, item_where, name)
                assert paragraph.hidden, f"[{name}] {item_where}: a loose list (blank lines between items, or two lists merged)"
                inline = expect(i + 2, "inline", item_where)
                line = _line_of(inline, item_where, name)
                expect(i + 3, "paragraph_close", item_where)
                expect(i + 4, "list_item_close", item_where + " (a heading, paragraph or list folded into the item?)")
                children = [c.type for c in inline.children or () if c.content or c.type != "text"]
                assert not (children and children[0] == "strong_open" and children[-1] == "strong_close"
                            and children.count("strong_open") == 1), (
                    f"[{name}] {item_where}: an item that is all bold ({inline.content!r}) reads as a heading folded into the list")
                assert line.strip(), f"[{name}] {item_where}: empty item"
                items.append(line)
                i += 5
            assert items, f"[{name}] {where}: empty list"
            blocks.append(Block("bullet_list", tuple(items)))
            i += 1
        else:
            raise AssertionError(
                f"[{name}] {where}: top-level {token.type} {token.content!r}; a card detail has only headings, "
                "paragraphs and bullet lists")
    return blocks


def assert_card_markdown(detail: str, hostile: Iterable[str] = ()) -> list[Block]:
    """Assert a card ``detail`` is well-formed, safe CommonMark, in every renderer; return its blocks (commonmark).

    * top-level blocks are headings, paragraphs and tight bullet lists only; each heading, paragraph and list
      item is one source line; each list item is exactly one paragraph that is not entirely bold (so no
      heading, paragraph or list folded into an item, no lazy continuation, no nested or setext block);
    * no raw HTML, link, image, autolink, code span, strikethrough or line-break token anywhere; the HTML
      has only <p> <h1-6> <ul> <li> <strong> <em>, none with an attribute (so no <img>, <script>, href=, src=);
    * no ``hostile`` string that holds markdown/HTML characters appears unescaped in the markdown source
      (raw or whitespace-normalised): each was escaped, or left out.
    """
    assert isinstance(detail, str) and detail.strip(), "detail must be a non-empty string"
    blocks: list[Block] = []
    for name, renderer in renderers().items():
        parsed = card_blocks(detail, name)
        if name == "commonmark":
            blocks = parsed
        for token in _walk(renderer.parse(detail)):
            assert token.type not in ("html_inline", "html_block"), f"[{name}] raw HTML {token.content!r}"
            assert token.type not in ("link_open", "image"), f"[{name}] {token.type} {token.attrs} {token.content!r}"
        html = renderer.render(detail)
        for closing, tag, attributes in _TAG.findall(html):
            assert tag.lower() in CARD_TAGS and not attributes.strip(), f"[{name}] tag <{closing}{tag}{attributes}> in the HTML"
        lowered = html.lower()
        for dangerous in ("<img", "<script", "<iframe", "<svg", "<a ", "<a>"):  # text "<" is "&lt;" in the HTML
            assert dangerous not in lowered, f"[{name}] {dangerous!r} in the HTML"
        tags = " ".join(match.group(0).lower() for match in _TAG.finditer(html))
        assert "javascript:" not in tags and "href" not in tags and "src" not in tags, f"[{name}] attributes in {tags!r}"
    # Escaped text holds raw characters between its backslashes and in its entities ("\\# heading" holds
    # "# heading", "&amp;lt\\;" holds "&amp;"): compare with escape sequences and entities blanked out.
    rest = _unmarked(detail)
    for text in hostile:
        for form in dict.fromkeys((text, normalise(text))):
            unmarked = _unmarked(form)
            if has_markup_characters(unmarked):  # "\\" or "&amp;" alone cannot be told from escaping
                assert unmarked not in rest, f"input {text!r} reached the markdown unescaped"
    return blocks


#: Characters a plain-text summary never needs and that would be markup in a renderer that mistakes it for
#: markdown or HTML.
SUMMARY_FORBIDDEN = frozenset("<>`*_[]\\|~")


def assert_plain_summary(summary: str, hostile: Iterable[str] = ()) -> None:
    """A card ``summary``: plain text (not markdown, not escaped), one line, 1-139 characters, no input markup."""
    assert isinstance(summary, str) and summary.strip(), "summary must be a non-empty string"
    assert len(summary) < 140, f"summary has {len(summary)} characters (< 140): {summary!r}"
    assert not any(ord(c) in _SPACE_LIKE for c in summary), f"control or line-break character in summary {summary!r}"
    found = sorted(SUMMARY_FORBIDDEN & set(summary))
    assert not found, f"summary {summary!r} holds markup or escape characters {found}"
    assert "://" not in summary and "www." not in summary.lower(), f"summary {summary!r} holds a URL"
    for text in hostile:
        if has_markup_characters(text) and normalise(text):
            assert text not in summary and normalise(text) not in summary, f"input {text!r} reached the summary"
