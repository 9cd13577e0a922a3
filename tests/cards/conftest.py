"""Fixtures of the card tests: the markdown checker of markdown_check.py (imported by file path, as the
suite runs with --import-mode=importlib) and the hostile strings every test feeds in."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

#: Strings that would become markup, HTML, links or new blocks if they reached markdown unescaped.
HOSTILE = (
    "<img src=x onerror=alert(1)>",
    "<script>alert(1)</script>",
    "[x](javascript:alert(1))",
    "![i](http://e/x.png)",
    "**bold**",
    "__bold__",
    "_em_",
    "*em*",
    "`code`",
    "``code``",
    "# heading",
    "###### h6",
    "heading\n===",
    "- item",
    "+ item",
    "* item",
    "1. item",
    "1) item",
    "> quote",
    "---",
    "***",
    "___",
    "    indented code",
    "\tindented code",
    "```fence",
    "~~~fence",
    "| a | b |",
    "| a | b |\n|---|---|\n| 1 | 2 |",
    "[ref]: http://evil.com",
    "[ref]",
    "<http://evil.com>",
    "<user@evil.com>",
    "http://evil.example/",
    "https://evil.com/path?q=1",
    "www.evil.example",
    "www.evil.com",
    "evil.com",
    "user@evil.com",
    "mailto:user@evil.com",
    "javascript:alert(1)",
    "&lt;b&gt;",
    "&amp;",
    "&#60;img&#62;",
    "&copy;",
    "\\",
    "\\\\",
    "\\*not em\\*",
    "a\\",
    "trailing backslash \\",
    "a\n\n# H",
    "a\r\n- b",
    "two trailing spaces  \nnext",
    "~~strike~~",
    "~strike~",
    "<div>block</div>",
    "<!-- comment -->",
    "<?php x ?>",
    "<![CDATA[x]]>",
    "x <b onmouseover=alert(1)>y</b>",
    "a | b",
    "(c) (r) (tm) +- -- --- ... ?? !!",
    "\"quoted\" 'single'",
    "{curly} $dollar$ ^caret^ %percent @at =equals",
    "Température 38,5 °C — naïve 日本語 🧪 Ω",
    "bidi \u202eevil\u202c end",
    "nul\x00byte and \x1b[31mansi",
    "line\u2028separator",
    "\u00a0non-breaking start",
    "ends with hash #",
    "1986. A great year",
)


def _load(name: str, path: Path) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, f"cannot import {path}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def markdown_check() -> ModuleType:
    """The checker module: assert_card_markdown, assert_plain_summary, assert_literal, card_blocks, renderers ..."""
    return _load("cartox_tests_markdown_check", Path(__file__).with_name("markdown_check.py"))


@pytest.fixture(scope="session")
def assert_card_markdown(markdown_check):
    return markdown_check.assert_card_markdown


@pytest.fixture(scope="session")
def assert_plain_summary(markdown_check):
    return markdown_check.assert_plain_summary


@pytest.fixture(scope="session")
def hostile_strings() -> tuple[str, ...]:
    return HOSTILE


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test taking ``hostile`` runs once per hostile string."""
    if "hostile" in metafunc.fixturenames:
        metafunc.parametrize("hostile", HOSTILE, ids=[f"{i:02d}-{ascii(s)[1:21]}" for i, s in enumerate(HOSTILE)])
