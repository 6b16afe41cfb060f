"""The structure of a PDF's pages: headings from its outline (bookmarks) or, without one, from
font sizes, and tables found by pdfplumber, as blocks of :class:`~jobs.readers.base.Page`.

:class:`PdfStructure` is fed each page as :func:`jobs.readers.pdf.read_pdf` reads it
(:meth:`PdfStructure.read_page`) and sets every page's blocks at the end
(:meth:`PdfStructure.finish`): headings found by font size need the whole document's body size.
A page's ``text`` is never changed; its blocks hold the same text cut at headings and tables.

Headings:
    * From the outline (``FPDFBookmark``, pypdfium2's ``get_toc``): each entry's title is a
      heading of its depth on its destination page, placed at the line that shows the title, or
      at the top of the page when no line does.
    * Without an outline, from font sizes: a horizontal line of at most ``_MAX_HEADING_CHARS``
      characters whose font size (at its middle character) is at least ``_HEADING_RATIO`` ×
      the body size (the size most characters of the document have) is a heading, levels by
      size, largest first; so is a bold line at the body size that reads as a numbered section
      title (``"3.2 Results"``), a level per number below those. Lines repeated on more than a
      fifth of the pages (running heads) and lines without letters are not headings; when more
      than ``_MAX_HEADING_SHARE`` of the characters are in large lines, none of them is (a poster,
      slides). Precision on the corpus: README, "Headings, tables and sections".

Tables (``PDF_TABLES=auto``, off by default): pdfplumber's ``find_tables`` (ruling lines) on
pages where PDFium shows at least three long horizontal and three long vertical rules. Each
table becomes a TABLE block of Markdown pipe rows (its first row as header) at its place; the
page's text above, beside and below it stays paragraphs. pdfplumber (pdfminer.six) parses the
page again in Python: ≈ 0.2 s per ruled page, and the rule count itself walks every page object,
which doubled the reading time of a text-only PDF (geotopo-117p-de.pdf), hence the setting.
Any pdfplumber error leaves the page without tables.
"""

from __future__ import annotations

import ctypes
import io
import re
from collections import Counter
from typing import Any

from jobs.readers.base import HEADING, PARAGRAPH, TABLE, Block, Page, clean_text, markdown_row

_HEADING_RATIO = 1.2
_MAX_HEADING_CHARS = 120
_MAX_HEADING_SHARE = 0.2
_MAX_LEVEL = 6
_LETTER = re.compile(r"[^\W\d_]{2}")
# A numbered section title in bold at the body's size ("3.2 Results"): a heading of its depth.
_NUMBERED = re.compile(r"((?:\d{1,2}\.)*\d{1,2})\.?\s+[^\W\d_][^.;]{1,70}$")


def _normal(text: str) -> str:
    return " ".join(text.split())


class PdfStructure:
    """Headings and tables of one PDF being read page by page.

    Args:
        pdf: the open ``pypdfium2.PdfDocument``.
        data: the file's bytes (pdfplumber opens them again when a page may hold a table).
        password: the password the PDF was opened with, if any.
        tables: whether to look for tables (``PDF_TABLES=auto``).
    """

    def __init__(self, pdf: Any, data: bytes, password: str | None, tables: bool) -> None:
        self.data, self.password, self.tables = data, password, tables
        self.outline: dict[int, list[tuple[int, str]]] = {}
        try:
            for bookmark in pdf.get_toc(max_depth=_MAX_LEVEL * 2):
                dest = bookmark.get_dest()
                title = _normal(clean_text(bookmark.get_title() or ""))
                index = dest.get_index() if dest is not None else None
                if title and index is not None:
                    self.outline.setdefault(index, []).append((min(bookmark.level + 1, _MAX_LEVEL), title))
        except Exception:  # a damaged outline: no headings from it
            self.outline = {}
        self.sizes: Counter[float] = Counter()  # font size (½ pt) → characters, over the document
        self.lines: dict[int, list[tuple[str, float, bool]]] = {}  # page → short lines: size, bold
        self.regions: dict[int, list[tuple[str, Any]]] = {}  # page → ("text", str) / ("table", rows)
        self._plumber: Any = None

    @classmethod
    def restored(cls, outline: dict[int, list[tuple[int, str]]], sizes: dict[float, int],
                 lines: dict[int, list[tuple[str, float, bool]]],
                 regions: dict[int, list[tuple[str, Any]]]) -> "PdfStructure":
        """A structure from notes taken by earlier ones (page-range parts read apart; keys are
        indices into the pages :meth:`finish` gets), ready for :meth:`finish`. ``sizes`` in the
        order first seen: the body size is the most common, the first seen among equals."""
        structure = cls.__new__(cls)
        structure.data, structure.password, structure.tables = b"", None, False
        structure.outline = dict(outline)
        structure.sizes = Counter(sizes)
        structure.lines, structure.regions = dict(lines), dict(regions)
        structure._plumber = None
        return structure

    def read_page(self, index: int, page: Any, textpage: Any) -> None:
        """Note what page ``index`` (0-based; ``page``, ``textpage`` open pypdfium2 objects) needs
        for :meth:`finish`: its short lines' font sizes when there is no outline, its tables."""
        if not self.outline:
            self._measure_lines(index, textpage)
        if self.tables and _ruled(page):
            regions = self._table_regions(index, page, textpage)
            if regions:
                self.regions[index] = regions

    def _measure_lines(self, index: int, textpage: Any) -> None:
        import pypdfium2.raw as pdfium_c

        text = textpage.get_text_range()  # its offsets are PDFium's character indices
        raw = textpage.raw
        lines: list[tuple[str, float, bool]] = []
        start = 0
        while start < len(text):
            end = text.find("\n", start)
            end = len(text) if end < 0 else end
            line = text[start:end].strip()
            if line:
                middle = (start + end) // 2
                size = round(pdfium_c.FPDFText_GetFontSize(raw, middle) * 2) / 2
                self.sizes[size] += len(line)
                # Rotated text (an arXiv stamp in the margin) is no heading.
                if len(line) <= _MAX_HEADING_CHARS and pdfium_c.FPDFText_GetCharAngle(raw, middle) == 0:
                    line = _normal(clean_text(line))
                    bold = _NUMBERED.match(line) is not None and pdfium_c.FPDFText_GetFontWeight(raw, middle) >= 600
                    lines.append((line, size, bold))
            start = end + 1
        self.lines[index] = lines

    def _table_regions(self, index: int, page: Any, textpage: Any) -> list[tuple[str, Any]] | None:
        if page.get_rotation():
            return None
        try:
            if self._plumber is None:
                import pdfplumber

                self._plumber = pdfplumber.open(io.BytesIO(self.data), password=self.password or "")
            plumbed = self._plumber.pages[index]
            found = sorted(plumbed.find_tables(), key=lambda table: table.bbox[1])
            tables = [(table.bbox, table.extract()) for table in found]
        except Exception:  # pdfminer refuses what PDFium reads: no tables on this page
            return None
        left, bottom, right, top = page.get_mediabox()
        regions: list[tuple[str, Any]] = []
        above = top  # PDF y (upwards) down to which the page's text is taken

        def text(x0: float, y0: float, x1: float, y1: float) -> str:
            return clean_text(textpage.get_text_bounded(left=x0, bottom=y0, right=x1, top=y1)) if y1 > y0 and x1 > x0 else ""

        for (x0, t, x1, b), cells in tables:
            table_top, table_bottom = top - t, top - b
            if table_top > above:  # overlaps the table before: leave it to the text
                continue
            regions.append(("text", text(left, table_top, right, above)))
            rows = [markdown_row([clean_text(cell or "") for cell in row]) for row in cells
                    if any((cell or "").strip() for cell in row)]
            regions.append(("table", rows))
            regions.append(("text", text(left, table_bottom, left + x0, table_top)))  # beside it
            regions.append(("text", text(left + x1, table_bottom, right, table_top)))
            above = table_bottom
        if not any(kind == "table" and rows for kind, rows in regions):
            return None
        regions.append(("text", text(left, bottom, right, above)))
        return regions

    def finish(self, pages: list[Page]) -> None:
        """Set the blocks of ``pages`` (the pages read, in order, ``number`` = index + 1)."""
        headings = self._font_headings(len(pages)) if not self.outline else {}
        for index, page in enumerate(pages):
            wanted = self.outline.get(index) or headings.get(index) or []
            if not wanted and index not in self.regions:
                continue
            blocks: list[Block] = []
            regions = self.regions.get(index) or [("text", page.text)]
            pending = list(wanted)
            for kind, value in regions:
                if kind == "table":
                    if value:
                        blocks.append(Block(TABLE, "\n".join(value), rows=value, header=len(value) > 1))
                else:
                    blocks.extend(_cut_at_headings(value, pending))
            if self.outline and pending:  # titles shown on no line: at the top of the page
                blocks[:0] = [Block(HEADING, title, level) for level, title in pending]
            page.blocks = blocks
        self.close()

    def close(self) -> None:
        """Close pdfplumber's copy of the document, if a page's tables opened it."""
        if self._plumber is not None:
            try:
                self._plumber.close()
            except Exception:  # pdfplumber's close reads pages it never read, and may fail there
                pass
            self._plumber = None

    def _font_headings(self, page_count: int) -> dict[int, list[tuple[int, str]]]:
        if not self.sizes:
            return {}
        body = self.sizes.most_common(1)[0][0]
        repeated = Counter(line for lines in self.lines.values() for line in {text for text, _, _ in lines})
        large: dict[int, list[tuple[str, float]]] = {}
        numbered: dict[int, list[tuple[str, int]]] = {}
        for index, lines in self.lines.items():
            for line, size, bold in lines:
                if not _LETTER.search(line) or (page_count >= 5 and repeated[line] > page_count / 5):
                    continue
                if size >= _HEADING_RATIO * body:
                    large.setdefault(index, []).append((line, size))
                elif bold and size >= body and (number := _NUMBERED.match(line)):
                    numbered.setdefault(index, []).append((line, number.group(1).count(".") + 1))
        chars = sum(len(line) for lines in large.values() for line, _ in lines)
        if chars > _MAX_HEADING_SHARE * sum(self.sizes.values()):
            large = {}
        sizes = sorted({size for lines in large.values() for _, size in lines}, reverse=True)
        levels = {size: min(rank + 1, _MAX_LEVEL) for rank, size in enumerate(sizes)}
        found: dict[int, list[tuple[int, str]]] = {}
        for index in sorted(large.keys() | numbered.keys()):
            found[index] = [(levels[size], line) for line, size in large.get(index, [])] + \
                [(min(len(sizes) + depth, _MAX_LEVEL), line) for line, depth in numbered.get(index, [])]
        return found


def _cut_at_headings(text: str, pending: list[tuple[int, str]]) -> list[Block]:
    """``text`` as paragraphs cut at the lines that show one of ``pending``'s titles, in order,
    each such line a heading; the titles found are taken off ``pending``. Consecutive heading
    lines of one level (a title wrapped over two lines) are one heading."""
    blocks: list[Block] = []
    if not pending:
        return [Block(PARAGRAPH, text)] if text.strip() else []
    paragraph: list[str] = []

    def end_paragraph() -> None:
        if "".join(paragraph).strip():
            blocks.append(Block(PARAGRAPH, "\n".join(paragraph).strip("\n")))
        paragraph.clear()

    for line in text.split("\n"):
        normal = _normal(line)
        match = next((i for i, (_, title) in enumerate(pending) if normal and
                      (normal == title or (len(title) >= 8 and normal.startswith(title)))), None)
        if match is None:
            paragraph.append(line)
            continue
        level, title = pending.pop(match)
        end_paragraph()
        if blocks and blocks[-1].kind == HEADING and blocks[-1].level == level and not paragraph \
                and len(blocks[-1].text) + len(normal) < _MAX_HEADING_CHARS:
            blocks[-1].text += " " + normal
        else:
            blocks.append(Block(HEADING, normal, level))
    end_paragraph()
    return blocks


# Axis-aligned path objects that may be table rules: at least this share of the page's width
# (horizontal) or height (vertical) long, at most this many points thick.
_RULE_SHARE, _RULE_THICKNESS, _RULES = 0.1, 3.0, 3


def _ruled(page: Any) -> bool:
    """Whether PDFium's path objects on ``page`` (a ``PdfPage``) include at least ``_RULES``
    horizontal and ``_RULES`` vertical rules (or boxes counting as both): a page that may hold a
    ruled table, for pdfplumber."""
    import pypdfium2.raw as pdfium_c

    raw = page.raw
    width, height = pdfium_c.FPDF_GetPageWidthF(raw), pdfium_c.FPDF_GetPageHeightF(raw)
    x0, y0, x1, y1 = (ctypes.c_float() for _ in range(4))
    horizontal = vertical = 0
    for i in range(pdfium_c.FPDFPage_CountObjects(raw)):
        obj = pdfium_c.FPDFPage_GetObject(raw, i)
        if pdfium_c.FPDFPageObj_GetType(obj) != pdfium_c.FPDF_PAGEOBJ_PATH:
            continue
        if not pdfium_c.FPDFPageObj_GetBounds(obj, x0, y0, x1, y1):
            continue
        w, h = x1.value - x0.value, y1.value - y0.value
        wide, tall = w >= _RULE_SHARE * width, h >= _RULE_SHARE / 5 * height
        horizontal += wide and (h <= _RULE_THICKNESS or tall)
        vertical += tall and (w <= _RULE_THICKNESS or wide)
        if horizontal >= _RULES and vertical >= _RULES:
            return True
    return False
