"""Text extraction: bytes of a supported document → its text, page by page.

PDF via pypdfium2 (PDFium; measured ≈30× faster than pypdf on the corpus and correct on
Japanese CID fonts where pypdf returns mojibake), .docx via python-docx, HTML via lxml's parser
events (:mod:`jobs.html_text`: no tree is built), plain text and Markdown via charset-normalizer.

Hostile input is bounded by :class:`Limits` (the app's ``MAX_PDF_PAGES``, ``MAX_DOCUMENT_CHARS``,
``MAX_UNCOMPRESSED_SIZE``, ``MAX_COMPRESSION_RATIO`` and ``MAX_DOCUMENT_MEMORY``): a PDF's page
count is checked before any page is read, a .docx's zip directory before anything is unpacked,
the running count of characters as each page, paragraph or string is extracted, and the memory
a PDF, .docx or HTML reader takes by reading it in a process of its own
(:mod:`jobs.reader_process`).
"""

from __future__ import annotations

import io
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Mapping

from jobs.document_errors import DocumentError, DocumentTooLarge
from webapp.core import filetypes

NO_TEXT_LAYER_WARNING = "no text layer (needs OCR)"
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
        max_pages: pages per PDF (``MAX_PDF_PAGES``).
        max_uncompressed_size: bytes a zip-based document (.docx) may unpack to, all entries
            together, as its zip directory declares (``MAX_UNCOMPRESSED_SIZE``).
        max_compression_ratio: largest ratio of unpacked to packed size of any one zip entry
            (``MAX_COMPRESSION_RATIO``); the whole archive's ratio is never above its largest
            entry's, so this bounds it too.
        max_memory: bytes of memory reading one PDF, .docx or HTML document may take, in a
            process of its own forked from this one (``MAX_DOCUMENT_MEMORY`` megabytes; see
            :mod:`jobs.reader_process`). ``None``: read in this process, without a bound (for
            tests that measure this process's own allocations).
    """

    max_chars: int = 5_000_000
    max_pages: int = 2_000
    max_uncompressed_size: int = 200 * MB
    max_compression_ratio: int = 200
    max_memory: int | None = 512 * MB

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Limits":
        """The limits of an app's config (keys as in :func:`webapp.core.config.load_config`)."""
        return cls(
            max_chars=config["MAX_DOCUMENT_CHARS"],
            max_pages=config["MAX_PDF_PAGES"],
            max_uncompressed_size=config["MAX_UNCOMPRESSED_SIZE"],
            max_compression_ratio=config["MAX_COMPRESSION_RATIO"],
            max_memory=config["MAX_DOCUMENT_MEMORY"] * MB,
        )


class _CharBudget:
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
    """Number of non-whitespace characters in ``text`` (whitespace as ``str.isspace`` and regex ``\\s`` define it),
    counted ``_COUNT_SLICE`` characters at a time (memory: one slice's words, whatever the length)."""
    return sum(_count_slice(text[start:start + _COUNT_SLICE]) for start in range(0, len(text), _COUNT_SLICE))


def _count_slice(text: str) -> int:
    return len("".join(text.split()))


def extract(
    data: bytes,
    content_type: str,
    password: str | None = None,
    on_page: Callable[[int, int], None] | None = None,
    limits: Limits | None = None,
) -> Extraction:
    """Extract the text of a document.

    Args:
        data: the file's bytes.
        content_type: a type from :mod:`webapp.core.filetypes` (decided from the bytes at upload).
        password: for encrypted PDFs; the empty password is always tried first.
        on_page: called as ``on_page(done, total)`` after each PDF page.
        limits: bounds on pages, characters, unpacked size and memory; the config's defaults when
            omitted. With ``limits.max_memory`` (the default), a PDF, .docx or HTML document is
            read in a child process that may take that many bytes more than this one.

    Returns:
        An :class:`Extraction`. A PDF whose pages carry images but no text yields no text and the
        warning ``"no text layer (needs OCR)"``.

    Raises:
        DocumentError: ``password_required`` / ``wrong_password`` for encrypted PDFs,
            ``damaged_file`` when the parser cannot read the file, ``no_text`` when there is no
            text and nothing that could hold any, ``unsupported_type`` for other types.
        DocumentTooLarge: (a ``DocumentError``) ``too_many_pages`` for a PDF of more than
            ``limits.max_pages`` pages, before any page is read; ``too_many_chars`` as soon as
            more than ``limits.max_chars`` non-whitespace characters have been extracted;
            ``decompression_bomb`` for a .docx whose zip directory declares more than
            ``limits.max_uncompressed_size`` bytes or an entry compressed more than
            ``limits.max_compression_ratio`` to 1, before anything is unpacked;
            ``too_much_memory`` when reading the document needs more than ``limits.max_memory``
            bytes (a parser that crashes on the file in its process gives ``damaged_file``).
        RuntimeError: a bug in a reader running in its own process (its traceback in the message).
    """
    limits = limits or Limits()
    if limits.max_memory is not None and content_type in _OWN_PROCESS:
        from jobs.reader_process import read_in_own_process

        return read_in_own_process(_extract_here, data, content_type, password, limits,
                                   max_memory=limits.max_memory, what=_OWN_PROCESS[content_type], on_page=on_page)
    return _extract_here(data, content_type, password, limits, on_page=on_page)


# Formats read in a process of their own (as named in sentences): their parsers build objects
# per element, text object or node, as many as the markup asks for, whatever the file's size.
_OWN_PROCESS = {filetypes.PDF: "PDF", filetypes.DOCX: "Word document", filetypes.HTML: "HTML page"}


def _extract_here(data: bytes, content_type: str, password: str | None, limits: Limits,
                  on_page: Callable[[int, int], None] | None = None) -> Extraction:
    """:func:`extract` in this process."""
    budget = _CharBudget(limits.max_chars)
    if content_type == filetypes.PDF:
        return _extract_pdf(data, password, on_page, limits, budget)
    if content_type == filetypes.DOCX:
        return _single(_docx_text(data, limits, budget))
    if content_type == filetypes.HTML:
        return _single(_html_text(data, budget))
    if content_type in (filetypes.TEXT, filetypes.MARKDOWN):
        text = clean_text(_decode_text(data))
        budget.add(text)
        return _single(text)
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


def _extract_pdf(data: bytes, password: str | None, on_page: Callable[[int, int], None] | None,
                 limits: Limits, budget: _CharBudget) -> Extraction:
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
            text = clean_text(text)
            budget.add(text, f" at page {index + 1:,} of {total:,}")
            pages.append(Page(index + 1, text))
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


def check_zip(data: bytes, limits: Limits, kind: str = "Word document") -> None:
    """Refuse a zip-based document that would unpack to too much, from its central directory
    alone (nothing is decompressed).

    The directory may lie (declare a small size for a huge stream); :func:`_unpack_bounded` then
    reads no more than it declares.

    Args:
        data: the file's bytes.
        limits: ``max_uncompressed_size`` (bytes, all entries) and ``max_compression_ratio``
            (unpacked / packed size of any one entry; an entry that declares unpacked bytes from no
            packed bytes counts as infinitely compressed).
        kind: what the document is, for the sentence.

    Raises:
        DocumentTooLarge: ``decompression_bomb``, naming the limit and its config variable.
        DocumentError: ``damaged_file`` when the zip directory cannot be read.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            entries = archive.infolist()
    except filetypes.ZIP_ERRORS as exc:
        raise DocumentError(f"the {kind} is damaged and could not be opened ({exc})", code="damaged_file") from None
    total = sum(entry.file_size for entry in entries)
    if total > limits.max_uncompressed_size:
        raise DocumentTooLarge(
            f"The {kind} would unpack to {format_bytes(total)}; the limit is "
            f"{format_bytes(limits.max_uncompressed_size)} (MAX_UNCOMPRESSED_SIZE = {limits.max_uncompressed_size:,} "
            "bytes), so it was refused as a "
            "possible decompression bomb before anything was unpacked.",
            code="decompression_bomb", setting="MAX_UNCOMPRESSED_SIZE", limit=limits.max_uncompressed_size,
        )
    for entry in entries:
        if entry.file_size == 0:
            continue
        ratio = entry.file_size / entry.compress_size if entry.compress_size else float("inf")
        if ratio > limits.max_compression_ratio:
            name = entry.filename if len(entry.filename) <= 80 else entry.filename[:77] + "..."
            shown = "an unbounded ratio" if ratio == float("inf") else f"a ratio of {ratio:,.1f} to 1"
            raise DocumentTooLarge(
                f"The {kind}'s part {name!r} unpacks to {format_bytes(entry.file_size)} from "
                f"{format_bytes(entry.compress_size)}, {shown}; the limit is {limits.max_compression_ratio:,} to 1 "
                "(MAX_COMPRESSION_RATIO), so it was refused as a possible decompression bomb before anything "
                "was unpacked.",
                code="decompression_bomb", setting="MAX_COMPRESSION_RATIO", limit=limits.max_compression_ratio,
            )


# Word and LibreOffice write stored or deflated entries; zipfile decompresses the others (bzip2,
# LZMA) without a bound on one read's output, so they are refused.
_ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}


def _unpack_bounded(data: bytes, kind: str = "Word document") -> io.BytesIO:
    """An uncompressed (stored) copy of a zip archive that :func:`check_zip` accepted, each entry
    unpacked by streaming to at most the size its directory declares.

    python-docx reads each part with ``ZipFile.read``, which inflates the whole stream in one call
    before cutting it to the declared size: a directory that declares 4 KB for a stream of 50 GB
    would pass :func:`check_zip` and still fill memory. Reading ``file_size`` bytes through
    ``ZipExtFile.read(n)`` inflates at most that many (plus one 4 KB read), and zipfile checks the
    CRC; python-docx then only copies stored bytes. Memory: the declared total, twice at most.

    Raises:
        DocumentError: ``damaged_file`` for an entry that is encrypted, uses another compression
            method, or whose data does not match its directory (bad CRC, truncated stream).
    """
    copy = io.BytesIO()
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(copy, "w", zipfile.ZIP_STORED) as target:
            for entry in source.infolist():
                if entry.compress_type not in _ZIP_METHODS:
                    raise DocumentError(
                        f"the {kind} is damaged or not from a word processor: its part {entry.filename[:80]!r} "
                        f"uses zip compression method {entry.compress_type}, not stored or deflated",
                        code="damaged_file")
                with source.open(entry) as stream:
                    content = stream.read(entry.file_size) if entry.file_size else b""
                    if len(content) != entry.file_size:
                        raise zipfile.BadZipFile(f"part {entry.filename[:80]!r} is shorter than its directory says")
                target.writestr(zipfile.ZipInfo(entry.filename), content)
    except DocumentError:
        raise
    except (*filetypes.ZIP_ERRORS, RuntimeError, zlib.error) as exc:  # RuntimeError: an encrypted entry
        raise DocumentError(f"the {kind} is damaged and could not be opened ({exc})", code="damaged_file") from None
    copy.seek(0)
    return copy


def _docx_text(data: bytes, limits: Limits, budget: _CharBudget) -> str:
    import docx
    from docx.table import Table

    check_zip(data, limits)
    unpacked = _unpack_bounded(data)
    try:
        document = docx.Document(unpacked)
    except Exception as exc:  # python-docx raises zipfile, lxml and KeyError errors for bad files
        raise DocumentError(f"the Word document is damaged and could not be opened ({exc})", code="damaged_file") from None
    parts: list[str] = []
    try:
        for block in document.iter_inner_content():  # paragraphs and tables in document order
            if isinstance(block, Table):
                for row in block.rows:
                    part = clean_text("\t".join(cell.text for cell in row.cells))
                    budget.add(part, f" at paragraph {len(parts) + 1:,}")
                    parts.append(part)
            else:
                part = clean_text(block.text)
                budget.add(part, f" at paragraph {len(parts) + 1:,}")
                parts.append(part)
    except DocumentError:
        raise
    except Exception as exc:  # python-docx reads malformed values (a table's grid, a span) lazily
        raise DocumentError(f"the Word document is damaged and could not be read ({type(exc).__name__}: {exc})",
                            code="damaged_file") from None
    return "\n".join(parts)


def _html_text(data: bytes, budget: _CharBudget) -> str:
    """The text a reader of the page sees (:func:`jobs.html_text.reader_text`), each string
    counted against ``budget`` as it is found.

    Raises:
        DocumentTooLarge: ``too_many_chars`` as soon as the strings pass ``budget``'s limit.
        DocumentError: ``damaged_file`` when lxml refuses the page in every encoding tried.
    """
    from jobs.html_text import reader_text

    def counted(string: str) -> str:
        string = clean_text(string)
        budget.add(string)
        return string

    return reader_text(data, counted)


def _decode_text(data: bytes) -> str:
    import charset_normalizer

    match = charset_normalizer.from_bytes(data).best()
    if match is None:
        raise DocumentError("the text file's character encoding could not be recognised", code="damaged_file")
    return str(match)
