"""Slides, sheets, CSV and e-books end to end: uploaded through POST /api/documents, read by a
real worker, stored as chunks (the files of ../shared/corpus-formats, read there, never copied)."""

from __future__ import annotations

import io

from tests.conftest import ROOT, post_text
from webapp.core import filetypes
from webapp.core.models import Chunk

CORPUS_FORMATS = ROOT.parent / "shared" / "corpus-formats"


def _post(client, *names: str):
    files = [(io.BytesIO((CORPUS_FORMATS / name).read_bytes()), name) for name in names]
    return client.post("/api/documents", data={"file": files}, content_type="multipart/form-data")


def _chunks(app, document_id: str) -> list[Chunk]:
    with app.app_context():
        return list(Chunk.select().where(Chunk.document == document_id).order_by(Chunk.ordinal))


def _table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("| ")]


def test_pptx_xlsx_csv_and_epub_finish_with_chunks(app, client, run_worker):
    response = _post(client, "powerpoint_sample.pptx", "xlsx_01.xlsx", "csv-comma.csv", "epub_purvis_poetry.epub")
    assert response.status_code == 202, response.get_json()
    deck, book, sheet_csv, ebook = response.get_json()["documents"]
    output = run_worker()
    log = output.stdout + output.stderr
    assert "Traceback" not in log, log[-3000:]

    details = {d["filename"]: client.get(f"/api/documents/{d['id']}").get_json() for d in (deck, book, sheet_csv, ebook)}
    for name, document in details.items():
        assert document["status"] == "finished" and document["chunks"] >= 1 and document["error"] is None, document
    assert details["powerpoint_sample.pptx"]["content_type"] == filetypes.PPTX
    assert details["powerpoint_sample.pptx"]["pages"] == 3
    assert details["csv-comma.csv"]["content_type"] == filetypes.CSV

    slides = _chunks(app, deck["id"])
    assert {(c.page_start, c.page_end) for c in slides} <= {(1, 1), (1, 2), (2, 2), (2, 3), (3, 3), (1, 3)}
    assert any("| R1 | True | False |" in c.text for c in slides)
    assert any("Notes: Some notes on the second slide." in c.text for c in slides)

    # A table chunk of the workbook starts (after any heading line) with its sheet's header row.
    sheets = _chunks(app, book["id"])
    first_table = next(c for c in sheets if _table_rows(c.text))
    assert _table_rows(first_table.text)[:2] == ["| first | second | third |", "| 1 | 5 | 9 |"]
    assert "Sheet1" in first_table.text and first_table.page_start is None

    rows = _chunks(app, sheet_csv["id"])
    assert _table_rows(rows[0].text)[0].startswith("| Index | Customer Id | First Name |")
    # Every row is whole: each line of each chunk is a complete pipe row.
    assert all(line.endswith(" |") for c in rows for line in _table_rows(c.text))

    poems = " ".join(c.text for c in _chunks(app, ebook["id"]))
    assert poems.index("The Grave of the Slave") < poems.index("A Prayer")


def test_an_xlsx_past_max_sheet_cells_fails_with_a_sentence(client, run_worker, config):
    response = _post(client, "xlsx_01.xlsx")
    (document,) = response.get_json()["documents"]
    run_worker(MAX_SHEET_CELLS="20")
    failed = client.get(f"/api/documents/{document['id']}").get_json()
    assert failed["status"] == "failed" and failed["error_code"] == "too_many_cells", failed
    assert "MAX_SHEET_CELLS" in failed["error"] and "20" in failed["error"]


def test_an_encrypted_office_file_is_refused_at_upload_with_a_reason(client):
    response = post_text(client, filetypes.CFB_MAGIC + bytes(4096), name="locked.xlsx")
    assert response.status_code == 415
    error = response.get_json()["error"]
    assert error["code"] == "unsupported_media_type" and "password-protected" in error["message"], error
