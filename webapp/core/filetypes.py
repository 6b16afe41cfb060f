"""Decide a document's type from its bytes (never from the client's extension or header).

Supported: PDF, Word .docx, PowerPoint .pptx, Excel .xlsx, EPUB, HTML, CSV, plain text,
Markdown, and PNG, JPEG, TIFF and WebP images (read by OCR). The extension is only used once the
bytes have been shown to be text: to tell Markdown (``.md``) and CSV (``.csv``/``.tsv``, when
:func:`csv_dialect` finds columns too) from plain text.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile

import charset_normalizer

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
HTML = "text/html"
TEXT = "text/plain"
MARKDOWN = "text/markdown"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
EPUB = "application/epub+zip"
CSV = "text/csv"

PNG, JPEG, TIFF, WEBP = "image/png", "image/jpeg", "image/tiff", "image/webp"
IMAGES = (PNG, JPEG, TIFF, WEBP)  # read by OCR (jobs/readers/image.py)
# Magic numbers: PNG (RFC 2083 §3.1), JPEG (SOI + a marker), TIFF (TIFF 6.0 §2, little and
# big endian), WebP (RIFF container with the WEBP form type, Google's container spec).
_IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", PNG), (b"\xff\xd8\xff", JPEG), (b"II*\x00", TIFF), (b"MM\x00*", TIFF))

SUPPORTED = {PDF: "PDF", DOCX: "Word (.docx)", PPTX: "PowerPoint (.pptx)", XLSX: "Excel (.xlsx)", EPUB: "EPUB",
             HTML: "HTML", CSV: "CSV", TEXT: "plain text", MARKDOWN: "Markdown",
             PNG: "PNG image", JPEG: "JPEG image", TIFF: "TIFF image", WEBP: "WebP image"}
SUPPORTED_SENTENCE = ("PDF, Word (.docx), PowerPoint (.pptx), Excel (.xlsx), EPUB, HTML, CSV, plain text, "
                      "Markdown and images (PNG, JPEG, TIFF, WebP; read by OCR)")
# The part that makes an Office Open XML package a given document (ECMA-376 part 2: the main
# part's usual name; every producer we know writes it there).
_OOXML_MAIN_PARTS = (("word/document.xml", DOCX), ("ppt/presentation.xml", PPTX), ("xl/workbook.xml", XLSX))
# OLE2 / Compound File Binary: what an encrypted (password-protected) .docx/.xlsx/.pptx is, and
# the old binary .doc/.xls/.ppt (MS-CFB 2.2: the header signature).
CFB_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
# CSV sniffing: delimiters tried, and the rows of the sample that must agree on their column count.
CSV_DELIMITERS = ",;\t|"
_CSV_SAMPLE_ROWS = 50

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
            Markdown, and text ending in ``.csv``/``.tsv`` CSV when it has columns
            (:func:`csv_dialect`); text without that hint stays plain text.

    Returns:
        One of :data:`PDF`, :data:`DOCX`, :data:`PPTX`, :data:`XLSX`, :data:`EPUB`, :data:`HTML`,
        :data:`CSV`, :data:`TEXT`, :data:`MARKDOWN`, an image type of :data:`IMAGES`, or ``None``
        for empty or unsupported content (other archives, other binaries, encrypted Office files).
    """
    if not data:
        return None
    if _looks_like_pdf(data):
        return PDF
    image_type = _image_type(data)
    if image_type:
        return image_type
    if data[:4] == b"PK\x03\x04":
        return _zip_document_type(data)
    head = data[:_SNIFF_BYTES]
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    if _HTML_START.match(head):
        return HTML
    if _is_text(head):
        if filename and filename.lower().endswith((".md", ".markdown")):
            return MARKDOWN
        if filename and filename.lower().endswith((".csv", ".tsv")) and csv_dialect(_decoded(head), cut=len(data) > _SNIFF_BYTES) is not None:
            return CSV
        return TEXT
    return None


def unsupported_hint(data: bytes) -> str:
    """A sentence to add when :func:`detect_content_type` refuses ``data``: what the file seems to
    be when that says what to do (an OLE2 file: a password-protected Office document, or an old
    binary one), else ``""``."""
    if data.startswith(CFB_MAGIC):
        return (" It is an OLE2 compound file: a password-protected (encrypted) Word, Excel or PowerPoint "
                "file, or an old .doc/.xls/.ppt; save it without a password as .docx, .xlsx or .pptx.")
    return ""


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


def _zip_document_type(data: bytes) -> str | None:
    """DOCX, PPTX or XLSX by the package's main part; EPUB by its ``mimetype`` entry (EPUB OCF
    3.3 §4.2.6: the first entry, stored, holding ``application/epub+zip``) or, when a producer got
    that wrong, its ``META-INF/container.xml``; ``None`` for other or unreadable zips."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            entries = archive.infolist()
            names = {entry.filename for entry in entries}
            for part, content_type in _OOXML_MAIN_PARTS:
                if part in names:
                    return content_type
            if entries and entries[0].filename == "mimetype":
                with archive.open(entries[0]) as stream:
                    if stream.read(64).strip() == EPUB.encode():
                        return EPUB
            return EPUB if "META-INF/container.xml" in names else None
    except ZIP_ERRORS:
        return None


def csv_dialect(sample: str, cut: bool = False) -> type[csv.Dialect] | None:
    """The CSV dialect of ``sample`` (a decoded text, or its start when ``cut``), or ``None`` when
    it is not a table: the first rows (up to 50; at least 2) must all have the same number of
    fields, at least 2, with :class:`csv.Sniffer`'s dialect (its delimiter one of ``, ; \\t |``),
    else with the first of those delimiters that gives the most such fields (the Sniffer gives up
    on short samples whose quoted fields hold other delimiters or line breaks). The last row is
    left out when the sample was cut (by the caller or at 50 lines): it may be partial."""
    lines = sample.splitlines(keepends=True)
    cut = cut or len(lines) > _CSV_SAMPLE_ROWS
    sample = "".join(lines[:_CSV_SAMPLE_ROWS])
    try:
        sniffed = csv.Sniffer().sniff(sample, delimiters=CSV_DELIMITERS)
    except csv.Error:
        sniffed = None
    if sniffed is not None and _csv_columns(sample, sniffed, cut):
        return sniffed
    best, columns = None, 0
    for delimiter in CSV_DELIMITERS:
        dialect = type("Sniffed", (csv.excel,), {"delimiter": delimiter})
        found = _csv_columns(sample, dialect, cut)
        if found > columns:
            best, columns = dialect, found
    return best


def _csv_columns(sample: str, dialect: type[csv.Dialect] | csv.Dialect, cut: bool) -> int:
    """The number of fields every row of ``sample`` has in ``dialect`` (at least 2 rows), else 0."""
    try:
        rows = [row for row in csv.reader(io.StringIO(sample), dialect) if row]
    except csv.Error:
        return 0
    if cut and len(rows) > 2:
        rows = rows[:-1]
    widths = {len(row) for row in rows}
    if len(rows) < 2 or len(widths) != 1:
        return 0
    width = widths.pop()
    return width if width >= 2 else 0


def _decoded(head: bytes) -> str:
    match = charset_normalizer.from_bytes(head).best()
    return str(match) if match is not None else ""


def _is_text(head: bytes) -> bool:
    if b"\x00" in head and not (head.startswith((b"\xff\xfe", b"\xfe\xff"))):
        return False
    match = charset_normalizer.from_bytes(head).best()
    # charset-normalizer gives up (None) on binary data; "chaos" measures how garbled it reads.
    return match is not None and match.chaos < 0.3
