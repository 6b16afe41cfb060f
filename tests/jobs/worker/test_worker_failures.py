"""Failures outside the job's own code: a worker process killed mid-job, a job over its time limit."""

from __future__ import annotations

import os
import signal

import psutil

from rq import Queue, Worker
from rq.job import Job as RQJob

from tests.conftest import api_client, wait_for
from webapp.core.db import connection
from webapp.core.models import Job


def test_a_killed_worker_process_marks_the_row_failed_and_is_replaced(app, redis, start_worker):
    with app.app_context(), connection():
        row = Job.create(kind="test", queue="default")
    Queue("default", connection=redis).enqueue(
        "tests.jobs_for_tests.report_pid_and_sleep", 60, job_id=row.id, job_timeout=120
    )
    worker = start_worker()
    rq_job = RQJob.fetch(row.id, connection=redis)

    def horse_pid():
        rq_job.refresh()
        return rq_job.meta.get("pid")

    pid = wait_for(horse_pid, 60, "the job to start")
    # Mark the row started as a real job would have, then kill its process the hard way (OOM killer style).
    with app.app_context(), connection():
        Job.update(status="started").where(Job.id == row.id).execute()
    os.kill(pid, signal.SIGKILL)

    def row_failed():
        with app.app_context(), connection():
            job = Job.get_by_id(row.id)
        return job if job.status == "failed" else None

    job = wait_for(row_failed, 60, "the row to be marked failed")
    assert job.error_code == "worker_died" and "SIGKILL" in job.error and job.ended_at is not None
    # The row is failed first (the state machine's callback), then RQ's record (its failure handling).
    wait_for(lambda: rq_job.get_status(refresh=True).value == "failed", 30, "RQ to record the failure")
    assert worker.poll() is None  # the worker command (the pool) survives

    # The pool replaced the dead process (WORKER_CONCURRENCY, one per core, plus HIGH_QUEUE_WORKERS)
    # and still serves jobs.
    expected = app.config["WORKER_CONCURRENCY"] + app.config["HIGH_QUEUE_WORKERS"]

    pool = psutil.Process(worker.pid)

    def replaced():
        # The pool's own processes (the Redis of the test session may still list a worker of an
        # earlier test that is finishing its last job), each registered with RQ.
        children = {child.pid for child in pool.children()}
        registered = {w.pid for w in Worker.all(connection=redis)}
        return len(children) == expected and pid not in children and children <= registered

    try:
        wait_for(replaced, 60, "the pool to replace the killed worker process")
    except AssertionError:
        raise AssertionError(f"pool children {[c.pid for c in pool.children()]}, expected {expected} without {pid}; "
                             f"registered {[(w.name, w.pid) for w in Worker.all(connection=redis)]}") from None
    second = Queue("default", connection=redis).enqueue("tests.jobs_for_tests.report_pid_and_sleep", 0)
    wait_for(lambda: second.get_status(refresh=True).value == "finished", 60, "a replacement worker to run a job")
    second.refresh()
    assert second.meta["pid"] != pid


def test_a_job_over_its_time_limit_fails_with_a_reason(config, run_worker, tmp_path):
    import io

    from webapp import create_app
    from webapp.core.db import create_tables

    # The limit is DOCUMENT_JOB_TIMEOUT at enqueue time (1 s here). Chunking and embedding
    # 8 MB of text (≈6,000 chunks) takes far longer than that on any machine.
    app = create_app({**config, "DOCUMENT_JOB_TIMEOUT": 1})
    with app.app_context():
        create_tables()
    client = api_client(app)
    sentence = "The quick brown fox jumps over the lazy dog while the committee deliberates. "
    text = (sentence * (8 * 1024 * 1024 // len(sentence))).encode()
    response = client.post("/api/documents", data={"file": (io.BytesIO(text), "big.txt")},
                           content_type="multipart/form-data")
    job_id = response.get_json()["documents"][0]["job_id"]
    run_worker(MAX_DOCUMENT_CHARS="100000000", MAX_DOCUMENT_CHUNKS="100000")  # the time limit, not these
    job = client.get(f"/api/jobs/{job_id}").get_json()
    assert job["status"] == "failed", job
    assert job["error_code"] == "timeout" and "1 s" in job["error"], job
    assert job["rq_status"] == "failed"
