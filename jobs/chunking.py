"""Page-aware chunking: split extracted pages into chunks that fit the embedding model.

Splitting itself is semantic-text-splitter's (paragraphs, then sentences, then words); this
module hands it the text in windows of bounded length and maps each chunk back to the pages it
came from.

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
from jobs.extract import Page, count_chars

PAGE_SEPARATOR = "\n\n"
# Characters per window handed to the splitter, in chunks (× max_chars): 24,000 at CHUNK_SIZE 1500.
WINDOW_CHUNKS = 16
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
    """Split ``pages`` into chunks of at most ``max_chars`` characters.

    Args:
        pages: extracted pages in order.
        max_chars: upper bound of a chunk's length in characters (see ``CHUNK_SIZE``; ≤ 2048
            keeps every chunk under OpenAI's 8192-token per-input limit).
        overlap: characters shared by neighbouring chunks, less than ``max_chars``.
        max_chunks: most chunks the document may make (``MAX_DOCUMENT_CHUNKS``); ``None``: no limit.

    Returns:
        Chunks in document order, whitespace-trimmed and never empty; ``[]`` if there is no text.

    Raises:
        DocumentTooLarge: ``too_many_chunks`` when the document makes more than ``max_chunks``
            chunks — before splitting when its non-whitespace characters alone need more
            (a chunk holds at most ``max_chars``), else as soon as the windows split so far
            make more.
    """
    from semantic_text_splitter import TextSplitter

    if max_chunks is not None:
        at_least = -(-sum(count_chars(page.text) for page in pages) // max_chars)
        if at_least > max_chunks:
            raise _too_many_chunks(f"would make at least {at_least:,}", max_chars, max_chunks)

    text_parts: list[str] = []
    starts: list[int] = []  # character offset where each page begins in the joined text
    offset = 0
    for page in pages:
        starts.append(offset)
        text_parts.append(page.text)
        offset += len(page.text) + len(PAGE_SEPARATOR)
    text = PAGE_SEPARATOR.join(text_parts)

    splitter = TextSplitter(max_chars, overlap=overlap, trim=True)
    pieces: list[tuple[int, str]] = []
    for offset, window in windows(text, WINDOW_CHUNKS * max_chars):
        pieces.extend((offset + start, piece) for start, piece in splitter.chunk_indices(window) if piece.strip())
        if max_chunks is not None and len(pieces) > max_chunks:
            last = offset + len(window) == len(text)
            raise _too_many_chunks(f"makes {len(pieces):,}" if last else f"makes more than {max_chunks:,}",
                                   max_chars, max_chunks)
    chunks: list[TextChunk] = []
    for start, piece in pieces:
        first = bisect.bisect_right(starts, start) - 1
        last = bisect.bisect_right(starts, start + len(piece) - 1) - 1
        chunks.append(
            TextChunk(
                ordinal=len(chunks),
                text=piece,
                page_start=pages[first].number,
                page_end=pages[last].number,
                ocr_confidence=_ocr_confidence(pages[first:last + 1]),
            )
        )
    return chunks


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
