"""Recovery with real processes: a worker told to stop hands its job back, a whole worker killed
mid-job is noticed by heartbeats and its job re-run through reconcile, run by the real scheduler
process; Redis emptied mid-run loses no accepted document."""

from __future__ import annotations

import signal
import subprocess

import psutil
from rq.job import Job as RQJob

from tests.conftest import long_text, post_text, row, wait_for
from tests.local_services import slow_worker_env
from webapp.core.db import connection
from webapp.core.models import Chunk, Document, Job


def _started_in_embed(app, job_id: str):
    job = row(app, job_id)
    return job if job.status == "started" and job.stage == "embed" else None


def _chunks(app, document_id: str) -> tuple[int, int | None]:
    with app.app_context(), connection():
        document = Document.get_by_id(document_id)
        return Chunk.select().where(Chunk.document == document_id).count(), document.chunk_count


def test_sigterm_hands_the_running_job_back_and_another_worker_finishes_it(
        openai_app, openai_client, openai_server, redis, start_worker):
    document = post_text(openai_client, long_text(40)).get_json()["documents"][0]
    job_id = document["job_id"]
    first = start_worker(**slow_worker_env(openai_server, delay=0.3, SHUTDOWN_GRACE="1"))
    wait_for(lambda: _started_in_embed(openai_app, job_id), 60, "the job to reach its embed stage")

    first.send_signal(signal.SIGTERM)  # a deploy or restart
    assert first.wait(30) == 0, "the worker did not shut down within the grace"
    handed_back = row(openai_app, job_id)
    assert handed_back.status == "queued" and handed_back.attempts == 1 and handed_back.error is None
    rq_job = RQJob.fetch(job_id, connection=redis)
    assert rq_job.get_status().value == "queued"
    assert redis.lrange(f"rq:queue:{rq_job.origin}", 0, 0) == [job_id.encode()]  # at the front

    openai_server.delay = 0
    start_worker(**slow_worker_env(openai_server, delay=0))
    done = wait_for(lambda: (j := row(openai_app, job_id)).status == "finished" and j, 90, "the job to finish")
    assert done.attempts == 2
    stored, counted = _chunks(openai_app, document["id"])
    assert stored == counted and stored > 0  # one set of chunks, however many runs


def _kill_whole_worker(process: subprocess.Popen) -> None:
    """SIGKILL the worker command and its processes at once, as a lost machine: stopped first
    (SIGSTOP), so that none gets to react to its parent's death."""
    pool = psutil.Process(process.pid)
    everyone = [pool] + pool.children(recursive=True)
    for proc in everyone:
        proc.send_signal(signal.SIGSTOP)
    for proc in everyone:
        proc.send_signal(signal.SIGKILL)
    process.wait(10)


def test_a_whole_worker_killed_mid_job_is_noticed_and_its_job_runs_again_elsewhere(
        openai_app, openai_client, openai_server, redis, start_worker, start_scheduler):
    document = post_text(openai_client, long_text(40)).get_json()["documents"][0]
    job_id = document["job_id"]
    fast_beats = {"WORKER_HEARTBEAT_INTERVAL": "1"}
    doomed = start_worker(**slow_worker_env(openai_server, delay=0.3, **fast_beats))
    wait_for(lambda: _started_in_embed(openai_app, job_id), 60, "the job to reach its embed stage")
    _kill_whole_worker(doomed)

    openai_server.delay = 0
    start_worker(**slow_worker_env(openai_server, delay=0, **fast_beats))
    start_scheduler(RECONCILE_INTERVAL="5")
    done = wait_for(lambda: (j := row(openai_app, job_id)).status == "finished" and j, 120,
                    "the job to run again on the other worker and finish")
    assert done.attempts == 2
    stored, counted = _chunks(openai_app, document["id"])
    assert stored == counted and stored > 0
    with openai_app.app_context(), connection():
        reconciles = Job.select().where(Job.kind == "reconcile", Job.status == "finished").count()
    assert reconciles >= 1  # reconcile ran as an ordinary job row


def test_documents_accepted_before_redis_was_emptied_are_restored_and_finish(
        app, client, redis, start_worker, start_scheduler):
    accepted = [post_text(client, long_text(3 + n), name=f"doc-{n}.txt").get_json()["documents"][0] for n in range(4)]
    redis.flushall()  # Redis restarted empty, or FLUSHALL: every queued job is gone
    assert not any(RQJob.exists(d["job_id"], connection=redis) for d in accepted)

    start_scheduler(RECONCILE_INTERVAL="5")
    start_worker(RECONCILE_GRACE="0")  # reconcile runs in a worker: the grace is read there

    def all_finished():
        return all(row(app, d["job_id"]).status == "finished" for d in accepted)

    wait_for(all_finished, 120, "every accepted document to be restored and finished")
    with app.app_context(), connection():
        restored = [j.result for j in Job.select().where(Job.kind == "reconcile", Job.status == "finished")]
    assert sum(result["restored_count"] for result in restored) == len(accepted)
