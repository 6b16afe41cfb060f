"""OCR end to end: uploads through the API, real worker processes (jobs/ocr.py, jobs/readers/image.py)."""

from __future__ import annotations

import io
import struct
import zlib

import pypdfium2 as pdfium
import pytest

from tests.conftest import CORPUS, post_text, upload, wait_for
from webapp.core.models import Chunk, Document

FORMATS = CORPUS.parent / "corpus-formats"
DOCLING = "Docling bundles PDF document conversion to JSON and Markdown in an easy self contained package"


def _chunks(app, document_id: str) -> list[Chunk]:
    with app.app_context():
        return list(Chunk.select().where(Chunk.document == document_id).order_by(Chunk.ordinal))


def _ocr_pages(app, document_id: str) -> int:
    with app.app_context():
        return Document.get_by_id(document_id).ocr_pages


def _mixed_pdf() -> bytes:
    """Page 1 of a text PDF, then the huck-finn scan page, then page 2 of the text PDF."""
    text = pdfium.PdfDocument(str(CORPUS / "latex-two-column-lorem.pdf"))
    scan = pdfium.PdfDocument(str(CORPUS / "huck-finn-p22-scan.pdf"))
    mixed = pdfium.PdfDocument.new()
    mixed.import_pages(text, [0])
    mixed.import_pages(scan, [0])
    mixed.import_pages(text, [1])
    out = io.BytesIO()
    mixed.save(out)
    return out.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` × ``height`` pixels, with one tiny compressed row:
    a few dozen bytes that would decode to gigabytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


# A hang guard matching its worker's own 900 s bound (pytest.ini's 300 s is too little for ≈ 10 pages of
# single-threaded OCR on a loaded 2-core machine: it timed out at 300 s in a CI check with other work running).
@pytest.mark.timeout(960)
def test_scans_rotations_mixed_pdfs_and_images_are_read_by_ocr(app, client, run_worker):
    rotated = upload(client, "docling-image-only-4p.pdf").get_json()["documents"][0]
    mixed = post_text(client, _mixed_pdf(), "mixed.pdf").get_json()["documents"][0]
    webp = post_text(client, (FORMATS / "webp-test.webp").read_bytes(), "webp-test.webp").get_json()["documents"][0]
    tiff = post_text(client, (FORMATS / "2206.01062.tif").read_bytes(), "paper.tif").get_json()["documents"][0]
    bomb = post_text(client, _png_declaring(50_000, 50_000), "bomb.png").get_json()["documents"][0]
    output = run_worker(timeout=900)
    log = output.stdout + output.stderr
    assert "Traceback" not in log, log[log.index("Traceback") - 1500:log.index("Traceback") + 3000]

    # Every page of the 4-page scan (upright, 180°, 90°, 270°) reads the sentence, in order.
    details = client.get(f"/api/documents/{rotated['id']}").get_json()
    assert details["status"] == "finished" and details["pages"] == 4, details
    assert _ocr_pages(app, rotated["id"]) == 4 and "no text layer (needs OCR)" not in details["warnings"]
    chunks = _chunks(app, rotated["id"])
    assert chunks and all(chunk.ocr and 0.9 <= chunk.ocr_confidence <= 1 for chunk in chunks)
    text = " ".join(" ".join(chunk.text.split()) for chunk in chunks)
    assert text.count(DOCLING) == 4, text
    job = client.get(rotated["status_url"]).get_json()
    assert job["result"]["ocr_pages"] == 4

    # The mixed PDF: its text pages keep their text layer, only the scan page is read by OCR.
    details = client.get(f"/api/documents/{mixed['id']}").get_json()
    assert details["status"] == "finished" and details["pages"] == 3 and _ocr_pages(app, mixed["id"]) == 1, details
    chunks = _chunks(app, mixed["id"])
    scanned = [chunk for chunk in chunks if chunk.ocr]
    assert scanned and all(chunk.page_start <= 2 <= chunk.page_end for chunk in scanned)
    assert any("tip-toeing along a path" in chunk.text for chunk in scanned)
    assert any(not chunk.ocr and chunk.page_end == 1 and "Lorem" in chunk.text for chunk in chunks)
    assert details["warnings"] == []

    # Images: the WebP paragraph, and the TIFF's two frames as two pages.
    details = client.get(f"/api/documents/{webp['id']}").get_json()
    assert details["status"] == "finished" and details["pages"] == 1 and _ocr_pages(app, webp["id"]) == 1, details
    assert DOCLING in " ".join(" ".join(chunk.text.split()) for chunk in _chunks(app, webp["id"]))
    details = client.get(f"/api/documents/{tiff['id']}").get_json()
    assert details["status"] == "finished" and details["pages"] == 2 and _ocr_pages(app, tiff["id"]) == 2, details
    chunks = _chunks(app, tiff["id"])
    assert {chunk.page_start for chunk in chunks} >= {1, 2} and all(chunk.ocr for chunk in chunks)
    assert "DocLayNet" in chunks[0].text

    # The pixel bomb fails from its header, never decoded.
    failed = client.get(f"/api/documents/{bomb['id']}").get_json()
    assert failed["status"] == "failed" and failed["error_code"] == "too_many_pixels", failed
    assert "50,000 × 50,000 pixels" in failed["error"] and "MAX_IMAGE_PIXELS" in failed["error"]


def test_with_ocr_off_a_scan_keeps_the_old_warning_and_an_image_fails(app, client, run_worker):
    scan = upload(client, "huck-finn-p22-scan.pdf").get_json()["documents"][0]
    webp = post_text(client, (FORMATS / "webp-test.webp").read_bytes(), "webp-test.webp").get_json()["documents"][0]
    run_worker(OCR="off")
    details = client.get(f"/api/documents/{scan['id']}").get_json()
    assert details["status"] == "finished" and details["chunks"] == 0 and _ocr_pages(app, scan["id"]) == 0
    assert "no text layer (needs OCR)" in details["warnings"]
    failed = client.get(f"/api/documents/{webp['id']}").get_json()
    assert failed["status"] == "failed" and failed["error_code"] == "ocr_disabled"
    assert "OCR=off" in failed["error"] and "Traceback" not in failed["error"]


def test_an_image_where_ocr_finds_nothing_finishes_with_no_chunks_and_a_warning(app, client, run_worker):
    from PIL import Image

    blank = io.BytesIO()
    Image.new("RGB", (600, 400), "white").save(blank, "PNG")
    document = post_text(client, blank.getvalue(), "blank.png").get_json()["documents"][0]
    run_worker()
    details = client.get(f"/api/documents/{document['id']}").get_json()
    assert details["status"] == "finished" and details["chunks"] == 0, details
    assert details["warnings"] == ["no text layer, and OCR found no text on it"]


def test_a_canceled_ocr_job_stops_within_a_page(app, client, start_worker):
    # Eight scan pages: minutes of OCR, stopped after the first.
    pdf = pdfium.PdfDocument.new()
    scan = pdfium.PdfDocument(str(CORPUS / "linn-brochure-two-column-scan.pdf"))
    pdf.import_pages(scan, [0] * 8)
    data = io.BytesIO()
    pdf.save(data)
    document = post_text(client, data.getvalue(), "long-scan.pdf").get_json()["documents"][0]
    start_worker()
    wait_for(lambda: client.get(document["status_url"]).get_json()["stage"] == "ocr", 300, "the job reading by OCR")
    response = client.post(f"/api/jobs/{document['job_id']}/cancel")
    assert response.status_code == 200, response.get_json()
    job = wait_for(lambda: (lambda j: j if j["status"] == "stopped" and j["rq_status"] in ("stopped", None)
                            else None)(client.get(document["status_url"]).get_json()), 120, "the job stopped")
    assert job["progress"] < 40
    with app.app_context():
        document_row = Document.get_by_id(document["id"])
        assert document_row.chunk_count in (None, 0) and not _chunks(app, document["id"])
