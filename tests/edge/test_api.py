"""The HTTP edge: validation, JSON errors, job listing, health probes. Nothing here needs a worker."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from tests.conftest import api_client, browser_client, CORPUS, upload
from webapp import create_app
from webapp.core.db import create_tables
from webapp.core.models import Document, Job


def _stored_files(config) -> list[Path]:
    root = Path(config["STORAGE_PATH"])
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_no_file_is_400_json(client):
    response = client.post("/api/documents", data={}, content_type="multipart/form-data")
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "no_file"


def test_a_zero_byte_file_refuses_only_itself(app, client, config):
    response = upload(client, "minimal-document.pdf", "empty.pdf")
    assert response.status_code == 202
    body = response.get_json()
    assert [d["filename"] for d in body["documents"]] == ["minimal-document.pdf"]
    (refused,) = body["refused"]
    assert refused["filename"] == "empty.pdf" and refused["error_code"] == "empty_file"
    assert "empty.pdf is empty" in refused["error"]
    with app.app_context():
        assert Document.select().count() == 1 and Job.select().count() == 1
    assert len(_stored_files(config)) == 1


def test_a_request_of_only_refused_files_is_refused_and_stores_nothing(app, client, config):
    response = client.post("/api/documents", data={"file": [(io.BytesIO(b""), "empty.txt"),
                                                             (io.BytesIO(b"\x00\x01\x02" * 100), "blob.bin")]},
                           content_type="multipart/form-data")
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "empty_file" and "1 other file(s) were refused too" in error["message"]
    assert "Nothing was uploaded" in error["message"]
    with app.app_context():
        assert Document.select().count() == 0 and Job.select().count() == 0
    assert _stored_files(config) == []


def test_type_is_decided_from_the_bytes_not_the_name(app, client):
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
    response = client.post("/api/documents", data={"file": (io.BytesIO(png), "report.pdf")},
                           content_type="multipart/form-data")
    assert response.status_code == 415
    assert response.get_json()["error"]["code"] == "unsupported_media_type"

    pdf = (CORPUS / "minimal-document.pdf").read_bytes()
    response = client.post("/api/documents", data={"file": (io.BytesIO(pdf), "notes.txt")},
                           content_type="multipart/form-data")
    assert response.status_code == 202
    document = client.get(f"/api/documents/{response.get_json()['documents'][0]['id']}").get_json()
    assert document["content_type"] == "application/pdf"
    assert document["bytes"] == len(pdf) and document["status"] == "queued"


def test_storage_keys_are_made_by_the_server_not_the_client(app, client, config):
    pdf = (CORPUS / "minimal-document.pdf").read_bytes()
    response = client.post("/api/documents", data={"file": (io.BytesIO(pdf), "../../etc/passwd.pdf")},
                           content_type="multipart/form-data")
    assert response.status_code == 202
    (stored,) = _stored_files(config)
    assert stored.is_relative_to(Path(config["STORAGE_PATH"])) and "passwd" not in str(stored)
    assert response.get_json()["documents"][0]["filename"] == "passwd.pdf"


def test_over_max_content_length_is_413_json(config):
    app = create_app({**config, "MAX_CONTENT_LENGTH": 10_000})
    with app.app_context():
        create_tables()
    response = upload(api_client(app), "minimal-document.pdf")  # 16,978 bytes
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "payload_too_large"


def test_redis_down_marks_the_row_failed_and_answers_503(config, unused_redis_url):
    app = create_app({**config, "REDIS_URL": unused_redis_url})
    with app.app_context():
        create_tables()
    response = upload(api_client(app), "minimal-document.pdf")
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "queue_unavailable"
    with app.app_context():
        (job,) = Job.select()
        assert job.status == "failed" and "Redis" in job.error and job.ended_at is not None


def test_unknown_ids_and_paths_are_404_json(client):
    for path in ("/api/jobs/nope", "/api/documents/nope", "/api/nothing-here"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert set(response.get_json()["error"]) == {"code", "message"}
    assert client.delete("/api/jobs").status_code == 405


def test_job_list_is_newest_first_with_a_cursor_and_filters(client):
    job_ids = [upload(client, "minimal-document.pdf", reprocess="true").get_json()["documents"][0]["job_id"]
               for _ in range(5)]
    first = client.get("/api/jobs?limit=2").get_json()
    assert [j["id"] for j in first["jobs"]] == job_ids[::-1][:2]
    second = client.get(f"/api/jobs?limit=2&cursor={first['next']}").get_json()
    third = client.get(f"/api/jobs?limit=2&cursor={second['next']}").get_json()
    assert [j["id"] for j in second["jobs"] + third["jobs"]] == job_ids[::-1][2:]
    assert third["next"] is None
    assert len(client.get("/api/jobs?status=queued&kind=document").get_json()["jobs"]) == 5
    assert client.get("/api/jobs?status=finished").get_json()["jobs"] == []
    assert client.get("/api/jobs?status=done").status_code == 400
    assert client.get("/api/jobs?limit=0").status_code == 400
    assert client.get("/api/jobs?cursor=garbage").get_json()["error"]["code"] == "invalid_cursor"


def test_rq_status_is_null_once_rq_has_forgotten_the_job(client, redis):
    job_id = upload(client, "minimal-document.pdf").get_json()["documents"][0]["job_id"]
    assert client.get(f"/api/jobs/{job_id}").get_json()["rq_status"] == "queued"
    redis.flushall()  # RQ's keys expire (result_ttl) or a Redis loses its data; the row stays
    job = client.get(f"/api/jobs/{job_id}").get_json()
    assert job["rq_status"] is None and job["status"] == "queued"


@pytest.mark.parametrize("query", ["", "   "])
def test_search_needs_a_query(client, query):
    response = client.get("/api/search", query_string={"q": query})
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "missing_query"


def test_search_with_no_chunks_is_empty(client):
    assert client.get("/api/search?q=anything").get_json() == {"results": []}


def test_health_and_readiness(client, config, unused_redis_url):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    down = create_app({**config, "REDIS_URL": unused_redis_url}).test_client().get("/readyz")
    assert down.status_code == 503
    body = down.get_json()
    assert body["checks"]["database"] == "ok" and body["checks"]["redis"].startswith("down")
    assert "redis" in body["error"]["message"]


def test_index_page_has_the_upload_form(app):
    page = browser_client(app).get("/").get_data(as_text=True)
    assert 'type="file"' in page and 'name="password"' in page
