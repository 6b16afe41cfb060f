"""The document job end to end: upload through the API, a real worker process, the results."""

from __future__ import annotations

from rq import Queue

from tests.conftest import upload
from webapp.core.encryption import decrypt_secret
from webapp.core.models import Chunk, Job


def test_pdf_is_processed_to_finished_with_chunks_and_is_searchable(client, run_worker):
    response = upload(client, "dpr-paper-two-column.pdf")
    assert response.status_code == 202
    (document,) = response.get_json()["documents"]
    queued = client.get(document["status_url"]).get_json()
    assert queued["status"] == "queued" and queued["rq_status"] == "queued"
    assert queued["id"] == document["job_id"] and queued["document_id"] == document["id"]
    assert queued["enqueued_at"] is not None and queued["started_at"] is None

    run_worker()

    job = client.get(document["status_url"]).get_json()
    assert job["status"] == "finished", job
    assert job["rq_status"] == "finished"
    assert job["progress"] == 100 and job["stage"] is None and job["error"] is None
    assert job["started_at"] <= job["ended_at"]
    assert job["result"]["chunks"] > 10
    details = client.get(f"/api/documents/{document['id']}").get_json()
    assert details["status"] == "finished"
    assert details["pages"] == 13 and details["chunks"] == job["result"]["chunks"]
    assert abs(details["chars"] - 47204) <= 0.1 * 47204

    hits = client.get("/api/search", query_string={"q": "dense passage retrieval question answering", "k": 3})
    results = hits.get_json()["results"]
    assert len(results) == 3
    assert results[0]["document_id"] == document["id"] and results[0]["filename"] == "dpr-paper-two-column.pdf"
    assert 1 <= results[0]["page_start"] <= results[0]["page_end"] <= 13
    assert results[0]["score"] >= results[1]["score"] >= results[2]["score"]


def test_encrypted_pdf_fails_with_password_required_then_finishes_with_the_password(client, run_worker):
    without = upload(client, "aes128-r4-user-password.pdf").get_json()["documents"][0]
    wrong = upload(client, "aes128-r4-user-password.pdf", password="nope").get_json()["documents"][0]
    right = upload(client, "aes128-r4-user-password.pdf", password="asdfzxcv").get_json()["documents"][0]
    output = run_worker()
    # Expected user errors log one line each, never a traceback.
    log = output.stdout + output.stderr
    assert "Traceback" not in log, log[-3000:]
    assert f"job {without['job_id']} failed (password_required)" in log and "(wrong_password)" in log, log[-3000:]

    failed = client.get(f"/api/documents/{without['id']}").get_json()
    assert failed["status"] == "failed" and failed["error_code"] == "password_required" and failed["error"]
    assert client.get(without["status_url"]).get_json()["rq_status"] == "failed"
    assert client.get(f"/api/documents/{wrong['id']}").get_json()["error_code"] == "wrong_password"
    finished = client.get(f"/api/documents/{right['id']}").get_json()
    assert finished["status"] == "finished" and finished["chunks"] >= 1 and finished["error"] is None


def test_password_is_not_kept_after_the_job_ends(app, client, run_worker):
    from webapp.core.models import Document

    documents = upload(client, "doclaynet-p3-password.pdf", "minimal-document.pdf", password="1234").get_json()["documents"]
    with app.app_context():
        stored = [Document.get_by_id(d["id"]).password for d in documents]  # encrypted at rest
        assert all(value and "1234" not in value and decrypt_secret(app.config, value) == "1234" for value in stored)
    run_worker()
    with app.app_context():
        assert all(Document.get_by_id(d["id"]).password is None for d in documents)


def test_running_the_job_twice_leaves_exactly_one_set_of_chunks(app, client, run_worker, redis):
    document = upload(client, "latex-two-column-lorem.pdf").get_json()["documents"][0]
    run_worker()
    with app.app_context():
        first = [(c.ordinal, c.text) for c in Chunk.select().where(Chunk.document == document["id"]).order_by(Chunk.ordinal)]
    assert first

    # A second delivery of the same job (RQ delivers at least once): same id, same argument.
    Queue("default", connection=redis).enqueue("jobs.document_job.process_document", document["id"], job_id=document["job_id"])
    run_worker()

    with app.app_context():
        second = [(c.ordinal, c.text) for c in Chunk.select().where(Chunk.document == document["id"]).order_by(Chunk.ordinal)]
        job = Job.get_by_id(document["job_id"])
    assert second == first
    assert job.status == "finished" and job.attempts == 2


def test_scanned_pdf_finishes_with_zero_chunks_and_an_ocr_warning_when_ocr_is_off(client, run_worker):
    document = upload(client, "huck-finn-p22-scan.pdf").get_json()["documents"][0]
    run_worker(OCR="off")  # by default it is read by OCR (tests/jobs/test_ocr.py)
    details = client.get(f"/api/documents/{document['id']}").get_json()
    assert details["status"] == "finished"
    assert details["chunks"] == 0 and details["chars"] == 0
    assert "no text layer (needs OCR)" in details["warnings"]


def test_damaged_pdf_fails_with_a_readable_reason(client, run_worker):
    document = upload(client, "truncated-pdflatex-4-pages.pdf").get_json()["documents"][0]
    run_worker()
    job = client.get(document["status_url"]).get_json()
    assert job["status"] == "failed" and job["error_code"] == "damaged_file"
    assert job["error"] and "Traceback" not in job["error"]


def test_missing_stored_bytes_fail_the_job_with_a_reason(app, client, run_worker, config):
    import shutil

    document = upload(client, "minimal-document.pdf").get_json()["documents"][0]
    shutil.rmtree(config["STORAGE_PATH"])
    run_worker()
    job = client.get(document["status_url"]).get_json()
    # The file is gone (not a storage outage): permanent, no retry.
    assert job["status"] == "failed" and job["error_code"] == "file_missing" and job["attempts"] == 1
