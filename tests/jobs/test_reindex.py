"""The reindex job after a change of ``EMBEDDER``: stale documents found, processed again at a
bounded rate by real ``rq worker`` processes, searches answering every document all along,
cancel, one reindex at a time (a second request gets the running one), and the admin API's counts per vector space.

Documents are first embedded by the hashing embedder (``EMBEDDER=hashing``: an app and a worker
of the old settings); the test's ``app`` and later workers use the default, WordLlama.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ServiceProcesses, api_client, post_text, wait_for
from webapp import create_app
from webapp.core.db import connection
from webapp.core.embeddings import HashingEmbedder, WordLlamaEmbedder
from webapp.core.indexing import index_digest
from webapp.core.models import Chunk, Document, Job

DEADLINE = 180  # seconds; only against a hang, never asserted as a speed
OLD, NEW = HashingEmbedder.name, WordLlamaEmbedder.name
PHRASES = ["quarterly falconry budget", "submarine cable inspection", "vineyard irrigation schedule",
           "glacier retreat measurements", "lighthouse keeper roster"]


def _text(phrase: str) -> bytes:
    return (f"Minutes of the meeting on the {phrase}.\n\n"
            f"Everyone agreed that the {phrase} needs a second review next month.").encode()


@pytest.fixture
def library(app, config, run_worker):
    """Five documents embedded under the old settings (hashing) by a real worker; returns
    ``(old_app, {phrase: document id})``. The test's ``app`` has the new settings (WordLlama)."""
    old_app = create_app({**config, "EMBEDDER": "hashing"})
    client = api_client(old_app)
    ids = {}
    for n, phrase in enumerate(PHRASES):
        response = post_text(client, _text(phrase), name=f"minutes-{n}.txt")
        assert response.status_code == 202, response.get_json()
        ids[phrase] = response.get_json()["documents"][0]["id"]
    run_worker(EMBEDDER="hashing")
    with app.app_context(), connection():
        assert {Job.get_by_id(d.job_id).status for d in Document.select()} == {"finished"}
        assert {d.index_digest for d in Document.select()} == {index_digest(old_app.config)}
    assert index_digest(old_app.config) != index_digest(app.config)
    return old_app, ids


def spaces_of(app) -> dict[str, set[str]]:
    """Vector space → the documents with chunks in it."""
    with app.app_context(), connection():
        found: dict[str, set[str]] = {}
        for space, document_id in Chunk.select(Chunk.embedding_model, Chunk.document).tuples():
            found.setdefault(space, set()).add(document_id)
        return found


def assert_every_document_found(client, ids: dict[str, str]) -> None:
    """Each document's phrase finds that document, in hybrid and vector mode."""
    for mode in ("hybrid", "vector"):
        for phrase, document_id in ids.items():
            response = client.get("/api/search", query_string={"q": phrase, "k": 3, "mode": mode})
            assert response.status_code == 200, response.get_json()
            assert document_id in [r["document_id"] for r in response.get_json()["results"]], (mode, phrase)


def document_jobs_after(app, job_ids: set[str]) -> list[Job]:
    """The document jobs other than ``job_ids`` (those of the first processing)."""
    with app.app_context(), connection():
        return list(Job.select().where(Job.kind == "document", Job.id.not_in(list(job_ids))))


def high_only_worker(config, tmp_path: Path, **env: str) -> ServiceProcesses:
    """A worker of one process on ``high`` only: it runs the reindex job, never a document job."""
    return ServiceProcesses(config, tmp_path, "high-worker", ["rq", "worker", "high", "-c", "1", "--reserved", "0"],
                            defaults=env)


def test_a_reindex_after_changing_the_embedder_keeps_every_document_searchable(app, config, library, run_worker,
                                                                              start_worker, tmp_path):
    old_app, ids = library
    admin = api_client(app)
    first_jobs = {job.id for job in document_jobs_after(app, set())}

    # The new settings see every document stale, all in the old vector space; the old ones, none.
    status = admin.get("/api/admin/reindex").get_json()
    assert status["recipe"]["embedder"] == NEW and status["digest"] == index_digest(app.config)
    assert status["documents"] == {"current": 0, "stale": 5, "stale_in_flight": 0, "without_chunks": 0}
    assert status["spaces"] == [{"space": OLD, "documents": 5, "chunks": 5, "current": False}]
    assert status["last_job"] is None
    assert api_client(old_app).get("/api/admin/reindex").get_json()["documents"]["stale"] == 0
    assert_every_document_found(admin, ids)  # the configured space has no chunks yet: the old one answers

    # A reindex on a worker that takes only `high` jobs: it launches REINDEX_MAX_QUEUED document
    # jobs and waits, as no worker takes them.
    high = high_only_worker(config, tmp_path, REINDEX_MAX_QUEUED="2", REINDEX_RATE="100")
    try:
        high()
        accepted = admin.post("/api/admin/reindex")
        assert accepted.status_code == 202, accepted.get_json()
        reindex_id = accepted.get_json()["job_id"]
        assert accepted.get_json()["status_url"].endswith(f"/api/jobs/{reindex_id}")
        assert accepted.get_json()["launched"] is True

        def waiting_for_the_queue():
            last = admin.get("/api/admin/reindex").get_json()["last_job"]
            return last["stage"] == "waiting_for_queue" and last["counts"]["launched"] == 2 and last

        last = wait_for(waiting_for_the_queue, DEADLINE, "the reindex job to wait for its launched jobs")
        assert last["id"] == reindex_id and last["counts"]["selected"] == 5
        assert [job.status for job in document_jobs_after(app, first_jobs)] == ["queued", "queued"]

        # One at a time: a second request gets the running one, and launches nothing.
        again = admin.post("/api/admin/reindex")
        assert again.status_code == 200, again.get_json()
        assert again.get_json()["job_id"] == reindex_id and again.get_json()["launched"] is False

        # Cancel stops the launching; the two launched document jobs go on.
        canceled = admin.post(f"/api/jobs/{reindex_id}/cancel")
        assert canceled.status_code == 200 and canceled.get_json()["status"] == "stopped", canceled.get_json()
    finally:
        high.stop_all()
    assert len(document_jobs_after(app, first_jobs)) == 2

    run_worker()  # the two launched document jobs: a mixed library, two vector spaces

    spaces = spaces_of(app)
    assert len(spaces[NEW]) == 2 and len(spaces[OLD]) == 3 and not spaces[NEW] & spaces[OLD]
    status = admin.get("/api/admin/reindex").get_json()
    assert status["documents"] == {"current": 2, "stale": 3, "stale_in_flight": 0, "without_chunks": 0}
    assert {s["space"]: (s["documents"], s["current"]) for s in status["spaces"]} == {OLD: (3, False),
                                                                                        NEW: (2, True)}
    assert status["last_job"]["status"] == "stopped"
    assert_every_document_found(admin, ids)

    # A new reindex, with workers for everything: searches answer every document all along.
    accepted = admin.post("/api/admin/reindex")
    assert accepted.status_code == 202, accepted.get_json()
    reindex_id = accepted.get_json()["job_id"]
    start_worker(REINDEX_MAX_QUEUED="1", REINDEX_RATE="100")
    searches = 0
    while True:  # between and during the worker's steps, each document's commit among them
        job = admin.get(f"/api/jobs/{reindex_id}").get_json()
        assert job["status"] in ("queued", "started", "finished"), job
        assert_every_document_found(admin, ids)
        searches += 1
        if job["status"] == "finished":
            break
        assert searches < 2000, "the reindex job did not end"

    assert job["result"]["selected"] == 3 and job["result"]["launched"] == 3 and job["result"]["finished"] == 3
    assert job["result"]["skipped"] == 0 and job["result"]["failed"] == 0
    assert job["result"]["digest"] == index_digest(app.config) and job["result"]["recipe"]["embedder"] == NEW
    status = admin.get("/api/admin/reindex").get_json()
    assert status["documents"] == {"current": 5, "stale": 0, "stale_in_flight": 0, "without_chunks": 0}
    assert status["spaces"] == [{"space": NEW, "documents": 5, "chunks": 5, "current": True}]
    assert status["last_job"]["id"] == reindex_id and status["last_job"]["counts"]["finished"] == 3
    with app.app_context(), connection():
        assert {d.index_digest for d in Document.select()} == {index_digest(app.config)}
        assert {c.embedding_model for c in Chunk.select()} == {NEW}
    assert_every_document_found(admin, ids)
    # Each document was launched once per reindex that reached it: 2 by the first, 3 by the second.
    assert len(document_jobs_after(app, first_jobs)) == 5


def test_a_reindex_with_nothing_stale_finishes_at_once(app, config, start_worker):
    admin = api_client(app)
    accepted = admin.post("/api/admin/reindex")
    assert accepted.status_code == 202
    start_worker()
    job = wait_for(lambda: (j := admin.get(accepted.get_json()["status_url"]).get_json())["status"] == "finished" and j,
                   DEADLINE, "the reindex job to finish")
    assert {k: job["result"][k] for k in ("selected", "launched", "finished")} == {"selected": 0, "launched": 0,
                                                                                   "finished": 0}


def test_only_admins_reindex(app):
    user = api_client(app, owner="alice", admin=False)
    for response in (user.get("/api/admin/reindex"), user.post("/api/admin/reindex")):
        assert response.status_code == 403 and response.get_json()["error"]["code"] == "admin_required"
        assert response.get_json()["error"]["message"].endswith(".")
    with app.app_context(), connection():
        assert Job.select().where(Job.kind == "reindex").count() == 0


def test_a_reindex_on_the_only_worker_process_fails_at_once_instead_of_waiting_forever(app, library, start_worker):
    """With one process taking both queues, the reindex would wait for document jobs nobody can run."""
    _, ids = library
    client = api_client(app)
    start_worker(WORKER_CONCURRENCY="1", HIGH_QUEUE_WORKERS="0", REINDEX_MAX_QUEUED="1", REINDEX_RATE="100")
    job_id = client.post("/api/admin/reindex").get_json()["job_id"]
    job = wait_for(lambda: (lambda j: j if j["status"] in ("failed", "finished") else None)(
        client.get(f"/api/jobs/{job_id}").get_json()), DEADLINE, "the reindex to end")
    assert (job["status"], job["error_code"]) == ("failed", "no_document_worker"), job
    assert "no other worker process takes default jobs" in job["error"]
    # The document job it launched runs once the process is free; the next reindex goes on from there.
    wait_for(lambda: len(spaces_of(app).get(NEW, ())) == 1, DEADLINE, "the launched document job to run")
