"""Report jobs on the `high` queue through the API and real worker processes: both types in all
four formats with real content, the chat-written summary, `high` starting at once while
`default` is busy, and the order a single worker takes the queues in."""

from __future__ import annotations

import csv
import io
import json

import pypdfium2
import pypdfium2.raw as pdfium_c
import pytest

from tests.conftest import long_text, post_text, row, upload, wait_for
from tests.local_services import SUMMARY, slow_worker_env
from webapp.core.db import connection
from webapp.core.models import Job


def request(client, type_: str, params: dict | None = None):
    return client.post("/api/reports", json={"type": type_, "params": params or {}})


def pdf_text_and_images(data: bytes) -> tuple[str, int]:
    document = pypdfium2.PdfDocument(data)
    text = "".join(page.get_textpage().get_text_range() for page in document)
    images = sum(len(list(page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE]))) for page in document)
    return text, images


def finished_report(client, report_id: str) -> dict:
    report = client.get(f"/api/reports/{report_id}").get_json()
    assert report["status"] == "finished", report
    return report


def test_both_report_types_in_all_four_formats_with_real_content(app, client, run_worker):
    body = upload(client, "minimal-document.pdf", "war-and-peace-ch1.txt", "libreoffice-writer-password.pdf").get_json()
    run_worker()
    activity = request(client, "activity")
    assert activity.status_code == 202
    activity = activity.get_json()
    assert client.get(f"/api/reports/{activity['id']}/download?format=pdf").status_code == 404  # not made yet
    documents = request(client, "documents", {"document_ids": [d["id"] for d in body["documents"]]}).get_json()
    assert row(app, activity["job_id"]).queue == "high"
    listed = client.get("/api/reports?limit=5").get_json()["reports"]
    assert [r["id"] for r in listed] == [documents["id"], activity["id"]]  # newest first
    assert client.get("/api/reports?limit=0").status_code == 400
    run_worker()

    report = finished_report(client, activity["id"])
    assert set(report["downloads"]) == {"html", "csv", "json", "pdf"}
    files = {fmt: client.get(url) for fmt, url in report["downloads"].items()}
    assert all(r.status_code == 200 for r in files.values())
    assert files["pdf"].mimetype == "application/pdf" and files["csv"].mimetype == "text/csv"
    data = json.loads(files["json"].data)
    kinds = {(r["kind"], r["status"]): r["count"] for r in data["by_kind_status"]}
    assert kinds[("document", "finished")] == 2 and kinds[("document", "failed")] == 1
    assert data["failures_by_code"][0]["error_code"] == "password_required"
    assert data["queue_wait_seconds"]["p50"] is not None and data["run_seconds"]["p95"] is not None
    assert sum(hour["finished"] for hour in data["per_hour"]) == 2
    html = files["html"].data.decode()
    assert "password_required" in html and "data:image/png;base64," in html and "<script" not in html
    hours = list(csv.DictReader(io.StringIO(files["csv"].data.decode())))
    assert sum(int(r["finished"]) for r in hours if r["hour"] != "total") == 2
    text, images = pdf_text_and_images(files["pdf"].data)
    assert "password_required" in text and images >= 1  # the chart is an image in the PDF

    report = finished_report(client, documents["id"])
    files = {fmt: client.get(url).data for fmt, url in report["downloads"].items()}
    data = json.loads(files["json"])
    by_name = {d["filename"]: d for d in data["documents"]}
    war = by_name["war-and-peace-ch1.txt"]
    assert war["summary_method"] == "extractive" and len(war["summary"]) > 80 and war["chunks"] > 0
    assert by_name["libreoffice-writer-password.pdf"]["status"] == "failed"
    text, _ = pdf_text_and_images(files["pdf"])
    assert "war-and-peace-ch1.txt" in text and war["summary"][:30] in text.replace("\r\n", " ")
    assert "war-and-peace-ch1.txt" in files["html"].decode()
    assert {r["filename"] for r in csv.DictReader(io.StringIO(files["csv"].decode()))} == set(by_name)


def test_documents_summaries_come_from_the_chat_api_when_a_key_is_set(app, client, chat_server, run_worker):
    document = upload(client, "war-and-peace-ch1.txt").get_json()["documents"][0]
    run_worker()
    report = request(client, "documents", {"document_ids": [document["id"]]}).get_json()
    run_worker(OPENAI_API_KEY="test-key", OPENAI_BASE_URL=chat_server.url, SUMMARY_MODEL="summary-model")
    data = json.loads(client.get(finished_report(client, report["id"])["downloads"]["json"]).data)
    assert data["documents"][0]["summary"] == SUMMARY
    assert data["documents"][0]["summary_method"] == "openai:summary-model"
    assert chat_server.requests[0].model == "summary-model"
    assert "Prince" in json.dumps(chat_server.requests[0].messages)


def test_bad_report_requests_get_a_sentence_and_a_failed_report_a_409(app, client, run_worker):
    for body, code in [
        ({"type": "nope"}, "invalid_report_type"),
        ({"type": "activity", "params": {"since": "yesterday"}}, "invalid_params"),
        ({"type": "activity", "params": {"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}},
         "invalid_params"),
        ({"type": "documents", "params": {"document_ids": ["missing"]}}, "invalid_params"),
        ({"type": "documents", "params": {"colour": "red"}}, "invalid_params"),
    ]:
        answer = client.post("/api/reports", json=body)
        assert answer.status_code == 400 and answer.get_json()["error"]["code"] == code, (body, answer.get_json())
    assert client.post("/api/reports", data="not json").status_code == 400
    assert client.get("/api/reports/nope").status_code == 404

    report = request(client, "activity").get_json()
    assert client.post(f"/api/jobs/{report['job_id']}/cancel").get_json()["status"] == "canceled"
    answer = client.get(f"/api/reports/{report['id']}/download?format=csv")
    assert answer.status_code == 409 and answer.get_json()["error"]["code"] == "report_failed"
    assert client.get(f"/api/reports/{report['id']}/download?format=doc").status_code == 400


def test_a_report_starts_at_once_while_every_default_worker_runs_a_long_document(
    app, openai_client, openai_server, start_worker
):
    # One process for both queues, busy with a slow document; HIGH_QUEUE_WORKERS=1 keeps one on `high`.
    start_worker(**{**slow_worker_env(openai_server), "HIGH_QUEUE_WORKERS": "1"})
    document = post_text(openai_client, long_text()).get_json()["documents"][0]
    wait_for(lambda: row(app, document["job_id"]).status == "started", 60, "the document to start")
    report = request(openai_client, "activity").get_json()
    job = wait_for(lambda: (lambda j: j if j.started_at else None)(row(app, report["job_id"])), 30,
                   "the report to start")
    wait = (job.started_at - job.enqueued_at).total_seconds()
    assert wait < 2, f"the report waited {wait:.2f} s in `high` while `default` was busy"
    assert row(app, document["job_id"]).status == "started"  # the document was still running


@pytest.mark.timeout(300)
def test_a_single_worker_takes_every_high_job_before_any_default_job(app, client, run_worker):
    documents = [upload(client, name).get_json()["documents"][0]["job_id"]
                 for name in ("minimal-document.pdf", "war-and-peace-ch1.txt", "pypdf-extract-text.md")]
    reports = [request(client, "activity").get_json()["job_id"] for _ in range(2)]  # enqueued after them
    run_worker(WORKER_CONCURRENCY="1", HIGH_QUEUE_WORKERS="0")
    with app.app_context(), connection():
        order = [job.id for job in Job.select().order_by(Job.started_at)]
    assert set(order[:2]) == set(reports) and set(order[2:]) == set(documents), order
