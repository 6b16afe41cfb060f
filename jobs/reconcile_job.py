"""The reconcile job: bring job rows and RQ into agreement (the scheduler runs it every
``RECONCILE_INTERVAL`` seconds, 60 by default).

The database is the truth and Redis a work queue that may lose everything; RQ notices a dead
worker only through heartbeats and cleans up after it only in some worker's maintenance (every
10 minutes). Each run does, in order:

1. **RQ's own abandoned-job handling, promptly.** ``StartedJobRegistry.cleanup()`` for every
   queue: an execution whose worker stopped heartbeating (Docket's workers heartbeat every
   ``WORKER_HEARTBEAT_INTERVAL`` s while a job runs and their executions expire 3 beats later)
   goes through RQ's failure path — the state machine's ``on_failure`` callback moves the row to
   ``scheduled`` for RQ's delayed retry, or ``failed`` with a sentence after the kind's retry
   limit.
2. **Delayed retries nobody delivers.** RQ's own scheduler (run by a worker) moves due retries
   from each queue's ``ScheduledJobRegistry`` to the queue; when the worker holding its lock was
   killed, the lock lives on for a minute and a new worker takes it over only in its 10-minute
   maintenance. A retry overdue by more than ``RECONCILE_GRACE`` seconds is enqueued here, by
   the same steps RQ's scheduler takes; removing it from the registry is the claim (``ZREM``
   answers 1 to one caller only), so it is never enqueued twice.
3. **Jobs stranded between dequeue and start.** A worker takes a job by moving it from its
   queue to RQ's intermediate list, then starts it; killed in between (milliseconds), it leaves
   the job there, ``queued`` in RQ but on no queue, and RQ's own cleanup of that list runs in a
   worker's 10-minute maintenance. A job seen there by two runs at least a minute apart (RQ's
   own first-seen marks) and not started is pushed back to the front of its queue; removing it
   from the list is the claim.
4. **Jobs RQ calls queued that are on no list.** A waiting row whose RQ job says ``queued`` but
   whose id is on neither its queue nor the intermediate list — read in one ``MULTI`` snapshot, so
   a job between the two lists is seen on one of them — is pushed back to the front of its
   queue (the chaos run met one after a Redis restart). A ``SET NX`` claim per job keeps two
   concurrent passes from pushing it twice; a duplicate would be harmless anyway, as a worker
   starts a job only through the row's guarded ``queued → started`` transition.
5. **Every row that is not terminal and has not changed for ``RECONCILE_GRACE`` seconds**
   (younger rows may be between their commit and their enqueue) is compared with what RQ says:

   ================================  =========================================================
   row                                RQ says                        → action
   ================================  =========================================================
   scheduled, delayed (``run_at``)    no entry in the scheduler's    the entry written again
                                      timetable                      for its planned time
   deferred (a batch's callback)      (not asked: not in RQ yet)     released if its batch
                                                                     ended (webapp/core/workflows/chords.py)
   deferred (a big document's join)   (not asked: not in RQ yet)     released if every part
                                                                     finished (page_parts.py)
   started, with page-range parts     (not asked: its RQ job ended   failed if a part ended
                                      once the parts were made)      unfinished, else the join
                                                                     released if they all finished
   queued / scheduled                 nothing (Redis restarted,      enqueued again from the
                                      wiped, the key evicted)        row's ``params``
   started                            nothing                        re-run or fail
   started (or queued: the row is     started, but its worker is     re-run or fail
   behind)                            gone
   started                            started, no progress for the   stopped in its worker (if
                                      kind's time limit +            any), re-run or fail
                                      ``STUCK_JOB_MARGIN``
   not terminal                       finished / failed (the row     re-run or fail
                                      missed its update)
   not terminal                       canceled / stopped (e.g. from  the row follows: canceled
                                      rq-dashboard)                  or stopped
   ================================  =========================================================

   *Re-run or fail*: while the row has runs left (``attempts`` ≤ the kind's retries), the row
   goes back to ``queued`` (reason kept in ``error`` until it starts) and the job is enqueued
   again with the same id, RQ's old record and executions removed; otherwise the row is
   ``failed`` with a sentence saying why. Every stage of every job is idempotent (a second run
   of a document replaces its chunks in one transaction; a report rewrites its files), so a
   job that runs twice leaves one result.

Rows are read in pages of :data:`PAGE` and RQ is asked with one pipelined round trip per page,
so a backlog of 100 000 queued rows costs a few hundred queries, not 100 000.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from flask import current_app
from redis import Redis
from rq import get_current_job
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job as RQJob
from rq.intermediate_queue import IntermediateQueue
from rq.queue import Queue
from rq.registry import ScheduledJobRegistry, StartedJobRegistry
from rq.worker import Worker

from jobs.tracking import NOT_RUNNING, JobTracker
from webapp.core.compat.rq_private import enqueue_at_front
from webapp.core.protocol import delayed as delayed_jobs
from webapp.core.workflows import chords, page_parts
from webapp.core.db import connection
from webapp.core.protocol.delayed import is_delayed
from webapp.core.protocol.kinds import UnknownJobKind, get_kind
from webapp.core.protocol.states import (
    CANCELED, DEFERRED, FAILED, FINISHED, QUEUED, SCHEDULED, STARTED, STOPPED, WAITING,
    mark_canceled, mark_failed, mark_rerun, mark_stopped,
)
from webapp.core.protocol.launch import QueueUnavailable, enqueue_jobs, restore_delayed
from webapp.core.models import Job, utcnow
from webapp.core.queues import QUEUE_NAMES, rq

log = logging.getLogger(__name__)

PAGE = 500  # rows read and checked against RQ per round trip
LIVE = (QUEUED, SCHEDULED, DEFERRED, STARTED)


@dataclass
class ReconcileResult:
    """What one run did: job ids per action (``rq_cleanup``: how many executions RQ's own
    abandoned-job cleanup handled)."""

    checked: int = 0
    rq_cleanup: int = 0
    delivered: list[str] = field(default_factory=list)  # overdue delayed retries enqueued
    unstranded: list[str] = field(default_factory=list)  # dequeued by a worker that died before starting
    # them, or queued in RQ but on no list (pushed back to the front of their queue)
    restored: list[str] = field(default_factory=list)  # waiting rows RQ had lost, enqueued again
    rerun: list[str] = field(default_factory=list)  # started rows enqueued again
    failed: list[str] = field(default_factory=list)  # rows out of runs, failed with a sentence
    followed: list[str] = field(default_factory=list)  # rows moved to RQ's canceled/stopped
    released: list[str] = field(default_factory=list)  # deferred batch callbacks whose batch had ended

    def as_dict(self) -> dict[str, Any]:
        """JSON for the job's ``result`` (id lists capped at 100 each, with their counts)."""
        data: dict[str, Any] = {"checked": self.checked, "rq_cleanup": self.rq_cleanup}
        for name in ("delivered", "unstranded", "restored", "rerun", "failed", "followed", "released"):
            ids = getattr(self, name)
            data[name] = ids[:100]
            data[f"{name}_count"] = len(ids)
        return data


def reconcile() -> dict[str, Any]:
    """The RQ job (kind ``reconcile``): one :func:`reconcile_jobs` pass, tracked like any job.

    Returns:
        :meth:`ReconcileResult.as_dict` (also the row's ``result``), or ``{"skipped": reason}``.
    """
    rq_job = get_current_job()
    tracker = JobTracker(rq_job.id, rq_job) if rq_job is not None else None
    with connection() as database:
        if tracker is not None and not tracker.start():
            return NOT_RUNNING
        result = reconcile_jobs(current_app.config, rq.connection,
                                exclude={rq_job.id} if rq_job is not None else set()).as_dict()
        if tracker is not None:
            with database.atomic():
                tracker.finish_query(result).execute()
            tracker.finished()
    return result


def reconcile_jobs(config: dict[str, Any], redis: Redis, exclude: set[str] | frozenset[str] = frozenset()
                   ) -> ReconcileResult:
    """One reconcile pass (see the module docstring). Needs an app context.

    Args:
        config: the app config (grace periods, time limits, retry limits).
        redis: the Redis client RQ uses.
        exclude: job ids to leave alone (the running reconcile job itself).

    Returns:
        What it did.

    Raises:
        redis.exceptions.RedisError, peewee.DatabaseError: Redis or the database failed; the
            actions already taken stand (each is a guarded transition), the next run goes on.
    """
    result = ReconcileResult()
    grace = int(config["RECONCILE_GRACE"])
    for name in QUEUE_NAMES:
        registry = StartedJobRegistry(name, connection=redis)
        result.rq_cleanup += len(registry.get_expired_job_ids())
        registry.cleanup()
        result.delivered.extend(_deliver_overdue_retries(name, redis, grace))
        result.unstranded.extend(_restore_stranded(name, redis))
    cutoff = utcnow() - timedelta(seconds=grace)
    last_id = ""
    queued_in_rq: list[Job] = []  # waiting rows whose RQ job says queued: are they on a list?
    with connection():
        while True:
            page = list(
                Job.select()
                .where(Job.status.in_(LIVE), Job.id > last_id,
                       (Job.updated_at < cutoff) | (Job.updated_at.is_null() & (Job.created_at < cutoff)))
                .order_by(Job.id)
                .limit(PAGE)
            )
            if not page:
                break
            last_id = page[-1].id
            page = [row for row in page if row.id not in exclude]
            result.checked += len(page)
            waiting = {row.id for row in page if is_delayed(row) or row.status == DEFERRED}
            _reconcile_waiting([row for row in page if row.id in waiting], redis, result)
            # A big document's job whose page-range parts run: its RQ job ended by design.
            split = page_parts.parents_among([row.id for row in page if row.status == STARTED and row.id not in waiting])
            for job_id in sorted(split):
                result.released.extend(page_parts.reconcile_parent(job_id))
            _reconcile_page([row for row in page if row.id not in waiting and row.id not in split], config, redis,
                            result, queued_in_rq)
    result.unstranded.extend(_requeue_unlisted(queued_in_rq, redis))
    if any((result.restored, result.rerun, result.failed, result.followed, result.delivered, result.unstranded)):
        log.warning("reconcile: restored %d, re-ran %d, failed %d, followed RQ for %d job(s)",
                    len(result.restored), len(result.rerun), len(result.failed), len(result.followed))
    return result


def _reconcile_page(rows: list[Job], config: dict[str, Any], redis: Redis, result: ReconcileResult,
                    queued_in_rq: list[Job]) -> None:
    with redis.pipeline(transaction=False) as pipe:
        for row in rows:
            pipe.hmget(RQJob.key_for(row.id), "status", "worker_name")
        states = pipe.execute()
    workers = {name.decode() for _, name in states if name}
    alive = _live_workers(redis, workers)
    restore: list[Job] = []
    now = utcnow()
    for row, (raw_status, raw_worker) in zip(rows, states):
        rq_status = raw_status.decode() if raw_status else None
        worker = raw_worker.decode() if raw_worker else None
        if rq_status is None:
            if row.status == STARTED:
                _rerun_or_fail(row, config, redis, result, "its record in the job queue was lost (Redis restarted "
                                                           "or was emptied) while it ran", "job_lost")
            else:
                restore.append(row)
        elif rq_status == STARTED:
            if not worker or worker not in alive:
                _rerun_or_fail(row, config, redis, result, "the worker running it stopped answering (it was killed "
                                                           "or lost its connection)", "worker_died")
            elif row.status == STARTED and _stuck(row, config, now):
                _rerun_or_fail(row, config, redis, result, "it made no progress for longer than its time limit",
                               "stuck", stop_in_worker=True)
        elif rq_status in (FINISHED, FAILED):
            _rerun_or_fail(row, config, redis, result, f"the job queue recorded it as {rq_status} but its row was "
                                                       "not updated (the database was unavailable)", "lost_update")
        elif rq_status == CANCELED and row.status in WAITING:
            if mark_canceled(row.id):
                result.followed.append(row.id)
        elif rq_status in (CANCELED, STOPPED) and row.status == STARTED:
            if mark_stopped(row.id, "the job was stopped in the job queue"):
                result.followed.append(row.id)
        elif rq_status == QUEUED and row.status in WAITING:
            queued_in_rq.append(row)  # on its queue, unless a list lost it: _requeue_unlisted
        # queued/scheduled/deferred in RQ: waiting there; a started row behind it is a failed
        # run whose row update was lost, and its retry brings the row along when it starts.
    if restore:
        _restore(restore, result)


def _reconcile_waiting(rows: list[Job], redis: Redis, result: ReconcileResult) -> None:
    """Step 5 for the rows that wait by design: a delayed job whose entry the scheduler's
    timetable lost gets it again for its planned time; a deferred batch callback whose batch has
    ended is released (its trigger, the last job's terminal state, was lost with its process)."""
    delayed = [row for row in rows if is_delayed(row)]
    missing = delayed_jobs.missing_entries(redis, [row.id for row in delayed])
    if missing:
        try:
            result.restored.extend(restore_delayed([row for row in delayed if row.id in missing]))
        except QueueUnavailable:
            result.failed.extend(sorted(missing))
    for row in rows:
        if row.status == DEFERRED and row.kind == page_parts.JOIN_KIND and row.parent_id:
            released = page_parts.release_join(row.parent_id)
            if released:
                result.released.append(released)
                log.warning("reconcile: every part of document job %s had finished; its join %s released",
                            row.parent_id, released)
    for batch_id in sorted({row.batch_id for row in rows if row.status == DEFERRED and row.batch_id}):
        released = chords.release_callbacks(batch_id)
        result.released.extend(released)
        if released:
            log.warning("reconcile: batch %s had ended; its callback job(s) %s released", batch_id, released)


def _deliver_overdue_retries(queue_name: str, redis: Redis, grace: int) -> list[str]:
    """Enqueue the jobs of ``queue_name``'s ``ScheduledJobRegistry`` due more than ``grace``
    seconds ago (RQ's scheduler would have moved them within a second if it ran)."""
    registry = ScheduledJobRegistry(queue_name, connection=redis)
    queue = Queue(queue_name, connection=redis)
    delivered = []
    for job_id in registry.get_jobs_to_schedule(int(time.time()) - grace):
        if not redis.zrem(registry.key, job_id):
            continue  # RQ's scheduler took it meanwhile
        try:
            job = RQJob.fetch(job_id, connection=redis)
        except NoSuchJobError:
            continue
        enqueue_at_front(queue, job, at_front=job.should_enqueue_at_front())  # webapp/core/compat
        delivered.append(job_id)
    if delivered:
        log.warning("reconcile: %d overdue retr(ies) on %s enqueued (RQ's scheduler is not running)",
                    len(delivered), queue_name)
    return delivered


def _restore_stranded(queue_name: str, redis: Redis) -> list[str]:
    """Push back to the front of ``queue_name`` the jobs a worker dequeued (RQ's intermediate
    list) but never started, once RQ's first-seen mark is over a minute old."""
    queue = Queue(queue_name, connection=redis)
    intermediate = IntermediateQueue(queue.key, connection=redis)
    restored = []
    for job_id in intermediate.get_job_ids():
        if job_id in queue.started_job_registry or intermediate.set_first_seen(job_id):
            continue  # running, or seen for the first time: a worker may be starting it now
        if not intermediate.should_be_cleaned_up(job_id) or not redis.lrem(intermediate.key, 1, job_id):
            continue
        if RQJob.exists(job_id, connection=redis):
            queue.push_job_id(job_id, at_front=True)
            restored.append(job_id)
    if restored:
        log.warning("reconcile: %d job(s) stranded between dequeue and start on %s pushed back", len(restored),
                    queue_name)
    return restored


def _requeue_unlisted(rows: list[Job], redis: Redis) -> list[str]:
    """Push back to the front of its queue each of ``rows`` whose RQ job still says ``queued``
    but is on neither a queue nor an intermediate list (step 4 of the module docstring).

    Returns:
        The ids pushed back.
    """
    if not rows:
        return []
    with redis.pipeline(transaction=True) as pipe:  # MULTI: the lists and the statuses at one instant
        for name in QUEUE_NAMES:
            key = Queue(name, connection=redis).key
            pipe.lrange(key, 0, -1)
            pipe.lrange(IntermediateQueue(key, connection=redis).key, 0, -1)
        for row in rows:
            pipe.hget(RQJob.key_for(row.id), "status")
        answers = pipe.execute()
    lists = len(QUEUE_NAMES) * 2
    listed = {job_id.decode() for ids in answers[:lists] for job_id in ids}
    pushed = []
    for row, status in zip(rows, answers[lists:]):
        if status != QUEUED.encode() or row.id in listed:
            continue
        if not redis.set(f"docket:reconcile:requeued:{row.id}", 1, nx=True, ex=60):
            continue  # another pass pushed it a moment ago
        Queue(row.queue, connection=redis).push_job_id(row.id, at_front=True)
        pushed.append(row.id)
    if pushed:
        log.warning("reconcile: %d job(s) queued in RQ but on no queue pushed back", len(pushed))
    return pushed


def _live_workers(redis: Redis, names: set[str]) -> set[str]:
    """The worker names among ``names`` whose Redis record still exists (it expires 3 heartbeats
    after a Docket worker's last one)."""
    names = sorted(names)
    if not names:
        return set()
    with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.exists(Worker.redis_worker_namespace_prefix + name)
        found = pipe.execute()
    return {name for name, exists in zip(names, found) if exists}


def _stuck(row: Job, config: dict[str, Any], now) -> bool:
    try:
        limit = get_kind(row.kind).time_limit(config)
    except UnknownJobKind:
        return False
    last = row.updated_at or row.started_at or row.created_at
    return last is not None and (now - last).total_seconds() > limit + int(config["STUCK_JOB_MARGIN"])


def _stop_in_worker(redis: Redis, job_id: str) -> None:
    """Ask the worker still running a stuck job to stop it (RQ's stop-job command)."""
    try:
        send_stop_job_command(redis, job_id)
    except (InvalidJobOperation, NoSuchJobError):
        pass


def _rerun_or_fail(row: Job, config: dict[str, Any], redis: Redis, result: ReconcileResult, reason: str,
                   code: str, stop_in_worker: bool = False) -> None:
    """Re-run ``row`` or fail it (see the module docstring).

    ``stop_in_worker``: the job's worker still runs it; it is asked to stop only once the row
    says what happens next, so that its stopped callback finds the row no longer ``started``
    and leaves it (asked first, a worker that obeys at once would move the row to ``stopped``,
    and the job would never run again).
    """
    try:
        runs = 1 + get_kind(row.kind).retry_policy(config).max_retries
    except UnknownJobKind:
        runs = 0
    if row.attempts < runs:
        if row.status != QUEUED and not mark_rerun(row.id, f"re-run because {reason}", code):
            return  # the row moved meanwhile (finished, canceled, …): nothing to do
        if stop_in_worker:
            _stop_in_worker(redis, row.id)
        _forget_executions(redis, row)
        try:
            enqueue_jobs([Job.find(row.id)], replace=True)
        except QueueUnavailable:
            result.failed.append(row.id)  # marked failed (queue_unavailable) by enqueue_jobs
            return
        # RQ's automatic retries of the new run: what the kind allows minus the runs already
        # made (enqueue_jobs gives a fresh job all of them), so the limit holds across re-runs.
        redis.hset(RQJob.key_for(row.id), "retries_left", max(0, runs - 1 - row.attempts))
        result.rerun.append(row.id)
        log.warning("reconcile: job %s (%s) re-run: %s", row.id, row.kind, reason)
        return
    message = (f"{reason}; it had already run {row.attempts} time(s), the limit for a {row.kind} job"
               if runs else f"{reason}; its kind {row.kind!r} is unknown, so it cannot run again")
    if mark_failed(row.id, message, code):
        if stop_in_worker:
            _stop_in_worker(redis, row.id)
        result.failed.append(row.id)
        _forget_executions(redis, row)
        log.warning("reconcile: job %s (%s) failed: %s", row.id, row.kind, message)


def _forget_executions(redis: Redis, row: Job) -> None:
    """Remove the job's entries from RQ's started registry, so that RQ's abandoned-job cleanup
    can never fail the next run for the dead one's sake."""
    registry = StartedJobRegistry(row.queue, connection=redis)
    prefix = f"{row.id}:".encode()
    stale = [entry for entry in redis.zrange(registry.key, 0, -1) if entry.startswith(prefix)]
    if stale:
        redis.zrem(registry.key, *stale)


def _restore(rows: list[Job], result: ReconcileResult) -> None:
    """Enqueue again waiting rows whose RQ job is gone (a ``scheduled`` retry runs now)."""
    for row in rows:
        if row.status == SCHEDULED:
            mark_rerun(row.id, "its delayed retry was lost from the job queue (Redis restarted or was emptied)",
                       "job_lost")
    # In the order they were accepted: each owner's jobs keep their order, and the fair queue
    # (webapp/core/fair_queue.py) deals the owners' rounds out again.
    fresh = sorted((row for row in Job.by_id(row.id for row in rows).values() if row.status in (QUEUED, DEFERRED)),
                   key=lambda row: (row.created_at, row.id))
    for start in range(0, len(fresh), PAGE):
        batch = fresh[start:start + PAGE]
        try:
            enqueue_jobs(batch)
        except QueueUnavailable:
            result.failed.extend(row.id for row in batch)
            continue
        result.restored.extend(row.id for row in batch)
