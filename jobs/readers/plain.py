"""Plain text and Markdown, decoded with charset-normalizer."""

from __future__ import annotations

from jobs.document_errors import DocumentError
from jobs.readers.base import CharBudget, Extraction, clean_text, single_page


def read_text(data: bytes, budget: CharBudget, markdown: bool = False) -> Extraction:
    """The text of a plain-text or Markdown file, one page ``None``; for Markdown (``markdown``)
    with its headings and pipe tables as blocks (:func:`jobs.readers.markdown.markdown_blocks`).

    Raises:
        DocumentError: ``damaged_file`` when its encoding cannot be recognised, ``no_text``
            when it holds only whitespace.
        DocumentTooLarge: ``too_many_chars``.
    """
    text = clean_text(_decode_text(data))
    budget.add(text)
    if not markdown:
        return single_page(text)
    from jobs.readers.markdown import markdown_blocks

    return single_page(text, markdown_blocks(text))


def _decode_text(data: bytes) -> str:
    import charset_normalizer

    match = charset_normalizer.from_bytes(data).best()
    if match is None:
        raise DocumentError("the text file's character encoding could not be recognised", code="damaged_file")
    return str(match)
