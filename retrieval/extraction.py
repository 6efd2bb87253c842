"""Turning uploaded bytes (plain text, Markdown, HTML, PDF) into plain text."""

from __future__ import annotations

import importlib.util
import io
import re
from pathlib import PurePath

from bs4 import BeautifulSoup
from bs4.element import Comment, Declaration, Doctype, ProcessingInstruction

from retrieval.errors import InvalidDocument, UnsupportedFileType

_KIND_BY_SUFFIX = {
    ".txt": "text",
    ".text": "text",
    ".md": "text",
    ".markdown": "text",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".pdf": "pdf",
}
_KIND_BY_CONTENT_TYPE = {
    "text/plain": "text",
    "text/markdown": "text",
    "text/x-markdown": "text",
    "text/html": "html",
    "application/xhtml+xml": "html",
    "application/pdf": "pdf",
}
_INVISIBLE_TAGS = ("script", "style", "noscript", "template", "head")
# Text inside these tags starts on its own paragraph, so chunking can split between them.
_BLOCK_TAGS = (
    "address",
    "article",
    "aside",
    "blockquote",
    "br",
    "dd",
    "div",
    "dl",
    "dt",
    "figcaption",
    "figure",
    "footer",
    "form",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "header",
    "hr",
    "li",
    "main",
    "nav",
    "ol",
    "p",
    "pre",
    "section",
    "table",
    "td",
    "th",
    "tr",
    "ul",
)


def supported_suffixes() -> tuple[str, ...]:
    """File name suffixes `extract_text` accepts in this environment (PDF only with pypdf)."""
    return tuple(s for s, kind in _KIND_BY_SUFFIX.items() if kind != "pdf" or _has_pypdf())


def extract_text(name_or_content_type: str, data: bytes) -> str:
    """Extract the readable text of an uploaded file.

    `name_or_content_type` is either a file name (its suffix decides) or a MIME content type
    such as ``text/html; charset=utf-8``. Raises `UnsupportedFileType` for anything else, and
    for PDF when `pypdf` is not installed; `InvalidDocument` when the bytes cannot be read.
    """
    kind = _kind_of(name_or_content_type)
    if kind == "html":
        return html_to_text(data)
    if kind == "pdf":
        return _pdf_to_text(data)
    return _decode(data, _charset_of(name_or_content_type))


def html_to_text(html: str | bytes) -> str:
    """Return the visible text of an HTML page, one paragraph per block element.

    Bytes are decoded by BeautifulSoup, which honours the page's own charset declaration.
    """
    soup = BeautifulSoup(html, "html.parser")
    for tag in soup.find_all(_INVISIBLE_TAGS):
        tag.decompose()
    for tag in soup.find_all(hidden=True):
        tag.decompose()
    for node in soup.find_all(
        string=lambda s: isinstance(s, (Comment, Declaration, Doctype, ProcessingInstruction))
    ):
        node.extract()
    for tag in soup.find_all(_BLOCK_TAGS):
        tag.insert_before("\n\n")
        tag.insert_after("\n\n")
    return _normalise_whitespace(soup.get_text())


def _kind_of(name_or_content_type: str) -> str:
    value = name_or_content_type.strip().lower()
    media_type = value.split(";")[0].strip()
    kind = _KIND_BY_CONTENT_TYPE.get(media_type) or _KIND_BY_SUFFIX.get(PurePath(value).suffix)
    if kind is None:
        accepted = ", ".join(supported_suffixes())
        raise UnsupportedFileType(
            f"cannot extract text from {name_or_content_type!r}; accepted file types: {accepted}"
        )
    if kind == "pdf" and not _has_pypdf():
        raise UnsupportedFileType(
            f"{name_or_content_type!r} is a PDF, but no PDF parser is installed; "
            "install `pypdf` to accept PDF files"
        )
    return kind


def _charset_of(name_or_content_type: str) -> str:
    match = re.search(r";\s*charset=\"?([\w.:-]+)", name_or_content_type, re.IGNORECASE)
    charset = match.group(1).lower() if match else "utf-8"
    # A byte-order mark is not text; utf-8-sig drops it and otherwise decodes as utf-8.
    return "utf-8-sig" if charset in ("utf-8", "utf8") else charset


def _decode(data: bytes, charset: str) -> str:
    try:
        return data.decode(charset)
    except LookupError as error:
        raise InvalidDocument(f"unknown charset {charset!r} in the content type") from error
    except UnicodeDecodeError as error:
        raise InvalidDocument(
            f"the file is not valid {charset} (byte {error.start}); re-save it as UTF-8"
        ) from error


def _has_pypdf() -> bool:
    return importlib.util.find_spec("pypdf") is not None


def _pdf_to_text(data: bytes) -> str:
    # Optional dependency, imported only here; _kind_of checked that it is installed.
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
    except PdfReadError as error:
        raise InvalidDocument(f"the PDF cannot be read: {error}") from error
    return _normalise_whitespace("\n\n".join(pages))


def _normalise_whitespace(text: str) -> str:
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
