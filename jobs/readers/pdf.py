"""PDF via pypdfium2 (PDFium; measured ≈30× faster than pypdf on the corpus and correct on
Japanese CID fonts where pypdf returns mojibake). The page count is checked before any page is
read, the running count of characters as each page is extracted."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from jobs.document_errors import DocumentError, DocumentTooLarge
from jobs.readers.base import (
    NO_TEXT_LAYER_WARNING, OCR_FOUND_NOTHING_WARNING, CharBudget, Extraction, Limits, Page, clean_text, count_chars,
)


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


def read_pdf(data: bytes, password: str | None, on_page: Callable[[int, int], None] | None,
             limits: Limits, budget: CharBudget) -> Extraction:
    """The text of a PDF, page by page, with its headings and tables as blocks
    (:mod:`jobs.readers.pdf_structure`; see :func:`jobs.extract.extract` for the errors).

    With ``limits.split_above`` set and a PDF of more pages than that, no page is read: the
    answer is ``Extraction(pages=[], page_count=<pages>, split=True)`` and the document job reads
    it in page-range parts (:func:`read_pdf_pages`, :func:`finish_pdf`; ``jobs/document_parts.py``).
    The whole PDF read here and the same PDF read in parts and finished together give equal
    extractions: both are :func:`read_pdf_pages` then :func:`finish_pdf`."""
    pdf = _open_pdf(data, password)
    try:
        total = _page_count(pdf, limits)
        if limits.split_above and total > limits.split_above:
            return Extraction(pages=[], page_count=total, split=True)
        read = _read_pages(pdf, data, password, 1, total, total, on_page, limits, budget)
    finally:
        pdf.close()
    return finish_pdf([read], limits.max_chars)


@dataclass
class PdfPages:
    """Pages ``first``–``last`` (1-based, inclusive) of a PDF of ``total`` pages as read, before
    what needs the whole document is decided: the headings found by font size (the body size is
    the whole document's) and the warnings. JSON-able (:meth:`to_json`), so a page-range part
    stages it in the database for the join (``jobs/document_parts.py``).

    Attributes:
        pages: the range's pages (``blocks`` not set yet).
        outline, sizes, lines, regions: :class:`~jobs.readers.pdf_structure.PdfStructure`'s
            notes, keyed by 0-based page index of the whole PDF (``sizes``: ½-pt font size →
            characters, in the order first seen).
        pages_with_images: pages without text that hold images (no OCR).
        ocr_found_nothing: pages read by OCR where it found no text.
    """

    total: int
    first: int
    last: int
    pages: list[Page]
    outline: dict[int, list[tuple[int, str]]] = field(default_factory=dict)
    sizes: dict[float, int] = field(default_factory=dict)
    lines: dict[int, list[tuple[str, float, bool]]] = field(default_factory=dict)
    regions: dict[int, list[tuple[str, Any]]] = field(default_factory=dict)
    pages_with_images: int = 0
    ocr_found_nothing: int = 0

    def to_json(self) -> dict[str, Any]:
        """A JSON object of it (dict keys as strings, order kept)."""
        return {
            "total": self.total, "first": self.first, "last": self.last,
            "pages": [[page.number, page.text, page.ocr_confidence] for page in self.pages],
            "outline": {str(index): entries for index, entries in self.outline.items()},
            "sizes": [[size, count] for size, count in self.sizes.items()],
            "lines": {str(index): lines for index, lines in self.lines.items()},
            "regions": {str(index): regions for index, regions in self.regions.items()},
            "pages_with_images": self.pages_with_images, "ocr_found_nothing": self.ocr_found_nothing,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "PdfPages":
        """Inverse of :meth:`to_json`."""
        return cls(
            total=data["total"], first=data["first"], last=data["last"],
            pages=[Page(number, text, ocr_confidence=confidence) for number, text, confidence in data["pages"]],
            outline={int(index): [tuple(entry) for entry in entries] for index, entries in data["outline"].items()},
            sizes={float(size): count for size, count in data["sizes"]},
            lines={int(index): [tuple(line) for line in lines] for index, lines in data["lines"].items()},
            regions={int(index): [tuple(region) for region in regions] for index, regions in data["regions"].items()},
            pages_with_images=data["pages_with_images"], ocr_found_nothing=data["ocr_found_nothing"],
        )


def read_pdf_pages(data: bytes, password: str | None, first: int, last: int,
                   on_page: Callable[..., None] | None, limits: Limits) -> PdfPages:
    """Read pages ``first``–``last`` (1-based, inclusive) of a PDF: a page-range part's reading.

    ``on_page(done, total, …)`` as for :func:`read_pdf`, ``done`` the 1-based page just read.
    The characters are counted against ``limits.max_chars`` for these pages only; the join
    counts the whole document's (:func:`finish_pdf`).

    Raises:
        DocumentError: as :func:`read_pdf` (opening, ``too_many_pages``, a damaged page,
            ``too_many_chars``); ``damaged_file`` when the PDF has fewer than ``last`` pages.
    """
    pdf = _open_pdf(data, password)
    try:
        total = _page_count(pdf, limits)
        if not 1 <= first <= last <= total:
            raise DocumentError(f"the PDF has {total:,} pages, not the pages {first:,}–{last:,} asked for",
                                code="damaged_file")
        return _read_pages(pdf, data, password, first, last, total, on_page, limits, CharBudget(limits.max_chars))
    finally:
        pdf.close()


def _page_count(pdf, limits: Limits) -> int:
    total = len(pdf)
    if total == 0:
        raise DocumentError("the PDF has no pages", code="no_text")
    if total > limits.max_pages:
        raise DocumentTooLarge(
            f"The document has {total:,} pages; the limit is {limits.max_pages:,} (MAX_PDF_PAGES).",
            code="too_many_pages", setting="MAX_PDF_PAGES", limit=limits.max_pages,
        )
    return total


def _read_pages(pdf, data: bytes, password: str | None, first: int, last: int, total: int,
                on_page: Callable[..., None] | None, limits: Limits, budget: CharBudget) -> PdfPages:
    """Pages ``first``–``last`` of the open ``pdf`` (a ``PdfDocument`` of ``total`` pages)."""
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    from jobs.readers.pdf_structure import PdfStructure

    structure = PdfStructure(pdf, data, password, tables=limits.pdf_tables)
    pages: list[Page] = []
    pages_with_images = 0
    ocr_found_nothing = 0
    try:
        for index in range(first - 1, last):
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
                    structure.read_page(index, page, textpage)
                finally:
                    textpage.close()
                read = _ocr_page(page, text, index, total, limits, on_page)
                if read is not None:
                    text, confidence = read
                    ocr_found_nothing += confidence is None
                elif count_chars(text) == 0 and any(
                    True for _ in page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE])
                ):
                    pages_with_images += 1
            finally:
                page.close()
            text = clean_text(text)
            budget.add(text, f" at page {index + 1:,} of {total:,}")
            pages.append(Page(index + 1, text, ocr_confidence=confidence if read is not None else None))
            if on_page:
                on_page(index + 1, total, *(("ocr",) if read is not None else ()))
    finally:
        structure.close()
    return PdfPages(total=total, first=first, last=last, pages=pages, outline=structure.outline,
                    sizes=dict(structure.sizes), lines=structure.lines, regions=structure.regions,
                    pages_with_images=pages_with_images, ocr_found_nothing=ocr_found_nothing)


def finish_pdf(parts: list[PdfPages], max_chars: int | None = None) -> Extraction:
    """The extraction of a PDF from its pages read in consecutive ranges, in page order: the
    structure that needs the whole document (headings by font size) set on every page, the
    warnings, the checks on the whole text.

    With ``parts`` covering every page, the result equals :func:`read_pdf`'s. With a part of a
    document alone (a page-range part's own chunks, see ``jobs/document_parts.py``) it is that
    range as if it were the whole document.

    Args:
        parts: consecutive ranges (each ``first`` = the previous ``last`` + 1).
        max_chars: ``MAX_DOCUMENT_CHARS`` over all the parts' text; ``None``: not checked.

    Raises:
        DocumentError: ``no_text`` when there is no text and nothing that could hold any.
        DocumentTooLarge: ``too_many_chars``.
    """
    from jobs.readers.pdf_structure import PdfStructure

    offset = parts[0].first - 1  # the pages' indices in the list below
    total = sum(len(part.pages) for part in parts)
    pages = [page for part in parts for page in part.pages]
    if max_chars is not None and len(parts) > 1:
        budget = CharBudget(max_chars)
        for page in pages:
            budget.add(page.text, f" at page {page.number:,} of {parts[0].total:,}")
    sizes: dict[float, int] = {}
    for part in parts:
        for size, count in part.sizes.items():
            sizes[size] = sizes.get(size, 0) + count
    structure = PdfStructure.restored(
        outline={index - offset: entries for index, entries in parts[0].outline.items() if 0 <= index - offset < total},
        sizes=sizes,
        lines={index - offset: lines for part in parts for index, lines in part.lines.items()},
        regions={index - offset: regions for part in parts for index, regions in part.regions.items()},
    )
    structure.finish(pages)
    ocr_found_nothing = sum(part.ocr_found_nothing for part in parts)
    pages_with_images = sum(part.pages_with_images for part in parts)

    extraction = Extraction(pages=pages, page_count=total)
    if ocr_found_nothing:
        extraction.warnings.append(OCR_FOUND_NOTHING_WARNING if total == 1 else
                                   f"{ocr_found_nothing} of {total} pages have no text layer, and OCR found no text "
                                   "on them")
    if extraction.chars == 0 and not ocr_found_nothing:
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


def _ocr_page(page, text: str, index: int, total: int, limits: Limits,
              on_page: Callable[..., None] | None) -> tuple[str, float | None] | None:
    """The page's text read by OCR and the engine's confidence (``None`` when it read nothing),
    or ``None`` when the page is not read by OCR (``limits.ocr``: ``off``; ``auto`` and a usable
    text layer, :func:`jobs.ocr.is_scanned_page`). ``on_page(index, total, "ocr_next")`` is
    called before the reading (the job's time limit grows by a page)."""
    from jobs import ocr

    if limits.ocr == ocr.OFF or (limits.ocr == ocr.AUTO and not ocr.is_scanned_page(page, text)):
        return None
    if on_page:
        on_page(index, total, "ocr_next")
    result = ocr.read_pdf_page(page, limits.max_image_pixels)
    return result.text, result.confidence
