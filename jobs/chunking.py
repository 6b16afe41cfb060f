"""Page-aware chunking: split extracted pages into chunks that fit the embedding model.

Splitting itself is semantic-text-splitter's (paragraphs, then sentences, then words); this
module only maps each chunk back to the pages it came from.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Sequence

from jobs.extract import Page

PAGE_SEPARATOR = "\n\n"


@dataclass
class TextChunk:
    """A chunk of text with the 1-based pages it spans (``None`` for formats without pages)."""

    ordinal: int
    text: str
    page_start: int | None
    page_end: int | None


def chunk_pages(pages: Sequence[Page], max_chars: int, overlap: int = 0) -> list[TextChunk]:
    """Split ``pages`` into chunks of at most ``max_chars`` characters.

    Args:
        pages: extracted pages in order.
        max_chars: upper bound of a chunk's length in characters (see ``CHUNK_SIZE``; ≤ 2048
            keeps every chunk under OpenAI's 8192-token per-input limit).
        overlap: characters shared by neighbouring chunks, less than ``max_chars``.

    Returns:
        Chunks in document order, whitespace-trimmed and never empty; ``[]`` if there is no text.
    """
    from semantic_text_splitter import TextSplitter

    text_parts: list[str] = []
    starts: list[int] = []  # character offset where each page begins in the joined text
    offset = 0
    for page in pages:
        starts.append(offset)
        text_parts.append(page.text)
        offset += len(page.text) + len(PAGE_SEPARATOR)
    text = PAGE_SEPARATOR.join(text_parts)

    splitter = TextSplitter(max_chars, overlap=overlap, trim=True)
    chunks: list[TextChunk] = []
    for start, piece in splitter.chunk_indices(text):
        if not piece.strip():
            continue
        first = bisect.bisect_right(starts, start) - 1
        last = bisect.bisect_right(starts, start + len(piece) - 1) - 1
        chunks.append(
            TextChunk(
                ordinal=len(chunks),
                text=piece,
                page_start=pages[first].number,
                page_end=pages[last].number,
            )
        )
    return chunks
