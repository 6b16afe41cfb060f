"""HTML → the text a reader sees, from lxml's parser events, without building a tree.

BeautifulSoup built a Python object of ≈ 0.5 KB for every element before any text was read: a
12 MB file of 2,000,000 unclosed ``<span>`` took a worker process to 1.3 GB, 50 MB of them past
4 GB (``benchmarks/hostile_memory.py``). Here lxml's HTML parser (libxml2) calls
:class:`_ReaderText` for each start tag, end tag and piece of text (lxml's *target parser*
interface), which keeps a byte per open element and the text so far: memory grows with the
file, not with how many elements its markup opens (the same 12 MB file: 46 MB over the idle
worker process).

The text is what ``BeautifulSoup(data, "lxml")`` with the hidden elements decomposed and
``soup.strings`` joined gave, event for event (the same parser, the same encoding detection,
the same rules for whitespace-only strings and for the strings BeautifulSoup leaves out).
"""

from __future__ import annotations

import io
import re
from typing import Callable

from jobs.document_errors import DocumentError

# Kinds of the structure's parts: as jobs.readers.base's Block kinds, which jobs.readers.html
# makes of them (this module is below jobs.readers: it imports nothing from it).
HEADING, PARAGRAPH, TABLE = "heading", "paragraph", "table"
# One part of a page's structure: (kind, heading level or 0, text, a table's rows or []).
Part = tuple[str, int, str, list[str]]

# Inline styles that hide an element from every reader: display:none, visibility:hidden (CSS is
# case-insensitive and allows spaces around the colon; "!important" may follow).
_HIDING_STYLE = re.compile(r"(?:^|;)\s*(?:display\s*:\s*none|visibility\s*:\s*hidden)\s*(?:!\s*important\s*)?(?:;|$)",
                           re.IGNORECASE)
# Elements whose text a reader never sees.
_NEVER_SHOWN = frozenset({"script", "style", "noscript", "template"})
# Elements whose text BeautifulSoup keeps in string classes of their own (its HTML builder's
# ``string_containers``: Script, Stylesheet, TemplateString, RubyTextString,
# RubyParenthesisString), which ``soup.strings`` leaves out: ruby annotations (<rt>, <rp>) too.
_OWN_STRINGS = frozenset({"script", "style", "template", "rt", "rp"})
# Elements inside which BeautifulSoup keeps whitespace-only strings as they are.
_PRESERVE_WHITESPACE = frozenset({"pre", "textarea"})
# Whitespace as BeautifulSoup tells a whitespace-only string (ASCII only, as HTML defines it).
_ASCII_SPACES = " \n\t\x0c\r"
_DROP, _PRESERVE = 1, 2  # flags of an open element
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_CELLS = frozenset({"td", "th"})
_STRUCTURE = frozenset({"table", "tr", *_CELLS, *_HEADINGS})  # tags that start or end a part
_BLANK_LINES = re.compile(r"\n{3,}")
# Trailing whitespace of a line, other than the line break: matched only from the start of a
# whitespace run (the lookbehind), so a long run not followed by a line break costs linear time.
_TRAILING_SPACE = re.compile(r"(?<![^\S\n])[^\S\n]++(?=\n|\Z)")


def _is_hidden(attributes) -> bool:
    """Whether an element is hidden from a reader by its own attributes (a mapping of name to
    value): ``hidden``, ``aria-hidden="true"`` or an inline ``display:none`` /
    ``visibility:hidden`` style."""
    if not attributes:
        return False
    if "hidden" in attributes:
        return True
    aria = attributes.get("aria-hidden")
    if isinstance(aria, str) and aria.strip().lower() == "true":
        return True
    style = attributes.get("style")
    return isinstance(style, str) and _HIDING_STYLE.search(style) is not None


class _ReaderText:
    """An lxml parser target collecting the strings a reader sees.

    A string is the text between two events (BeautifulSoup's ``endData``); it is left out when an
    open element is never shown, hidden, or keeps its strings apart (``_OWN_STRINGS``), and so is
    the text of comments, processing instructions and the doctype. Whitespace-only strings become
    ``"\\n"`` or ``" "`` outside ``<pre>`` and ``<textarea>``.
    """

    def __init__(self, on_string: Callable[[str], str], format_row: Callable[[list[str]], str]) -> None:
        self.on_string = on_string
        self.format_row = format_row
        self.open = bytearray()  # flags of each open element, innermost last
        self.dropping = 0  # open elements with _DROP
        self.preserving = 0  # open elements with _PRESERVE
        self.pending: list[str] = []
        self.text = io.StringIO()
        self.strings = 0
        # Structure (see blocks()): the text since the last heading or table, the open heading,
        # the open table (only the outermost: a nested table's text joins its cell).
        self.blocks: list[Part] = []
        self.paragraph = io.StringIO()
        self.heading: io.StringIO | None = None
        self.heading_level = 0
        self.tables = 0  # open <table> elements
        self.rows: list[str] = []  # the open table's rows with text, as Markdown pipe rows
        self.cells: list[str] | None = None  # the open row's cells
        self.cell: io.StringIO | None = None

    def _end_string(self, shown: bool = True) -> None:
        if not self.pending:
            return
        string = "".join(self.pending)
        self.pending = []
        if not shown or self.dropping:
            return
        if not self.preserving and not string.strip(_ASCII_SPACES):
            string = "\n" if "\n" in string else " "
        string = self.on_string(string)
        if self.strings:
            self.text.write("\n")
        self.text.write(string)
        self.strings += 1
        if self.cell is not None:
            self.cell.write(" ")  # strings of a cell (its inline elements' text) apart by a space
            self.cell.write(string)
        elif self.tables:
            pass  # text of a table outside its cells: not shown by browsers in place, kept in the text only
        elif self.heading is not None:
            self.heading.write(string)
        else:
            self.paragraph.write("\n")
            self.paragraph.write(string)

    def _end_paragraph(self) -> None:
        text = _tidy(self.paragraph.getvalue())
        if text.strip():
            self.blocks.append((PARAGRAPH, 0, text, []))
        self.paragraph = io.StringIO()

    def _end_cell(self) -> None:
        if self.cell is not None and self.cells is not None:
            self.cells.append(self.cell.getvalue())
        self.cell = None

    def _end_row(self) -> None:
        self._end_cell()
        if self.cells and any(cell.strip() for cell in self.cells):
            self.rows.append(self.format_row(self.cells))
        self.cells = None

    def _structure_start(self, tag: str) -> None:
        if tag == "table":
            self.tables += 1
            if self.tables == 1:
                self._end_paragraph()
                self.rows = []
        elif self.tables == 1 and tag == "tr":
            self._end_row()
            self.cells = []
        elif self.tables == 1 and tag in _CELLS:
            self._end_cell()
            if self.cells is None:  # a cell outside any <tr>: libxml2 opens none, so one is assumed
                self.cells = []
            self.cell = io.StringIO()
        elif tag in _HEADINGS and not self.tables and self.heading is None:
            self._end_paragraph()
            self.heading, self.heading_level = io.StringIO(), _HEADINGS[tag]

    def _structure_end(self, tag: str) -> None:
        if tag == "table" and self.tables:
            self.tables -= 1
            if not self.tables:
                self._end_row()
                if self.rows:
                    self.blocks.append((TABLE, 0, "\n".join(self.rows), self.rows))
                self.rows = []
        elif self.tables == 1 and tag == "tr":
            self._end_row()
        elif self.tables == 1 and tag in _CELLS:
            self._end_cell()
        elif tag in _HEADINGS and self.heading is not None and not self.tables:
            title = " ".join(self.heading.getvalue().split())
            if title:
                self.blocks.append((HEADING, self.heading_level, title, []))
            self.heading = None

    def structure(self) -> list[Part]:
        """The page's parts in order (after :meth:`close`): headings (``h1``–``h6``), tables
        (the outermost ``<table>``: its rows with text) and the text between them as
        paragraphs."""
        self._end_paragraph()
        return self.blocks

    def start(self, tag: str, attributes) -> None:
        self._end_string()
        if tag in _STRUCTURE:
            self._structure_start(tag)
        flags = _DROP if tag in _NEVER_SHOWN or tag in _OWN_STRINGS or _is_hidden(attributes) else 0
        if tag in _PRESERVE_WHITESPACE:
            flags |= _PRESERVE
        self.open.append(flags)
        self.dropping += flags & _DROP
        self.preserving += (flags & _PRESERVE) >> 1

    def end(self, tag: str) -> None:
        self._end_string()
        if tag in _STRUCTURE:
            self._structure_end(tag)
        if self.open:
            flags = self.open.pop()
            self.dropping -= flags & _DROP
            self.preserving -= (flags & _PRESERVE) >> 1

    def data(self, data: str) -> None:
        self.pending.append(data)

    def comment(self, text: str) -> None:
        self._end_string()

    def pi(self, target: str, data: str | None = None) -> None:
        self._end_string()

    def doctype(self, name: str, public_id: str, system_url: str) -> None:
        self._end_string()

    def close(self) -> str:
        """The strings joined by line breaks. Raises :class:`DocumentError` ``damaged_file`` when
        elements are still open: libxml2 closes every element at the end of the input, so the
        parser stopped before it — as it does, silently, when an allocation fails."""
        self._end_string()
        if self.open:
            raise DocumentError(f"the HTML page could not be read to its end: its parser stopped with "
                                f"{len(self.open):,} elements open", code="damaged_file")
        return self.text.getvalue()


def reader_text(data: bytes, on_string: Callable[[str], str]) -> str:
    """The text a reader of an HTML page sees (see :func:`reader_structure`, whose text it is)."""
    return reader_structure(data, on_string, lambda cells: " ".join(cells))[0]


def reader_structure(data: bytes, on_string: Callable[[str], str],
                     format_row: Callable[[list[str]], str]) -> tuple[str, list[Part]]:
    """The text a reader of an HTML page sees: without script, style, template and noscript
    elements, without elements hidden by ``hidden``, ``aria-hidden="true"`` or an inline
    ``display:none`` / ``visibility:hidden`` (so an inline-XBRL filing's ``ix:header`` is
    dropped), one string a line, trailing spaces stripped and runs of blank lines (navigation
    boilerplate) collapsed to one blank line.

    The encoding is the one BeautifulSoup would use (its ``EncodingDetector``: byte-order mark,
    declared encoding, charset-normalizer's guess, UTF-8, Windows-1252), trying the next when
    lxml refuses one.

    Args:
        data: the page's bytes.
        on_string: called with each string as it is found; returns it cleaned. It may raise
            to stop reading (the character budget does); the exception propagates.
        format_row: makes a table row's line of its cells' texts (as they are, with spaces).

    Returns:
        ``(text, parts)``: the text, ``""`` for a page without any, and its structure as
        :data:`Part` tuples: headings (``h1``–``h6``, levels 1–6), tables (the outermost
        ``<table>`` elements: a ``format_row`` line per ``<tr>`` with text; a nested table's
        text joins its cell) and the text between them as paragraphs.

    Raises:
        DocumentError: ``damaged_file`` when lxml refuses the page in every encoding tried, or
            stops before its end (out of memory: libxml2 stops without an error).
        Whatever ``on_string`` raises.

    Memory: the input, libxml2's decoded copy of it, a byte per open element and the text twice
    (the text, and in blocks), a string per cell of the open table row and per table row with
    text, so it grows with the file's size and never with its markup (a 50 MB file of nested or side-by-side
    elements: ``benchmarks/hostile_memory.py``).
    """
    from bs4.dammit import EncodingDetector
    from lxml import etree

    detector = EncodingDetector(data, is_html=True)
    refused: list[str] = []
    for encoding in detector.encodings:
        try:
            target = _ReaderText(on_string, format_row)
            parser = etree.HTMLParser(target=target, recover=True, encoding=encoding)
            parser.feed(detector.markup)
            text = parser.close()
            blocks = target.structure()
            break
        except (UnicodeDecodeError, LookupError, etree.ParserError) as exc:
            refused.append(f"{encoding}: {exc}")
    else:
        raise DocumentError("the HTML page could not be read in any encoding (" + "; ".join(refused) + ")",
                            code="damaged_file")
    return _tidy(text), blocks


def _tidy(text: str) -> str:
    """Trailing spaces of lines stripped, runs of blank lines collapsed to one, no blank lines
    around."""
    text = _TRAILING_SPACE.sub("", text)
    return _BLANK_LINES.sub("\n\n", text).strip("\n")
