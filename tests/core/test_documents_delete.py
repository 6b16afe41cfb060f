"""DELETE /api/documents/<id>: the document, its chunks, stored bytes, its jobs' rows and RQ's
records go; a running job is stopped first — with real Redis and real worker processes."""

from __future__ import annotations

import time

from rq.job import Job as RQJob

from tests.conftest import long_text, post_text, row, upload, wait_for
from tests.local_services import slow_worker_env
from webapp.core.db import connection
from webapp.core.models import Chunk, Document, Job


def stored_files(config) -> list:
    from pathlib import Path

    return [p for p in Path(config["STORAGE_PATH"]).rglob("*") if p.is_file()]


def counts(app, document_id: str) -> tuple[int, int, int]:
    with app.app_context(), connection():
        return (Document.select().where(Document.id == document_id).count(),
                Chunk.select().where(Chunk.document == document_id).count(),
                Job.select().where(Job.document == document_id).count())


def test_deleting_a_finished_document_removes_everything_made_from_it(app, client, config, redis, run_worker):
    kept = upload(client, "war-and-peace-ch1.txt").get_json()["documents"][0]
    gone = upload(client, "pypdf-extract-text.md").get_json()["documents"][0]
    run_worker()
    assert counts(app, gone["id"])[1] > 0 and len(stored_files(config)) == 2
    assert RQJob.exists(gone["job_id"], connection=redis)

    response = client.delete(f"/api/documents/{gone['id']}")
    assert response.status_code == 204 and response.data == b""
    assert counts(app, gone["id"]) == (0, 0, 0)
    assert not RQJob.exists(gone["job_id"], connection=redis)
    assert len(stored_files(config)) == 1
    assert client.get(f"/api/documents/{gone['id']}").status_code == 404
    assert client.get(f"/api/jobs/{gone['job_id']}").status_code == 404
    assert client.delete(f"/api/documents/{gone['id']}").status_code == 404
    results = client.get("/api/search", query_string={"q": "extract text pypdf", "k": 50}).get_json()["results"]
    assert results and {r["document_id"] for r in results} == {kept["id"]}
    # The batch of the deleted document is still answered (with the documents it has left).
    assert client.get(f"/api/batches/{gone['batch_id']}").get_json()["documents"] == []
    assert counts(app, kept["id"])[0] == 1


def test_deleting_a_running_document_stops_its_job_first(app, client, config, openai_app, openai_client,
                                                          openai_server, start_worker):
    worker = start_worker(**slow_worker_env(openai_server))
    document = post_text(openai_client, long_text()).get_json()["documents"][0]
    wait_for(lambda: row(app, document["job_id"]).status == "started", 60, "the document to start")
    assert openai_client.delete(f"/api/documents/{document['id']}").status_code == 204
    assert counts(app, document["id"]) == (0, 0, 0) and stored_files(config) == []
    time.sleep(3)  # the stopped job must not write its chunks afterwards
    assert counts(app, document["id"]) == (0, 0, 0)
    with app.app_context(), connection():
        assert Chunk.select().count() == 0
    assert worker.poll() is None  # the worker lives on and takes the next job
    after = post_text(openai_client, b"A short note after the delete.", name="after.txt").get_json()["documents"][0]
    wait_for(lambda: row(app, after["job_id"]).status == "finished", 60, "the next document")
