"""Decide a document's type from its bytes (never from the client's extension or header).

Supported: PDF, Word .docx, HTML, plain text, Markdown, and PNG, JPEG, TIFF and WebP images (read by OCR). The extension is only used to tell
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
PNG, JPEG, TIFF, WEBP = "image/png", "image/jpeg", "image/tiff", "image/webp"
IMAGES = (PNG, JPEG, TIFF, WEBP)  # read by OCR (jobs/readers/image.py)
# Magic numbers: PNG (RFC 2083 §3.1), JPEG (SOI + a marker), TIFF (TIFF 6.0 §2, little and
# big endian), WebP (RIFF container with the WEBP form type, Google's container spec).
_IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", PNG), (b"\xff\xd8\xff", JPEG), (b"II*\x00", TIFF), (b"MM\x00*", TIFF))

SUPPORTED = {PDF: "PDF", DOCX: "Word (.docx)", HTML: "HTML", TEXT: "plain text", MARKDOWN: "Markdown",
             PNG: "PNG image", JPEG: "JPEG image", TIFF: "TIFF image", WEBP: "WebP image"}
SUPPORTED_SENTENCE = "PDF, Word (.docx), HTML, plain text, Markdown and images (PNG, JPEG, TIFF, WebP; read by OCR)"

# PDF 1.7 (ISO 32000-1, 7.5.2 and Annex H): the header is "%PDF-"; readers accept it
# within the first 1024 bytes. See _looks_like_pdf for when a "%PDF-" that is not at the start counts.
_PDF_HEADER_WINDOW = 1024
_PDF_MAGIC = b"%PDF-"
# Bytes a producer may put before the header and still be taken for a PDF without further evidence:
# a UTF-8 BOM, whitespace, or a few bytes that are not printable ASCII.
_PDF_LEADING_JUNK = 8
_PDF_BOM_OR_SPACE = re.compile(rb"\A(?:\xef\xbb\xbf)?\s*\Z")
_PRINTABLE_ASCII = re.compile(rb"[\x20-\x7e]")
# Evidence of PDF syntax after a header that is not at the start: an indirect object ("12 0 obj"
# ... "endobj"). A note that only names "%%EOF" or "xref" is not evidence enough.
_PDF_OBJECT = re.compile(rb"\b\d+\s+\d+\s+obj\b")
_PDF_ENDOBJ = re.compile(rb"\bendobj\b")
# HTML, and XHTML: an XML declaration / processing instructions, comments and a doctype may come
# before the <html> root element (SEC EDGAR inline-XBRL filings start with <?xml ...?>).
_HTML_START = re.compile(
    rb"^\s*(?:<\?[^>]*\?>\s*)*(?:(?:<!--.*?-->|<!doctype\s[^>]*>)\s*)*<(!doctype\s+html|html|head|body)[\s>]",
    re.IGNORECASE | re.DOTALL,
)
_SNIFF_BYTES = 64 * 1024
# What zipfile raises for a damaged or unsupported archive besides BadZipFile: ValueError (bad
# offsets, undecodable names), NotImplementedError ("zip file version 6.4", other methods),
# EOFError and OSError (truncated data), OverflowError (sizes past what the platform seeks).
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, NotImplementedError, EOFError, OSError,
              OverflowError)


def detect_content_type(data: bytes, filename: str | None = None) -> str | None:
    """Return the MIME type of a supported document, or ``None`` if it is not one.

    Args:
        data: the whole file (bytes).
        filename: the client's file name, only used to call text ending in ``.md``/``.markdown``
            Markdown.

    Returns:
        One of :data:`PDF`, :data:`DOCX`, :data:`HTML`, :data:`TEXT`, :data:`MARKDOWN`, an image
        type of :data:`IMAGES`, or ``None`` for empty or unsupported content (archives, other binaries).
    """
    if not data:
        return None
    if _looks_like_pdf(data):
        return PDF
    image_type = _image_type(data)
    if image_type:
        return image_type
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


def _looks_like_pdf(data: bytes) -> bool:
    """Whether ``data`` is a PDF (perhaps a damaged one), judged by its header.

    ISO 32000-1 (PDF 1.7) §7.5.2 puts the header ``%PDF-1.N`` on the first line, and Annex H
    (implementation notes) says readers accept it anywhere in the first 1024 bytes, since some
    producers put bytes before it. A plain-text note that *mentions* ``%PDF-`` there ("files start
    with %PDF-1.7 ...") is not a PDF, so the rule is:

    - ``%PDF-`` at offset 0, or after only a UTF-8 BOM / whitespace, or after a few (at most 8)
      bytes none of which is printable ASCII: a PDF;
    - ``%PDF-`` later in the first 1024 bytes: a PDF only if the data is not clean text (binary
      bytes, as compressed streams and the spec's recommended binary comment line give), or shows
      PDF object syntax after the header (``N G obj`` ... ``endobj``). Text that decodes cleanly
      stays text, even when it names ``%%EOF`` or ``xref``.
    """
    position = data.find(_PDF_MAGIC, 0, _PDF_HEADER_WINDOW)
    if position < 0:
        return False
    prefix = data[:position]
    if _PDF_BOM_OR_SPACE.match(prefix) or (position <= _PDF_LEADING_JUNK and not _PRINTABLE_ASCII.search(prefix)):
        return True
    after = data[position:position + _SNIFF_BYTES]
    if _PDF_OBJECT.search(after) and _PDF_ENDOBJ.search(after):
        return True
    return not _is_text(data[:_SNIFF_BYTES])


def _image_type(data: bytes) -> str | None:
    """The image type of ``data`` when it starts with an image's magic number and Pillow can read
    its header (nothing is decoded: a few hundred bytes are parsed); ``None`` otherwise. An image
    whose header declares too many pixels is still an image: its job fails ``too_many_pixels``."""
    image_type = next((kind for magic, kind in _IMAGE_MAGIC if data.startswith(magic)), None)
    if image_type is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        image_type = WEBP
    if image_type is None:
        return None
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)):
            return image_type
    except Image.DecompressionBombError:
        return image_type
    except Exception:  # noqa: BLE001 - Pillow's parsers raise many types for bytes that are no image
        return None


def _is_docx(data: bytes) -> bool:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return "word/document.xml" in archive.namelist()
    except ZIP_ERRORS:
        return False


def _is_text(head: bytes) -> bool:
    if b"\x00" in head and not (head.startswith((b"\xff\xfe", b"\xfe\xff"))):
        return False
    match = charset_normalizer.from_bytes(head).best()
    # charset-normalizer gives up (None) on binary data; "chaos" measures how garbled it reads.
    return match is not None and match.chaos < 0.3
