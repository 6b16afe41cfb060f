"""EPUB via ebooklib (the package: manifest, spine, table of contents), unpacked under the zip
limits (:mod:`jobs.readers.zip_limits`); each chapter's XHTML read from lxml's parser events as
HTML pages are (:mod:`jobs.html_text`: no tree is built)."""

from __future__ import annotations

import posixpath
import warnings

from jobs.document_errors import DocumentError
from jobs.readers.base import HEADING, Block, CharBudget, Extraction, Limits, clean_text, markdown_row, single_page
from jobs.readers.zip_limits import check_zip, unpack_bounded

KIND = "EPUB book"
_XHTML_TYPES = ("application/xhtml+xml", "text/html")


def read_epub(data: bytes, limits: Limits, budget: CharBudget) -> Extraction:
    """The text of an e-book in reading order (its spine), one page ``None``: each chapter's
    ``h1``–``h6`` as :data:`HEADING` blocks of that level, the text between them as
    :data:`PARAGRAPH` blocks. A chapter (spine document) without a heading of its own starts
    with its title from the table of contents (the EPUB 3 nav document, else the NCX), as a
    level-1 heading. Hidden text, scripts and styles are left out as on an HTML page.

    Raises:
        DocumentTooLarge: ``decompression_bomb`` (:func:`check_zip`, before anything is
            unpacked); ``too_many_chars`` as soon as the strings pass ``budget``'s limit.
        DocumentError: ``damaged_file`` when ebooklib cannot read the package (no container,
            no OPF, a spine naming no document), ``no_text`` when no chapter holds text.
    """
    from ebooklib import epub

    check_zip(data, limits, KIND)
    unpacked = unpack_bounded(data, KIND)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ebooklib warns about its own future defaults
            book = epub.read_epub(unpacked, options={"ignore_ncx": True})
        titles = _toc_titles(book.toc)
        chapters = []
        for idref, _linear in book.spine:
            item = book.get_item_with_id(idref)
            if item is None or item.media_type not in _XHTML_TYPES:
                continue
            chapters.append((item.file_name, item.get_content()))
    except DocumentError:
        raise
    except Exception as exc:  # ebooklib raises EpubException, zipfile, lxml and KeyError errors for bad files
        raise DocumentError(f"the {KIND} is damaged and could not be read ({type(exc).__name__}: {exc})",
                            code="damaged_file") from None
    blocks: list[Block] = []
    for file_name, content in chapters:
        chapter = _chapter_blocks(content, budget)
        title = titles.get(file_name)
        if title and not any(block.kind == HEADING for block in chapter):
            budget.add(title)
            chapter.insert(0, Block(HEADING, title, level=1))
        blocks.extend(chapter)
    return single_page("\n\n".join(block.text for block in blocks), blocks)


def _toc_titles(toc, titles: dict[str, str] | None = None) -> dict[str, str]:
    """The first title the table of contents gives each document (``href`` without fragment,
    as ebooklib names items)."""
    titles = {} if titles is None else titles
    for entry in toc:
        if isinstance(entry, tuple):  # (Section, children)
            section, children = entry
            _add_title(titles, section)
            _toc_titles(children, titles)
        else:
            _add_title(titles, entry)
    return titles


def _add_title(titles: dict[str, str], entry) -> None:
    href, title = getattr(entry, "href", None), getattr(entry, "title", None)
    if href and title:
        name = posixpath.normpath(href.split("#", 1)[0])
        titles.setdefault(name, " ".join(clean_text(title).split()))


def _chapter_blocks(content: bytes, budget: CharBudget) -> list[Block]:
    """One spine document's headings, tables and paragraphs, read as an HTML page is
    (:func:`jobs.html_text.reader_structure`: parser events, no tree), each string counted
    against ``budget``."""
    from jobs.html_text import reader_structure

    if not content.strip():
        return []

    def counted(string: str) -> str:
        string = clean_text(string)
        budget.add(string)
        return string

    try:
        _, parts = reader_structure(content, counted, markdown_row)
    except DocumentError as exc:
        raise DocumentError(f"the {KIND} has a chapter that could not be read ({exc.message})",
                            code="damaged_file") from None
    return [Block(kind, part, level, rows=rows, header=len(rows) > 1) for kind, level, part, rows in parts]
