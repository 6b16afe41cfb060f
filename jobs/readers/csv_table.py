"""CSV (and TSV, or any of ``, ; \\t |`` as the delimiter) via the csv module, decoded with
charset-normalizer, bounded by the cells read (``MAX_SHEET_CELLS``)."""

from __future__ import annotations

import csv
import io

from jobs.document_errors import DocumentError
from jobs.readers.base import CharBudget, Extraction, Limits, clean_text, single_page
from jobs.readers.tables import CellBudget, table_block, trimmed
from webapp.core import filetypes

# Characters of the text the dialect is sniffed from (filetypes.csv_dialect reads its first 50 lines).
_SNIFF_CHARS = 64 * 1024


def read_csv(data: bytes, limits: Limits, budget: CharBudget) -> Extraction:
    """The rows of a CSV file as one :data:`TABLE` block on one page ``None``: the first
    non-empty row is the header row, every row one Markdown pipe row (quoted line breaks become
    spaces), padded to the widest row; empty rows are left out.

    The delimiter and quoting are :class:`csv.Sniffer`'s (:func:`webapp.core.filetypes.csv_dialect`);
    a file it finds no columns in is read as comma-separated.

    Raises:
        DocumentTooLarge: ``too_many_cells`` as soon as more than ``limits.max_sheet_cells``
            cells (an empty row counts as one) have been read; ``too_many_chars``.
        DocumentError: ``damaged_file`` when the encoding cannot be recognised or a row cannot
            be parsed (a field over the csv module's 128 KB), ``no_text`` when it holds no value.
    """
    import charset_normalizer

    match = charset_normalizer.from_bytes(data).best()
    if match is None:
        raise DocumentError("the CSV file's character encoding could not be recognised", code="damaged_file")
    text = str(match).removeprefix("\ufeff")
    dialect = filetypes.csv_dialect(text[:_SNIFF_CHARS], cut=len(text) > _SNIFF_CHARS) or csv.excel
    cells = CellBudget(limits.max_sheet_cells, "CSV file")
    rows: list[list[str]] = []
    reader = csv.reader(io.StringIO(text), dialect)
    try:
        for row in reader:
            cells.add(len(row), f" at line {reader.line_num:,}")
            row = trimmed([clean_text(cell).strip() for cell in row])
            if row:
                rows.append(row)
    except csv.Error as exc:
        raise DocumentError(f"the CSV file could not be read at line {reader.line_num:,} ({exc})",
                            code="damaged_file") from None
    if not rows:
        raise DocumentError("the document contains no text", code="no_text")
    block = table_block(rows, budget)
    return single_page(block.text, [block])
