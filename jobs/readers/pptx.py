"""PowerPoint .pptx via python-pptx, unpacked under the zip limits
(:mod:`jobs.readers.zip_limits`); one page per slide."""

from __future__ import annotations

from jobs.document_errors import DocumentError, DocumentTooLarge
from jobs.readers.base import HEADING, PARAGRAPH, Block, CharBudget, Extraction, Limits, Page, clean_text
from jobs.readers.tables import CellBudget, cell_text, table_block
from jobs.readers.zip_limits import check_zip, unpack_bounded

KIND = "PowerPoint presentation"
_A = "{http://schemas.openxmlformats.org/drawingml/2006/main}"
# Group shapes nested deeper than this are not read (PowerPoint itself nests a few levels).
_MAX_GROUP_DEPTH = 32


def read_pptx(data: bytes, limits: Limits, budget: CharBudget) -> Extraction:
    """The text of a presentation, one :class:`Page` per slide (``number`` = slide number,
    ``page_count`` = slides), each with its blocks in this order:

    - the title placeholder's text as a :data:`HEADING` (level 1);
    - every other shape in the slide's order (group shapes opened, up to 32 deep): a text frame
      as a :data:`PARAGRAPH` of its lines, list items as ``- item`` (bullets) or ``1. item``
      (numbered), indented two spaces per level; a table as a :data:`TABLE` (its first row the
      header row when the table marks it so; a merged cell's text repeated in each cell it
      spans, so each row stands whole); a chart's data, when the file caches it, as a paragraph
      ``Chart: <title>`` and a table of one row per category and one column per series;
    - the speaker notes as a paragraph ``Notes: …``.

    Raises:
        DocumentTooLarge: ``decompression_bomb`` (:func:`check_zip`, before anything is
            unpacked); ``too_many_pages`` for more than ``limits.max_pages`` slides
            (``MAX_PDF_PAGES``), before any slide is read; ``too_many_cells`` when its tables and
            charts hold more than ``limits.max_sheet_cells`` cells; ``too_many_chars``.
        DocumentError: ``damaged_file`` when python-pptx cannot read it, ``no_text`` when no
            slide holds text.
    """
    import pptx

    check_zip(data, limits, KIND)
    unpacked = unpack_bounded(data, KIND)
    cells = CellBudget(limits.max_sheet_cells, "presentation")
    pages: list[Page] = []
    try:
        presentation = pptx.Presentation(unpacked)
        slides = presentation.slides
        if len(slides) > limits.max_pages:
            raise DocumentTooLarge(
                f"The presentation has {len(slides):,} slides; the limit is {limits.max_pages:,} (MAX_PDF_PAGES).",
                code="too_many_pages", setting="MAX_PDF_PAGES", limit=limits.max_pages,
            )
        for number, slide in enumerate(slides, start=1):
            blocks = _slide_blocks(slide, number, cells, budget)
            pages.append(Page(number, "\n\n".join(block.text for block in blocks), blocks))
    except DocumentError:
        raise
    except Exception as exc:  # python-pptx raises zipfile, lxml, KeyError and ValueError errors for bad files
        raise DocumentError(f"the {KIND} is damaged and could not be read ({type(exc).__name__}: {exc})",
                            code="damaged_file") from None
    if not any(page.text.strip() for page in pages):
        raise DocumentError("the presentation contains no text", code="no_text")
    return Extraction(pages=pages, page_count=len(pages))


def _slide_blocks(slide, number: int, cells: CellBudget, budget: CharBudget) -> list[Block]:
    where = f" at slide {number:,}"
    blocks: list[Block] = []

    def add(kind: str, text: str, level: int = 0) -> None:
        text = clean_text(text).strip()
        if text:
            budget.add(text, where)
            blocks.append(Block(kind, text, level=level))

    title = slide.shapes.title
    if title is not None and title.has_text_frame:
        add(HEADING, " ".join(title.text_frame.text.split()), level=1)
    for shape in _shapes(slide.shapes):
        if title is not None and shape.shape_id == title.shape_id:
            continue
        if getattr(shape, "has_table", False) and shape.has_table:
            rows = _table_rows(shape.table, cells, where)
            if any(any(row) for row in rows):
                blocks.append(table_block(rows, budget, where, header=bool(shape.table.first_row)))
        elif getattr(shape, "has_chart", False) and shape.has_chart:
            blocks.extend(_chart_blocks(shape.chart, cells, budget, where))
        elif getattr(shape, "has_text_frame", False) and shape.has_text_frame:
            add(PARAGRAPH, _frame_text(shape))
    if slide.has_notes_slide:
        notes = slide.notes_slide.notes_text_frame
        if notes is not None and notes.text.strip():
            add(PARAGRAPH, "Notes: " + notes.text)
    return blocks


def _shapes(shapes, depth: int = 0):
    """The shapes of a slide in its order, group shapes replaced by their members."""
    from pptx.enum.shapes import MSO_SHAPE_TYPE

    for shape in shapes:
        if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
            if depth < _MAX_GROUP_DEPTH:
                yield from _shapes(shape.shapes, depth + 1)
        else:
            yield shape


def _frame_text(shape) -> str:
    """A text frame's lines: list items marked ``- `` or ``N. ``, indented by level. A body or
    content placeholder's paragraphs are bullets unless they say ``buNone`` (the master's
    default); a text box's only when they carry ``buChar`` / ``buAutoNum``."""
    from pptx.enum.shapes import PP_PLACEHOLDER

    bulleted = False
    if shape.is_placeholder:
        try:
            bulleted = shape.placeholder_format.type in (PP_PLACEHOLDER.BODY, PP_PLACEHOLDER.OBJECT)
        except ValueError:
            bulleted = False
    lines: list[str] = []
    numbers: dict[int, int] = {}
    for paragraph in shape.text_frame.paragraphs:
        text = " ".join(paragraph.text.split())
        if not text:
            continue
        level = paragraph.level
        properties = paragraph._p.pPr  # python-pptx has no public API for a paragraph's bullet
        marker = ""
        if properties is not None and properties.find(f"{_A}buAutoNum") is not None:
            numbers[level] = numbers.get(level, 0) + 1
            marker = f"{numbers[level]}. "
        else:
            numbers.pop(level, None)
            if properties is not None and properties.find(f"{_A}buChar") is not None:
                marker = "- "
            elif bulleted and (properties is None or properties.find(f"{_A}buNone") is None):
                marker = "- "
        lines.append("  " * level + marker + text)
    return "\n".join(lines)


def _table_rows(table, cells: CellBudget, where: str) -> list[list[str]]:
    """A table's cells as text, row by row; a cell that a merged cell spans repeats its text."""
    grid: list[list[str]] = []
    origins: dict[tuple[int, int], str] = {}
    for r, row in enumerate(table.rows):
        texts: list[str] = []
        cells.add(len(row.cells), where)
        for c, cell in enumerate(row.cells):
            if cell.is_spanned:
                texts.append(origins.get((r, c), ""))
                continue
            text = " ".join(cell.text.split())
            texts.append(text)
            if cell.is_merge_origin:
                for dr in range(cell.span_height):
                    for dc in range(cell.span_width):
                        origins[(r + dr, c + dc)] = text
        grid.append(texts)
    return grid


def _chart_blocks(chart, cells: CellBudget, budget: CharBudget, where: str) -> list[Block]:
    """A chart's title and cached data; ``[]`` when the file holds none or python-pptx cannot
    read them (a chart is an image of data: losing it is not losing the slide's text)."""
    try:
        title = chart.chart_title.text_frame.text if chart.has_title else ""
        header = [""]
        columns: list[list[str]] = []
        categories: list[str] = []
        for plot in chart.plots:
            if not categories:
                categories = [cell_text(label) for label in plot.categories]
            for series in plot.series:
                header.append(series.name or "")
                values = list(series.values)
                cells.add(len(values), where)
                columns.append([cell_text(value) for value in values])
    except (ValueError, KeyError, AttributeError, TypeError, NotImplementedError):
        return []
    if not columns:
        return []
    length = max(len(categories), *(len(column) for column in columns))
    categories += [str(n) for n in range(len(categories) + 1, length + 1)]
    rows = [header] + [[categories[i]] + [column[i] if i < len(column) else "" for column in columns]
                       for i in range(length)]
    label = clean_text(" ".join(title.split())) if title else ""
    caption = Block(PARAGRAPH, f"Chart: {label}" if label else "Chart:")
    budget.add(caption.text, where)
    return [caption, table_block(rows, budget, where)]
