"""What the readers of tabular formats share (.xlsx, .csv, a .pptx's tables): the running count of
cells against ``MAX_SHEET_CELLS``, cell values as text, and rows as a :data:`TABLE` block."""

from __future__ import annotations

import datetime
import math
from typing import Any, Sequence

from jobs.document_errors import DocumentTooLarge
from jobs.readers.base import TABLE, Block, CharBudget, clean_text, markdown_row


class CellBudget:
    """The running count of cells read so far, refusing the document (``too_many_cells``) as soon
    as it passes ``limit`` (``Limits.max_sheet_cells``, the setting ``MAX_SHEET_CELLS``).

    Counting what is read, not what a file declares: a worksheet's ``<dimension>`` may claim
    A1:B2 over a million rows, or A1:XFD1048576 over four cells."""

    def __init__(self, limit: int, what: str = "document") -> None:
        self.limit = limit
        self.what = what
        self.used = 0

    def add(self, cells: int, where: str = "") -> None:
        """Count ``cells`` more (an empty row counts as 1, so rows are bounded too); ``where``
        (e.g. ``" at sheet 'Data' row 1,204"``) says where reading stopped.

        Raises:
            DocumentTooLarge: ``too_many_cells`` past the limit, naming ``MAX_SHEET_CELLS``.
        """
        self.used += max(cells, 1)
        if self.used > self.limit:
            stopped = f" (reading stopped{where})" if where else ""
            raise DocumentTooLarge(
                f"The {self.what} has more than {self.limit:,} table cells{stopped}; the limit is {self.limit:,} "
                "(MAX_SHEET_CELLS).",
                code="too_many_cells", setting="MAX_SHEET_CELLS", limit=self.limit,
            )


def cell_text(value: Any) -> str:
    """A cell's value as text: ``""`` for none, dates and times in ISO 8601 (a midnight datetime
    as its date), floats in at most 15 significant digits (``0.1 + 0.2`` → ``"0.3"``, ``3.0`` →
    ``"3"``), booleans as ``TRUE``/``FALSE`` (as a spreadsheet shows them), other values by
    ``str``; cleaned of control characters."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.15g}"
    if isinstance(value, datetime.datetime):
        if value.time() == datetime.time(0) and value.tzinfo is None:
            return value.date().isoformat()
        return value.isoformat()
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    return clean_text(str(value)).strip()


def table_block(rows: Sequence[Sequence[str]], budget: CharBudget, where: str = "", header: bool = True) -> Block:
    """A :data:`TABLE` block of ``rows`` (cells as text; the first row the header row when
    ``header``), each row one Markdown pipe row padded to the widest row, counted against
    ``budget`` (``too_many_chars``)."""
    width = max((len(row) for row in rows), default=0)
    lines = []
    for row in rows:
        line = markdown_row([*row, *[""] * (width - len(row))])
        budget.add(line, where)
        lines.append(line)
    return Block(TABLE, "\n".join(lines), rows=lines, header=header)


def trimmed(row: Sequence[str]) -> list[str]:
    """``row`` without its trailing empty cells."""
    end = len(row)
    while end and not row[end - 1]:
        end -= 1
    return list(row[:end])
