"""Word .docx via python-docx, unpacked under the zip limits (:mod:`jobs.readers.zip_limits`)."""

from __future__ import annotations

import re

from jobs.document_errors import DocumentError
from jobs.readers.base import (
    HEADING, PARAGRAPH, TABLE, Block, CharBudget, Extraction, Limits, clean_text, markdown_row, single_page,
)
from jobs.readers.zip_limits import check_zip, unpack_bounded

# Word's built-in heading styles by name ("Heading 1" … "Heading 9"); "Title" counts as level 1.
_HEADING_STYLE = re.compile(r"heading\s*([1-9])$", re.IGNORECASE)


def read_docx(data: bytes, limits: Limits, budget: CharBudget) -> Extraction:
    """The text of a Word document: paragraphs and tables in document order, one page ``None``.

    The page's text is the paragraphs and the tables' rows (cells joined by tabs), a line each;
    its blocks are headings (a ``Heading N`` or ``Title`` style, or an outline level set on the
    paragraph), paragraphs and tables (Markdown pipe rows, the first row as header; a cell merged
    across columns is written once).

    Raises:
        DocumentTooLarge: ``decompression_bomb`` (:func:`check_zip`), ``too_many_chars``.
        DocumentError: ``damaged_file`` when python-docx cannot read it, ``no_text`` when empty.
    """
    import docx
    from docx.table import Table

    check_zip(data, limits)
    unpacked = unpack_bounded(data)
    try:
        document = docx.Document(unpacked)
    except Exception as exc:  # python-docx raises zipfile, lxml and KeyError errors for bad files
        raise DocumentError(f"the Word document is damaged and could not be opened ({exc})", code="damaged_file") from None
    parts: list[str] = []
    blocks: list[Block] = []
    try:
        for block in document.iter_inner_content():  # paragraphs and tables in document order
            if isinstance(block, Table):
                rows: list[str] = []
                for row in block.rows:
                    cells = _row_cells(row)
                    part = clean_text("\t".join(cell.text for cell in row.cells))
                    budget.add(part, f" at paragraph {len(parts) + 1:,}")
                    parts.append(part)
                    if any(text.strip() for text in cells):
                        rows.append(markdown_row([clean_text(text) for text in cells]))
                if rows:
                    blocks.append(Block(TABLE, "\n".join(rows), rows=rows, header=len(rows) > 1))
            else:
                part = clean_text(block.text)
                budget.add(part, f" at paragraph {len(parts) + 1:,}")
                parts.append(part)
                if part.strip():
                    level = _heading_level(block)
                    blocks.append(Block(HEADING, part.strip(), level) if level else Block(PARAGRAPH, part))
    except DocumentError:
        raise
    except Exception as exc:  # python-docx reads malformed values (a table's grid, a span) lazily
        raise DocumentError(f"the Word document is damaged and could not be read ({type(exc).__name__}: {exc})",
                            code="damaged_file") from None
    return single_page("\n".join(parts), blocks)


def _row_cells(row) -> list[str]:
    """A row's cell texts, a cell merged across columns once (python-docx repeats it per column)."""
    texts: list[str] = []
    previous = None
    for cell in row.cells:
        if previous is not None and cell._tc is previous:  # the same merged <w:tc>
            continue
        previous = cell._tc
        texts.append(cell.text)
    return texts


def _heading_level(paragraph) -> int:
    """The heading level (1 = top) of a paragraph, 0 for body text: from its style's name
    (``Heading N``, ``Title`` → 1), else from an outline level set on the paragraph itself
    (``w:outlineLvl`` 0–8 → 1–9; 9 means body text)."""
    style = paragraph.style
    name = style.name if style is not None and style.name else ""
    match = _HEADING_STYLE.match(name)
    if match:
        return int(match.group(1))
    if name.lower() == "title":
        return 1
    levels = paragraph._p.xpath("./w:pPr/w:outlineLvl/@w:val")
    if levels and levels[0].isdigit() and int(levels[0]) < 9:
        return int(levels[0]) + 1
    return 0
