"""Text extraction: bytes of a supported document → its text, page by page, with its structure.

One reader per format in :mod:`jobs.readers` (PDF via pypdfium2, .docx via python-docx, .pptx via
python-pptx, .xlsx via openpyxl, EPUB via ebooklib, HTML via lxml's parser events, CSV via the csv
module, plain text and Markdown via charset-normalizer); :func:`extract` chooses it
from the content type decided at upload, and the shapes it returns (:class:`Extraction`,
:class:`Page`, :class:`Block`) live in :mod:`jobs.readers.base`.

Hostile input is bounded by :class:`Limits` (the app's ``MAX_PDF_PAGES``, ``MAX_SHEET_CELLS``,
``MAX_DOCUMENT_CHARS``, ``MAX_UNCOMPRESSED_SIZE``, ``MAX_COMPRESSION_RATIO`` and
``MAX_DOCUMENT_MEMORY``): a PDF's pages and a presentation's slides are counted before any is
read, a zip-based document's directory is checked before anything is unpacked, the cells of a
sheet, a CSV file or a slide's tables are counted as they are read, and so are the characters of
each page, paragraph or string; the memory a PDF, .docx, .pptx, .xlsx, EPUB or HTML reader takes
is bounded by reading it in a process of its own
(:mod:`jobs.reader_process`).
"""

from __future__ import annotations

from typing import Callable

from jobs.document_errors import DocumentError
from jobs.readers.base import (
    HEADING, MB, NO_TEXT_LAYER_WARNING, PARAGRAPH, TABLE, Block, CharBudget, Extraction, Limits, Page,
    clean_text, count_chars, format_bytes, markdown_row,
)
from webapp.core import filetypes

# The shapes and helpers of jobs.readers.base, importable from here too.
__all__ = ["extract", "HEADING", "MB", "NO_TEXT_LAYER_WARNING", "PARAGRAPH", "TABLE", "Block", "CharBudget",
           "Extraction", "Limits", "Page", "clean_text", "count_chars", "format_bytes", "markdown_row"]


def extract(
    data: bytes,
    content_type: str,
    password: str | None = None,
    on_page: Callable[[int, int], None] | None = None,
    limits: Limits | None = None,
    web_page: bool = False,
) -> Extraction:
    """Extract the text of a document.

    Args:
        data: the file's bytes.
        content_type: a type from :mod:`webapp.core.filetypes` (decided from the bytes at upload).
        password: for encrypted PDFs; the empty password is always tried first.
        on_page: called as ``on_page(done, total)`` after each PDF page, and for pages read by
            OCR (PDF pages without a usable text layer, image frames) as ``on_page(done, total,
            "ocr_next")`` before the page is read and ``on_page(done, total, "ocr")`` after.
        limits: bounds on pages, characters, unpacked size and memory; the config's defaults when
            omitted. With ``limits.max_memory`` (the default), a PDF, .docx, .pptx, .xlsx, EPUB or
            HTML document is read in a child process that may take that many bytes more than this one.
        web_page: an HTML document fetched from a site (``Document.source_url``): only its main
            content is read (:mod:`jobs.readers.web_page`), not its menus and footers.

    Returns:
        An :class:`Extraction`. With ``limits.ocr`` ``auto`` (the default), a PDF page without a
        usable text layer and every image frame are read by OCR (:mod:`jobs.ocr`; the page's
        ``ocr_confidence`` is set); with ``off``, a PDF whose pages carry images but no text
        yields no text and the warning ``"no text layer (needs OCR)"``.

    Raises:
        DocumentError: ``password_required`` / ``wrong_password`` for encrypted PDFs,
            ``damaged_file`` when the parser cannot read the file, ``no_text`` when there is no
            text and nothing that could hold any, ``unsupported_type`` for other types,
            ``ocr_disabled`` for an image when ``limits.ocr`` is ``off``.
        DocumentTooLarge: (a ``DocumentError``) ``too_many_pages`` for a PDF of more than
            ``limits.max_pages`` pages, before any page is read; ``too_many_chars`` as soon as
            more than ``limits.max_chars`` non-whitespace characters have been extracted;
            ``too_many_pages`` too for a .pptx of more slides; ``too_many_cells`` as soon as more
            than ``limits.max_sheet_cells`` cells of an .xlsx, a .csv or a .pptx's tables have
            been read; ``decompression_bomb`` for a .docx, .pptx, .xlsx or EPUB whose zip directory declares more than
            ``limits.max_uncompressed_size`` bytes or an entry compressed more than
            ``limits.max_compression_ratio`` to 1, before anything is unpacked;
            ``too_many_pixels`` for an image (frame) of more than ``limits.max_image_pixels``
            pixels, before it is decoded; ``too_much_memory`` when reading the document needs more than ``limits.max_memory``
            bytes (a parser that crashes on the file in its process gives ``damaged_file``).
        RuntimeError: a bug in a reader running in its own process (its traceback in the message).
    """
    limits = limits or Limits()
    max_memory = limits.max_memory
    if max_memory is not None and content_type in _OWN_PROCESS:
        from jobs.reader_process import read_in_own_process

        return read_in_own_process(_extract_here, data, content_type, password, limits, web_page,
                                   max_memory=max_memory, what=_OWN_PROCESS[content_type], on_page=on_page)
    return _extract_here(data, content_type, password, limits, web_page, on_page=on_page)


def extract_pdf_pages(data: bytes, password: str | None, first: int, last: int,
                      on_page: Callable[..., None] | None = None, limits: Limits | None = None):
    """Read pages ``first``–``last`` (1-based, inclusive) of a PDF, for a page-range part of a
    big document (``jobs/document_parts.py``), in a process of its own under ``limits.max_memory``
    like :func:`extract`.

    Returns:
        A :class:`jobs.readers.pdf.PdfPages`; :func:`jobs.readers.pdf.finish_pdf` of every
        part's, in page order, equals :func:`extract` of the whole PDF.

    Raises:
        DocumentError, DocumentTooLarge: as :func:`extract` for a PDF (for these pages).
        RuntimeError: a bug in the reader (its traceback in the message).
    """
    limits = limits or Limits()
    if limits.max_memory is not None:
        from jobs.reader_process import read_in_own_process

        return read_in_own_process(_pdf_pages_here, data, password, first, last, limits,
                                   max_memory=limits.max_memory, what="PDF", on_page=on_page)
    return _pdf_pages_here(data, password, first, last, limits, on_page=on_page)


def _pdf_pages_here(data: bytes, password: str | None, first: int, last: int, limits: Limits,
                    on_page: Callable[..., None] | None = None):
    """:func:`extract_pdf_pages` in this process."""
    from jobs.readers.pdf import read_pdf_pages

    return read_pdf_pages(data, password, first, last, on_page, limits)


# Formats read in a process of their own (as named in sentences): their parsers build objects
# per element, text object or node, as many as the markup asks for, whatever the file's size.
_OWN_PROCESS = {filetypes.PDF: "PDF", filetypes.DOCX: "Word document", filetypes.HTML: "HTML page",
                filetypes.PPTX: "PowerPoint presentation", filetypes.XLSX: "Excel workbook",
                filetypes.EPUB: "EPUB book", **{content_type: "image" for content_type in filetypes.IMAGES}}


def _extract_here(data: bytes, content_type: str, password: str | None, limits: Limits, web_page: bool = False,
                  on_page: Callable[[int, int], None] | None = None) -> Extraction:
    """:func:`extract` in this process."""
    budget = CharBudget(limits.max_chars)
    if content_type == filetypes.PDF:
        from jobs.readers.pdf import read_pdf

        return read_pdf(data, password, on_page, limits, budget)
    if content_type in filetypes.IMAGES:
        from jobs.readers.image import read_image

        return read_image(data, on_page, limits, budget)
    if content_type == filetypes.DOCX:
        from jobs.readers.docx import read_docx

        return read_docx(data, limits, budget)
    if content_type == filetypes.HTML and web_page:
        from jobs.readers.web_page import read_web_page

        return read_web_page(data, budget)
    if content_type == filetypes.HTML:
        from jobs.readers.html import read_html

        return read_html(data, budget)
    if content_type == filetypes.PPTX:
        from jobs.readers.pptx import read_pptx

        return read_pptx(data, limits, budget)
    if content_type == filetypes.XLSX:
        from jobs.readers.xlsx import read_xlsx

        return read_xlsx(data, limits, budget)
    if content_type == filetypes.EPUB:
        from jobs.readers.epub import read_epub

        return read_epub(data, limits, budget)
    if content_type == filetypes.CSV:
        from jobs.readers.csv_table import read_csv

        return read_csv(data, limits, budget)
    if content_type in (filetypes.TEXT, filetypes.MARKDOWN):
        from jobs.readers.plain import read_text

        return read_text(data, budget, markdown=content_type == filetypes.MARKDOWN)
    raise DocumentError(f"documents of type {content_type} are not supported", code="unsupported_type")

