"""HTML via lxml's parser events (:mod:`jobs.html_text`: no tree is built)."""

from __future__ import annotations

from jobs.readers.base import Block, CharBudget, Extraction, clean_text, markdown_row, single_page


def read_html(data: bytes, budget: CharBudget) -> Extraction:
    """The text a reader of the page sees and its headings, tables and paragraphs
    (:func:`jobs.html_text.reader_structure`), each string counted against ``budget`` as it is
    found. A table's rows are Markdown pipe rows, the first (of ``<th>`` or ``<td>`` cells) its
    header.

    Raises:
        DocumentTooLarge: ``too_many_chars`` as soon as the strings pass ``budget``'s limit.
        DocumentError: ``damaged_file`` when lxml refuses the page in every encoding tried.
    """
    from jobs.html_text import reader_structure

    def counted(string: str) -> str:
        string = clean_text(string)
        budget.add(string)
        return string

    text, parts = reader_structure(data, counted, markdown_row)
    blocks = [Block(kind, part, level, rows=rows, header=len(rows) > 1) for kind, level, part, rows in parts]
    return single_page(text, blocks)
