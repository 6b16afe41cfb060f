"""Decide a document's type from its bytes (never from the client's extension or header).

Supported: PDF, Word .docx, HTML, plain text and Markdown. The extension is only used to tell
Markdown from plain text once the bytes have been shown to be text.
"""

from __future__ import annotations

import io
import re
import zipfile

import charset_normalizer

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
HTML = "text/html"
TEXT = "text/plain"
MARKDOWN = "text/markdown"

SUPPORTED = {PDF: "PDF", DOCX: "Word (.docx)", HTML: "HTML", TEXT: "plain text", MARKDOWN: "Markdown"}
SUPPORTED_SENTENCE = "PDF, Word (.docx), HTML, plain text and Markdown"

# PDF 1.7 (ISO 32000-1, 7.5.2): the header is "%PDF-"; readers accept it within the first 1024 bytes.
_PDF_HEADER_WINDOW = 1024
_HTML_START = re.compile(rb"^\s*(<!--.*?-->\s*)*<(!doctype\s+html|html|head|body)[\s>]", re.IGNORECASE | re.DOTALL)
_SNIFF_BYTES = 64 * 1024


def detect_content_type(data: bytes, filename: str | None = None) -> str | None:
    """Return the MIME type of a supported document, or ``None`` if it is not one.

    Args:
        data: the whole file (bytes).
        filename: the client's file name, only used to call text ending in ``.md``/``.markdown``
            Markdown.

    Returns:
        One of :data:`PDF`, :data:`DOCX`, :data:`HTML`, :data:`TEXT`, :data:`MARKDOWN`, or
        ``None`` for empty or unsupported content (images, archives, other binaries).
    """
    if not data:
        return None
    if b"%PDF-" in data[:_PDF_HEADER_WINDOW]:
        return PDF
    if data[:4] == b"PK\x03\x04":
        return DOCX if _is_docx(data) else None
    head = data[:_SNIFF_BYTES]
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    if _HTML_START.match(head):
        return HTML
    if _is_text(head):
        if filename and filename.lower().endswith((".md", ".markdown")):
            return MARKDOWN
        return TEXT
    return None


def _is_docx(data: bytes) -> bool:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return "word/document.xml" in archive.namelist()
    except (zipfile.BadZipFile, ValueError):
        return False


def _is_text(head: bytes) -> bool:
    if b"\x00" in head and not (head.startswith((b"\xff\xfe", b"\xfe\xff"))):
        return False
    match = charset_normalizer.from_bytes(head).best()
    # charset-normalizer gives up (None) on binary data; "chaos" measures how garbled it reads.
    return match is not None and match.chaos < 0.3
