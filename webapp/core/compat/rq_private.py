"""rq 3.0.0's private internals that Docket uses (see :mod:`webapp.core.compat`).

* :func:`enqueue_at_front` — ``Queue._enqueue_job``: put an *existing* job back at the front of its
  queue inside the caller's pipeline. RQ's public ``Queue.enqueue_job`` also runs the job's
  dependency checks and sets its status through its own pipeline; a job handed back by a
  stopping worker, or an overdue retry that reconcile delivers, has to go back in the same
  ``MULTI`` as the rest of the caller's change, with its id and data untouched.
* :func:`extend_time_limit` — a running job's time limit grows (a document job's, by
  ``OCR_SECONDS_PER_PAGE`` for each page it reads by OCR). RQ fixes ``job.timeout`` at enqueue
  and offers no way to change it while the job runs. Docket's worker (a ``SimpleWorker``) runs the
  job in its own process under ``UnixSignalDeathPenalty``, which is ``signal.alarm(job.timeout)``
  around the job's function; the pool (``jobs.worker.pool.kill_overdue_workers``) reads the job's
  ``timeout`` field from Redis. Both are moved on together. Tested in ``tests/core/test_compat.py``.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

from redis.exceptions import RedisError
from rq.job import Job as RQJob
from rq.queue import Queue

#: Private hooks that Docket's subclasses override (they cannot be wrapped): where, and why.
OVERRIDDEN: dict[str, str] = {
    "rq.job.Job._execute": "jobs.worker.job.DocketJob: notes the job in its function, so that a stop "
                           "or a hand-back interrupts only the job's own code, never RQ's bookkeeping",
    "rq.worker.base.BaseWorker._finalize_failure": "jobs.worker.worker.DocketWorker: a job handed back or "
                                                   "rescheduled for its rate limit is not a failure",
    "rq.worker_pool.WorkerPool._queue_names/_connection_class/_pool_class/_pool_kwargs":
        "jobs.worker.pool.DocketWorkerPool.get_worker_process: RQ's own method with one change (a "
        "reserved process listens on high only); it reads the pool's connection settings",
    "rq.worker.base.BaseWorker._stop_requested/_stopped_job_id/_shutdown_requested_date":
        "jobs.worker.worker.DocketWorker: the stop state RQ's signal handlers keep, read by its own",
}


def enqueue_at_front(queue: Queue, job: RQJob, pipeline: Any = None, at_front: bool = True) -> None:
    """Put ``job`` (already saved in Redis) back in ``queue``, at the front unless ``at_front`` is
    false, as part of ``pipeline`` when given (``Queue._enqueue_job``; module docstring)."""
    queue._enqueue_job(job, pipeline=pipeline, at_front=at_front)


def extend_time_limit(job: RQJob | None, seconds: int) -> int | None:
    """Give the job running in this process ``seconds`` more before RQ's death penalty
    (``signal.alarm``) stops it, and record its longer ``timeout`` in Redis (the pool's overdue
    check reads it). Call it from the thread that runs the job.

    Args:
        job: the running RQ job; ``None`` outside RQ (nothing happens).
        seconds: seconds to add (≥ 0).

    Returns:
        The job's time limit now (seconds since it started), or ``None`` when no alarm was set
        (outside RQ's death penalty: nothing was changed).
    """
    remaining = signal.alarm(0)
    if remaining == 0:  # no death penalty running here
        return None
    signal.alarm(remaining + seconds)
    if job is None or not job.timeout or job.timeout < 0:
        return None
    job.timeout = int(job.timeout) + seconds
    try:
        job.connection.hset(job.key, "timeout", job.timeout)
    except RedisError as exc:  # the alarm moved; the pool's check may kill the process JOB_KILL_GRACE early
        logging.getLogger(__name__).warning("job %s: longer time limit not saved, Redis is unavailable: %s",
                                            job.id, exc)
    return job.timeout
