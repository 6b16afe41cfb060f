"""Reconcile, disagreement by disagreement: each test builds a real row and real RQ state in the
test's Redis (through RQ's own API), runs one reconcile pass in-process and checks the row and
RQ afterwards. Then reconcile as an ordinary job in a real worker, and two crashes with real
processes: a pool process SIGKILLed mid-job, and a rolling restart."""

from __future__ import annotations

import signal
from datetime import datetime, timedelta, timezone

import psutil
from rq import Queue, Worker
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job as RQJob, JobStatus
from rq.registry import ScheduledJobRegistry, StartedJobRegistry
from rq.worker import SimpleWorker

from jobs.reconcile_job import reconcile_jobs
from tests.conftest import long_text, post_text, row, wait_for
from tests.local_services import slow_worker_env
from tests.jobs.test_recovery import _chunks, _started_in_embed
from webapp.core.db import connection
from webapp.core.protocol.job_errors import WorkerProcessDied
from webapp.core.protocol.kinds import get_kind
from webapp.core.protocol.states import mark_started, on_job_failure, on_job_stopped
from webapp.core.protocol.launch import launch
from webapp.core.models import Job, utcnow

DOCUMENT_RUNS = 1 + 3  # the document kind: one run and 3 automatic retries (webapp/core/protocol/kinds.py)
NOTHING_DONE = {"rq_cleanup": 0, "delivered": [], "unstranded": [], "restored": [], "rerun": [], "failed": [],
                "followed": []}


def _upload(client, n: int = 0) -> str:
    """Accept a small text document through the API (row committed, RQ job queued); its job id."""
    response = post_text(client, long_text(3 + n), name=f"doc-{n}.txt")
    assert response.status_code == 202, response.get_json()
    return response.get_json()["documents"][0]["job_id"]


def _reconcile(app, redis, **config):
    """One reconcile pass in this process, with no grace unless ``config`` says otherwise."""
    with app.app_context():
        return reconcile_jobs(app.config | {"RECONCILE_GRACE": 0} | config, redis)


def _did(result) -> dict:
    """What a pass did, without how many rows it checked."""
    return {name: getattr(result, name) for name in NOTHING_DONE}


def _rq(redis, job_id: str) -> RQJob:
    return RQJob.fetch(job_id, connection=redis)


def _queued_ids(redis, queue: str = "default") -> list[str]:
    return Queue(queue, connection=redis).get_job_ids()


def _start_in_worker(app, redis, job_id: str, name: str = "reconcile-test-worker") -> tuple[SimpleWorker, object]:
    """Take ``job_id`` off its queue as an RQ worker named ``name`` does, and mark its row
    started as the job's first line does: RQ's record says started by ``name``, its execution
    is in the started registry, the worker's record exists. Returns the worker and execution."""
    queue = Queue(row(app, job_id).queue, connection=redis)
    worker = SimpleWorker([queue], connection=redis, name=name)
    worker.register_birth()
    job, _ = Queue.dequeue_any([queue], None, connection=redis)
    assert job.id == job_id
    execution = worker.prepare_execution(job)
    worker.prepare_job_execution(job, remove_from_intermediate_queue=True)
    with app.app_context(), connection():
        assert mark_started(job_id)
    assert _rq(redis, job_id).get_status() == JobStatus.STARTED
    return worker, execution


def _fail_transiently(app, redis, worker: SimpleWorker, execution, job_id: str) -> None:
    """The job's worker process died: what the pool does (the state machine's failure callback,
    then RQ's failure handling). The row becomes ``scheduled``; RQ's job waits in the
    ``ScheduledJobRegistry`` for its jittered retry."""
    job = _rq(redis, job_id)
    with app.app_context():
        on_job_failure(job, redis, WorkerProcessDied, WorkerProcessDied("the worker process was killed (SIGKILL)"),
                       None)
        job.ended_at = datetime.now(timezone.utc)
        worker.handle_job_failure(job, Queue(job.origin, connection=redis), exc_string="killed", execution=execution)
    assert row(app, job_id).status == "scheduled"
    assert _rq(redis, job_id).get_status() == JobStatus.SCHEDULED


def _set_row(app, job_id: str, **fields) -> None:
    with app.app_context(), connection():
        Job.update(**fields).where(Job.id == job_id).execute()


# --- waiting rows ---------------------------------------------------------------------------

def test_a_job_stranded_between_dequeue_and_start_goes_back_to_its_queue(app, client, redis):
    """A worker killed between taking the job (RQ moves it to the queue's intermediate list)
    and starting it: RQ still says queued, but the job is on no queue."""
    job_id = _upload(client)
    queue = Queue("default", connection=redis)
    intermediate = IntermediateQueue(queue.key, connection=redis)
    assert redis.lmove(queue.key, intermediate.key, "RIGHT", "LEFT") == job_id.encode()  # the worker's dequeue

    assert _did(_reconcile(app, redis)) == NOTHING_DONE  # first sighting: a worker may be starting it now
    assert _queued_ids(redis) == [] and intermediate.get_job_ids() == [job_id]
    seen = datetime.now(timezone.utc) - timedelta(minutes=2)
    redis.set(intermediate.get_first_seen_key(job_id), seen.timestamp())  # a minute and more later

    assert _did(_reconcile(app, redis)) == NOTHING_DONE | {"unstranded": [job_id]}
    assert _queued_ids(redis) == [job_id] and intermediate.get_job_ids() == []
    assert row(app, job_id).status == "queued"


def test_a_job_queued_in_rq_but_on_no_list_goes_back_to_its_queue(app, client, redis, run_worker):
    """RQ's record says queued, but the id is on neither the queue nor the intermediate list (a
    Redis restart kept the one and not the other): pushed back once, then it runs."""
    job_id = _upload(client)
    other = _upload(client, 1)
    assert redis.lrem(Queue("default", connection=redis).key, 0, job_id) == 1
    assert _rq(redis, job_id).get_status() == JobStatus.QUEUED and _queued_ids(redis) == [other]

    assert _did(_reconcile(app, redis)) == NOTHING_DONE | {"unstranded": [job_id]}
    assert _queued_ids(redis) == [job_id, other]  # at the front
    assert _did(_reconcile(app, redis)) == NOTHING_DONE  # listed now: nothing more
    run_worker()
    assert row(app, job_id).status == "finished" and row(app, other).status == "finished"


def test_a_queued_row_whose_rq_job_was_deleted_is_enqueued_again(app, client, redis):
    job_id = _upload(client)
    _rq(redis, job_id).delete()  # Redis lost it (evicted, emptied, deleted from rq-dashboard)
    assert not RQJob.exists(job_id, connection=redis) and _queued_ids(redis) == []

    result = _reconcile(app, redis)

    assert _did(result) == NOTHING_DONE | {"restored": [job_id]}
    assert _queued_ids(redis) == [job_id]  # same id, in its queue
    rq_job = _rq(redis, job_id)
    assert rq_job.get_status() == JobStatus.QUEUED and rq_job.func_name == "jobs.document_job.process_document"
    restored = row(app, job_id)
    assert restored.status == "queued" and restored.attempts == 0 and restored.params == rq_job.kwargs


def test_a_scheduled_retry_whose_rq_job_is_gone_is_queued_and_enqueued(app, client, redis):
    job_id = _upload(client)
    worker, execution = _start_in_worker(app, redis, job_id)
    _fail_transiently(app, redis, worker, execution, job_id)
    _rq(redis, job_id).delete()  # its delayed retry lost with Redis's data
    assert ScheduledJobRegistry("default", connection=redis).get_job_ids() == []

    result = _reconcile(app, redis)

    assert _did(result) == NOTHING_DONE | {"restored": [job_id]}
    restored = row(app, job_id)
    assert restored.status == "queued" and restored.error_code == "job_lost" and restored.retry_at is None
    assert restored.attempts == 1  # the next start counts the second run
    assert _queued_ids(redis) == [job_id] and _rq(redis, job_id).get_status() == JobStatus.QUEUED


def test_a_row_younger_than_the_grace_is_left_alone(app, client, redis):
    job_id = _upload(client)  # between its commit and its enqueue, a row looks just like this
    _rq(redis, job_id).delete()
    before = row(app, job_id)

    result = _reconcile(app, redis, RECONCILE_GRACE=30)

    assert result.checked == 0 and _did(result) == NOTHING_DONE
    assert not RQJob.exists(job_id, connection=redis)
    after = row(app, job_id)
    assert (after.status, after.updated_at, after.enqueued_at) == (before.status, before.updated_at,
                                                                  before.enqueued_at)


def test_a_row_that_agrees_with_rq_is_untouched(app, client, redis):
    job_id = _upload(client)
    before, rq_before = row(app, job_id), redis.hgetall(RQJob.key_for(job_id))

    result = _reconcile(app, redis)

    assert result.checked == 1 and _did(result) == NOTHING_DONE
    after = row(app, job_id)
    assert (after.status, after.updated_at, after.error) == (before.status, before.updated_at, None)
    assert redis.hgetall(RQJob.key_for(job_id)) == rq_before and _queued_ids(redis) == [job_id]


def test_a_job_canceled_in_rq_cancels_its_queued_row(app, client, redis):
    job_id = _upload(client)
    _rq(redis, job_id).cancel()  # e.g. rq-dashboard's cancel button: RQ only
    assert _queued_ids(redis) == []

    result = _reconcile(app, redis)

    assert _did(result) == NOTHING_DONE | {"followed": [job_id]}
    canceled = row(app, job_id)
    assert canceled.status == "canceled" and canceled.error_code == "canceled" and canceled.ended_at is not None
    assert _rq(redis, job_id).get_status() == JobStatus.CANCELED and _queued_ids(redis) == []


# --- started rows ---------------------------------------------------------------------------

def test_a_started_row_whose_rq_job_is_gone_is_run_again(app, client, redis):
    job_id = _upload(client)
    _start_in_worker(app, redis, job_id)
    _rq(redis, job_id).delete()  # Redis emptied while the job ran

    result = _reconcile(app, redis)

    assert _did(result) == NOTHING_DONE | {"rerun": [job_id]}
    rerun = row(app, job_id)
    assert rerun.status == "queued" and rerun.error_code == "job_lost" and "lost" in rerun.error
    assert rerun.attempts == 1 and rerun.ended_at is None
    assert _queued_ids(redis) == [job_id] and _rq(redis, job_id).get_status() == JobStatus.QUEUED
    assert StartedJobRegistry("default", connection=redis).get_job_ids(cleanup=False) == []
    # The kind's limit holds across the re-run: 4 runs, 1 made, so RQ may retry it twice more.
    assert _rq(redis, job_id).retries_left == DOCUMENT_RUNS - 1 - 1


def test_a_worker_that_dies_before_the_job_marked_its_row_started_leaves_a_retry(app, client, redis):
    """RQ handed the job to a worker process (its record says started) which died before the job's
    first line ran: the row still says queued. The failure is transient, with retries left: the
    row waits for its retry like any started job's, it does not fail ``worker_died``."""
    job_id = _upload(client)
    queue = Queue("default", connection=redis)
    worker = SimpleWorker([queue], connection=redis, name="dies-before-start")
    worker.register_birth()
    job, _ = Queue.dequeue_any([queue], None, connection=redis)
    execution = worker.prepare_execution(job)
    worker.prepare_job_execution(job, remove_from_intermediate_queue=True)
    assert row(app, job_id).status == "queued"
    _fail_transiently(app, redis, worker, execution, job_id)
    assert row(app, job_id).error_code == "worker_died" and row(app, job_id).retry_at is not None


def test_a_failure_reported_twice_leaves_the_row_waiting_for_its_retry(app, client, redis):
    """Two abandoned-job cleanups at once (reconcile and a worker's maintenance) both run the
    failure callback: the second must not turn the scheduled retry into a failure."""
    job_id = _upload(client)
    worker, execution = _start_in_worker(app, redis, job_id)
    _fail_transiently(app, redis, worker, execution, job_id)
    with app.app_context():
        on_job_failure(_rq(redis, job_id), redis, WorkerProcessDied, WorkerProcessDied("abandoned"), None)
    assert row(app, job_id).status == "scheduled"


def test_a_started_row_out_of_runs_whose_rq_job_is_gone_fails_with_a_sentence(app, client, redis):
    job_id = _upload(client)
    _start_in_worker(app, redis, job_id)
    _set_row(app, job_id, attempts=DOCUMENT_RUNS)  # its fourth run, the last the document kind allows
    redis.delete(RQJob.key_for(job_id))  # its key evicted (maxmemory): the started registry still lists it
    assert StartedJobRegistry("default", connection=redis).get_job_ids(cleanup=False) == [job_id]

    result = _reconcile(app, redis)

    assert _did(result) == NOTHING_DONE | {"failed": [job_id]}
    failed = row(app, job_id)
    assert failed.status == "failed" and failed.error_code == "job_lost" and failed.ended_at is not None
    assert failed.error.startswith("its record in the job queue was lost") and "4 time(s)" in failed.error
    assert not RQJob.exists(job_id, connection=redis) and _queued_ids(redis) == []
    assert StartedJobRegistry("default", connection=redis).get_job_ids(cleanup=False) == []


def test_a_started_job_whose_worker_is_gone_is_run_again(app, client, redis):
    job_id = _upload(client)
    worker, _ = _start_in_worker(app, redis, job_id, name="vanished-worker")
    redis.delete(worker.key)  # its record expired: no heartbeat for 3 beats
    assert not redis.exists("rq:worker:vanished-worker")

    result = _reconcile(app, redis)

    assert _did(result) == NOTHING_DONE | {"rerun": [job_id]}
    rerun = row(app, job_id)
    assert rerun.status == "queued" and rerun.error_code == "worker_died" and rerun.attempts == 1
    rq_job = _rq(redis, job_id)
    assert rq_job.get_status() == JobStatus.QUEUED and rq_job.worker_name is None
    assert _queued_ids(redis) == [job_id]
    # The dead run's execution is gone, so RQ's abandoned-job cleanup can never fail the new run.
    assert StartedJobRegistry("default", connection=redis).get_job_ids(cleanup=False) == []


def test_a_started_job_stuck_past_its_time_limit_is_run_again(app, client, redis):
    job_id = _upload(client)
    worker, _ = _start_in_worker(app, redis, job_id, name="stuck-worker")
    limit = get_kind("document").time_limit(app.config) + app.config["STUCK_JOB_MARGIN"]
    _set_row(app, job_id, updated_at=utcnow() - timedelta(seconds=limit + 5))  # no progress since
    assert redis.exists(worker.key)  # its worker still answers

    result = _reconcile(app, redis)

    assert _did(result) == NOTHING_DONE | {"rerun": [job_id]}
    rerun = row(app, job_id)
    assert rerun.status == "queued" and rerun.error_code == "stuck" and rerun.attempts == 1
    assert _queued_ids(redis) == [job_id] and _rq(redis, job_id).get_status() == JobStatus.QUEUED


def test_a_stuck_job_whose_worker_obeys_the_stop_at_once_is_still_run_again(app, client, redis, monkeypatch):
    job_id = _upload(client)
    _start_in_worker(app, redis, job_id, name="stuck-worker")
    limit = get_kind("document").time_limit(app.config) + app.config["STUCK_JOB_MARGIN"]
    _set_row(app, job_id, updated_at=utcnow() - timedelta(seconds=limit + 5))
    stops = []

    def worker_stops_it_now(connection_, stopped_id, serializer=None):
        # The worker's answer to RQ's stop-job command (its stopped callback) before reconcile's
        # next statement: the row must already say what reconcile decided, so the callback
        # finds it not started and leaves it.
        stops.append(stopped_id)
        on_job_stopped(RQJob.fetch(stopped_id, connection=connection_), connection_)

    monkeypatch.setattr("jobs.reconcile_job.send_stop_job_command", worker_stops_it_now)

    result = _reconcile(app, redis)

    assert stops == [job_id]
    assert _did(result) == NOTHING_DONE | {"rerun": [job_id]}
    rerun = row(app, job_id)
    assert rerun.status == "queued" and rerun.error_code == "stuck"
    assert _queued_ids(redis) == [job_id]


def test_a_stuck_job_out_of_runs_fails_even_if_its_worker_obeys_the_stop_at_once(app, client, redis, monkeypatch):
    job_id = _upload(client)
    _start_in_worker(app, redis, job_id, name="stuck-worker")
    limit = get_kind("document").time_limit(app.config) + app.config["STUCK_JOB_MARGIN"]
    _set_row(app, job_id, updated_at=utcnow() - timedelta(seconds=limit + 5), attempts=DOCUMENT_RUNS)
    monkeypatch.setattr("jobs.reconcile_job.send_stop_job_command", lambda connection_, stopped_id, serializer=None:
                        on_job_stopped(RQJob.fetch(stopped_id, connection=connection_), connection_))

    result = _reconcile(app, redis)

    assert _did(result) == NOTHING_DONE | {"failed": [job_id]}
    failed = row(app, job_id)
    assert failed.status == "failed" and failed.error_code == "stuck" and "4 time(s)" in failed.error


def test_a_started_job_that_made_progress_recently_is_not_stuck(app, client, redis):
    job_id = _upload(client)
    _start_in_worker(app, redis, job_id)
    limit = get_kind("document").time_limit(app.config) + app.config["STUCK_JOB_MARGIN"]
    _set_row(app, job_id, updated_at=utcnow() - timedelta(seconds=limit - 30))

    result = _reconcile(app, redis)

    assert result.checked == 1 and _did(result) == NOTHING_DONE
    assert row(app, job_id).status == "started" and _rq(redis, job_id).get_status() == JobStatus.STARTED


def test_a_job_stopped_in_rq_stops_its_started_row(app, client, redis):
    job_id = _upload(client)
    worker, execution = _start_in_worker(app, redis, job_id)
    rq_job = _rq(redis, job_id)
    worker._stopped_job_id = job_id  # RQ's stop-job command reached the worker (rq-dashboard's stop)
    worker.handle_job_failure(rq_job, Queue("default", connection=redis), exc_string="stopped", execution=execution)
    assert _rq(redis, job_id).get_status() == JobStatus.STOPPED and row(app, job_id).status == "started"

    result = _reconcile(app, redis)

    assert _did(result) == NOTHING_DONE | {"followed": [job_id]}
    stopped = row(app, job_id)
    assert stopped.status == "stopped" and stopped.error_code == "stopped" and stopped.ended_at is not None
    assert _queued_ids(redis) == []


def test_a_row_that_missed_rq_recording_its_end_is_run_again(app, client, redis):
    finished_id, failed_id = _upload(client, 0), _upload(client, 1)
    for job_id, status in ((finished_id, JobStatus.FINISHED), (failed_id, JobStatus.FAILED)):
        worker, execution = _start_in_worker(app, redis, job_id, name=f"worker-{status.value}")
        rq_job = _rq(redis, job_id)
        with redis.pipeline() as pipe:  # the worker's bookkeeping; the row's update was lost
            rq_job.set_status(status, pipeline=pipe)
            worker.cleanup_execution(rq_job, pipeline=pipe, execution=execution)
            pipe.execute()

    result = _reconcile(app, redis)

    assert _did(result) == NOTHING_DONE | {"rerun": sorted([finished_id, failed_id])}
    for job_id in (finished_id, failed_id):
        rerun = row(app, job_id)
        assert rerun.status == "queued" and rerun.error_code == "lost_update" and rerun.attempts == 1
        assert _rq(redis, job_id).get_status() == JobStatus.QUEUED
    assert sorted(_queued_ids(redis)) == sorted([finished_id, failed_id])


# --- RQ's scheduler and idempotency -----------------------------------------------------------

def test_an_overdue_retry_is_delivered_exactly_once_without_rqs_scheduler(app, client, redis):
    job_id = _upload(client)
    worker, execution = _start_in_worker(app, redis, job_id)
    _fail_transiently(app, redis, worker, execution, job_id)
    registry = ScheduledJobRegistry("default", connection=redis)
    # Due a minute ago: the worker whose RQ scheduler would have moved it was killed.
    registry.schedule(_rq(redis, job_id), datetime.now(timezone.utc) - timedelta(seconds=60))
    assert _queued_ids(redis) == []

    first, second = _reconcile(app, redis), _reconcile(app, redis)

    assert _did(first) == NOTHING_DONE | {"delivered": [job_id]}
    assert _did(second) == NOTHING_DONE
    assert _queued_ids(redis) == [job_id] and registry.get_job_ids() == []
    assert _rq(redis, job_id).get_status() == JobStatus.QUEUED
    assert row(app, job_id).status == "scheduled"  # the retry's start brings the row along


def test_a_second_pass_finds_nothing_to_do(app, client, redis):
    lost, canceled, stuck, dead = (_upload(client, n) for n in range(4))
    _rq(redis, lost).delete()
    _rq(redis, canceled).cancel()
    _start_in_worker(app, redis, stuck, name="stuck-worker")
    limit = get_kind("document").time_limit(app.config) + app.config["STUCK_JOB_MARGIN"]
    _set_row(app, stuck, updated_at=utcnow() - timedelta(seconds=limit + 5))
    worker, _ = _start_in_worker(app, redis, dead, name="dead-worker")
    redis.delete(worker.key)

    first = _reconcile(app, redis)
    assert first.checked == 4
    assert (first.restored, first.followed, sorted(first.rerun)) == ([lost], [canceled], sorted([stuck, dead]))
    states = {job_id: (j.status, j.updated_at) for job_id in (lost, canceled, stuck, dead) if (j := row(app, job_id))}
    queued = sorted(_queued_ids(redis))

    second = _reconcile(app, redis)

    assert second.checked == 3 and _did(second) == NOTHING_DONE  # the canceled row is terminal now
    assert {job_id: (j.status, j.updated_at) for job_id in states if (j := row(app, job_id))} == states
    assert sorted(_queued_ids(redis)) == queued == sorted([lost, stuck, dead])


# --- reconcile as a job ---------------------------------------------------------------------

def test_reconcile_runs_as_a_job_in_a_real_worker_and_reports_what_it_did(app, client, redis, run_worker):
    lost = _upload(client)
    _rq(redis, lost).delete()
    with app.app_context(), connection():
        reconcile_id = launch("reconcile", {}).id

    run_worker(RECONCILE_GRACE="0")  # the grace is read where reconcile runs: in the worker

    done = row(app, reconcile_id)
    assert done.status == "finished" and done.attempts == 1
    assert done.result["restored"] == [lost] and done.result["restored_count"] == 1
    assert done.result["rerun_count"] == done.result["failed_count"] == done.result["followed_count"] == 0
    assert done.result["checked"] == 1  # the document's row; never its own
    # The pool's burst processes may all have left before reconcile enqueued the document: the
    # next worker runs it.
    assert _queued_ids(redis) in ([lost], [])
    run_worker()
    assert row(app, lost).status == "finished"


# --- crashes with real processes ------------------------------------------------------------

def _pool_process_running(redis, pool: psutil.Process, job_id: str) -> Worker | None:
    """The RQ worker record of the pool's own process that is running ``job_id`` now."""
    children = {child.pid for child in pool.children()}
    return next((worker for worker in Worker.all(connection=redis)
                 if worker.pid in children and worker.get_current_job_id() == job_id), None)


def test_a_pool_process_killed_mid_job_runs_the_job_again_on_the_pool(
        openai_app, openai_client, openai_server, redis, start_worker):
    document = post_text(openai_client, long_text(40)).get_json()["documents"][0]
    job_id = document["job_id"]
    pool = psutil.Process(start_worker(**slow_worker_env(openai_server, delay=0.3)).pid)
    wait_for(lambda: _started_in_embed(openai_app, job_id), 60, "the job to reach its embed stage")
    running = wait_for(lambda: _pool_process_running(redis, pool, job_id), 30, "the pool process running the job")

    psutil.Process(running.pid).send_signal(signal.SIGKILL)  # the OOM killer's way

    # The pool notices the dead process: a transient failure, retried after a jittered delay.
    scheduled = wait_for(lambda: (j := row(openai_app, job_id)).status != "started" and j, 30,
                         "the pool to record the dead process's job")
    assert scheduled.status == "scheduled" and scheduled.error_code == "worker_died", scheduled.error
    assert "SIGKILL" in scheduled.error and scheduled.retry_at is not None
    assert scheduled.retry_at <= utcnow() + timedelta(seconds=11)  # the first retry's bound: 10 s
    openai_server.delay = 0
    done = wait_for(lambda: (j := row(openai_app, job_id)).status == "finished" and j, 120,
                    "the job to run again on a fresh process of the pool and finish")
    assert done.attempts == 2 and done.error is None
    stored, counted = _chunks(openai_app, document["id"])
    assert stored == counted and stored > 0  # one set of chunks, however many runs
    assert running.pid not in {child.pid for child in pool.children()}


def test_uploads_during_a_rolling_restart_are_all_processed(
        openai_app, openai_client, openai_server, redis, start_worker):
    env = slow_worker_env(openai_server, delay=0.3, SHUTDOWN_GRACE="1")
    old = start_worker(**env)
    accepted = [post_text(openai_client, long_text(3 + n), name=f"before-{n}.txt") for n in range(6)]
    start_worker(**env)  # the new release's worker comes up beside the old one
    old_pool = psutil.Process(old.pid)

    def old_pool_busy():
        worker = next((w for w in Worker.all(connection=redis)
                       if w.pid in {c.pid for c in old_pool.children()} and w.get_current_job_id()), None)
        return worker and row(openai_app, worker.get_current_job_id()).status == "started" and worker

    interrupted = wait_for(old_pool_busy, 60, "the old worker to run a job").get_current_job_id()
    old.send_signal(signal.SIGTERM)  # the platform stops the old release
    accepted += [post_text(openai_client, long_text(9 + n), name=f"during-{n}.txt") for n in range(4)]
    assert old.wait(30) == 0, "the old worker did not shut down within its grace"
    assert row(openai_app, interrupted).status in ("queued", "started", "finished")  # handed back, or done
    openai_server.delay = 0  # the rest at full speed: the bound below is for losses, not for speed
    accepted += [post_text(openai_client, long_text(13 + n), name=f"after-{n}.txt") for n in range(2)]

    assert all(response.status_code == 202 for response in accepted)
    documents = [response.get_json()["documents"][0] for response in accepted]
    assert len({d["id"] for d in documents}) == len(documents) == 12  # distinct contents, no duplicates

    def unfinished():
        return [d["job_id"] for d in documents if row(openai_app, d["job_id"]).status != "finished"] or None

    try:
        wait_for(lambda: not unfinished(), 120, "every accepted document to finish", interval=0.25)
    except AssertionError:
        raise AssertionError(f"not finished: {[(j, row(openai_app, j).status) for j in unfinished() or []]}") from None
    for d in documents:
        job = row(openai_app, d["job_id"])
        assert job.attempts in (1, 2), (job.id, job.attempts)  # at most one hand-back
        stored, counted = _chunks(openai_app, d["id"])
        assert stored == counted and stored > 0
