"""Turning uploads into text: HTML visible text only, supported and refused types."""

from __future__ import annotations

import importlib.util

import pytest

from retrieval import InvalidDocument, UnsupportedFileType, extract_text

PAGE = b"""<!DOCTYPE html>
<html><head><title>Tab title</title>
<style>body { color: red; } .secret { display: none }</style>
<script>var leaked = "SCRIPT_TEXT";</script></head>
<body>
<noscript>NOSCRIPT_TEXT</noscript>
<template><p>TEMPLATE_TEXT</p></template>
<!-- COMMENT_TEXT -->
<h1>Visible heading</h1>
<p>First <b>bold</b> paragraph.</p>
<div hidden>HIDDEN_TEXT</div>
<ul><li>Item one</li><li>Item two</li></ul>
<script type="application/ld+json">{"JSON_LD": 1}</script>
</body></html>"""


def test_html_yields_only_visible_text():
    text = extract_text("page.html", PAGE)
    for invisible in (
        "SCRIPT_TEXT",
        "color",
        "NOSCRIPT",
        "TEMPLATE",
        "COMMENT",
        "HIDDEN",
        "JSON_LD",
        "Tab title",
        "DOCTYPE",
    ):
        assert invisible not in text
    assert text.split("\n\n") == [
        "Visible heading",
        "First bold paragraph.",
        "Item one",
        "Item two",
    ]


def test_html_by_content_type_and_declared_charset():
    page = '<meta charset="iso-8859-1"><p>Caf\xe9</p>'.encode("latin-1")
    assert extract_text("text/html; charset=iso-8859-1", page) == "Caf\xe9"


@pytest.mark.parametrize("name", ["notes.txt", "README.md", "text/plain", "text/markdown"])
def test_text_and_markdown_pass_through(name):
    assert extract_text(name, "\ufeff# Title\n\nBody \u00e9".encode()) == "# Title\n\nBody \u00e9"


def test_plain_text_honours_charset():
    assert (
        extract_text("text/plain; charset=latin-1", "d\xe9j\xe0".encode("latin-1")) == "d\xe9j\xe0"
    )


@pytest.mark.parametrize(
    "name", ["report.docx", "image.png", "archive", "application/zip", "application/octet-stream"]
)
def test_unsupported_types_are_refused(name):
    with pytest.raises(UnsupportedFileType, match="accepted file types"):
        extract_text(name, b"data")


def test_undecodable_text_is_refused():
    with pytest.raises(InvalidDocument, match="UTF-8"):
        extract_text("notes.txt", b"\xff\xfe\xfa broken")


@pytest.mark.skipif(importlib.util.find_spec("pypdf") is not None, reason="pypdf is installed")
def test_pdf_without_pypdf_is_refused_with_a_hint():
    with pytest.raises(UnsupportedFileType, match="pypdf"):
        extract_text("paper.pdf", b"%PDF-1.4")
