"""Fair share between owners, end to end: two owners' tokens, uploads over the API, real worker
processes (webapp/core/fair_queue.py, webapp/core/owner_caps.py, jobs/worker/)."""

from __future__ import annotations

import io

import pytest

from tests.conftest import api_client, long_text, post_text, row, wait_for
from webapp import create_app
from webapp.core.db import connection, create_tables
from webapp.core.models import Document


def upload_many(client, count: int, prefix: str, chunks: int = 3):
    """One request with ``count`` different small text files; returns their job ids."""
    files = [(io.BytesIO(long_text(chunks) + f"\n\n{prefix} file {n}.".encode()), f"{prefix}-{n}.txt")
             for n in range(count)]
    answer = client.post("/api/documents", data={"file": files}, content_type="multipart/form-data")
    assert answer.status_code == 202, answer.get_json()
    return [document["job_id"] for document in answer.get_json()["documents"]]


@pytest.mark.parametrize("fair_share", [True, False], ids=["fair", "first-in-first-out"])
def test_b_s_single_file_runs_before_a_s_backlog(config, start_worker, fair_share):
    """A uploads 12 files, then B one; one worker process. With fair share B's job is the second
    to start (after A's first: one turn each), so it finishes while A's backlog is still queued;
    without, it is the last."""
    app = create_app({**config, "FAIR_SHARE": fair_share})
    with app.app_context():
        create_tables()
    alice = api_client(app, "alice", admin=False)
    bob = api_client(app, "bob", admin=False)
    a_jobs = upload_many(alice, 12, "alice")
    [b_job] = upload_many(bob, 1, "bob")
    start_worker(WORKER_CONCURRENCY="1", HIGH_QUEUE_WORKERS="0")
    b_row = wait_for(lambda: (lambda job: job.status == "finished" and job)(row(app, b_job)), 120,
                     "bob's document to finish")
    rows = [wait_for(lambda: (lambda job: job.status == "finished" and job)(row(app, job_id)), 120,
                     "alice's documents to finish") for job_id in a_jobs]
    if fair_share:
        # Alice's jobs still waiting when bob's ended, from the rows' own times (one worker process:
        # a job starts after the one before it ended). Counting queued rows once the test saw bob's
        # finished also counted the tiny jobs the worker ran while the test was polling (8, once in CI).
        a_waiting = sum(a.started_at > b_row.ended_at for a in rows)
        assert a_waiting >= 9, f"only {a_waiting} of alice's 12 jobs were still queued when bob's finished"
    started_before_b = sum(a.started_at < b_row.started_at for a in rows)
    assert started_before_b == (1 if fair_share else 12)


def test_over_the_queued_cap_an_owner_gets_429_with_retry_after_and_nothing_is_stored(config):
    app = create_app({**config, "OWNER_MAX_QUEUED": 3, "FETCH_ALLOW_PRIVATE_NETWORKS": True})
    with app.app_context():
        create_tables()
    alice = api_client(app, "alice", admin=False)
    bob = api_client(app, "bob", admin=False)
    assert len(upload_many(alice, 2, "alice")) == 2
    refused = alice.post("/api/documents", data={"file": [(io.BytesIO(b"third note"), "c.txt"),
                                                          (io.BytesIO(b"fourth note"), "d.txt")]},
                         content_type="multipart/form-data")
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    error = refused.get_json()["error"]
    assert error["code"] == "owner_queue_full"
    assert "alice already has 2 document(s) waiting" in error["message"] and "at most 3" in error["message"]
    assert "at most 1 of these 2 can be accepted now" in error["message"]
    by_url = alice.post("/api/documents", json={"urls": ["http://127.0.0.1:9/a.pdf", "http://127.0.0.1:9/b.pdf"]})
    assert by_url.status_code == 429 and by_url.get_json()["error"]["code"] == "owner_queue_full"
    assert post_text(alice, b"one more fits", "e.txt").status_code == 202  # 3 of 3
    with app.app_context(), connection():
        assert Document.select().where(Document.owner == "alice").count() == 3
    assert len(upload_many(bob, 3, "bob")) == 3  # another owner's room is their own


def test_over_the_running_cap_an_owners_job_waits_and_another_owner_runs_meanwhile(app, start_worker):
    """``OWNER_MAX_RUNNING=1`` on two worker processes: alice's three documents run one at a
    time (the second process gives the one it took back to RQ's scheduler: row ``scheduled``,
    ``rate_limited``, the sentence names the cap) while bob's runs beside them; none failed,
    none counted an attempt for waiting."""
    alice = api_client(app, "alice", admin=False)
    bob = api_client(app, "bob", admin=False)
    a_jobs = upload_many(alice, 3, "alice", chunks=200)
    [b_job] = upload_many(bob, 1, "bob", chunks=200)
    start_worker(WORKER_CONCURRENCY="2", HIGH_QUEUE_WORKERS="0", OWNER_MAX_RUNNING="1", OWNER_BUSY_RETRY="1")
    waited: dict[str, str] = {}

    def all_finished():
        rows = [row(app, job_id) for job_id in a_jobs + [b_job]]
        for job in rows:
            assert job.status not in ("failed", "stopped", "canceled"), (job.status, job.error)
            if job.status == "scheduled":
                waited[job.id] = job.error
        return all(job.status == "finished" for job in rows) and rows

    rows = wait_for(all_finished, 180, "every document to finish")
    a_rows, b_row = rows[:3], rows[3]
    assert waited and set(waited) <= set(a_jobs), waited
    assert all("OWNER_MAX_RUNNING=1" in message and "alice" in message for message in waited.values())
    spans = sorted((job.started_at, job.ended_at) for job in a_rows)
    assert all(earlier[1] <= later[0] for earlier, later in zip(spans, spans[1:])), "alice ran two jobs at once"
    assert any(start < b_row.ended_at and b_row.started_at < end for start, end in spans), \
        "bob's job did not run beside alice's"
    assert [job.attempts for job in rows] == [1, 1, 1, 1]
