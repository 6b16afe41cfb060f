"""Outages with real processes: Redis stopped mid-run and started again empty, Redis emptied
(``FLUSHALL``) while a job runs, PostgreSQL stopped mid-run. Uploads during an outage are refused
with a JSON 503, never a 500, and leave no row that claims to be queued; the worker pool and the
scheduler process live through it; once the service is back every accepted document finishes
(reconcile restores what Redis lost), with exactly one set of chunks."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from peewee import OperationalError
from redis import Redis
from rq import Worker
from rq.job import Job as RQJob

from tests.conftest import api_client, PrivatePostgres, long_text, post_text, row, wait_for
from tests.local_services import slow_worker_env
from webapp import create_app
from webapp.core.db import connection, create_tables, db
from webapp.local.embedded_redis import EmbeddedRedis
from webapp.core.models import Chunk, Document, Job

TERMINAL = ("finished", "failed", "stopped", "canceled")
# Each worker notices a killed sibling or a lost Redis record within seconds, and reconcile runs
# every 5 s and acts on rows older than 1 s (the defaults are 5 s, 60 s and 30 s).
FAST_RECOVERY = {"WORKER_HEARTBEAT_INTERVAL": "1", "RECONCILE_GRACE": "1"}


@pytest.fixture
def own_redis(tmp_path: Path):
    """A redis-server of this test's own (the session's shared one is never stopped); the test
    may replace it (``own_redis[0]``) by another started on the same port."""
    servers = [EmbeddedRedis(tmp_path / "redis-0", persist=False)]
    servers[0].start()
    yield servers
    for server in servers:
        server.stop()


def _accept(client, data: bytes, name: str) -> dict[str, Any]:
    response = post_text(client, data, name=name, reprocess="true")
    assert response.status_code == 202, response.get_data(as_text=True)
    return response.get_json()["documents"][0]


def _started(app, job_id: str) -> bool:
    job = row(app, job_id)
    return job.status == "started" and job.stage in ("embed", "store")


def _all_finished(app, documents: list[dict[str, Any]]) -> bool:
    return all(row(app, d["job_id"]).status == "finished" for d in documents)


def _one_chunk_set_each(app, documents: list[dict[str, Any]]) -> None:
    with app.app_context(), connection():
        for d in documents:
            stored = Chunk.select().where(Chunk.document == d["id"]).count()
            assert stored == Document.get_by_id(d["id"]).chunk_count and stored > 0, d


def _refused_upload_leaves_nothing_queued(app, response, name: str, code: str) -> None:
    """A refused upload: JSON 503 with ``code``; its row, if one was committed, is not ``queued``."""
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.get_json()["error"]["code"] == code
    with app.app_context(), connection():
        rows = list(Job.select().join(Document, on=(Document.job_id == Job.id)).where(Document.filename == name))
    assert all(job.status == "failed" and job.error_code == "queue_unavailable" for job in rows), \
        [(job.status, job.error_code) for job in rows]


def test_redis_stopped_mid_run_and_restarted_empty_loses_no_accepted_document(
        config, own_redis, openai_server, start_worker, start_scheduler):
    url = own_redis[0].url
    app = create_app({**config, "REDIS_URL": url})
    with app.app_context():
        create_tables()
    client = api_client(app)
    worker = start_worker(**slow_worker_env(openai_server, delay=0.1, REDIS_URL=url, **FAST_RECOVERY))
    scheduler = start_scheduler(REDIS_URL=url, RECONCILE_INTERVAL="5")
    accepted = [_accept(client, long_text(20), f"before-{n}.txt") for n in range(4)]
    wait_for(lambda: _started(app, accepted[0]["job_id"]), 60, "the first document to reach its embed stage")

    own_redis[0].stop()  # Redis goes away with a job running and three queued
    during = post_text(client, long_text(5), name="during.txt", reprocess="true")
    _refused_upload_leaves_nothing_queued(app, during, "during.txt", "queue_unavailable")
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.get_json()["checks"]["redis"].startswith("down")
    assert ready.get_json()["checks"]["database"] == "ok"
    status = client.get(f"/api/jobs/{accepted[1]['job_id']}")  # the database still answers
    assert status.status_code == 200 and status.get_json()["rq_status"] is None
    time.sleep(3)  # the outage lasts: the running job's progress writes and every poll fail meanwhile
    assert worker.poll() is None and scheduler.poll() is None

    own_redis.append(EmbeddedRedis(own_redis[0].data_dir.parent / "redis-1", persist=False, port=own_redis[0].port))
    own_redis[-1].start()  # back, on the same port, empty
    redis = Redis.from_url(url)
    # Empty of jobs: no job has a status there. (The worker and scheduler reconnect and write their
    # own records at once, and a job still running writes its live progress, a key with only meta.)
    assert not any(redis.hget(RQJob.key_for(d["job_id"]), "status") for d in accepted)
    wait_for(lambda: _all_finished(app, accepted), 150, "every document accepted before the outage to finish")
    _one_chunk_set_each(app, accepted)
    assert worker.poll() is None and scheduler.poll() is None, "a process did not survive the outage"
    # The pool's processes registered again in the new Redis (rq ping, dashboards and reconcile see them).
    wait_for(lambda: Worker.count(connection=redis) >= 1, 30, "the worker processes to register again")
    assert client.get("/readyz").status_code == 200
    after = _accept(client, long_text(6), "after.txt")
    wait_for(lambda: row(app, after["job_id"]).status == "finished", 60, "an upload after the outage to finish")


def test_flushall_while_a_job_runs_loses_no_accepted_document(
        app, client, redis, openai_server, start_worker, start_scheduler):
    worker = start_worker(**slow_worker_env(openai_server, delay=0.1, **FAST_RECOVERY))
    start_scheduler(RECONCILE_INTERVAL="5")
    accepted = [_accept(client, long_text(20), f"doc-{n}.txt") for n in range(4)]
    wait_for(lambda: _started(app, accepted[0]["job_id"]), 60, "the first document to reach its embed stage")

    redis.flushall()  # every RQ key is gone: the queued jobs, the running one's record, the workers' records
    wait_for(lambda: _all_finished(app, accepted), 150, "every accepted document to finish after FLUSHALL")
    _one_chunk_set_each(app, accepted)
    assert worker.poll() is None
    wait_for(lambda: Worker.count(connection=redis) >= 1, 30, "the worker processes to register again")


# --- PostgreSQL stopped mid-run -----------------------------------------------------------------


@pytest.fixture
def own_postgres():
    server = PrivatePostgres()
    try:
        server.start()
        yield server
    finally:
        server.remove()


def _retry_scheduled(redis: Redis, job_id: str) -> bool:
    """RQ counted a retry of the job (a document job has 3) and did not fail it."""
    rq_job = RQJob.fetch(job_id, connection=redis)
    return rq_job.retries_left is not None and rq_job.retries_left < 3 and rq_job.get_status().value != "failed"


def _chunk_sets_whole(app, documents: list[dict[str, Any]]) -> bool:
    """Every document has no chunks, or exactly the set its row counts (never half of one)."""
    with app.app_context(), connection():
        for d in documents:
            stored = Chunk.select().where(Chunk.document == d["id"]).count()
            expected = Document.get_by_id(d["id"]).chunk_count
            assert stored in (0, expected), f"{d['filename']}: {stored} chunks stored, the row says {expected}"
    return True


def test_postgres_stopped_mid_run_gives_503s_retries_the_running_job_and_converges(
        config, redis, own_postgres, openai_server, start_worker, start_scheduler, tmp_path):
    config = {**config, "DATABASE_URL": own_postgres.url}
    app = create_app(config)
    with app.app_context():
        create_tables()
    client = api_client(app)
    database_env = {"DATABASE_URL": own_postgres.url}
    worker = start_worker(**slow_worker_env(openai_server, delay=0.1, **database_env, **FAST_RECOVERY))
    scheduler = start_scheduler(RECONCILE_INTERVAL="5", **database_env)
    accepted = [_accept(client, long_text(20), f"doc-{n}.txt") for n in range(3)]
    running = accepted[0]["job_id"]
    wait_for(lambda: _started(app, running), 60, "the first document to reach its embed stage")
    with app.app_context():  # this thread's own connection, kept open across the outage
        db.database.connect()
    other = threading.Thread(target=lambda: client.get(f"/api/jobs/{running}"))  # leaves an idle pooled connection
    other.start()
    other.join(30)

    own_postgres.stop()
    try:
        with app.app_context():
            with pytest.raises(OperationalError):  # "server closed the connection unexpectedly"
                db.database.execute_sql("SELECT 1")
        # The same connection once more: psycopg2 knows it is closed now (InterfaceError).
        closed = client.get(f"/api/jobs/{running}")
        assert closed.status_code == 503, closed.get_data(as_text=True)
        assert closed.get_json()["error"]["code"] == "database_unavailable"
        # The idle pooled connection, whose server went away (OperationalError on its first query).
        dead = client.get(f"/api/jobs/{running}")
        assert dead.status_code == 503, dead.get_data(as_text=True)
        assert dead.get_json()["error"]["code"] == "database_unavailable"
        # No connection at all: refused at connect (OperationalError).
        for response in (client.get(f"/api/jobs/{running}"), client.get("/api/jobs"),
                         post_text(client, long_text(5), name="during.txt", reprocess="true")):
            assert response.status_code == 503, response.get_data(as_text=True)
            assert response.get_json()["error"]["code"] == "database_unavailable"
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.get_json()["checks"]["database"].startswith("down")
        # The running job's next progress write fails: RQ schedules its retry (transient), though
        # the failure callback cannot write the row; the worker lives on.
        wait_for(lambda: _retry_scheduled(redis, running), 30, "RQ to schedule the running job's retry")
        assert worker.poll() is None and scheduler.poll() is None
    finally:
        own_postgres.start()

    wait_for(lambda: _chunk_sets_whole(app, accepted) and _all_finished(app, accepted), 180,
             "every accepted document to finish once PostgreSQL is back")
    _one_chunk_set_each(app, accepted)
    with app.app_context(), connection():
        assert not Document.select().where(Document.filename == "during.txt").exists()  # its transaction rolled back
    assert worker.poll() is None and scheduler.poll() is None
