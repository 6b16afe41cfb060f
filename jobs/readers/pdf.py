"""PDF via pypdfium2 (PDFium; measured ≈30× faster than pypdf on the corpus and correct on
Japanese CID fonts where pypdf returns mojibake). The page count is checked before any page is
read, the running count of characters as each page is extracted."""

from __future__ import annotations

import re
from typing import Callable

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
    (:mod:`jobs.readers.pdf_structure`; see :func:`jobs.extract.extract` for the errors)."""
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    pdf = _open_pdf(data, password)
    try:
        total = len(pdf)
        if total == 0:
            raise DocumentError("the PDF has no pages", code="no_text")
        if total > limits.max_pages:
            raise DocumentTooLarge(
                f"The document has {total:,} pages; the limit is {limits.max_pages:,} (MAX_PDF_PAGES).",
                code="too_many_pages", setting="MAX_PDF_PAGES", limit=limits.max_pages,
            )
        from jobs.readers.pdf_structure import PdfStructure

        structure = PdfStructure(pdf, data, password, tables=limits.pdf_tables)
        pages: list[Page] = []
        pages_with_images = 0
        ocr_found_nothing = 0
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
        structure.finish(pages)
    finally:
        pdf.close()

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
