"""rq 3.0.0's private internals that Docket uses (see :mod:`webapp.core.compat`).

* :func:`enqueue_at_front` — ``Queue._enqueue_job``: put an *existing* job back at the front of its
  queue inside the caller's pipeline. RQ's public ``Queue.enqueue_job`` also runs the job's
  dependency checks and sets its status through its own pipeline; a job handed back by a
  stopping worker, or an overdue retry that reconcile delivers, has to go back in the same
  ``MULTI`` as the rest of the caller's change, with its id and data untouched.
"""

from __future__ import annotations

from typing import Any

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
