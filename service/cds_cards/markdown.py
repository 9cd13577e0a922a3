"""CommonMark for card ``detail``: escape input text, build blocks that cannot fold into each other.

Card details are rendered as CommonMark in the EHR's browser, so two things must hold whatever the input:

* **Input renders as literal text.** ``escape()`` turns any string into markdown that shows exactly that
  string (whitespace collapsed): no emphasis, code, link, image, autolink, raw HTML, entity or block
  structure can come from it, with html enabled or disabled and with GFM linkify/tables/strikethrough/
  typographer on (checked with markdown-it-py).
* **Blocks stay blocks.** The builders (``heading``, ``paragraph``, ``bullet_list``) make one-line blocks
  and list items, and ``document()`` separates blocks by exactly one blank line, so a heading or a
  paragraph never becomes a lazy continuation of the previous list item.

Usage: put every variable part through ``md()`` (or ``escape()``) exactly once and build the card from
the builders; literal template text is trusted markdown written by the programmer::

    document([
        paragraph(md("**Evidence** ({} items)", count)),
        bullet_list(md("{} {:g} {} at {}", fact.concept, fact.value, fact.unit, when) for fact in facts),
    ])

``Markdown`` (a ``str`` subclass) marks text that is already markdown: what ``escape``, ``md``, ``strong``,
``emphasis`` and the builders return. ``escape`` and ``md`` insert a ``Markdown`` value as it is, so
``escape(escape(s)) == escape(s)`` and fragments can be nested (``md("{}{}", name, md(" {:g} mg", dose))``).
Plain ``str`` operations drop the mark (``escape(a) + b`` is a plain ``str``): such a string is escaped
again if passed to ``escape``/``md``, which shows backslashes to the reader (ugly, never unsafe). Hence:
escape raw input exactly once, as late as possible, and never wrap input text in ``Markdown(...)``.

Pure: no Flask, no I/O; no runtime dependency (markdown-it-py is used by the tests only).
"""

from __future__ import annotations

import re
import string
from typing import Any, Iterable

__all__ = ["Markdown", "escape", "md", "strong", "emphasis", "heading", "paragraph", "bullet_list", "document"]


class Markdown(str):
    """A string that is already markdown (escaped input or builder output): passed through, not escaped."""

    __slots__ = ()


# Every ASCII punctuation character may be backslash-escaped in CommonMark; escaping all of them also breaks
# GFM autolinks and linkify (`:` `/` `.` `@`), typographer replacements ((c), --, ...) and smart quotes.
# `<`, `>` and `&` become entities instead, so that no tag or entity survives even in a renderer without
# CommonMark backslash escapes for them (original Markdown.pl passes `\<img ...>` through as HTML).
_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_TABLE: dict[int, str] = {ord(c): _ENTITIES.get(c, "\\" + c) for c in string.punctuation}
# Control characters (C0 incl. tab, CR, LF; DEL; C1 incl. NEL), Unicode line/paragraph separators and
# bidirectional formatting characters (which can reorder what the reader sees) become spaces.
_SPACES = [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, 0x061C, 0x200E, 0x200F,
           *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_TABLE.update({code: " " for code in _SPACES})
_RUNS_OF_SPACES = re.compile(" {2,}")


def escape(text: str) -> Markdown:
    """Markdown that renders as exactly ``text`` (control/line-break characters and runs of spaces -> one space).

    Not idempotent on plain strings (a backslash is escaped again); a ``Markdown`` value is returned as it is.
    """
    if isinstance(text, Markdown):
        return text
    if not isinstance(text, str):
        raise TypeError(f"escape() takes a str, not {type(text).__name__}: format it with md()")
    return Markdown(_RUNS_OF_SPACES.sub(" ", text.translate(_TABLE)))


class _EscapingFormatter(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> str:
        if isinstance(value, Markdown):
            if format_spec:
                raise ValueError("a Markdown value takes no format spec")
            return value
        return escape(format(value, format_spec))


_FORMATTER = _EscapingFormatter()


def md(template: str, /, *values: Any, **named: Any) -> Markdown:
    """``template.format(...)`` with every value formatted (spec applied) and then escaped; Markdown values as is.

    The template is trusted markdown written by the programmer (``"**{}:** {:g} mg"``), never input.
    """
    return Markdown(_FORMATTER.vformat(template, values, named))


# A one-line block whose content starts like this would not be a plain paragraph (or, in a list item, would
# open a nested block): ATX heading, block quote, bullet or ordered list marker, thematic break, code fence,
# HTML block, link reference definition, table row. Escaped input never starts like this.
_BLOCK_START = re.compile(
    r"""(?:\#{1,6}(?:[ \t]|$) | > | [-+*](?:[ \t]|$) | \d{1,9}[.)](?:[ \t]|$)
        | (?:[-*_][ \t]*){3,}$ | `{3,} | ~{3,} | < | \[ | \|)""",
    re.VERBOSE,
)


def _one_line(text: str, what: str) -> str:
    """The text of a one-line block or list item: stripped; ValueError on a line break, emptiness or a block start."""
    if "\n" in text or "\r" in text:
        raise ValueError(f"{what} must be one line (escape input text): {text!r}")
    content = text.strip(" \t")
    if not content:
        raise ValueError(f"{what} must not be empty")
    if _BLOCK_START.match(content):
        raise ValueError(f"{what} must not start like a markdown block: {content!r}")
    return content


def strong(text: str) -> Markdown:
    """``**text**`` (text: markdown, e.g. from md()/escape(); stripped, non-empty). Put a space or line
    edge on its outer sides: CommonMark only closes ``**`` there reliably."""
    return Markdown(f"**{_one_line(text, 'strong text')}**")


def emphasis(text: str) -> Markdown:
    """``*text*`` (text: markdown; stripped, non-empty); same spacing rule as strong()."""
    return Markdown(f"*{_one_line(text, 'emphasised text')}*")


def heading(text: str, level: int = 3) -> Markdown:
    """An ATX heading block of one line (text: markdown); level 1-6."""
    if not 1 <= level <= 6:
        raise ValueError(f"heading level must be 1-6, not {level}")
    content = _one_line(text, "heading")
    if content.rstrip("#") != content and content.rstrip("#").endswith((" ", "\t")):
        raise ValueError(f"a heading must not end with ' #' (a closing sequence, dropped): {content!r}")
    return Markdown(f"{'#' * level} {content}")


def paragraph(text: str) -> Markdown:
    """A paragraph block of one line (text: markdown, e.g. ``md(...)``, or ``strong(...)`` for a bold title)."""
    return Markdown(_one_line(text, "paragraph"))


def bullet_list(items: Iterable[str]) -> Markdown:
    """A tight bullet list, one line per item (each item: markdown); no items -> "" (document() drops it)."""
    return Markdown("\n".join(f"- {_one_line(item, 'list item')}" for item in items))


def _is_list(block: str) -> bool:
    return block.startswith(("- ", "* "))


def document(blocks: Iterable[str]) -> Markdown:
    """Blocks from the builders joined by exactly one blank line; empty blocks are dropped.

    Two lists in a row would merge into one loose list in CommonMark, so a list right after another list
    gets the other bullet character (CommonMark: a new bullet character starts a new list).
    """
    out: list[str] = []
    previous_marker = ""
    for block in blocks:
        if not block:
            continue
        lines = block.split("\n")
        if any(not line.strip() or "\r" in line for line in lines):
            raise ValueError(f"a block must not contain blank lines: {block!r}")
        if _is_list(block):
            if not all(_is_list(line) for line in lines):
                raise ValueError(f"not a bullet_list() block: {block!r}")
            marker = "*" if previous_marker == "-" else "-"
            block = "\n".join(f"{marker} {line[2:]}" for line in lines)
            previous_marker = marker
        else:
            if len(lines) > 1:
                raise ValueError(f"a heading or paragraph must be one line: {block!r}")
            previous_marker = ""
        out.append(block)
    return Markdown("\n\n".join(out))
