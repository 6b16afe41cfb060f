"""Page- and section-aware chunking: split extracted pages into chunks that fit the embedding
model, each with the heading path of its section, tables cut between rows only.

Splitting itself is semantic-text-splitter's (paragraphs, then sentences, then words); this
module reads the pages' blocks (headings, paragraphs, tables) into sections (see
:func:`chunk_pages`), hands the splitter each section's text in windows of bounded length, and
maps each chunk back to the pages and sections it came from.

Why windows: semantic-text-splitter 0.33 takes time proportional to (length)² / capacity on text
whose paragraph or line structure does not bound its search — one line of 1,000,000 CJK
characters took ≈170 s, 2,000,000 one-character lines 45 s (upstream: benbrandt/text-splitter
issue #1177). Windows of at most ``WINDOW_CHUNKS`` chunks' worth of characters, cut at a blank
line, a line break or a space when there is one, keep the cost linear; a chunk never spans two
windows, which for ordinary text moves at most one chunk boundary per window.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from jobs.document_errors import DocumentTooLarge
from jobs.extract import HEADING, TABLE, Block, Page, count_chars

PAGE_SEPARATOR = "\n\n"
# Characters per window handed to the splitter, in chunks (× max_chars): 24,000 at CHUNK_SIZE 1500.
WINDOW_CHUNKS = 16
# A section of at least this share of CHUNK_SIZE (heading included) is chunked on its own; smaller
# ones join the sections after them (see chunk_pages).
MIN_SECTION_SHARE = 0.5
_LAST_SPACE = re.compile(r".*\s", re.DOTALL)


@dataclass
class TextChunk:
    """A chunk of text with the 1-based pages it spans (``None`` for formats without pages).

    Attributes:
        headings: the heading path of the section it belongs to, outermost first
            (``["4 Retention", "4.2 Deleting documents"]``); empty when the document has none.
        ocr_confidence: the mean OCR confidence (0–1) of the OCR'd pages it spans; ``None``
            when none of its text was read by OCR.
    """

    ordinal: int
    text: str
    page_start: int | None
    page_end: int | None
    headings: list[str] = field(default_factory=list)
    ocr_confidence: float | None = None

    @property
    def ocr(self) -> bool:
        """Whether some of its text was read by OCR."""
        return self.ocr_confidence is not None


def embedding_text(chunk: TextChunk) -> str:
    """What is embedded for ``chunk``: its heading path as a contextual header line
    (``"4 Retention > 4.2 Deleting documents"``), a blank line, then its text; its text alone when
    it has no headings. The stored chunk text stays the document's own text."""
    if not chunk.headings:
        return chunk.text
    return " > ".join(chunk.headings) + "\n\n" + chunk.text


def chunk_pages(pages: Sequence[Page], max_chars: int, overlap: int = 0,
                max_chunks: int | None = None) -> list[TextChunk]:
    """Split ``pages`` into chunks of at most ``max_chars`` characters, section by section.

    The pages' blocks (:meth:`Page.structure`) are read in order, across pages, keeping a stack of
    the headings seen (a heading pops those of its level and deeper). A heading starts a section;
    a section of at least ``MIN_SECTION_SHARE`` × ``max_chars`` characters (its heading included)
    is chunked on its own, so no chunk crosses its boundaries; smaller sections join the sections
    after them until together they are that large (the last ones of a document stay apart). Each
    chunk's ``headings`` is the heading path its text shares: the common prefix of the paths of
    the sections it holds text of.

    Within a section, consecutive headings and paragraphs (even across pages) are one text split
    by semantic-text-splitter in windows (see the module docstring); a table is cut between rows
    only, its header row repeated at the top of each chunk of it; a single row longer than a chunk
    is split by the splitter. Pieces smaller than a chunk (a short table, the text after it) share
    a chunk while they fit, joined by a blank line. Text without any heading or table is chunked
    exactly as one unstructured text.

    Args:
        pages: extracted pages in order.
        max_chars: upper bound of a chunk's length in characters (see ``CHUNK_SIZE``; ≤ 2048
            keeps every chunk under OpenAI's 8192-token per-input limit).
        overlap: characters shared by neighbouring chunks of the same text, less than ``max_chars``
            (none across a table or a section boundary).
        max_chunks: most chunks the document may make (``MAX_DOCUMENT_CHUNKS``); ``None``: no limit.

    Returns:
        Chunks in document order, whitespace-trimmed and never empty; ``[]`` if there is no text.

    Raises:
        DocumentTooLarge: ``too_many_chunks`` when the document makes more than ``max_chunks``
            chunks — before splitting when its non-whitespace characters alone need more
            (a chunk holds at most ``max_chars``), else as soon as the chunks made so far are more.
    """
    if max_chunks is not None:
        at_least = -(-sum(count_chars(page.text) for page in pages) // max_chars)
        if at_least > max_chunks:
            raise _too_many_chunks(f"would make at least {at_least:,}", max_chars, max_chunks)
    builder = _Builder(pages, max_chars, overlap, max_chunks)
    groups = list(_groups(pages, max_chars))
    for number, group in enumerate(groups):
        builder.add_group(group, last=number == len(groups) - 1)
    builder.check(more_to_come=False)
    return builder.chunks


@dataclass
class _Item:
    """A piece of a section: a heading's or paragraph's text, or a table (``table`` set)."""

    text: str
    page: int  # index into pages
    section: int  # index into the document's section paths
    heading: bool = False
    table: Block | None = None


def _groups(pages: Sequence[Page], max_chars: int) -> Iterator[tuple[list[list[str]], list[_Item]]]:
    """The document's sections as groups chunked apart: ``(paths, items)`` where ``paths`` are the
    heading paths of all sections so far (indexed by ``_Item.section``) and ``items`` the group's
    pieces in order."""
    least = int(MIN_SECTION_SHARE * max_chars)
    stack: list[tuple[int, str]] = []
    paths: list[list[str]] = [[]]
    items: list[_Item] = []
    size = 0  # characters of the group so far
    for index, page in enumerate(pages):
        for block in page.structure():
            if block.kind == HEADING:
                title = " ".join(block.text.split())
                if not title:
                    continue
                if size >= least:
                    yield paths, items
                    items, size = [], 0
                while stack and stack[-1][0] >= block.level:
                    stack.pop()
                stack.append((block.level, title))
                paths.append([heading for _, heading in stack])
            if block.kind == TABLE and block.rows:
                items.append(_Item(block.text, index, len(paths) - 1, table=block))
            elif block.text.strip():
                items.append(_Item(block.text, index, len(paths) - 1, heading=block.kind == HEADING))
            else:
                continue
            size += len(block.text)
    if items:
        yield paths, items


class _Builder:
    """Chunks made so far, and the pending one that small pieces are packed into."""

    def __init__(self, pages: Sequence[Page], max_chars: int, overlap: int, max_chunks: int | None) -> None:
        from semantic_text_splitter import TextSplitter

        self.pages, self.max_chars, self.overlap, self.max_chunks = pages, max_chars, overlap, max_chunks
        self.splitter = TextSplitter(max_chars, overlap=overlap, trim=True)
        self._splitters: dict[int, object] = {}
        self.chunks: list[TextChunk] = []
        self.paths: list[list[str]] = []
        self._reset()

    def _reset(self) -> None:
        self.parts: list[str] = []
        self.length = 0
        self.first = self.last = (0, 0)  # (page index, section index) of the pending chunk's ends
        self.low_page, self.high_page, self.low_section, self.high_section = None, None, None, None

    def _fits(self, text: str) -> bool:
        return self.length + (len(PAGE_SEPARATOR) if self.parts else 0) + len(text) <= self.max_chars

    def _append(self, text: str, pages: tuple[int, int], sections: tuple[int, int]) -> None:
        self.parts.append(text)
        self.length += len(text) + (len(PAGE_SEPARATOR) if len(self.parts) > 1 else 0)
        self.low_page = pages[0] if self.low_page is None else min(self.low_page, pages[0])
        self.high_page = pages[1] if self.high_page is None else max(self.high_page, pages[1])
        self.low_section = sections[0] if self.low_section is None else min(self.low_section, sections[0])
        self.high_section = sections[1] if self.high_section is None else max(self.high_section, sections[1])

    def flush(self) -> None:
        """Make the pending pieces a chunk (nothing when there are none)."""
        text = PAGE_SEPARATOR.join(self.parts).strip()
        if text:
            paths = self.paths[self.low_section:self.high_section + 1]
            headings = list(paths[0])
            for path in paths[1:]:
                common = 0
                while common < min(len(headings), len(path)) and headings[common] == path[common]:
                    common += 1
                del headings[common:]
            spanned = self.pages[self.low_page:self.high_page + 1]
            self.chunks.append(TextChunk(
                ordinal=len(self.chunks), text=text, page_start=spanned[0].number, page_end=spanned[-1].number,
                headings=headings, ocr_confidence=_ocr_confidence(spanned),
            ))
            self.check()
        self._reset()

    def check(self, more_to_come: bool = True, pending: int = 0) -> None:
        """Raise ``too_many_chunks`` when the chunks made (and ``pending`` ones about to be) are
        more than ``max_chunks``: "makes more than" while ``more_to_come``, else their number."""
        made = len(self.chunks) + pending
        if self.max_chunks is not None and made > self.max_chunks:
            raise _too_many_chunks(f"makes more than {self.max_chunks:,}" if more_to_come else f"makes {made:,}",
                                   self.max_chars, self.max_chunks)

    def add_group(self, group: tuple[list[list[str]], list[_Item]], last: bool) -> None:
        """Chunk one group of sections (``last``: the document's last): nothing of it shares a
        chunk with another group."""
        self.paths, items = group
        run: list[_Item] = []
        for item in items:
            if item.table is None:
                run.append(item)
                continue
            self._add_text(run, final=False)
            run = []
            self._add_table(item)
        self._add_text(run, final=last)
        self.flush()

    def _add_text(self, run: list[_Item], final: bool) -> None:
        if not run:
            return
        text = PAGE_SEPARATOR.join(item.text for item in run)
        pages = (run[0].page, run[-1].page)
        sections = (run[0].section, run[-1].section)
        if self._fits(text.strip()):
            self._append(text.strip(), pages, sections)
            return
        self.flush()
        starts: list[int] = []
        offset = 0
        for item in run:
            starts.append(offset)
            offset += len(item.text) + len(PAGE_SEPARATOR)
        # Room for headings: the splitter would cut a heading off its text when the text is too
        # long to share its chunk; its chunks leave room for the longest run of headings, which
        # joins the chunk after it.
        room = min(_headings_length(run), self.max_chars // 4)
        splitter = self._splitter(self.max_chars - room)
        pieces: list[tuple[int, str]] = []
        for offset, window in windows(text, WINDOW_CHUNKS * self.max_chars):
            if not window.isspace():  # the splitter takes seconds over long whitespace
                pieces.extend((offset + start, piece) for start, piece in splitter.chunk_indices(window) if piece.strip())
            # A document of too many chunks stops at the window that makes one more than allowed.
            self.check(more_to_come=not final or offset + len(window) < len(text), pending=len(pieces))

        def put(start: int, end: int, piece: str) -> None:
            first = run[bisect.bisect_right(starts, start) - 1]
            last = run[bisect.bisect_right(starts, end - 1) - 1]
            self._append(piece, (first.page, last.page), (first.section, last.section))

        held: tuple[int, int] | None = None  # headings that end a piece, waiting for the next one
        for number, (start, piece) in enumerate(pieces):
            end = start + len(piece)
            if held is not None:
                joined = text[held[0]:end].strip()
                if len(joined) <= self.max_chars:
                    start, piece = held[0], joined
                else:
                    put(*held, text[held[0]:held[1]].strip())
                    self.flush()
                held = None
            if room and number < len(pieces) - 1:
                first = bisect.bisect_right(starts, start) - 1
                last = bisect.bisect_right(starts, end - 1) - 1
                while last >= first and run[last].heading:
                    last -= 1
                if last < bisect.bisect_right(starts, end - 1) - 1:  # the piece ends with headings
                    cut = max(start, starts[last + 1])
                    held = (cut, end)
                    if text[start:cut].strip():
                        put(start, cut, text[start:cut].strip())
                        self.flush()
                    continue
            put(start, end, piece)
            if number < len(pieces) - 1:
                self.flush()  # the last piece stays pending: a short table or text may join it

    def _splitter(self, capacity: int):
        if capacity == self.max_chars:
            return self.splitter
        if capacity not in self._splitters:
            self._splitters[capacity] = type(self.splitter)(capacity, overlap=min(self.overlap, capacity - 1), trim=True)
        return self._splitters[capacity]

    def _add_table(self, item: _Item) -> None:
        block = item.table
        at = ((item.page, item.page), (item.section, item.section))
        if self._fits(block.text):
            self._append(block.text, *at)
            return
        header = block.rows[0] if block.header and len(block.rows) > 1 else None
        if header is not None and len(header) + 1 > self.max_chars // 2:
            header = None  # a header row that long is chunked as a row of its own, not repeated
        body = block.rows[1:] if header is not None else block.rows
        rows: list[str] = []  # the pending chunk's rows of this table

        def close() -> None:
            if rows:
                self._append("\n".join(([header] if header is not None else []) + rows), *at)
            self.flush()
            rows.clear()

        with_header = len(header) + 1 if header is not None else 0
        for row in body:
            if with_header + len(row) > self.max_chars:  # a row longer than a chunk: split it
                close()
                room = self.max_chars - with_header  # at least half a chunk (see header above)
                prefix = header + "\n" if header is not None else ""
                splitter = type(self.splitter)(room, trim=True)
                for _, piece in _split(splitter, row, WINDOW_CHUNKS * room):
                    self._append(prefix + piece, *at)
                    self.flush()
                continue
            length = with_header + sum(len(r) + 1 for r in rows) + len(row)  # the table's part with it
            if self.length + (len(PAGE_SEPARATOR) if self.parts else 0) + length <= self.max_chars:
                rows.append(row)
                continue
            close()
            rows.append(row)
        if rows:
            self._append("\n".join(([header] if header is not None else []) + rows), *at)


def _headings_length(run: list[_Item]) -> int:
    """Characters of the longest run of consecutive headings in ``run``, joined by blank lines
    (0 when it has none)."""
    longest = length = 0
    for item in run:
        length = length + len(item.text) + len(PAGE_SEPARATOR) if item.heading else 0
        longest = max(longest, length)
    return longest


def _split(splitter, text: str, window: int) -> Iterator[tuple[int, str]]:
    """``(offset, piece)`` of ``text`` split by ``splitter`` in windows of ``window`` characters,
    skipping windows that hold only whitespace (the splitter takes seconds over long whitespace)."""
    for offset, part in windows(text, window):
        if part.isspace():
            continue
        for start, piece in splitter.chunk_indices(part):
            if piece.strip():
                yield offset + start, piece


def _ocr_confidence(pages: Sequence[Page]) -> float | None:
    confidences = [page.ocr_confidence for page in pages if page.ocr_confidence is not None]
    return sum(confidences) / len(confidences) if confidences else None


def windows(text: str, size: int) -> Iterator[tuple[int, str]]:
    """Cut ``text`` into consecutive windows of at most ``size`` characters (``size`` ≥ 2).

    Each window ends, when ``text`` goes on, at the last blank line in its second half, else the
    last line break, else the last whitespace character, else after exactly ``size`` characters
    (one unbroken run: a hard cut).

    Yields:
        ``(offset, window)`` pairs whose windows, joined, are ``text``.
    """
    start = 0
    while len(text) - start > size:
        half, end = start + size // 2, start + size
        cut = text.rfind("\n\n", half, end)
        if cut >= 0:
            cut += 2
        else:
            cut = text.rfind("\n", half, end)
            if cut >= 0:
                cut += 1
            else:
                space = _LAST_SPACE.match(text, half, end)
                cut = space.end() if space else end
        yield start, text[start:cut]
        start = cut
    if start < len(text) or not text:
        yield start, text[start:]


def _too_many_chunks(makes: str, max_chars: int, max_chunks: int) -> DocumentTooLarge:
    return DocumentTooLarge(
        f"The document {makes} chunks of at most {max_chars:,} characters; the limit is {max_chunks:,} "
        "(MAX_DOCUMENT_CHUNKS).",
        code="too_many_chunks", setting="MAX_DOCUMENT_CHUNKS", limit=max_chunks,
    )
