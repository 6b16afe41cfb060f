"""Excel .xlsx via openpyxl (read-only, cached values), unpacked under the zip limits
(:mod:`jobs.readers.zip_limits`) and bounded by the cells read (``MAX_SHEET_CELLS``)."""

from __future__ import annotations

import warnings

from jobs.document_errors import DocumentError
from jobs.readers.base import HEADING, Block, CharBudget, Extraction, Limits, clean_text, single_page
from jobs.readers.tables import CellBudget, cell_text, table_block, trimmed
from jobs.readers.zip_limits import check_zip, unpack_bounded

KIND = "Excel workbook"


def read_xlsx(data: bytes, limits: Limits, budget: CharBudget) -> Extraction:
    """The text of a workbook, one page ``None``: for each worksheet in the workbook's order, a
    :data:`HEADING` block (level 1) with the sheet's name, then one :data:`TABLE` block of its
    non-empty rows — the first non-empty row its header row, every row padded to the sheet's
    widest row (trailing empty cells dropped), each row one Markdown pipe row. Values are the
    ones the file caches (a formula's last result; ``""`` when it holds none), formatted by
    :func:`jobs.readers.tables.cell_text`. Chart sheets and charts are left out: a chart's data
    are cells of a worksheet, read there.

    Raises:
        DocumentTooLarge: ``decompression_bomb`` (:func:`check_zip`, before anything is unpacked);
            ``too_many_cells`` as soon as more than ``limits.max_sheet_cells`` cells (an empty row
            counts as one) have been read, whatever the sheets' declared dimensions;
            ``too_many_chars``.
        DocumentError: ``damaged_file`` when openpyxl cannot read the workbook, ``no_text`` when
            no sheet holds a value.
    """
    import openpyxl

    check_zip(data, limits, KIND)
    unpacked = unpack_bounded(data, KIND)
    cells = CellBudget(limits.max_sheet_cells, "workbook")
    blocks: list[Block] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # openpyxl warns about features it drops (validation, styles)
            workbook = openpyxl.load_workbook(unpacked, read_only=True, data_only=True)
            try:
                for sheet in workbook.worksheets:
                    blocks.extend(_sheet_blocks(sheet, cells, budget))
            finally:
                workbook.close()
    except DocumentError:
        raise
    except Exception as exc:  # openpyxl raises zipfile, lxml, KeyError and ValueError errors for bad files
        raise DocumentError(f"the {KIND} is damaged and could not be read ({type(exc).__name__}: {exc})",
                            code="damaged_file") from None
    return single_page("\n\n".join(block.text for block in blocks), blocks)


def _sheet_blocks(sheet, cells: CellBudget, budget: CharBudget) -> list[Block]:
    """A sheet's heading and table, or ``[]`` for a sheet without values."""
    name = clean_text(sheet.title).strip()
    # The <dimension> element may lie (declare a million rows, or 16,384 columns): forget it, so
    # each row is as long as the cells it really has, and count what is read.
    sheet.reset_dimensions()
    rows: list[list[str]] = []
    for number, values in enumerate(sheet.iter_rows(values_only=True), start=1):
        cells.add(len(values), f" at sheet {name[:80]!r} row {number:,}")
        row = trimmed([cell_text(value) for value in values])
        if row:
            rows.append(row)
    if not rows:
        return []
    heading = Block(HEADING, name or f"Sheet {sheet.parent.worksheets.index(sheet) + 1}", level=1)
    budget.add(heading.text)
    return [heading, table_block(rows, budget, f" at sheet {name[:80]!r}")]
