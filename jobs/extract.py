"""Text extraction: bytes of a supported document → its text, page by page.

PDF via pypdfium2 (PDFium; measured ≈30× faster than pypdf on the corpus and correct on
Japanese CID fonts where pypdf returns mojibake), .docx via python-docx, HTML via BeautifulSoup
with lxml, plain text and Markdown via charset-normalizer.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

from jobs.errors import DocumentError
from webapp import filetypes

NO_TEXT_LAYER_WARNING = "no text layer (needs OCR)"
# PDFium marks a hyphen that ends a line as U+0002; other C0 controls are noise in extracted text.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


@dataclass
class Page:
    """Text of one page. ``number`` is 1-based; formats without pages have one page ``None``."""

    number: int | None
    text: str


@dataclass
class Extraction:
    """What :func:`extract` found: pages in order, page count, and warnings for the user."""

    pages: list[Page]
    page_count: int | None  # None for formats without pages (.docx, .html, .txt, .md)
    warnings: list[str] = field(default_factory=list)

    @cached_property
    def chars(self) -> int:
        """Non-whitespace characters of the text (the corpus manifest's ``nonspace_chars``)."""
        return sum(count_chars(page.text) for page in self.pages)


def clean_text(text: str) -> str:
    """Normalise line breaks to ``\\n`` and drop control characters (PDFium's U+0002 hyphen marks)."""
    return _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def count_chars(text: str) -> int:
    """Number of non-whitespace characters in ``text`` (whitespace as ``str.isspace`` and regex ``\\s`` define it)."""
    return len("".join(text.split()))


def extract(
    data: bytes,
    content_type: str,
    password: str | None = None,
    on_page: Callable[[int, int], None] | None = None,
) -> Extraction:
    """Extract the text of a document.

    Args:
        data: the file's bytes.
        content_type: a type from :mod:`webapp.filetypes` (decided from the bytes at upload).
        password: for encrypted PDFs; the empty password is always tried first.
        on_page: called as ``on_page(done, total)`` after each PDF page.

    Returns:
        An :class:`Extraction`. A PDF whose pages carry images but no text yields no text and the
        warning ``"no text layer (needs OCR)"``.

    Raises:
        DocumentError: ``password_required`` / ``wrong_password`` for encrypted PDFs,
            ``damaged_file`` when the parser cannot read the file, ``no_text`` when there is no
            text and nothing that could hold any, ``unsupported_type`` for other types.
    """
    if content_type == filetypes.PDF:
        return _extract_pdf(data, password, on_page)
    if content_type == filetypes.DOCX:
        return _single(_docx_text(data))
    if content_type == filetypes.HTML:
        return _single(_html_text(data))
    if content_type in (filetypes.TEXT, filetypes.MARKDOWN):
        return _single(_decode_text(data))
    raise DocumentError(f"documents of type {content_type} are not supported", code="unsupported_type")


def _single(text: str) -> Extraction:
    text = clean_text(text)
    if count_chars(text) == 0:
        raise DocumentError("the document contains no text", code="no_text")
    return Extraction(pages=[Page(None, text)], page_count=None)


def _open_pdf(data: bytes, password: str | None):
    import pypdfium2 as pdfium

    try:
        # PDFium tries the empty user password when none is given.
        return pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        if "password" not in str(exc).lower():
            raise DocumentError(
                f"the PDF is damaged or not a valid PDF and could not be opened ({_pdfium_reason(exc)})",
                code="damaged_file",
            ) from None
    if not password:
        raise DocumentError(
            "password required: this PDF is encrypted; upload it again with its password",
            code="password_required",
        )
    try:
        return pdfium.PdfDocument(data, password=password)
    except pdfium.PdfiumError as exc:
        if "password" in str(exc).lower():
            raise DocumentError("the password given for this PDF is wrong", code="wrong_password") from None
        raise DocumentError(
            f"the PDF is damaged and could not be opened ({_pdfium_reason(exc)})", code="damaged_file"
        ) from None


def _pdfium_reason(exc: Exception) -> str:
    match = re.search(r"PDFium: ([^)]*)", str(exc))
    return match.group(1) if match else str(exc)


def _extract_pdf(data: bytes, password: str | None, on_page: Callable[[int, int], None] | None) -> Extraction:
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    pdf = _open_pdf(data, password)
    try:
        total = len(pdf)
        if total == 0:
            raise DocumentError("the PDF has no pages", code="no_text")
        pages: list[Page] = []
        pages_with_images = 0
        for index in range(total):
            try:
                page = pdf[index]
            except pdfium.PdfiumError as exc:
                raise DocumentError(
                    f"page {index + 1} of the PDF is damaged and could not be read ({_pdfium_reason(exc)})",
                    code="damaged_file",
                ) from None
            try:
                textpage = page.get_textpage()
                try:
                    text = textpage.get_text_bounded()
                finally:
                    textpage.close()
                if count_chars(text) == 0 and any(
                    True for _ in page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE])
                ):
                    pages_with_images += 1
            finally:
                page.close()
            pages.append(Page(index + 1, clean_text(text)))
            if on_page:
                on_page(index + 1, total)
    finally:
        pdf.close()

    extraction = Extraction(pages=pages, page_count=total)
    if extraction.chars == 0:
        if pages_with_images == 0:
            raise DocumentError(
                "the PDF contains no readable text and no images: its pages are blank or damaged",
                code="no_text",
            )
        extraction.warnings.append(NO_TEXT_LAYER_WARNING)
    elif pages_with_images:
        extraction.warnings.append(
            f"{pages_with_images} of {total} pages have no text layer (needs OCR); their content is not searchable"
        )
    return extraction


def _docx_text(data: bytes) -> str:
    import docx
    from docx.table import Table

    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as exc:  # python-docx raises zipfile, lxml and KeyError errors for bad files
        raise DocumentError(f"the Word document is damaged and could not be opened ({exc})", code="damaged_file") from None
    parts: list[str] = []
    for block in document.iter_inner_content():  # paragraphs and tables in document order
        if isinstance(block, Table):
            for row in block.rows:
                parts.append("\t".join(cell.text for cell in row.cells))
        else:
            parts.append(block.text)
    return "\n".join(parts)


# Inline styles that hide an element from every reader: display:none, visibility:hidden (CSS is
# case-insensitive and allows spaces around the colon; "!important" may follow).
_HIDING_STYLE = re.compile(r"(?:^|;)\s*(?:display\s*:\s*none|visibility\s*:\s*hidden)\s*(?:!\s*important\s*)?(?:;|$)",
                           re.IGNORECASE)
_NEVER_SHOWN = ["script", "style", "noscript", "template"]
_BLANK_LINES = re.compile(r"\n{3,}")


def _is_hidden(tag) -> bool:
    """Whether an element is hidden from a reader by its own attributes: ``hidden``,
    ``aria-hidden="true"`` or an inline ``display:none`` / ``visibility:hidden`` style."""
    attrs = tag.attrs
    if not attrs:
        return False
    if "hidden" in attrs:
        return True
    aria = attrs.get("aria-hidden")
    if isinstance(aria, str) and aria.strip().lower() == "true":
        return True
    style = attrs.get("style")
    return isinstance(style, str) and _HIDING_STYLE.search(style) is not None


def _html_text(data: bytes) -> str:
    """The text a reader of the page sees: without script, style, template and noscript elements,
    without elements hidden by ``hidden``, ``aria-hidden="true"`` or an inline ``display:none`` /
    ``visibility:hidden`` (so an inline-XBRL filing's ``ix:header`` is dropped), trailing spaces
    stripped and runs of blank lines (navigation boilerplate) collapsed to one blank line."""
    import warnings

    from bs4 import BeautifulSoup, XMLParsedAsHTMLWarning

    with warnings.catch_warnings():
        # XHTML (an <?xml ...?> declaration before <html>) is read as HTML on purpose: it is HTML.
        warnings.simplefilter("ignore", XMLParsedAsHTMLWarning)
        soup = BeautifulSoup(data, "lxml")
    for element in [*soup(_NEVER_SHOWN), *soup.find_all(_is_hidden)]:
        if not element.decomposed:  # inside an element dropped before
            element.decompose()
    lines = [line.rstrip() for line in clean_text(soup.get_text("\n")).split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip("\n")


def _decode_text(data: bytes) -> str:
    import charset_normalizer

    match = charset_normalizer.from_bytes(data).best()
    if match is None:
        raise DocumentError("the text file's character encoding could not be recognised", code="damaged_file")
    return str(match)
