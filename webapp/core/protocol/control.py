"""Job control from outside the worker: cancel or stop a job (retry is
:func:`webapp.core.protocol.launch.relaunch`).

Used by ``POST /api/jobs/<id>/cancel``; the changes themselves are the state machine's
(:mod:`webapp.core.protocol.states`), so the web process, the scheduler and the worker agree.
"""

from __future__ import annotations

import time

from redis.exceptions import RedisError
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job as RQJob

from webapp.core.protocol.delayed import remove_entry
from webapp.core.protocol.states import STARTED, WAITING, JobStateError, mark_canceled, mark_stopped
from webapp.core.models import Job
from webapp.core.queues import rq

STOP_WAIT = 2.0  # seconds cancel waits for a running job's row to follow RQ's stop command


def cancel_job(job_id: str, wait: float = STOP_WAIT) -> Job:
    """Cancel a job that has not run yet, or stop one that is running.

    * ``queued``/``scheduled``/``deferred`` → ``canceled``, and RQ's job is canceled (it leaves
      its queue or the scheduled registry, so no worker runs it);
    * ``started`` → RQ's stop-job command to the worker running it, whose ``on_stopped``
      callback moves the row to ``stopped``. If RQ no longer knows the job, no worker runs it
      (its RQ job is not ``started``: e.g. a big document's, whose parts run),
      or the row has not followed within ``wait`` seconds (the job is in native code), the row
      is marked ``stopped`` here; the job then stops at its next persisted progress write and
      its final write is rolled back.

    Args:
        job_id: the Job row (= RQ job id).
        wait: seconds to wait for a running job to stop.

    Returns:
        The row after the change.

    Raises:
        JobStateError: no row (``status`` None), or the job already ended.
    """
    job = Job.find(job_id)
    if job is None:
        raise JobStateError(f"There is no job with id {job_id}.", None)
    if job.status in WAITING:
        if mark_canceled(job_id):
            _cancel_in_rq(job_id)
            return Job.find(job_id)
        job = Job.find(job_id)  # it started meanwhile
    if job.status == STARTED:
        try:
            rq_status = RQJob.fetch(job_id, connection=rq.connection).get_status(refresh=False)
            if getattr(rq_status, "value", rq_status) != STARTED:
                # No worker runs it: its RQ job ended while the row goes on (a big document whose
                # page-range parts run, webapp/core/workflows/page_parts.py), or is queued again.
                mark_stopped(job_id, "the job was stopped on request")
                return Job.find(job_id)
            send_stop_job_command(rq.connection, job_id)
        except (NoSuchJobError, InvalidJobOperation, RedisError):
            mark_stopped(job_id, "the job was stopped on request (no worker was running it)")
            return Job.find(job_id)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            job = Job.find(job_id)
            if job.status != STARTED:
                return job
            time.sleep(0.05)
        mark_stopped(job_id)
        return Job.find(job_id)
    raise JobStateError(f"This job has already ended ({job.status}); only a queued, scheduled or running job "
                        "can be canceled.", job.status)


def _cancel_in_rq(job_id: str) -> None:
    """Cancel RQ's job, if RQ still has it (it may never have been enqueued, or expired), and
    remove a delayed job's entry from the scheduler's timetable."""
    try:
        remove_entry(rq.connection, job_id)
    except RedisError:
        pass  # the scheduler finds the row canceled and leaves it
    try:
        RQJob.fetch(job_id, connection=rq.connection).cancel()
    except (NoSuchJobError, InvalidJobOperation):
        pass
    except RedisError:
        # The row says canceled and a worker checks the row before it starts the job.
        pass
