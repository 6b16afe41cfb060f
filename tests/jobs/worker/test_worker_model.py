"""The worker model (jobs/worker/): a pool of prepared worker processes, one job at a time each.

Everything runs in real ``flask --app wsgi rq worker`` processes on the private Redis.
"""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from rq import Queue, Worker

from tests.conftest import ROOT, process_env, wait_for
from webapp.core.db import connection
from webapp.core.models import Job

EXPECTED_MODULES = ["bs4", "charset_normalizer", "docx", "jobs.document_job", "lxml", "pypdfium2",
                    "semantic_text_splitter", "wordllama"]



def _finished(job, deadline_s: float = 60):
    wait_for(lambda: job.get_status(refresh=True).value in ("finished", "failed"), deadline_s, f"job {job.id}")
    assert job.get_status(refresh=False).value == "finished", job.latest_result()
    return job.return_value(refresh=True)


def test_worker_processes_start_with_parsers_and_embedder_loaded(redis, start_worker):
    start_worker(WORKER_CONCURRENCY="3", HIGH_QUEUE_WORKERS="0")
    wait_for(lambda: Worker.count(connection=redis) == 3, 60, "three worker processes")
    # The first job of a fresh process: whatever it finds loaded was loaded before the fork.
    answer = _finished(Queue("default", connection=redis).enqueue("tests.jobs_for_tests.describe_process"))
    assert answer["modules"] == EXPECTED_MODULES
    assert answer["frozen_objects"] > 0  # gc.freeze() ran before the pool forked


def test_with_openai_embeddings_the_client_is_loaded_before_the_fork_without_a_request(redis, start_worker):
    """The warm-up cannot embed with OpenAI (it would send a request), but loads what the client's
    first request would (≈ 13 ms per worker process): the first job of a fresh process finds it
    loaded, and the API's address saw no connection."""
    with socket.socket() as api:
        api.bind(("127.0.0.1", 0))
        api.listen()
        api.setblocking(False)
        start_worker(WORKER_CONCURRENCY="1", HIGH_QUEUE_WORKERS="0", OPENAI_API_KEY="test-key",
                     OPENAI_BASE_URL=f"http://127.0.0.1:{api.getsockname()[1]}/v1")
        answer = _finished(Queue("default", connection=redis).enqueue("tests.jobs_for_tests.describe_process"))
        assert answer["openai_client_loaded"]
        assert answer["metric_instruments_built"]  # the local embedder's warm-up records into them; this one does not
        with pytest.raises(BlockingIOError):
            api.accept()  # nobody connected


def test_a_process_over_its_memory_limit_is_replaced_after_its_job(redis, start_worker):
    # 1 MB is below any Python process's peak, so every process leaves after one job.
    start_worker(WORKER_CONCURRENCY="1", WORKER_MAX_MEMORY="1", HIGH_QUEUE_WORKERS="0")
    queue = Queue("default", connection=redis)
    pids = [_finished(queue.enqueue("tests.jobs_for_tests.describe_process"))["pid"] for _ in range(3)]
    assert len(set(pids)) == 3, pids
    wait_for(lambda: Worker.count(connection=redis) == 1, 30, "the pool to keep one worker process")


def test_a_job_stuck_past_its_time_limit_is_killed_by_the_pool(app, redis, start_worker):
    with app.app_context(), connection():
        row = Job.create(kind="test", queue="default")
    rq_job = Queue("default", connection=redis).enqueue(
        "tests.jobs_for_tests.block_alarm_and_sleep", 60, job_id=row.id, job_timeout=1
    )
    worker = start_worker(JOB_KILL_GRACE="1")

    def row_failed():
        with app.app_context(), connection():
            job = Job.get_by_id(row.id)
        return job if job.status == "failed" else None

    job = wait_for(row_failed, 30, "the pool to kill the stuck job")
    assert job.error_code == "timeout" and "1 s limit" in job.error, job.error
    # The row is failed first (the state machine's callback), then RQ's record (its failure handling).
    wait_for(lambda: rq_job.get_status(refresh=True).value == "failed", 30, "RQ to record the failure")
    assert worker.poll() is None


def test_ping_reports_the_worker_that_answered_each_queue(config, redis, start_worker):
    command = [sys.executable, "-m", "flask", "--app", "wsgi", "rq", "ping", "--timeout", "2"]
    nobody = subprocess.run(command, cwd=ROOT, env=process_env(config), capture_output=True, text=True, timeout=60)
    assert nobody.returncode == 1
    assert "high: no worker answered within 2 s" in nobody.stdout

    start_worker()
    wait_for(lambda: Worker.count(connection=redis) >= 1, 60, "a worker")
    answered = subprocess.run(command, cwd=ROOT, env=process_env(config), capture_output=True, text=True, timeout=60)
    assert answered.returncode == 0, answered.stdout + answered.stderr
    lines = answered.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["high", "default"]
    assert all(" answered by " in line and line.endswith(" ms") for line in lines), lines


def test_the_pool_asking_about_a_starting_worker_leaves_its_registration_alone(app, redis):
    """The pool looks up its processes' records (overdue jobs, dead processes). RQ's
    ``Worker.find_by_key`` removes a name whose record it does not find from RQ's set of
    workers; a process registering between its two commands then vanished from ``Worker.all()``
    for good. Docket's lookup only reads."""
    from rq import Worker

    from jobs.worker.pool import DocketWorkerPool

    with app.app_context():
        pool = DocketWorkerPool(["high", "default"], connection=redis, num_workers=1)
        key = Worker.redis_worker_namespace_prefix + "starting-worker"
        redis.sadd(Worker.redis_workers_keys, key)  # registered in the set, its hash not written yet
        assert pool._find_worker("starting-worker") is None
        assert redis.sismember(Worker.redis_workers_keys, key)
        worker = Worker(["default"], name="registered-worker", connection=redis)
        worker.register_birth()
        found = pool._find_worker("registered-worker")
        assert found is not None and found.name == "registered-worker"
