"""What every reader shares: the limits, the character budget and the shapes of an extraction
(:class:`Extraction` of :class:`Page` of :class:`Block`).

A reader (one module of :mod:`jobs.readers` per format) turns a file's bytes into an
:class:`Extraction`; :func:`jobs.extract.extract` chooses the reader from the content type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Mapping

from jobs.document_errors import DocumentError, DocumentTooLarge
# What the readers and the chunker make, as a number stored on each document with its chunks
# (Document.extractor_version); kept in the core, which selects old documents for `flask documents
# reprocess --without-structure`: raise it there (webapp/core/extractor.py).
from webapp.core.extractor import EXTRACTOR_VERSION

__all__ = ["EXTRACTOR_VERSION"]  # re-exported; the rest is imported by name

NO_TEXT_LAYER_WARNING = "no text layer (needs OCR)"
# A page or image read by OCR where OCR found no text.
OCR_FOUND_NOTHING_WARNING = "no text layer, and OCR found no text on it"
# The progress callback's third argument (see jobs.extract.extract): the page reported was read by
# OCR ("ocr"), or the next page is about to be ("ocr_next").
OCR_STAGE, OCR_NEXT = "ocr", "ocr_next"
# PDFium marks a hyphen that ends a line as U+0002; other C0 controls are noise in extracted text.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
MB = 1024 * 1024
# Characters counted at a time: counting splits the slice into words, an object each (76 bytes
# for a CJK character), so a whole text of 5 million one-character words took 440 MB to count.
_COUNT_SLICE = 1 << 16


@dataclass(frozen=True)
class Limits:
    """Bounds on what one document may become; each is a setting of :mod:`webapp.core.config`.

    The defaults are the config's defaults, so code that calls :func:`extract` without the app's
    config is bounded too.

    Attributes:
        max_chars: non-whitespace characters extracted per document (``MAX_DOCUMENT_CHARS``).
        max_pages: pages per PDF, slides per presentation (``MAX_PDF_PAGES``).
        max_sheet_cells: cells per workbook (all sheets) or CSV file, and per presentation's
            tables, counted as they are read (``MAX_SHEET_CELLS``).
        max_uncompressed_size: bytes a zip-based document (.docx) may unpack to, all entries
            together, as its zip directory declares (``MAX_UNCOMPRESSED_SIZE``).
        max_compression_ratio: largest ratio of unpacked to packed size of any one zip entry
            (``MAX_COMPRESSION_RATIO``); the whole archive's ratio is never above its largest
            entry's, so this bounds it too.
        max_memory: bytes of memory reading one PDF, .docx or HTML document may take, in a
            process of its own forked from this one (``MAX_DOCUMENT_MEMORY`` megabytes; see
            :mod:`jobs.reader_process`). ``None``: read in this process, without a bound (for
            tests that measure this process's own allocations).
        ocr: ``auto``, ``off`` or ``force`` (``OCR``; :mod:`jobs.ocr`).
        max_image_pixels: pixels (width × height) of one image or image frame, checked from its
            header before it is decoded; PDF pages are rendered for OCR within it
            (``MAX_IMAGE_PIXELS``).
        pdf_tables: whether a PDF's pages with ruling lines are searched for tables with
            pdfplumber (``PDF_TABLES``: ``auto`` → ``True``, ``off`` → ``False``; see
            :mod:`jobs.readers.pdf_structure` for its cost).
        split_above: pages above which a PDF is not read as a whole but in page-range parts
            (``SPLIT_PDF_PAGES``, set by the document job only; ``None`` or 0: never):
            :func:`jobs.readers.pdf.read_pdf` then only counts its pages (``Extraction.split``).
    """

    max_chars: int = 5_000_000
    max_pages: int = 2_000
    max_sheet_cells: int = 1_000_000
    max_uncompressed_size: int = 200 * MB
    max_compression_ratio: int = 200
    max_memory: int | None = 512 * MB
    ocr: str = "auto"
    max_image_pixels: int = 100_000_000
    pdf_tables: bool = False
    split_above: int | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Limits":
        """The limits of an app's config (keys as in :func:`webapp.core.config.load_config`)."""
        return cls(
            max_chars=config["MAX_DOCUMENT_CHARS"],
            max_pages=config["MAX_PDF_PAGES"],
            max_sheet_cells=config["MAX_SHEET_CELLS"],
            max_uncompressed_size=config["MAX_UNCOMPRESSED_SIZE"],
            max_compression_ratio=config["MAX_COMPRESSION_RATIO"],
            max_memory=config["MAX_DOCUMENT_MEMORY"] * MB,
            ocr=config.get("OCR", "auto"),
            max_image_pixels=config.get("MAX_IMAGE_PIXELS", 100_000_000),
            pdf_tables=config.get("PDF_TABLES", "off") == "auto",
        )


class CharBudget:
    """The running count of non-whitespace characters extracted so far, refusing the document
    (``too_many_chars``) as soon as it passes ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def add(self, text: str, where: str = "") -> None:
        """Count ``text`` (already cleaned); ``where`` (e.g. ``" at page 12"``) says where
        extraction stopped. Raises :class:`DocumentTooLarge` ``too_many_chars`` past the limit."""
        for start in range(0, len(text), _COUNT_SLICE):
            self.used += _count_slice(text[start:start + _COUNT_SLICE])
            if self.used > self.limit:
                stopped = f" (extraction stopped{where})" if where else ""
                raise DocumentTooLarge(
                    f"The document has more than {self.limit:,} characters of text, not counting whitespace"
                    f"{stopped}; the limit is {self.limit:,} (MAX_DOCUMENT_CHARS).",
                    code="too_many_chars", setting="MAX_DOCUMENT_CHARS", limit=self.limit,
                )


def format_bytes(size: int) -> str:
    """``size`` bytes for a sentence: ``"200 MB"``, ``"1.5 MB"``, ``"12.3 KB"``, ``"512 bytes"``
    (1 MB = 1,048,576 bytes, as in the config)."""
    if size >= MB:
        return f"{size / MB:,.1f}".removesuffix(".0") + " MB"
    if size >= 1024:
        return f"{size / 1024:,.1f}".removesuffix(".0") + " KB"
    return f"{size:,} bytes"


# Kinds of Block.
PARAGRAPH, HEADING, TABLE = "paragraph", "heading", "table"


@dataclass
class Block:
    """One piece of a page's structure, in reading order.

    Attributes:
        kind: :data:`PARAGRAPH` (running text), :data:`HEADING` (a section title) or
            :data:`TABLE`.
        text: the block's text; for a table its rows as Markdown pipe rows, one per line, the
            header row first when it has one (see :func:`markdown_row`).
        level: a heading's depth, 1 (top) and deeper (6 in HTML and Markdown, 9 in Word); 0 for
            other kinds. Only the order of levels matters (see :func:`jobs.chunking.chunk_pages`).
        rows: a table's Markdown pipe rows (``text`` is them joined by ``"\n"``).
        header: whether ``rows[0]`` is the table's header row (repeated in every chunk of it).
    """

    kind: str
    text: str
    level: int = 0
    rows: list[str] = field(default_factory=list)
    header: bool = True


@dataclass
class Page:
    """Text of one page. ``number`` is 1-based; formats without pages have one page ``None``.

    Attributes:
        number: 1-based page (a PDF page, a slide, an image frame), ``None`` for formats
            without pages.
        text: the page's plain text (what is counted against ``MAX_DOCUMENT_CHARS``).
        blocks: the page's structure (headings, paragraphs, tables) in reading order, or
            ``None`` when the reader knows none: the page is then one paragraph, ``text``.
        ocr_confidence: for a page read by OCR, the engine's mean confidence (0–1) over the
            lines it read; ``None`` for a page whose text came from the file itself.
    """

    number: int | None
    text: str
    blocks: list[Block] | None = None
    ocr_confidence: float | None = None

    @property
    def ocr(self) -> bool:
        """Whether the page's text was read by OCR."""
        return self.ocr_confidence is not None

    def structure(self) -> list[Block]:
        """The page's blocks: ``blocks``, or one paragraph of ``text`` when there are none."""
        if self.blocks is not None:
            return self.blocks
        return [Block(PARAGRAPH, self.text)] if self.text.strip() else []


@dataclass
class Extraction:
    """What :func:`extract` found: pages in order, page count, and warnings for the user.
    ``split``: a PDF of more than ``Limits.split_above`` pages, not read (``pages`` empty): it is
    read in page-range parts (``jobs/document_parts.py``)."""

    pages: list[Page]
    page_count: int | None  # None for formats without pages (.docx, .html, .txt, .md)
    warnings: list[str] = field(default_factory=list)
    split: bool = False

    @property
    def ocr_pages(self) -> int:
        """How many pages were read by OCR."""
        return sum(1 for page in self.pages if page.ocr)

    @cached_property
    def chars(self) -> int:
        """Non-whitespace characters of the text (the corpus manifest's ``nonspace_chars``)."""
        return sum(count_chars(page.text) for page in self.pages)


def clean_text(text: str) -> str:
    """Normalise line breaks to ``\\n`` and drop control characters (PDFium's U+0002 hyphen marks)."""
    return _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def count_chars(text: str) -> int:
    """Number of non-whitespace characters in ``text`` (whitespace as ``str.isspace`` and regex ``\\s`` define it),
    counted ``_COUNT_SLICE`` characters at a time (memory: one slice's words, whatever the length)."""
    return sum(_count_slice(text[start:start + _COUNT_SLICE]) for start in range(0, len(text), _COUNT_SLICE))


def _count_slice(text: str) -> int:
    return len("".join(text.split()))


def single_page(text: str, blocks: list[Block] | None = None) -> Extraction:
    """The extraction of a format without pages: one page ``None`` holding ``text``
    (cleaned) and its ``blocks``.

    Raises:
        DocumentError: ``no_text`` when ``text`` holds no non-whitespace character.
    """
    text = clean_text(text)
    if count_chars(text) == 0:
        raise DocumentError("the document contains no text", code="no_text")
    return Extraction(pages=[Page(None, text, blocks)], page_count=None)


def markdown_row(cells: list[str]) -> str:
    """One table row as a Markdown pipe row: ``"| a | b |"``. Line breaks inside a cell become
    spaces and ``|`` is escaped, so the row stays one line."""
    return "| " + " | ".join(" ".join(cell.split()).replace("|", "\\|") for cell in cells) + " |"
