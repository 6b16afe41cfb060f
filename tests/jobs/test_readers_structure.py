"""The structure each reader finds: headings, tables and paragraphs as blocks (jobs/readers/)."""

from __future__ import annotations

import io

from jobs.extract import HEADING, PARAGRAPH, TABLE, Limits, count_chars, extract
from tests.conftest import CORPUS
from webapp.core import filetypes

HERE = Limits(max_memory=None)


def kinds(extraction) -> list[tuple[str, int, str]]:
    return [(b.kind, b.level, b.text) for b in extraction.pages[0].blocks]


def word_document() -> bytes:
    import docx

    document = docx.Document()
    document.add_paragraph("Policy", style="Title")
    document.add_heading("4 Retention", level=1)
    document.add_paragraph("Documents are kept.")
    document.add_heading("4.2 Deleting documents", level=2)
    table = document.add_table(rows=3, cols=3)
    for r, cells in enumerate([["Kind", "Days", "Who"], ["Invoices", "3650", "Finance"], ["Mail", "90", "IT"]]):
        for c, text in enumerate(cells):
            table.cell(r, c).text = text
    table.cell(2, 1).merge(table.cell(2, 2))  # one cell over two columns
    table.cell(2, 1).text = "90 days by IT"
    outlined = document.add_paragraph("Annex")
    outlined._p.get_or_add_pPr().append(_outline_level(0))
    document.add_paragraph("The end.")
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def _outline_level(value: int):
    from docx.oxml import parse_xml
    from docx.oxml.ns import nsdecls

    return parse_xml(f'<w:outlineLvl {nsdecls("w")} w:val="{value}"/>')


def test_docx_headings_from_styles_and_outline_levels_and_tables_as_pipe_rows():
    extraction = extract(word_document(), filetypes.DOCX, limits=HERE)
    assert kinds(extraction) == [
        (HEADING, 1, "Policy"), (HEADING, 1, "4 Retention"), (PARAGRAPH, 0, "Documents are kept."),
        (HEADING, 2, "4.2 Deleting documents"),
        (TABLE, 0, "| Kind | Days | Who |\n| Invoices | 3650 | Finance |\n| Mail | 90 days by IT |"),
        (HEADING, 1, "Annex"), (PARAGRAPH, 0, "The end."),
    ]
    table = extraction.pages[0].blocks[4]
    assert table.header and table.rows[0] == "| Kind | Days | Who |"
    assert "Invoices\t3650\tFinance" in extraction.pages[0].text  # the page's text stays plain


def test_html_headings_and_tables_as_blocks_and_the_text_unchanged():
    page = (b"<html><body><p>Intro <b>text</b></p><h1>Duck <i>care</i></h1><p>Feed them.</p><h2>Food</h2>"
            b"<table><thead><tr><th>Food</th><th>Portion</th></tr></thead>"
            b"<tr><td>Leaves</td><td>50 <table><tr><td>g</td></tr></table></td></tr><tr><td></td></tr></table>"
            b"<div hidden><h3>Hidden</h3></div><h3>Water</h3>Clean water.<script>x()</script></body></html>")
    extraction = extract(page, filetypes.HTML, limits=HERE)
    assert kinds(extraction) == [
        (PARAGRAPH, 0, "Intro\ntext"), (HEADING, 1, "Duck care"), (PARAGRAPH, 0, "Feed them."),
        (HEADING, 2, "Food"), (TABLE, 0, "| Food | Portion |\n| Leaves | 50 g |"),
        (HEADING, 3, "Water"), (PARAGRAPH, 0, "Clean water."),
    ]
    assert extraction.pages[0].text == "Intro\ntext\nDuck\ncare\nFeed them.\nFood\nFood\nPortion\nLeaves\n50\ng\nWater\nClean water."


def test_markdown_headings_and_pipe_tables_outside_code_fences():
    text = ("Intro.\n\n# Guide #\nRead this.\n```sh\n# not a heading\n| not | table |\n|---|---|\n```\n"
            "Setup\n=====\n| Option | Default |\n|:--|--:|\n| `CHUNK_SIZE` | 1500 |\n| a \\| b | 2 |\n\nDone.\n")
    extraction = extract(text.encode(), filetypes.MARKDOWN, limits=HERE)
    assert kinds(extraction) == [
        (PARAGRAPH, 0, "Intro."), (HEADING, 1, "Guide"),
        (PARAGRAPH, 0, "Read this.\n```sh\n# not a heading\n| not | table |\n|---|---|\n```"),
        (HEADING, 1, "Setup"), (TABLE, 0, "| Option | Default |\n| `CHUNK_SIZE` | 1500 |\n| a \\| b | 2 |"),
        (PARAGRAPH, 0, "Done."),
    ]
    assert extraction.pages[0].text == text.rstrip("\n") or extraction.pages[0].text == text
    assert extract(text.encode(), filetypes.TEXT, limits=HERE).pages[0].blocks is None  # .txt: no structure


def test_corpus_markdown_and_html_headings():
    markdown = extract((CORPUS / "pypdf-extract-text.md").read_bytes(), filetypes.MARKDOWN, limits=HERE)
    headings = [(b.level, b.text) for b in markdown.pages[0].blocks if b.kind == HEADING]
    assert headings[:3] == [(1, "Extract Text from a PDF"), (2, "Using a visitor"),
                            (3, "Example 1: Ignore header and footer")]
    html = extract((CORPUS / "wikipedia-duck.html").read_bytes(), filetypes.HTML, limits=HERE)
    headings = [(b.level, b.text) for b in html.pages[0].blocks if b.kind == HEADING]
    assert (1, "Duck") in headings and (2, "Etymology") in headings and (3, "Feeding") in headings
    assert any(b.kind == TABLE and b.rows[0] == "| Duck |" for b in html.pages[0].blocks)


def pdf(name: str, tables: bool = False):
    return extract((CORPUS / name).read_bytes(), filetypes.PDF, limits=Limits(max_memory=None, pdf_tables=tables))


def headings_of(extraction) -> list[tuple[int, int, str]]:
    return [(page.number, b.level, b.text) for page in extraction.pages for b in page.blocks or [] if b.kind == HEADING]


def test_pdf_headings_from_the_outline_at_their_pages_and_levels():
    extraction = pdf("geotopo-117p-de.pdf")
    headings = headings_of(extraction)
    assert len(headings) == 35
    assert headings[:3] == [(6, 1, "1 Topologische Grundbegriffe"), (6, 2, "1.1 Topologische Räume"),
                            (10, 2, "1.2 Metrische Räume")]
    assert (78, 3, "4.2.1 Flächeninhalt") in headings
    for page in extraction.pages:  # blocks cut the page's text, which stays as it was
        if page.blocks is not None:
            assert count_chars("".join(b.text for b in page.blocks if b.kind != HEADING)) <= count_chars(page.text)


def test_pdf_headings_from_font_sizes_without_an_outline():
    headings = headings_of(pdf("dpr-paper-two-column.pdf"))
    titles = [text for _, _, text in headings]
    assert titles[0] == "Dense Passage Retrieval for Open-Domain Question Answering"
    assert {"1 Introduction", "3.1 Overview", "8 Conclusion"} <= set(titles)
    assert not any("arXiv" in title for title in titles)  # the rotated stamp in the margin
    levels = {text: level for _, level, text in headings}
    assert levels["Dense Passage Retrieval for Open-Domain Question Answering"] < levels["1 Introduction"] \
        < levels["3.1 Overview"]


def test_pdf_tables_by_pdfplumber_only_with_pdf_tables_auto():
    found = pdf("geobase-nhn-data-model.pdf", tables=True)
    page = found.pages[2]
    (history, *_) = [b for b in page.blocks if b.kind == TABLE]
    assert history.rows[0] == "| Date | Version | Description |" and history.header and len(history.rows) > 3
    assert count_chars("".join(b.text for b in page.blocks)) >= 0.9 * count_chars(page.text)  # text kept
    assert found.chars == pdf("geobase-nhn-data-model.pdf").chars  # the page's text is not changed
    assert not any(b.kind == TABLE for p in pdf("geobase-nhn-data-model.pdf").pages for b in p.blocks or [])
