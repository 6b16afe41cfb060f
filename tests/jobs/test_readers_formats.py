"""The readers of slides, sheets, CSV and e-books (jobs/readers/pptx.py, xlsx.py, csv_table.py,
epub.py) on the real files of ../shared/corpus-formats (read there, never copied), and on files
built here for what the corpus lacks: other delimiters, charts, bombs, damage."""

from __future__ import annotations

import datetime
import io
import zipfile

import pytest

from jobs.document_errors import DocumentError, DocumentTooLarge
from jobs.extract import HEADING, PARAGRAPH, TABLE, Limits, extract
from jobs.readers.tables import cell_text
from tests.conftest import ROOT
from webapp.core import filetypes

CORPUS_FORMATS = ROOT.parent / "shared" / "corpus-formats"
# In this process: the tests look at the blocks, not at the reader process (tests/jobs/test_reader_process.py).
HERE = Limits(max_memory=None)


def corpus_file(name: str) -> bytes:
    return (CORPUS_FORMATS / name).read_bytes()


def blocks_of(extraction, kind=None):
    blocks = [block for page in extraction.pages for block in page.structure()]
    return [block for block in blocks if kind is None or block.kind == kind]


# --- .pptx -----------------------------------------------------------------------------------

def test_pptx_gives_one_page_per_slide_with_titles_tables_lists_and_notes():
    extraction = extract(corpus_file("powerpoint_sample.pptx"), filetypes.PPTX, limits=HERE)
    assert extraction.page_count == 3 and [page.number for page in extraction.pages] == [1, 2, 3]
    first, second, third = extraction.pages
    assert first.blocks[0].kind == HEADING and first.blocks[0].text == "Test Table Slide"
    (table,) = [block for block in first.blocks if block.kind == TABLE]
    # The header row first; "Class1" spans three columns and is repeated in each.
    assert table.header and table.rows[0] == "|  | Class1 | Class1 | Class1 | Class2 | Class2 | Class2 |"
    assert table.text == "\n".join(table.rows) and len(table.rows) == 9
    assert "| R1 | True | False |  | False | True | True |" in table.rows
    # A cell merged over two rows stands in both, so each row is whole.
    assert sum(row.startswith("| R3 |") for row in table.rows) == 2
    assert second.blocks[0].text == "Second slide title"
    assert "- With foo\n- Bar\n- And baz things" in second.text  # a content placeholder's bullets
    assert "A rectangle shape with this text inside." in second.text
    assert second.blocks[-1] == second.blocks[-1].__class__(PARAGRAPH, "Notes: Some notes on the second slide.")
    assert "1. List item4\n2. List item5\n3. List item6" in third.text  # numbered text box
    assert third.blocks[-1].text.startswith("Notes: Final notes on the third slide.")
    assert not any(block.kind == HEADING for block in third.blocks)  # a slide without a title
    assert all(page.text == "\n\n".join(block.text for block in page.blocks) for page in extraction.pages)


def _deck() -> "pptx.presentation.Presentation":  # noqa: F821
    import pptx

    return pptx.Presentation()


def _saved(deck) -> bytes:
    out = io.BytesIO()
    deck.save(out)
    return out.getvalue()


def test_pptx_chart_data_groups_and_too_many_slides():
    from pptx.chart.data import CategoryChartData
    from pptx.enum.chart import XL_CHART_TYPE
    from pptx.util import Inches

    deck = _deck()
    slide = deck.slides.add_slide(deck.slide_layouts[5])  # title only
    slide.shapes.title.text = "Sales"
    data = CategoryChartData()
    data.categories = ["Q1", "Q2"]
    data.add_series("North", (1.5, 2.25))
    data.add_series("South", (3, 4))
    slide.shapes.add_chart(XL_CHART_TYPE.COLUMN_CLUSTERED, Inches(1), Inches(1), Inches(4), Inches(3), data)
    group = slide.shapes.add_group_shape()
    group.shapes.add_textbox(Inches(0), Inches(0), Inches(1), Inches(1)).text_frame.text = "inside a group"
    deck.slides.add_slide(deck.slide_layouts[6])  # blank: a page without text
    data = _saved(deck)

    extraction = extract(data, filetypes.PPTX, limits=HERE)
    assert extraction.page_count == 2 and extraction.pages[1].text == ""
    page = extraction.pages[0]
    (chart,) = [block for block in page.blocks if block.kind == TABLE]
    assert chart.rows == ["|  | North | South |", "| Q1 | 1.5 | 3 |", "| Q2 | 2.25 | 4 |"]
    assert "inside a group" in page.text

    with pytest.raises(DocumentTooLarge) as info:
        extract(data, filetypes.PPTX, limits=Limits(max_pages=1, max_memory=None))
    assert info.value.code == "too_many_pages" and "MAX_PDF_PAGES" in str(info.value) and "2 slides" in str(info.value)
    with pytest.raises(DocumentTooLarge) as info:
        extract(data, filetypes.PPTX, limits=Limits(max_sheet_cells=3, max_memory=None))
    assert info.value.code == "too_many_cells" and "MAX_SHEET_CELLS" in str(info.value)


def test_pptx_without_text_fails_with_no_text():
    deck = _deck()
    deck.slides.add_slide(deck.slide_layouts[6])
    with pytest.raises(DocumentError) as info:
        extract(_saved(deck), filetypes.PPTX, limits=HERE)
    assert info.value.code == "no_text"


def _zip(entries: dict[str, bytes], method=zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", method) as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return out.getvalue()


def test_zip_bomb_pptx_is_refused_from_its_directory():
    # 300 MB of zeros in one slide part: packed ≈ 300 KB, a ratio of ≈ 1000 to 1.
    bomb = _zip({"[Content_Types].xml": b"<Types/>", "ppt/presentation.xml": b"<p/>",
                 "ppt/slides/slide1.xml": bytes(300 * 1024 * 1024)})
    assert filetypes.detect_content_type(bomb, "deck.pptx") == filetypes.PPTX
    with pytest.raises(DocumentTooLarge) as info:
        extract(bomb, filetypes.PPTX, limits=HERE)
    assert info.value.code == "decompression_bomb" and "PowerPoint presentation" in str(info.value)


@pytest.mark.parametrize("content_type", [filetypes.PPTX, filetypes.XLSX, filetypes.EPUB])
def test_damaged_zip_documents_fail_with_damaged_file(content_type):
    name = {filetypes.PPTX: "powerpoint_sample.pptx", filetypes.XLSX: "xlsx_01.xlsx",
            filetypes.EPUB: "epub_purvis_poetry.epub"}[content_type]
    data = corpus_file(name)
    for damaged in (data[: len(data) // 2], _zip({"ppt/presentation.xml": b"<not xml", "xl/workbook.xml": b"<x",
                                                  "mimetype": b"application/epub+zip"})):
        with pytest.raises(DocumentError) as info:
            extract(damaged, content_type, limits=HERE)
        assert info.value.code == "damaged_file", info.value
        assert "damaged" in str(info.value)


# --- .xlsx -----------------------------------------------------------------------------------

def test_xlsx_sheets_are_headings_followed_by_tables_with_their_header_rows():
    extraction = extract(corpus_file("xlsx_01.xlsx"), filetypes.XLSX, limits=HERE)
    assert extraction.page_count is None and len(extraction.pages) == 1
    blocks = blocks_of(extraction)
    headings = [block for block in blocks if block.kind == HEADING]
    assert [(h.text, h.level) for h in headings] == [("Sheet1", 1), ("Sheet2", 1), ("Sheet3", 1), ("Sheet4", 1)]
    # Each heading is followed by its sheet's table, header row first.
    tables = [blocks[blocks.index(h) + 1] for h in headings]
    assert all(table.kind == TABLE and table.header for table in tables)
    assert tables[0].rows[0] == "| first | second | third |"
    assert tables[0].rows[1] == "| 1 | 5 | 9 |" and "| 6 | 0 | -6 |" in tables[0].rows  # rows whole
    assert tables[1].rows[0].startswith("| col-1 | col-2 | col-3 | col-4 |")
    assert tables[3].rows == ["| header |", "| 1 |"]
    assert "Sheet1\n\n| first | second | third |\n| 1 | 5 | 9 |" in extraction.pages[0].text


def _workbook(*sheets: tuple[str, list[list]]) -> bytes:
    import openpyxl

    workbook = openpyxl.Workbook()
    workbook.remove(workbook.active)
    for title, rows in sheets:
        sheet = workbook.create_sheet(title)
        for row in rows:
            sheet.append(row)
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


def test_xlsx_values_are_formatted_and_empty_rows_skipped():
    data = _workbook(("Prices", [[None], ["item", "price", "when", "ok"], [],
                                 ["tea", 0.1 + 0.2, datetime.datetime(2024, 3, 1), True],
                                 ["cake", 3.0, datetime.datetime(2024, 3, 1, 12, 30), False]]),
                     ("Empty", []))
    (heading, table) = blocks_of(extract(data, filetypes.XLSX, limits=HERE))
    assert heading.text == "Prices"  # the empty sheet makes no blocks
    assert table.rows == ["| item | price | when | ok |", "| tea | 0.3 | 2024-03-01 | TRUE |",
                          "| cake | 3 | 2024-03-01T12:30:00 | FALSE |"]
    assert cell_text(1e-20) == "1e-20" and cell_text(None) == "" and cell_text(datetime.date(2020, 1, 2)) == "2020-01-02"


def test_xlsx_past_max_sheet_cells_fails_with_too_many_cells():
    data = _workbook(("Big", [[f"r{r}c{c}" for c in range(10)] for r in range(50)]))
    assert blocks_of(extract(data, filetypes.XLSX, limits=Limits(max_sheet_cells=500, max_memory=None)))
    with pytest.raises(DocumentTooLarge) as info:
        extract(data, filetypes.XLSX, limits=Limits(max_sheet_cells=499, max_memory=None))
    assert info.value.code == "too_many_cells" and info.value.limit == 499
    assert "499 (MAX_SHEET_CELLS)" in str(info.value) and "'Big' row 50" in str(info.value)


def test_xlsx_whose_dimension_lies_is_bounded_by_the_cells_read():
    # A sheet declaring A1:B2 that holds 300 rows, and one declaring A1:XFD1048576 over one cell:
    # the count is of what is read, not of what the file declares.
    data = _workbook(("Liar", [[n, n] for n in range(300)]))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        parts = {info.filename: archive.read(info) for info in archive.infolist()}
    sheet = parts["xl/worksheets/sheet1.xml"].decode()
    assert '<dimension ref="A1:B300"/>' in sheet
    lying = dict(parts, **{"xl/worksheets/sheet1.xml": sheet.replace("A1:B300", "A1:B2").encode()})
    with pytest.raises(DocumentTooLarge) as info:
        extract(_zip(lying), filetypes.XLSX, limits=Limits(max_sheet_cells=100, max_memory=None))
    assert info.value.code == "too_many_cells"
    huge = dict(parts, **{"xl/worksheets/sheet1.xml": sheet.replace("A1:B300", "A1:XFD1048576").encode()})
    table = blocks_of(extract(_zip(huge), filetypes.XLSX, limits=Limits(max_sheet_cells=1000, max_memory=None)),
                      TABLE)[0]
    assert table.rows[0] == "| 0 | 0 |" and len(table.rows) == 300


def test_xlsx_without_values_fails_with_no_text():
    with pytest.raises(DocumentError) as info:
        extract(_workbook(("Blank", [[None, None], []])), filetypes.XLSX, limits=HERE)
    assert info.value.code == "no_text"


# --- .csv ------------------------------------------------------------------------------------

def test_csv_rows_are_a_table_with_the_header_row_first():
    extraction = extract(corpus_file("csv-comma.csv"), filetypes.CSV, limits=HERE)
    (table,) = blocks_of(extraction)
    assert table.kind == TABLE and table.header
    assert table.rows[0].startswith("| Index | Customer Id | First Name | Last Name | Company |")
    # A quoted field with the delimiter in it stays one cell.
    assert table.rows[2].startswith("| 2 | 1Ef7b82A4CAAD10 | Preston | Lozano, Dr | Vega-Gentry |")
    assert extraction.pages[0].text == table.text


@pytest.mark.parametrize("delimiter", [";", "\t", "|", ","])
def test_csv_any_delimiter_is_sniffed(delimiter):
    lines = [["name", "city", "note"], ["Ana", "Lisboa", 'says "hi"; waves'], ["Bo", "Oslo", ""],
             ["Cy", "Rome", "multi\nline"]]
    out = io.StringIO()
    import csv

    csv.writer(out, delimiter=delimiter, lineterminator="\r\n").writerows(lines)
    data = out.getvalue().encode("utf-8")
    assert filetypes.detect_content_type(data, "people.csv") == filetypes.CSV
    (table,) = blocks_of(extract(data, filetypes.CSV, limits=HERE))
    assert table.rows[0] == "| name | city | note |"
    assert table.rows[3] == "| Cy | Rome | multi line |"  # a quoted line break stays in its row
    assert len(table.rows) == 4


def test_csv_cells_are_bounded_and_empty_csv_has_no_text():
    data = "\n".join(f"{n},{n * 2},{n * 3}" for n in range(1000)).encode()
    with pytest.raises(DocumentTooLarge) as info:
        extract(data, filetypes.CSV, limits=Limits(max_sheet_cells=2999, max_memory=None))
    assert info.value.code == "too_many_cells" and "MAX_SHEET_CELLS" in str(info.value)
    assert len(blocks_of(extract(data, filetypes.CSV, limits=Limits(max_sheet_cells=3000)))[0].rows) == 1000
    with pytest.raises(DocumentError) as info:
        extract(b",,\n,,\n", filetypes.CSV, limits=HERE)
    assert info.value.code == "no_text"


# --- .epub -----------------------------------------------------------------------------------

def test_epub_chapters_are_headings_in_reading_order():
    extraction = extract(corpus_file("epub_purvis_poetry.epub"), filetypes.EPUB, limits=HERE)
    assert extraction.page_count is None
    headings = [block.text for block in blocks_of(extraction, HEADING)]
    # The spine's order: title page, imprint, the poems, colophon, uncopyright.
    assert headings[:4] == ["Poetry", "Imprint", "The Grave of the Slave", "The Slave Girl’s Address to Her Mother"]
    assert headings[-3:] == ["A Prayer", "Colophon", "Uncopyright"]
    blocks = blocks_of(extraction)
    grave = [block.text for block in blocks].index("The Grave of the Slave")
    assert blocks[grave + 1].kind == PARAGRAPH
    assert blocks[grave + 1].text.startswith("The cold storms of winter shall chill him no more,")
    text = extraction.pages[0].text
    assert text.index("The Grave of the Slave") < text.index("Past Joys") < text.index("Colophon")
    assert "core.css" not in text and "{" not in text  # no stylesheets


def test_epub_chapter_without_heading_takes_its_title_from_the_toc():
    from ebooklib import epub

    book = epub.EpubBook()
    book.set_identifier("id-1")
    book.set_title("Tiny")
    book.set_language("en")
    one = epub.EpubHtml(title="Opening", file_name="one.xhtml", lang="en")
    one.content = "<html><body><p>No heading here.</p><script>hidden()</script></body></html>"
    two = epub.EpubHtml(title="Second", file_name="two.xhtml", lang="en")
    two.content = "<html><body><h1>Own Title</h1><p>Body two.</p><h2>Part</h2><p>More.</p></body></html>"
    book.add_item(one)
    book.add_item(two)
    book.toc = [epub.Link("one.xhtml", "Opening", "one"), epub.Link("two.xhtml", "Second", "two")]
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = [two, one]  # reading order is the spine's, not the manifest's
    out = io.BytesIO()
    epub.write_epub(out, book)
    data = out.getvalue()
    assert filetypes.detect_content_type(data, "book.bin") == filetypes.EPUB

    blocks = [(block.kind, block.level, block.text)
              for block in blocks_of(extract(data, filetypes.EPUB, limits=HERE)) if "Tiny" not in block.text]
    assert blocks == [(HEADING, 1, "Own Title"), (PARAGRAPH, 0, "Body two."), (HEADING, 2, "Part"),
                      (PARAGRAPH, 0, "More."), (HEADING, 1, "Opening"), (PARAGRAPH, 0, "No heading here.")]


# --- in the reader process, as the worker reads them ---------------------------------------------

@pytest.mark.parametrize(("name", "content_type"), [("powerpoint_sample.pptx", filetypes.PPTX),
                                                    ("xlsx_01.xlsx", filetypes.XLSX),
                                                    ("epub_purvis_poetry.epub", filetypes.EPUB)])
def test_zip_formats_are_read_in_a_process_of_their_own_with_the_same_result(name, content_type):
    data = corpus_file(name)
    there = extract(data, content_type)  # the default limits: a reader process
    here = extract(data, content_type, limits=HERE)
    assert there.pages == here.pages and there.page_count == here.page_count
