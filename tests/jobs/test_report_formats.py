"""Reports rendered in every format and read back the way a person's tools would read them.

HTML is parsed with BeautifulSoup, CSV with the ``csv`` module, JSON with ``json``, the chart
with Pillow, and the PDF with PDFium (pypdfium2): its text is extracted page by page and its
image objects counted, so a table or chart that only looks right in the code cannot pass.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
import pytest
from bs4 import BeautifulSoup
from PIL import Image

from jobs.report_formats import (
    CHART_DPI,
    CHART_SIZE_INCHES,
    CONTENT_TYPES,
    FORMATS,
    MAX_HOUR_ROWS,
    OUTCOME_COLOURS,
    activity_chart_png,
    render_report,
)
from tests.conftest import ROOT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JAPANESE_NAME = "議事録_2026年11月.pdf"
JAPANESE_SUMMARY = "この文書は十一月の定例会議の議事録です。来年度の予算と採用計画について話し合いました。"
ARABIC_NAME = "تقرير المبيعات.pdf"
GREEK_NAME = "Αναφορά-πωλήσεων.docx"
KOREAN_NAME = "분기 보고서.txt"  # no font here has Hangul: must render as U+FFFD, not fail
INJECTION_NAME = "=HYPERLINK(\"http://example.invalid\",\"click\").txt"
SCRIPT_EXAMPLE = 'the PDF is damaged <script>alert("x")</script> & cannot be read'


def activity_report() -> dict:
    """A day of activity: 24 hours, every outcome, two failure codes (one with markup in it)."""
    per_hour = []
    for index in range(24):
        day, hour = (20, 15 + index) if index < 9 else (21, index - 9)
        per_hour.append({
            "hour": f"2026-11-{day}T{hour:02d}:00:00+00:00",
            "finished": (index * 7) % 13,
            "failed": index % 3,
            "stopped": 1 if index == 4 else 0,
            "canceled": 2 if index in (6, 7) else 0,
        })
    return {
        "type": "activity",
        "title": "Docket activity, last 24 hours",
        "generated_at": "2026-11-21T15:08:23.076+00:00",
        "params": {"hours": 24, "kinds": ["document", "report"]},
        "since": "2026-11-20T15:00:00+00:00",
        "until": "2026-11-21T15:00:00+00:00",
        "total_jobs": 187,
        "by_kind_status": [
            {"kind": "document", "status": "finished", "count": 139},
            {"kind": "document", "status": "failed", "count": 23},
            {"kind": "report", "status": "finished", "count": 17},
            {"kind": "document", "status": "canceled", "count": 4},
            {"kind": "document", "status": "stopped", "count": 1},
            {"kind": "document", "status": "queued", "count": 3},
        ],
        "queue_wait_seconds": {"p50": 0.412, "p95": 3.87},
        "run_seconds": {"p50": 1.25, "p95": 48.2},
        "per_hour": per_hour,
        "failures_by_code": [
            {"error_code": "password_required", "count": 12,
             "example": "password required: upload the PDF again with its password"},
            {"error_code": "damaged_pdf", "count": 11, "example": SCRIPT_EXAMPLE},
        ],
    }


def empty_activity_report() -> dict:
    return {
        "type": "activity",
        "title": "Docket activity, a quiet hour",
        "generated_at": "2026-11-21T15:08:23Z",
        "params": {},
        "since": "2026-11-21T14:00:00Z",
        "until": "2026-11-21T15:00:00Z",
        "total_jobs": 0,
        "by_kind_status": [],
        "queue_wait_seconds": {"p50": None, "p95": None},
        "run_seconds": {"p50": None, "p95": None},
        "per_hour": [],
        "failures_by_code": [],
    }


def documents_report() -> dict:
    def document(id_, filename, status="finished", pages=1, chars=1000, chunks=1, warnings=(), summary=None,
                 method=None, error=None):
        return {"id": id_, "filename": filename, "status": status, "pages": pages, "chars": chars, "chunks": chunks,
                "warnings": list(warnings), "summary": summary, "summary_method": method, "error": error}

    return {
        "type": "documents",
        "title": "Documents processed in November",
        "generated_at": "2026-11-21T15:08:23Z",
        "params": {"status": None, "limit": 100},
        "documents": [
            document("3f2c0001", "dpr-paper-two-column.pdf", pages=13, chars=47204, chunks=47,
                     summary="Dense passage retrieval outperforms BM25 on open-domain question answering.",
                     method="extractive"),
            document("3f2c0002", JAPANESE_NAME, pages=2, chars=1834, chunks=3,
                     warnings=["no text layer on page 2 (needs OCR)"], summary=JAPANESE_SUMMARY,
                     method="openai:gpt-4o-mini"),
            document("3f2c0003", GREEK_NAME, pages=None, chars=903, chunks=1,
                     summary="Μια σύντομη αναφορά πωλήσεων.", method="extractive"),
            document("3f2c0004", ARABIC_NAME, status="failed", pages=None, chars=None, chunks=None,
                     error="password required: upload the PDF again with its password"),
            document("3f2c0005", KOREAN_NAME, chars=12, summary="분기 매출 요약.", method="extractive"),
            document("3f2c0006", INJECTION_NAME, chars=40, summary="-1 is not a formula here", method="extractive"),
        ],
    }


# --- all formats ---------------------------------------------------------------------------------


def test_every_format_has_a_content_type_and_unknown_ones_are_refused():
    assert FORMATS == ("html", "csv", "json", "pdf")
    assert set(CONTENT_TYPES) == set(FORMATS)
    assert CONTENT_TYPES["pdf"] == "application/pdf" and CONTENT_TYPES["csv"] == "text/csv; charset=utf-8"
    with pytest.raises(ValueError, match="unknown report format 'xlsx'"):
        render_report(activity_report(), "xlsx")
    with pytest.raises(ValueError, match="unknown report type 'sales'"):
        render_report({**activity_report(), "type": "sales"}, "html")


@pytest.mark.parametrize("make", [activity_report, empty_activity_report, documents_report])
def test_json_is_the_report_itself_pretty_printed_in_utf8(make):
    report = make()
    data = render_report(report, "json")
    assert json.loads(data.decode("utf-8")) == report
    assert data.startswith(b"{\n  ")  # indented for people
    if make is documents_report:
        assert JAPANESE_NAME.encode("utf-8") in data  # UTF-8 itself, not \u escapes


def test_rendering_touches_no_global_matplotlib_state():
    """The chart uses Figure + FigureCanvasAgg, never pyplot; the Japanese font is found without
    importing matplotlib_fontja (whose import changes matplotlib's default font)."""
    code = textwrap.dedent("""
        import json
        import sys
        import matplotlib
        from jobs.report_formats import render_report
        family = list(matplotlib.rcParams["font.family"])  # (reading "backend" would import pyplot)
        for report in json.load(sys.stdin):
            for fmt in ("html", "pdf"):
                render_report(report, fmt)
        assert "matplotlib.pyplot" not in sys.modules
        assert "matplotlib_fontja" not in sys.modules
        assert list(matplotlib.rcParams["font.family"]) == family
        print("ok")
    """)
    reports = json.dumps([activity_report(), documents_report()])
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, input=reports, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# --- chart ---------------------------------------------------------------------------------------


def _pixels_of(png: bytes, colour: str) -> int:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    target = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return sum(count for count, rgb in image.getcolors(maxcolors=1 << 20) if rgb == target)


def test_the_chart_is_a_png_with_a_bar_colour_per_outcome():
    png = activity_chart_png(activity_report())
    assert png.startswith(PNG_MAGIC)
    image = Image.open(io.BytesIO(png))
    assert image.size == (round(CHART_SIZE_INCHES[0] * CHART_DPI), round(CHART_SIZE_INCHES[1] * CHART_DPI))
    empty = activity_chart_png(empty_activity_report())
    # The legend shows every colour in both charts; only the full one has bars of them.
    for outcome in ("finished", "failed", "canceled"):
        assert _pixels_of(png, OUTCOME_COLOURS[outcome]) > 5 * _pixels_of(empty, OUTCOME_COLOURS[outcome]) > 0
    assert _pixels_of(png, OUTCOME_COLOURS["finished"]) > _pixels_of(png, OUTCOME_COLOURS["failed"])


# --- HTML ----------------------------------------------------------------------------------------


def _tables(soup: BeautifulSoup) -> dict[str, list[list[str]]]:
    """Each section's table as rows of cell texts (header row included), by the section's heading."""
    tables = {}
    for section in soup.find_all("section"):
        table = section.find("table")
        if table is not None:
            tables[section.h2.get_text()] = [[cell.get_text() for cell in row.find_all(["th", "td"])]
                                             for row in table.find_all("tr")]
    return tables


def _assert_standalone(html: str, soup: BeautifulSoup) -> None:
    assert html.startswith("<!doctype html>")
    assert soup.find("script") is None and soup.find("link") is None and soup.find("iframe") is None
    for element in soup.find_all(src=True):
        assert element["src"].startswith("data:"), element
    assert not soup.find_all(href=True) and "url(" not in soup.style.get_text()


def test_activity_html_is_a_standalone_page_with_every_table_and_the_chart():
    html = render_report(activity_report(), "html").decode("utf-8")
    soup = BeautifulSoup(html, "lxml")
    _assert_standalone(html, soup)
    assert soup.title.get_text() == "Docket activity, last 24 hours"
    assert soup.h1.get_text() == "Docket activity, last 24 hours"
    assert "Period 2026-11-20 15:00 UTC to 2026-11-21 15:00 UTC" in soup.get_text()

    tables = _tables(soup)
    assert ["Jobs", "187"] in tables["Overview"]
    assert ["Jobs failed", str(sum(i % 3 for i in range(24)))] in tables["Overview"]
    assert tables["Timing"][1:] == [["Queue wait", "0.41 s", "3.87 s"], ["Run time", "1.25 s", "48.2 s"]]
    assert tables["Jobs by kind and status"][0] == ["Kind", "Status", "Jobs"]
    assert ["document", "failed", "23"] in tables["Jobs by kind and status"]
    hours = tables["Jobs per hour (UTC)"]
    assert hours[0] == ["Hour", "Finished", "Failed", "Stopped", "Canceled", "Total"]
    assert len(hours) == 1 + 24
    assert hours[1] == ["2026-11-20 15:00", "0", "0", "0", "0", "0"]
    assert hours[5] == ["2026-11-20 19:00", "2", "1", "1", "0", "4"]
    assert hours[-1][0] == "2026-11-21 14:00"
    failures = tables["Failures by error code"]
    assert failures[1][:2] == ["password_required", "12"]
    # Markup in a value is text, not markup: escaped in the source, intact when read.
    assert failures[2] == ["damaged_pdf", "11", SCRIPT_EXAMPLE]
    assert "&lt;script&gt;" in html and "<script>" not in html
    assert ["kinds", "document, report"] in tables["Parameters"]

    images = soup.find_all("img")
    assert len(images) == 1 and "Jobs per hour by outcome" in images[0]["alt"]
    prefix = "data:image/png;base64,"
    assert images[0]["src"].startswith(prefix)
    png = base64.b64decode(images[0]["src"][len(prefix):], validate=True)
    assert png.startswith(PNG_MAGIC)
    Image.open(io.BytesIO(png)).verify()


def test_documents_html_lists_every_document_and_summary():
    report = documents_report()
    html = render_report(report, "html").decode("utf-8")
    soup = BeautifulSoup(html, "lxml")
    _assert_standalone(html, soup)
    assert soup.find("img") is None  # no chart for documents

    tables = _tables(soup)
    documents = tables["Documents"]
    assert documents[0] == ["Document", "Status", "Pages", "Characters", "Chunks", "Warnings and errors"]
    assert [row[0] for row in documents[1:]] == [d["filename"] for d in report["documents"]]
    assert documents[1] == ["dpr-paper-two-column.pdf", "finished", "13", "47,204", "47", "—"]
    assert documents[2] == [JAPANESE_NAME, "finished", "2", "1,834", "3", "no text layer on page 2 (needs OCR)"]
    assert documents[4][:2] == [ARABIC_NAME, "failed"]
    assert documents[4][5] == "Error: password required: upload the PDF again with its password"
    summaries = tables["Summaries"]
    assert summaries[2] == [JAPANESE_NAME, JAPANESE_SUMMARY, "openai:gpt-4o-mini"]
    assert summaries[4] == [ARABIC_NAME, "—", "—"]
    assert ["Documents", "6"] in tables["Overview"] and ["Status failed", "1"] in tables["Overview"]


def test_a_month_is_tabled_per_day_in_html_and_pdf_and_per_hour_in_csv():
    start = datetime(2026, 10, 22, tzinfo=timezone.utc)
    per_hour = [{"hour": (start + timedelta(hours=i)).isoformat(), "finished": i % 7, "failed": i % 2,
                 "stopped": 0, "canceled": 1 if i % 24 == 0 else 0} for i in range(30 * 24)]
    assert len(per_hour) > MAX_HOUR_ROWS
    report = {**activity_report(), "per_hour": per_hour, "since": start.isoformat(),
              "until": (start + timedelta(days=30)).isoformat()}

    days = _tables(BeautifulSoup(render_report(report, "html").decode("utf-8"), "lxml"))["Jobs per day (UTC)"]
    assert days[0][0] == "Day" and len(days) == 1 + 30
    first = per_hour[:24]
    assert days[1] == ["2026-10-22", str(sum(h["finished"] for h in first)), "12", "0", "1",
                       str(sum(h["finished"] + h["failed"] + h["canceled"] for h in first))]
    assert days[-1][0] == "2026-11-20"
    assert len(_csv_rows(render_report(report, "csv"))) == 1 + 720 + 1
    document = pdfium.PdfDocument(render_report(report, "pdf"))
    assert len(document) <= 3 and "Jobs per day (UTC)" in _pdf_text(document) and _image_objects(document)


# --- CSV -----------------------------------------------------------------------------------------


def _csv_rows(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


def test_activity_csv_has_a_row_per_hour_and_a_total_row():
    report = activity_report()
    rows = _csv_rows(render_report(report, "csv"))
    assert rows[0] == ["hour", "finished", "failed", "stopped", "canceled", "total"]
    assert len(rows) == 1 + 24 + 1
    assert rows[1] == ["2026-11-20T15:00:00+00:00", "0", "0", "0", "0", "0"]
    assert rows[5] == ["2026-11-20T19:00:00+00:00", "2", "1", "1", "0", "4"]
    for row, hour in zip(rows[1:-1], report["per_hour"]):
        assert row[0] == hour["hour"]
        assert [int(v) for v in row[1:]] == [hour["finished"], hour["failed"], hour["stopped"], hour["canceled"],
                                             sum(hour[k] for k in ("finished", "failed", "stopped", "canceled"))]
    sums = [sum(int(row[i]) for row in rows[1:-1]) for i in range(1, 6)]
    assert rows[-1] == ["total", *map(str, sums)]


def test_documents_csv_has_a_row_per_document_and_disarms_formulas():
    report = documents_report()
    data = render_report(report, "csv")
    assert b"\r\n" in data and not data.startswith(b"\xef\xbb\xbf")  # RFC 4180 rows, no BOM
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))
    assert [row["id"] for row in rows] == [d["id"] for d in report["documents"]]
    assert list(rows[0]) == ["id", "filename", "status", "pages", "chars", "chunks", "warnings", "summary",
                             "summary_method", "error"]
    japanese = rows[1]
    assert japanese["filename"] == JAPANESE_NAME and japanese["summary"] == JAPANESE_SUMMARY
    assert japanese["warnings"] == "no text layer on page 2 (needs OCR)"
    assert (japanese["pages"], japanese["chars"], japanese["chunks"]) == ("2", "1834", "3")
    arabic = rows[3]
    assert arabic["filename"] == ARABIC_NAME and arabic["status"] == "failed"
    assert (arabic["pages"], arabic["summary"], arabic["summary_method"]) == ("", "", "")
    assert arabic["error"].startswith("password required")
    assert rows[5]["filename"] == "'" + INJECTION_NAME
    assert rows[5]["summary"] == "'-1 is not a formula here"


def test_an_empty_activity_report_renders_in_every_format():
    report = empty_activity_report()
    assert _csv_rows(render_report(report, "csv")) == [
        ["hour", "finished", "failed", "stopped", "canceled", "total"], ["total", "0", "0", "0", "0", "0"]]
    assert json.loads(render_report(report, "json")) == report

    soup = BeautifulSoup(render_report(report, "html").decode("utf-8"), "lxml")
    assert "No jobs ended in this period." in soup.get_text() and "No failures." in soup.get_text()
    assert soup.find("img")["src"].startswith("data:image/png;base64,")
    tables = _tables(soup)
    assert ["Jobs", "0"] in tables["Overview"]
    assert tables["Timing"][1] == ["Queue wait", "—", "—"]

    document = pdfium.PdfDocument(render_report(report, "pdf"))
    text = _pdf_text(document)
    assert "Docket activity, a quiet hour" in text and "No jobs ended in this period." in text
    assert _image_objects(document), "the chart must be in the PDF even without jobs"


# --- PDF -----------------------------------------------------------------------------------------


def _pdf_text(document: pdfium.PdfDocument) -> str:
    return "\n".join(page.get_textpage().get_text_range() for page in document)


def _image_objects(document: pdfium.PdfDocument) -> list:
    return [obj for page in document for obj in page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE])]


def test_activity_pdf_has_extractable_text_tables_and_the_chart_image():
    data = render_report(activity_report(), "pdf")
    assert data.startswith(b"%PDF-")
    document = pdfium.PdfDocument(data)
    assert document.get_metadata_dict()["Title"] == "Docket activity, last 24 hours"
    text = _pdf_text(document)
    for expected in ("Docket activity, last 24 hours", "Period 2026-11-20 15:00 UTC to 2026-11-21 15:00 UTC",
                     "Timing", "Queue wait", "0.41 s", "3.87 s", "1.25 s", "48.2 s", "Jobs by kind and status",
                     "Failures by error code", "password_required", "damaged_pdf", SCRIPT_EXAMPLE,
                     "2026-11-20 15:00", "2026-11-21 14:00", "Jobs per hour by outcome", "187"):
        assert expected in text, expected
    lines = [line.split() for line in text.splitlines()]
    assert ["2026-11-20", "19:00", "2", "1", "1", "0", "4"] in lines  # a whole table row, in order
    assert ["document", "failed", "23"] in lines

    images = _image_objects(document)
    assert len(images) == 1
    assert tuple(images[0].get_px_size()) == (round(CHART_SIZE_INCHES[0] * CHART_DPI),
                                           round(CHART_SIZE_INCHES[1] * CHART_DPI))


def test_documents_pdf_has_every_name_and_summary_in_any_script():
    data = render_report(documents_report(), "pdf")
    document = pdfium.PdfDocument(data)
    text = _pdf_text(document)
    flat = "".join(text.split())  # table cells wrap: compare without line breaks and spaces
    for expected in ("Documents processed in November", "dpr-paper-two-column.pdf", JAPANESE_NAME,
                     JAPANESE_SUMMARY, GREEK_NAME, "Μια σύντομη αναφορά πωλήσεων.", "47,204", "1,834",
                     "openai:gpt-4o-mini", "no text layer on page 2 (needs OCR)",
                     "Error: password required"):
        assert "".join(expected.split()) in flat, expected
    # Arabic is laid out right to left; its words come back whole.
    for word in ARABIC_NAME.removesuffix(".pdf").split():
        assert word in text, word
    # Hangul is in no font here: replacement characters, the rest of the line intact.
    assert "\ufffd" in text and "분" not in text and ".txt" in text
    assert not _image_objects(document)
