"""HTML via lxml's parser events (:mod:`jobs.html_text`: no tree is built)."""

from __future__ import annotations

from jobs.readers.base import CharBudget, Extraction, clean_text, single_page


def read_html(data: bytes, budget: CharBudget) -> Extraction:
    """The text a reader of the page sees and its headings, tables and paragraphs
    (:func:`jobs.html_text.reader_structure`), each string counted against ``budget`` as it is
    found.

    Raises:
        DocumentTooLarge: ``too_many_chars`` as soon as the strings pass ``budget``'s limit.
        DocumentError: ``damaged_file`` when lxml refuses the page in every encoding tried.
    """
    from jobs.html_text import reader_structure

    def counted(string: str) -> str:
        string = clean_text(string)
        budget.add(string)
        return string

    return single_page(*reader_structure(data, counted))
