"""Hostile and odd input (issue 8): type detection that is not fooled by text naming "%PDF-" or by
XHTML's XML declaration, and HTML extraction that keeps only what a reader sees."""

from __future__ import annotations

import pytest

from jobs.extract import extract
from tests.conftest import api_client, CORPUS, post_text, row
from webapp.core import filetypes

NOTE_ABOUT_PDF = (
    b"Notes on file formats\n\n"
    b"PDF files start with %PDF-1.7 (the version) and end with %%EOF; the xref table lists the objects.\n"
    b"Word files are zip archives.\n"
)

# Shaped like an SEC EDGAR inline-XBRL filing: XML declaration, comment, XHTML root, and the
# ix:header (facts for machines) inside a display:none div.
INLINE_XBRL = b"""<?xml version="1.0" encoding="utf-8"?>
<!--XBRL Document Created with the Workiva Platform-->
<html xmlns="http://www.w3.org/1999/xhtml" xmlns:ix="http://www.xbrl.org/2013/inlineXBRL"
      xmlns:dei="http://xbrl.sec.gov/dei/2023">
<head><meta http-equiv="Content-Type" content="text/html"/><title>acme-20231231</title></head>
<body>
<div style="display:none"><ix:header><ix:hidden>
<ix:nonNumeric name="dei:AmendmentFlag" contextRef="c-1">HIDDENAMENDMENTFLAG</ix:nonNumeric>
</ix:hidden><ix:resources><xbrli:context id="c-1">HIDDENCONTEXT</xbrli:context></ix:resources></ix:header></div>
<div><p>ACME Corporation annual report.</p>
<p>Total revenue was <ix:nonFraction name="us-gaap:Revenues" contextRef="c-1" unitRef="usd" decimals="-6">1,234</ix:nonFraction>
million dollars in the fiscal year.</p></div>
</body>
</html>
"""


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (NOTE_ABOUT_PDF, filetypes.TEXT),
        (b"x" * 900 + b" files start with %PDF-1.4 and then binary follows\n", filetypes.TEXT),
        (b"\xef\xbb\xbf%PDF-1.4\n1 0 obj\n<< >>\nendobj\n", filetypes.PDF),
        # Clean text before the header, but PDF objects after it: a PDF with a prefix.
        (b"Content-Type: application/pdf\n\n%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\n", filetypes.PDF),
        (INLINE_XBRL, filetypes.HTML),
        (b'<?xml version="1.0"?><!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" '
         b'"http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd"><html xmlns="http://www.w3.org/1999/xhtml">'
         b"<body><p>Hello</p></body></html>", filetypes.HTML),
        (b'\xef\xbb\xbf<?xml version="1.0"?>\n<!DOCTYPE html>\n<html><body>Hi</body></html>', filetypes.HTML),
        # XML that is not XHTML stays what it was before (text), even with a doctype.
        (b'<?xml version="1.0" encoding="UTF-8"?>\n<note><to>Tove</to><body>Remember the html meeting.</body></note>\n',
         filetypes.TEXT),
        (b'<?xml version="1.0"?>\n<!DOCTYPE note SYSTEM "note.dtd">\n<note><body>Hello there</body></note>\n',
         filetypes.TEXT),
    ],
)
def test_detection_of_odd_input(data, expected):
    assert filetypes.detect_content_type(data, "upload.txt") == expected


@pytest.mark.parametrize("name", ["minimal-document.pdf", "geotopo-117p-de.pdf", "invalid-header-eof-only.pdf"])
def test_real_pdfs_stay_pdfs_even_with_junk_before_the_header(name):
    data = (CORPUS / name).read_bytes()
    assert filetypes.detect_content_type(data, "x.bin") == filetypes.PDF
    assert filetypes.detect_content_type(b"\x00\xff\x13" + data, "x.bin") == filetypes.PDF
    if name != "invalid-header-eof-only.pdf":  # 44 bytes of clean text: after "abc" it reads as a note
        assert filetypes.detect_content_type(b"abc" + data, "x.bin") == filetypes.PDF


def _html(body: str) -> str:
    return extract(f"<!DOCTYPE html><html><body>{body}</body></html>".encode(), filetypes.HTML).pages[0].text


@pytest.mark.parametrize(
    "hidden",
    [
        "<div hidden>SECRET</div>",
        '<div hidden="hidden"><p>SECRET</p></div>',
        '<span aria-hidden="true">SECRET</span>',
        '<span aria-hidden="TRUE">SECRET</span>',
        '<div style="display:none">SECRET</div>',
        '<div style="color: red; Display : None ;">SECRET</div>',
        '<div style="DISPLAY: NONE !important">SECRET</div>',
        '<p style="visibility:hidden">SECRET</p>',
        '<p style="font-weight:bold;visibility : HIDDEN">SECRET</p>',
        "<template><p>SECRET</p></template>",
        "<noscript>SECRET</noscript>",
        "<script>var SECRET = 1;</script>",
        "<style>.SECRET { color: red }</style>",
        '<div hidden><div style="display:none"><span aria-hidden="true">SECRET</span></div></div>',
    ],
)
def test_html_extraction_drops_what_a_reader_does_not_see(hidden):
    text = _html(f"<p>Visible before.</p>{hidden}<p>Visible after.</p>")
    assert "SECRET" not in text
    assert "Visible before." in text and "Visible after." in text


@pytest.mark.parametrize(
    "shown",
    [
        '<span aria-hidden="false">SHOWN</span>',
        '<div style="display:block">SHOWN</div>',
        '<div style="mso-display:none">SHOWN</div>',
        '<div style="visibility:visible">SHOWN</div>',
    ],
)
def test_html_extraction_keeps_what_is_shown(shown):
    assert "SHOWN" in _html(shown)


def test_html_extraction_collapses_blank_line_runs_and_strips_trailing_spaces():
    navigation = "".join("<div>   <ul>\n\n   <li>   </li>\n\n</ul>   </div>\n\n\n" for _ in range(20))
    text = _html(f"<nav>{navigation}</nav><h1>Title   </h1>{navigation}<p>Body text.   </p>\n\n\n\n")
    assert "\n\n\n" not in text
    assert all(line == line.rstrip() for line in text.split("\n"))
    assert text == "Title\n\nBody text."


def test_inline_xbrl_keeps_the_visible_text_and_drops_ix_header():
    text = extract(INLINE_XBRL, filetypes.HTML).pages[0].text
    assert "ACME Corporation annual report." in text and "1,234" in text and "fiscal year" in text
    assert "HIDDEN" not in text and "<" not in text and "xml version" not in text


def _chunk_texts(app, document_id: str) -> list[str]:
    from webapp.core.db import connection
    from webapp.core.models import Chunk

    with app.app_context(), connection():
        return [c.text for c in Chunk.select().where(Chunk.document == document_id).order_by(Chunk.ordinal)]


def test_text_naming_pdf_and_inline_xbrl_are_indexed_through_the_api(app, client, run_worker):
    note = post_text(client, NOTE_ABOUT_PDF, name="formats-note.txt")
    filing = post_text(client, INLINE_XBRL, name="acme-20231231.htm")
    assert note.status_code == 202 and filing.status_code == 202, (note.get_json(), filing.get_json())
    note_doc, filing_doc = note.get_json()["documents"][0], filing.get_json()["documents"][0]

    run_worker()

    note_doc = client.get(f"/api/documents/{note_doc['id']}").get_json()
    assert note_doc["content_type"] == filetypes.TEXT
    assert note_doc["status"] == "finished" and note_doc["chunks"] >= 1, note_doc
    assert "%PDF-1.7" in "\n".join(_chunk_texts(app, note_doc["id"]))
    assert row(app, note_doc["job_id"]).status == "finished"

    filing_doc = client.get(f"/api/documents/{filing_doc['id']}").get_json()
    assert filing_doc["content_type"] == filetypes.HTML
    assert filing_doc["status"] == "finished" and filing_doc["chunks"] >= 1, filing_doc
    indexed = "\n".join(_chunk_texts(app, filing_doc["id"]))
    assert "ACME Corporation annual report." in indexed and "1,234" in indexed
    for absent in ("HIDDEN", "<", ">", "ix:", "xmlns", "xml version"):
        assert absent not in indexed, absent


# --- how many files one upload may hold ---------------------------------------------------------

def _tiny_files(count: int) -> dict:
    import io

    return {"file": [(io.BytesIO(f"note {n}\n".encode()), f"note-{n}.txt") for n in range(count)]}


@pytest.mark.parametrize("count", [101, 1100])
def test_too_many_files_are_refused_with_the_real_limit(client, count):
    """1,100 tiny parts used to be answered "larger than the 50 MB limit" (Werkzeug's limit on
    form parts); 101 files pass the form parser and meet MAX_FILES_PER_UPLOAD itself."""
    response = client.post("/api/documents", data=_tiny_files(count), content_type="multipart/form-data")
    assert response.status_code == 413, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "too_many_files" and "at most 100 files" in error["message"], error
    assert "MB" not in error["message"]
    assert client.get("/api/documents").get_json()["documents"] == []  # nothing was uploaded


def test_an_upload_at_the_file_limit_is_accepted(config):
    from webapp import create_app

    app = create_app({**config, "MAX_FILES_PER_UPLOAD": 3, "MAX_FORM_PARTS": 13})
    with app.app_context():
        from webapp.core.db import create_tables

        create_tables()
    client = api_client(app)
    accepted = client.post("/api/documents", data=_tiny_files(3), content_type="multipart/form-data")
    assert accepted.status_code == 202 and len(accepted.get_json()["documents"]) == 3
    refused = client.post("/api/documents", data=_tiny_files(4), content_type="multipart/form-data")
    assert refused.status_code == 413 and "at most 3 files" in refused.get_json()["error"]["message"]


# PostgreSQL refuses a NUL character (U+0000) in any text value (psycopg2 raises ValueError before
# sending the query), so a NUL that reached a query was a 500 there while SQLite answered 200;
# schemathesis found two in CI. Docket refuses it at the edge, the same way on both databases.
NUL_REQUESTS = [
    ("get", "/api/jobs?kind=docu%00ment", None, 400),
    ("get", "/api/jobs?status=queued&cursor=%00", None, 400),
    ("get", "/api/search?q=notice&document_id=a%00b", None, 400),
    ("post", "/api/search", {"q": "notice", "batch_id": "a\u0000b"}, 400),
    ("post", "/api/search", {"q": "notice", "x\u0000": 1}, 400),
    ("post", "/api/reports", {"type": "documents", "params": {"document_ids": ["x\u0000y"]}}, 400),
    ("post", "/api/reports", {"type": "activity", "ignored\u0000key": 1}, 400),
    ("post", "/api/schedules", {"job": "activity_report", "cron": "0 6 * * *", "params": {"x": "a\u0000"}}, 400),
    ("get", "/api/jobs/abc%00def", None, 404),
    ("post", "/api/jobs/abc%00def/cancel", None, 404),
    ("get", "/api/documents/abc%00def", None, 404),
    ("get", "/api/reports/abc%00def/download?format=html", None, 404),
    ("get", "/api/reports/abc/download?format=ht%00ml", None, 400),
]


@pytest.mark.parametrize(("method", "path", "body", "status"), NUL_REQUESTS)
def test_a_nul_character_anywhere_in_a_request_is_a_clear_4xx(client, method, path, body, status):
    response = getattr(client, method)(path, json=body) if body is not None else getattr(client, method)(path)
    assert response.status_code == status, response.get_data(as_text=True)
    error = response.get_json()["error"]
    if status == 400:
        assert error["code"] == "invalid_characters"
        assert "NUL" in error["message"]
    else:
        assert error["code"].endswith("not_found")
    assert client.get("/api/jobs").status_code == 200  # the request's database connection is still good


def test_a_nul_character_in_an_upload_form_field_refuses_the_upload_and_stores_nothing(app, client):
    response = post_text(client, b"A short note.\n", name="note.txt", password="pass\x00word")
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.get_json()["error"]["code"] == "invalid_characters"
    assert client.get("/api/documents").get_json()["documents"] == []
    assert client.get("/api/jobs").get_json()["jobs"] == []



def test_a_cursor_made_to_carry_a_nul_character_is_an_invalid_cursor(client):
    import base64
    import json

    crafted = base64.urlsafe_b64encode(json.dumps(["2026-01-01T00:00:00", "a\u0000b"]).encode()).decode()
    response = client.get(f"/api/jobs?cursor={crafted}")
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.get_json()["error"]["code"] == "invalid_cursor"


@pytest.mark.parametrize("body", [
    '{"q": "notice", "document_id": "a\\ud800b"}',
    '{"type": "documents", "params": {"document_ids": ["\\udc00"]}}',
    '{"type": "activity", "x\\ud800": 1}',
])
def test_an_unpaired_surrogate_in_a_json_body_is_invalid_characters(client, body):
    """``"\\ud800"`` alone decodes to a code point no UTF-8 encoder accepts: it was a 500 on both
    databases when it reached a query (a document id of a report request)."""
    path = "/api/search" if '"q"' in body else "/api/reports"
    response = client.post(path, data=body, content_type="application/json")
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.get_json()["error"]["code"] == "invalid_characters"
    # A valid pair (an emoji, U+1F600) is a character like any other.
    assert client.post("/api/search", data='{"q": "\\ud83d\\ude00"}', content_type="application/json").status_code != 400


def test_a_cron_expression_longer_than_its_column_is_a_400_not_a_postgresql_500(client):
    every_minute_listed = ",".join(str(minute) for minute in range(60)) + " * * * *"
    response = client.post("/api/schedules", json={"job": "activity_report", "cron": every_minute_listed})
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.get_json()["error"]["code"] == "invalid_schedule"
    assert "at most 100 characters" in response.get_json()["error"]["message"]
    assert client.post("/api/schedules", json={"job": "activity_report", "cron": "*/1 * * * *"}).status_code == 201


@pytest.mark.parametrize("path", ["/api/search", "/api/reports", "/api/schedules"])
def test_a_json_body_nested_too_deeply_to_parse_is_invalid_json(client, path):
    """Python's json module raises RecursionError (not ValueError, so Flask's ``silent=True``
    does not catch it) past ~1,000 levels: it was a 500 in every view reading a JSON body."""
    response = client.post(path, data="[" * 100_000 + "]" * 100_000, content_type="application/json")
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.get_json()["error"]["code"] == "invalid_json"
