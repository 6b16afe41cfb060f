"""The one way a job starts: :func:`launch` (or :func:`new_job` + :func:`enqueue_jobs` for many).

Every producer — an upload (:func:`new_job` for each file, then :func:`enqueue_jobs` for them
all), a report request, a webhook, a retry on request, and later the scheduler and reconcile —
goes through here, in the job protocol's order:

1. the Job row is committed, with ``params``: the job function's JSON keyword arguments, so
   the row alone is enough to enqueue the job again;
2. the RQ job is enqueued with job id = row id, the kind's queue, time limit, TTLs, a jittered
   ``Retry`` for transient failures and the state machine's ``on_failure``/``on_stopped``
   callbacks (:mod:`webapp.core.protocol.states`) — several jobs in one Redis ``MULTI``/``EXEC``
   pipeline, all or none;
3. the rows get ``enqueued_at``.

A delayed job (``run_at``) waits in the scheduler's timetable (:mod:`webapp.core.protocol.delayed`)
until its time, then goes the same way (:func:`release_delayed`); a deferred one (a batch's callback) waits for its batch
(:mod:`webapp.core.workflows.chords`).

If Redis refuses, the rows are marked ``failed`` (``queue_unavailable``) and
:class:`QueueUnavailable` is raised: no row is left saying ``queued`` forever.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any, Iterable

from flask import current_app
from redis import Redis
from redis.exceptions import RedisError
from rq import Callback, Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob

from webapp.core.protocol import delayed as delayed_jobs
from webapp.core.db import connection, db
from webapp.core.fair_queue import FairQueue
from webapp.core.protocol.kinds import get_kind
from webapp.core.protocol.states import DEFERRED, FAILED, QUEUED, SCHEDULED, JobStateError, mark_due, mark_failed, mark_requeued
from webapp.core.logs import current_request_id
from webapp.core.models import Job, new_id, utcnow
from webapp.core.queues import rq

log = logging.getLogger(__name__)

ON_FAILURE = Callback("webapp.core.protocol.states.on_job_failure")
ON_STOPPED = Callback("webapp.core.protocol.states.on_job_stopped")
QUEUE_UNAVAILABLE = "The job queue (Redis) is unavailable, so the job could not be queued; try again later."


class QueueUnavailable(Exception):
    """Redis refused or could not be reached; the rows were marked ``failed``.

    Attributes:
        job_ids: the ids of the rows that were not enqueued.
    """

    def __init__(self, message: str, job_ids: list[str] | None = None) -> None:
        super().__init__(message)
        self.job_ids = job_ids or []


def new_job(kind: str, params: dict[str, Any], *, job_id: str | None = None, document_id: str | None = None,
            batch_id: str | None = None, callback_url: str | None = None, owner: str | None = None,
            run_at: datetime | None = None, status: str = QUEUED) -> Job:
    """An unsaved Job row for ``kind`` with ``params``; save it, then pass it to :func:`enqueue_jobs`.

    For producers that create other rows in the same transaction (an upload creates the
    documents and their jobs together); others use :func:`launch`. ``owner`` is whose job it is
    (``None``: the system's, seen by admins only).

    ``run_at`` (naive UTC, from :func:`webapp.core.protocol.delayed.start_time`) makes it a delayed job:
    the row is ``scheduled`` until then (:mod:`webapp.core.protocol.delayed`). ``status="deferred"``
    makes it wait for other jobs instead and is not enqueued by :func:`enqueue_jobs`
    (a batch's callback, :mod:`webapp.core.workflows.chords`).

    Raises:
        UnknownJobKind: ``kind`` is not in the registry.
        TypeError: ``params`` is not JSON-serialisable.
        ValueError: ``status`` is not ``queued`` or ``deferred``.
    """
    json.dumps(params)  # fail here, not in a worker
    if status not in (QUEUED, DEFERRED):
        raise ValueError(f"a new job is queued or deferred, not {status}")
    if run_at is not None and status == QUEUED:
        status = SCHEDULED
    return Job(id=job_id or new_id(), kind=kind, queue=get_kind(kind).queue, params=params, document=document_id,
               batch_id=batch_id, callback_url=callback_url, owner=owner, updated_at=utcnow(), run_at=run_at,
               status=status)


def launch(kind: str, params: dict[str, Any], **row_fields: Any) -> Job:
    """Commit a row for a job of ``kind`` and enqueue it.

    Args:
        kind: a name in :data:`webapp.core.protocol.kinds.JOB_KINDS`.
        params: the job function's keyword arguments (JSON values).
        **row_fields: ``job_id``, ``document_id``, ``batch_id``, ``callback_url``, ``owner``,
            ``run_at`` (see :func:`new_job`).

    Returns:
        The row, enqueued (or, with ``run_at``, waiting in the scheduler's timetable).

    Raises:
        QueueUnavailable: Redis refused (the row is marked ``failed``).
    """
    job = new_job(kind, params, **row_fields)
    with db.database.atomic():
        job.save(force_insert=True)
    enqueue_jobs([job])
    return job


def relaunch(job_id: str) -> Job:
    """Enqueue a failed, stopped or canceled job again from its row's ``params`` (same row and
    id; ``attempts`` keeps counting).

    Raises:
        JobStateError: there is no row, or its status is not failed/stopped/canceled.
        QueueUnavailable: Redis refused (the row is marked ``failed`` again).
    """
    job = Job.find(job_id)
    if job is None:
        raise JobStateError(f"There is no job with id {job_id}.", None)
    if not mark_requeued(job_id):
        job = Job.find(job_id)
        raise JobStateError(
            f"This job is {job.status}; only a failed, stopped or canceled job can be retried.", job.status
        )
    job = Job.find(job_id)
    enqueue_jobs([job], replace=True)
    return job


def enqueue_jobs(jobs: list[Job], replace: bool = False) -> None:
    """Enqueue committed rows in one Redis transaction (all or none) and stamp ``enqueued_at``.

    A delayed row (``scheduled`` with ``run_at``, :func:`webapp.core.protocol.delayed.is_delayed`) gets
    its RQ record and its entry in the scheduler's timetable instead, in the same transaction;
    ``enqueued_at`` is stamped when its time comes and it is enqueued. Deferred rows are skipped
    (:mod:`webapp.core.workflows.chords` enqueues them when they may run).

    Args:
        jobs: committed rows with ``kind`` and ``params``.
        replace: delete RQ's earlier record of each job first (a retry reuses the job id).

    Raises:
        RuntimeError: called inside a database transaction — a worker could dequeue the job
            before the row it reads is committed.
        QueueUnavailable: Redis refused; every row is marked ``failed`` (``queue_unavailable``).
    """
    jobs = [job for job in jobs if job.status != DEFERRED]
    if not jobs:
        return
    if db.database.in_transaction():
        raise RuntimeError("enqueue_jobs must run after the rows are committed, outside a transaction")
    config = current_app.config
    by_queue: dict[str, list] = {}
    delayed: list[tuple[Job, Any]] = []
    for job in jobs:
        kind = get_kind(job.kind)
        retry = kind.retry_policy(config)
        data = Queue.prepare_data(
            kind.function,
            kwargs=job.params or {},
            job_id=job.id,
            timeout=kind.time_limit(config),
            result_ttl=config[kind.result_ttl_setting],
            failure_ttl=config[kind.failure_ttl_setting],
            description=describe(job),
            # request_id: the web request (or job) that launched it, so the worker's log lines carry it too
            # owner: the worker's OWNER_MAX_RUNNING slot is the owner's (webapp/core/owner_caps.py)
            meta={"stage": None, "progress": 0, "kind": job.kind, "request_id": current_request_id(),
                  "owner": job.owner},
            retry=Retry(max=retry.max_retries, interval=retry.delays()) if retry.max_retries else None,
            on_failure=ON_FAILURE,
            on_stopped=ON_STOPPED,
        )
        if delayed_jobs.is_delayed(job):
            delayed.append((job, data))
        else:
            by_queue.setdefault(job.queue, []).append(data)
    try:
        if replace:
            for job in jobs:
                try:
                    RQJob.fetch(job.id, connection=rq.connection).delete()
                except NoSuchJobError:  # RQ had forgotten it already
                    pass
        owners = {job.id: job.owner for job in jobs}
        with rq.connection.pipeline() as pipeline:  # MULTI … EXEC: every job or none
            for queue_name, datas in by_queue.items():
                queue = rq.get_queue(queue_name)
                if isinstance(queue, FairQueue):  # each job in its owner's turn (webapp/core/fair_queue.py)
                    queue.enqueue_many(datas, pipeline=pipeline, owners=owners)
                else:
                    queue.enqueue_many(datas, pipeline=pipeline)
            for job, data in delayed:
                delayed_jobs.add_entry(rq.get_queue(job.queue), job, data, pipeline)
            pipeline.execute()
    except RedisError as exc:
        current_app.logger.error("enqueueing %d job(s) failed: %s", len(jobs), exc)
        for job in jobs:
            mark_failed(job.id, QUEUE_UNAVAILABLE, "queue_unavailable")
        raise QueueUnavailable(QUEUE_UNAVAILABLE, [job.id for job in jobs]) from exc
    enqueued = [data.job_id for datas in by_queue.values() for data in datas]
    if enqueued:
        Job.update(enqueued_at=utcnow()).where(Job.id.in_(enqueued), Job.status != FAILED).execute()


def describe(job: Job) -> str:
    """RQ's job description (shown by rq-dashboard): kind and parameters, shortened."""
    params = ", ".join(f"{key}={value}" for key, value in (job.params or {}).items())
    return f"{job.kind}({params})"[:200]


def release_delayed(redis: Redis, job_id: str) -> bool:
    """Start delayed job ``job_id`` now that its time came (the scheduler process calls this for
    each due entry). Needs an app context.

    The entry's removal is the claim; then the row goes ``scheduled → queued`` (guarded) and the
    job is enqueued with id = row id, replacing the entry's record. A row that is no longer
    waiting for its start (canceled, deleted, already started) is left alone.

    Returns:
        Whether the job was enqueued.

    Raises:
        redis.exceptions.RedisError, peewee.DatabaseError: the claim or the row update failed
            (the next poll, or reconcile, tries again).
    """
    if not delayed_jobs.remove_entry(redis, job_id):
        return False  # claimed by another poll
    if not mark_due(job_id):
        log.info("delayed job %s: no longer waiting for its start; not enqueued", job_id)
        return False
    with connection():
        job = Job.find(job_id)
        try:
            enqueue_jobs([job], replace=True)
        except QueueUnavailable:
            return False  # the row says failed (queue_unavailable), with the sentence
    log.info("delayed job %s (%s) enqueued; planned for %s", job_id, job.kind, job.run_at)
    return True


def restore_delayed(rows: Iterable[Job]) -> list[str]:
    """Write the RQ records and timetable entries of delayed rows again (Redis lost them), each
    for its planned time, or now if that time passed. Needs an app context.

    Returns:
        The ids written.

    Raises:
        QueueUnavailable: Redis refused (the rows were marked ``failed``).
    """
    rows = [row for row in rows if delayed_jobs.is_delayed(row)]
    now = utcnow()
    for row in rows:
        row.run_at = max(row.run_at, now)  # for the entry's score only; the row keeps its planned time
    enqueue_jobs(rows, replace=True)
    return [row.id for row in rows]
