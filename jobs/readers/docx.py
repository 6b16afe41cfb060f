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
_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_W_STYLE_ID, _W_OUTLINE_LEVEL, _W_VAL = _W + "styleId", _W + "outlineLvl", _W + "val"


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
        levels = _style_levels(document)
        for block in document.iter_inner_content():  # paragraphs and tables in document order
            if isinstance(block, Table):
                rows: list[str] = []
                for row in block.rows:
                    texts, cells = _row_cells(row)
                    part = clean_text("\t".join(texts))
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
                    level = _heading_level(block, levels)
                    blocks.append(Block(HEADING, part.strip(), level) if level else Block(PARAGRAPH, part))
    except DocumentError:
        raise
    except Exception as exc:  # python-docx reads malformed values (a table's grid, a span) lazily
        raise DocumentError(f"the Word document is damaged and could not be read ({type(exc).__name__}: {exc})",
                            code="damaged_file") from None
    return single_page("\n".join(parts), blocks)


def _row_cells(row) -> tuple[list[str], list[str]]:
    """A row's cell texts, one per column (python-docx repeats a cell merged across columns), and
    the same with a merged cell once."""
    texts: list[str] = []
    once: list[str] = []
    previous = None
    for cell in row.cells:
        if previous is not None and cell._tc is previous:  # the same merged <w:tc>
            texts.append(texts[-1])
            continue
        previous = cell._tc
        texts.append(cell.text)
        once.append(texts[-1])
    return texts, once


def _style_levels(document) -> dict[str, int]:
    """Heading level of each paragraph style id that makes headings: by name (``Heading N``;
    ``Title`` → 1), else by the outline level its definition sets. Read once: python-docx's
    ``paragraph.style`` looks the style up by an XPath query over all styles (≈ 0.5 ms a
    paragraph on the corpus's Word sample)."""
    levels: dict[str, int] = {}
    for style in document.styles.element.xpath("./w:style[@w:type='paragraph']"):
        style_id = style.get(_W_STYLE_ID)
        names = style.xpath("./w:name/@w:val")
        name = names[0] if names else ""
        match = _HEADING_STYLE.match(name)
        outline = style.xpath("./w:pPr/w:outlineLvl/@w:val")
        if match:
            levels[style_id] = int(match.group(1))
        elif name.lower() == "title":
            levels[style_id] = 1
        elif outline and outline[0].isdigit() and int(outline[0]) < 9:
            levels[style_id] = int(outline[0]) + 1
    return levels


def _heading_level(paragraph, levels: dict[str, int]) -> int:
    """The heading level (1 = top) of a paragraph, 0 for body text: an outline level set on the
    paragraph itself (``w:outlineLvl`` 0–8 → 1–9; 9 means body text), else its style's
    (:func:`_style_levels`)."""
    properties = paragraph._p.pPr
    outline = properties.find(_W_OUTLINE_LEVEL) if properties is not None else None
    value = outline.get(_W_VAL, "") if outline is not None else ""
    if value.isdigit():
        return int(value) + 1 if int(value) < 9 else 0
    return levels.get(paragraph._p.style, 0) if levels else 0
