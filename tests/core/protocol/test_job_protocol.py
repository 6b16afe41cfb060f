"""The one job protocol: launch, the state machine, RQ's callbacks, cancel/stop/retry,
automatic retries, batches, duplicate uploads — with real Redis and real worker processes."""

from __future__ import annotations

import random
import time

import pytest
from rq import Queue
from rq.command import send_stop_job_command
from rq.job import Job as RQJob
from rq.registry import StartedJobRegistry

from tests.conftest import api_client, long_text, post_text, row, upload, wait_for
from tests.local_services import openai_worker_env, slow_worker_env
from webapp import create_app
from webapp.core.db import connection
from webapp.core.encryption import decrypt_secret
from webapp.core.protocol.kinds import JOB_KINDS, RetryPolicy
from webapp.core.protocol.states import CANCELED, STOPPED
from webapp.core.models import Chunk, Job

def wait_for_stage(client, job_id: str, stage: str, deadline: float = 60) -> dict:
    return wait_for(lambda: (lambda j: j if j["status"] == "started" and j["stage"] == stage else None)(
        client.get(f"/api/jobs/{job_id}").get_json()), deadline, f"job {job_id} to reach {stage}")


# --- launch ---------------------------------------------------------------------------------

def test_launch_commits_params_then_enqueues_with_the_row_id_callbacks_and_jittered_retries(app, client, redis):
    body = upload(client, "minimal-document.pdf", "pypdf-extract-text.md").get_json()
    job_ids = [d["job_id"] for d in body["documents"]]
    for job_id, document in zip(job_ids, body["documents"]):
        job = row(app, job_id)
        assert job.kind == "document" and job.queue == "default"
        assert job.params == {"document_id": document["id"]}  # enough to enqueue it again
        assert job.enqueued_at is not None and job.updated_at is not None and job.batch_id == body["batch_id"]
        rq_job = RQJob.fetch(job_id, connection=redis)
        assert rq_job.func_name == JOB_KINDS["document"].function and rq_job.kwargs == job.params
        assert rq_job._failure_callback_name == "webapp.core.protocol.states.on_job_failure"
        assert rq_job._stopped_callback_name == "webapp.core.protocol.states.on_job_stopped"
        assert rq_job.retries_left == JOB_KINDS["document"].retry.max_retries
        assert all(1 <= delay <= JOB_KINDS["document"].retry.max_delay for delay in rq_job.retry_intervals)
    assert Queue("default", connection=redis).job_ids == job_ids


def test_redis_down_answers_503_and_leaves_every_row_failed_none_queued(config, unused_redis_url):
    app = create_app({**config, "REDIS_URL": unused_redis_url})
    with app.app_context():
        from webapp.core.db import create_tables
        create_tables()
    client = api_client(app)
    response = upload(client, "minimal-document.pdf", "pypdf-extract-text.md")
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "queue_unavailable"
    with app.app_context(), connection():
        jobs = list(Job.select())
    assert len(jobs) == 2 and {(j.status, j.error_code) for j in jobs} == {("failed", "queue_unavailable")}
    assert all(j.enqueued_at is None for j in jobs)


def test_retry_delays_grow_exponentially_with_full_jitter():
    policy = RetryPolicy(max_retries=6, base_delay=10, max_delay=100)
    draws = [policy.delays(random.Random(seed)) for seed in range(200)]
    for n in range(6):
        bound = min(100, 10 * 2 ** n)
        column = [d[n] for d in draws]
        assert all(1 <= value <= bound for value in column)
        assert len(set(column)) > 5  # jittered, not fixed
    # The bound doubles: later retries wait longer on average, capped at max_delay.
    means = [sum(d[n] for d in draws) / len(draws) for n in range(6)]
    assert means[0] < means[1] < means[2] < means[3] and means[5] <= 100 / 2 + 10


# --- cancel, stop, retry ----------------------------------------------------------------------

def test_canceling_a_queued_job_means_it_never_runs_and_retry_runs_it(app, client, redis, run_worker):
    document = upload(client, "pypdf-extract-text.md").get_json()["documents"][0]
    answer = client.post(f"/api/jobs/{document['job_id']}/cancel")
    assert answer.status_code == 200 and answer.get_json()["status"] == "canceled"
    assert answer.get_json()["error_code"] == "canceled"
    assert RQJob.fetch(document["job_id"], connection=redis).get_status().value == "canceled"
    run_worker()
    job = row(app, document["job_id"])
    assert job.status == "canceled" and job.attempts == 0

    again = client.post(f"/api/jobs/{document['job_id']}/cancel")
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "job_not_cancelable"

    retried = client.post(f"/api/jobs/{document['job_id']}/retry")
    assert retried.status_code == 202 and retried.get_json()["status"] == "queued"
    run_worker()
    job = row(app, document["job_id"])
    assert job.status == "finished" and job.attempts == 1 and job.error is None
    assert client.post(f"/api/jobs/{document['job_id']}/retry").status_code == 409
    assert client.post("/api/jobs/nope/retry").status_code == 404
    assert client.post("/api/jobs/nope/cancel").status_code == 404


def test_cancel_stops_a_running_job_through_rq_and_the_row_follows(
    app, openai_client, openai_server, start_worker, redis
):
    worker = start_worker(**slow_worker_env(openai_server))
    document = post_text(openai_client, long_text()).get_json()["documents"][0]
    wait_for_stage(openai_client, document["job_id"], "embed")

    answer = openai_client.post(f"/api/jobs/{document['job_id']}/cancel")
    assert answer.status_code == 200
    # The row follows first (the callback), RQ's record right after (its failure handling).
    job = wait_for(lambda: (lambda j: j if j["status"] == "stopped" and j["rq_status"] == "stopped" else None)(
        openai_client.get(document["status_url"]).get_json()), 30, "the row and RQ to record the stop")
    assert job["error_code"] == "stopped"
    with app.app_context(), connection():
        assert Chunk.select().where(Chunk.document == document["id"]).count() == 0
    # The worker process survived the stop and takes the next job.
    openai_server.delay = 0
    second = post_text(openai_client, b"A short note about nothing in particular.", "short.txt").get_json()
    wait_for(lambda: row(app, second["documents"][0]["job_id"]).status == "finished", 60, "the next job")
    assert worker.poll() is None


def test_rqs_own_stop_command_moves_the_row_to_stopped(app, openai_client, openai_server, start_worker, redis):
    start_worker(**slow_worker_env(openai_server))
    document = post_text(openai_client, long_text()).get_json()["documents"][0]
    wait_for_stage(openai_client, document["job_id"], "embed")
    send_stop_job_command(redis, document["job_id"])  # what rq-dashboard or `rq` would send
    wait_for(lambda: row(app, document["job_id"]).status == "stopped", 30, "the row to follow")
    wait_for(lambda: RQJob.fetch(document["job_id"], connection=redis).get_status().value == "stopped", 30,
             "RQ to record the stop")
    assert row(app, document["job_id"]).error_code == "stopped"


def test_a_row_stopped_elsewhere_stops_the_job_at_its_next_progress_write(
    app, openai_client, openai_server, start_worker, redis
):
    from webapp.core.protocol import states as job_states

    start_worker(**slow_worker_env(openai_server))
    document = post_text(openai_client, long_text()).get_json()["documents"][0]
    wait_for_stage(openai_client, document["job_id"], "embed")
    with app.app_context(), connection():  # no RQ command: only the row changes (e.g. a lost message)
        assert job_states.mark_stopped(document["job_id"])
    wait_for(lambda: RQJob.fetch(document["job_id"], connection=redis).get_status().value == "stopped", 30,
             "the job to notice its row at a progress write")
    with app.app_context(), connection():
        assert Chunk.select().where(Chunk.document == document["id"]).count() == 0
    assert row(app, document["job_id"]).status == "stopped"


def test_abandoned_job_cleanup_updates_the_row(app, client, redis, start_worker):
    """A worker that vanished mid-job (its machine lost): RQ's StartedJobRegistry cleanup, which
    a worker runs when it starts and every maintenance interval, runs only the job's failure
    callback — which must move the row: failed without retries left, else scheduled and run again."""
    app.config["DOCUMENT_JOB_RETRIES"] = 0
    first = upload(client, "pypdf-extract-text.md").get_json()["documents"][0]["job_id"]
    app.config.update(DOCUMENT_JOB_RETRIES=2, RETRY_MAX_DELAY=1)
    second = upload(client, "minimal-document.pdf").get_json()["documents"][0]["job_id"]
    queue = Queue("default", connection=redis)
    registry = StartedJobRegistry(queue=queue)
    for job_id in (first, second):  # as a worker leaves them when it is killed mid-job
        queue.remove(job_id)
        RQJob.fetch(job_id, connection=redis).set_status("started")
        redis.zadd(registry.key, {f"{job_id}:lost-execution": time.time() - 10})  # its heartbeat expired
        with app.app_context(), connection():
            Job.update(status="started", attempts=1).where(Job.id == job_id).execute()

    start_worker()  # a new worker's start-up maintenance finds both
    failed = wait_for(lambda: (lambda j: j if j.status == "failed" else None)(row(app, first)), 60,
                      "the abandoned job without retries to fail")
    assert failed.error_code == "worker_died" and failed.ended_at is not None
    finished = wait_for(lambda: (lambda j: j if j.status == "finished" else None)(row(app, second)), 60,
                        "the abandoned job with retries to run again")
    assert finished.attempts == 2


# --- automatic retries ------------------------------------------------------------------------

def test_a_transient_failure_is_retried_with_the_row_scheduled_then_fails_after_its_limit(
    app, openai_client, openai_server, start_worker, redis
):
    openai_client.application.config.update(DOCUMENT_JOB_RETRIES=2, RETRY_MAX_DELAY=2)
    openai_server.mode = "server_error"
    document = upload(openai_client, "pypdf-extract-text.md").get_json()["documents"][0]
    start_worker(**openai_worker_env(openai_server, OPENAI_MAX_RETRIES="0"))
    scheduled = wait_for(lambda: (lambda j: j if j["status"] == "scheduled" else None)(
        openai_client.get(document["status_url"]).get_json()), 60, "the row to wait for its retry")
    assert scheduled["error_code"] == "embedding_unavailable" and scheduled["retry_at"] and scheduled["error"]
    job = wait_for(lambda: (lambda j: j if j["status"] == "failed" else None)(
        openai_client.get(document["status_url"]).get_json()), 90, "the retries to run out")
    assert job["attempts"] == 3 and job["error_code"] == "embedding_unavailable"
    assert len(openai_server.requests) == 3


def test_a_transient_failure_that_passes_finishes_on_retry(app, openai_client, openai_server, start_worker):
    openai_client.application.config.update(DOCUMENT_JOB_RETRIES=2, RETRY_MAX_DELAY=1)
    openai_server.mode = "fail_once"
    document = upload(openai_client, "pypdf-extract-text.md").get_json()["documents"][0]
    start_worker(**openai_worker_env(openai_server, OPENAI_MAX_RETRIES="0"))
    wait_for(lambda: row(app, document["job_id"]).status == "finished", 90, "the retry to finish")
    assert row(app, document["job_id"]).attempts == 2


def test_a_permanent_failure_fails_at_once_and_forgets_the_password(app, client, redis, run_worker):
    document = upload(client, "libreoffice-writer-password.pdf", password="wrong-password").get_json()["documents"][0]
    run_worker()
    job = row(app, document["job_id"])
    assert (job.status, job.error_code, job.attempts) == ("failed", "wrong_password", 1)
    assert RQJob.fetch(document["job_id"], connection=redis).retries_left == 0
    from webapp.core.models import Document
    with app.app_context(), connection():
        assert Document.get_by_id(document["id"]).password is None


# --- batches and duplicates -----------------------------------------------------------------

def test_a_multi_file_upload_is_one_batch_with_totals_and_progress(app, client, run_worker):
    body = upload(client, "minimal-document.pdf", "pypdf-extract-text.md", "libreoffice-writer-password.pdf").get_json()
    assert body["batch_url"] == f"/api/batches/{body['batch_id']}"
    before = client.get(body["batch_url"]).get_json()
    assert before["totals"] == {"queued": 3} and before["progress"] == 0 and not before["finished"]
    run_worker()
    batch = client.get(body["batch_url"]).get_json()
    assert batch["totals"] == {"finished": 2, "failed": 1} and batch["progress"] == 100 and batch["finished"]
    assert {d["id"] for d in batch["documents"]} == {d["id"] for d in body["documents"]}
    assert client.get("/api/batches/nope").status_code == 404


def test_the_same_bytes_uploaded_again_point_at_the_existing_document(app, client, run_worker):
    first = upload(client, "pypdf-extract-text.md").get_json()["documents"][0]
    while_queued = upload(client, "pypdf-extract-text.md").get_json()
    assert while_queued["documents"][0]["duplicate"] is True
    assert while_queued["documents"][0]["id"] == first["id"] and while_queued["batch_id"] is None
    run_worker()
    after = upload(client, "pypdf-extract-text.md", "minimal-document.pdf").get_json()["documents"]
    assert [d["duplicate"] for d in after] == [True, False] and after[0]["job_id"] == first["job_id"]
    forced = upload(client, "pypdf-extract-text.md", reprocess="true").get_json()["documents"][0]
    assert forced["duplicate"] is False and forced["id"] != first["id"]
    with app.app_context(), connection():
        assert Job.select().where(Job.kind == "document").count() == 3


def test_a_scheduled_retry_keeps_the_password_until_a_terminal_state_and_can_be_canceled(
    app, openai_client, openai_server, start_worker, redis, run_worker
):
    from rq.registry import ScheduledJobRegistry

    from webapp.core.models import Document

    openai_client.application.config.update(DOCUMENT_JOB_RETRIES=2)
    openai_server.mode = "server_error"
    document = upload(openai_client, "aes128-r4-user-password.pdf", password="asdfzxcv").get_json()["documents"][0]
    worker = start_worker(**openai_worker_env(openai_server, OPENAI_MAX_RETRIES="0"))
    wait_for(lambda: row(app, document["job_id"]).status == "scheduled", 60, "the row to wait for its retry")
    worker.terminate()
    worker.wait(30)
    with app.app_context(), connection():  # only a terminal state forgets the password
        stored = Document.get_by_id(document["id"]).password  # encrypted at rest, never the text
        assert stored and "asdfzxcv" not in stored and decrypt_secret(app.config, stored) == "asdfzxcv"

    answer = openai_client.post(f"/api/jobs/{document['job_id']}/cancel").get_json()
    assert answer["status"] == "canceled"
    assert document["job_id"] not in ScheduledJobRegistry("default", connection=redis).get_job_ids()
    with app.app_context(), connection():
        assert Document.get_by_id(document["id"]).password is None
    run_worker(**openai_worker_env(openai_server))  # nothing left to run it
    assert row(app, document["job_id"]).status == "canceled" and row(app, document["job_id"]).attempts == 1


def test_every_transition_moves_a_row_exactly_when_the_state_machine_allows_it(app):
    """Every (from, to) pair against real rows: a guarded UPDATE changes the row iff
    ``to`` may follow ``from``, and every change stamps ``updated_at``."""
    from webapp.core.protocol.states import TRANSITIONS, transition
    from webapp.core.models import ALL_STATUSES, utcnow

    with app.app_context(), connection():
        for source in sorted(ALL_STATUSES):
            for target in sorted(TRANSITIONS):
                job = Job.create(kind="document", queue="default", status=source, updated_at=None)
                before = utcnow()
                changed = transition(job.id, target)
                after = Job.get_by_id(job.id)
                assert changed == (source in TRANSITIONS[target]), (source, target)
                assert after.status == (target if changed else source)
                assert (after.updated_at is not None and after.updated_at >= before) == changed
    # Never backwards: nothing leaves a canceled or stopped row except a retry on request.
    assert all(CANCELED not in sources and STOPPED not in sources
               for target, sources in TRANSITIONS.items() if target != "queued")


@pytest.mark.parametrize("stage", ["extract", "chunk", "embed", "store"])
def test_a_job_canceled_during_any_stage_leaves_nothing_behind(app, client, stage):
    """The document job's own body (what the worker runs, here in this process with the app's
    real database and storage), with its row moved to ``stopped`` — as cancel does to a running
    job — the moment the job enters ``stage``. Whether the job notices at a persisted progress
    write (JobStopped) or at its guarded final write (rolled back), the row stays stopped, no
    chunk is stored and the document is untouched."""
    from jobs.document_job import run_document_job
    from jobs.tracking import JobTracker
    from webapp.core.protocol import states as job_states
    from webapp.core.protocol.job_errors import JobStopped
    from webapp.core.models import Document

    class CanceledDuring(JobTracker):
        def set_progress(self, name, progress):
            if name == stage and self.stage != stage:
                assert job_states.mark_stopped(self.job_id)  # the web process's cancel, mid-job
            super().set_progress(name, progress)

    document = upload(client, "latex-two-column-lorem.pdf").get_json()["documents"][0]
    with app.app_context(), connection():
        try:
            outcome = run_document_job(document["id"], CanceledDuring(document["job_id"]), app.config)
        except JobStopped:
            outcome = "stopped at a progress write"
        assert outcome == "stopped at a progress write" or "skipped" in outcome, outcome
        assert Job.get_by_id(document["job_id"]).status == "stopped"
        assert Chunk.select().where(Chunk.document == document["id"]).count() == 0
        assert Document.get_by_id(document["id"]).chunk_count is None
