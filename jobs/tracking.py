"""Job bookkeeping from inside a worker: status, stage and progress of the running job.

Two places are kept up to date, as the job protocol says:

* the RQ job's ``meta`` (``stage``, ``progress``) — live, cheap, read by the status API;
* the Peewee :class:`~webapp.models.Job` row — at stage changes and at the end; it outlives
  RQ's keys and is the source of truth.

Status changes are guarded ``UPDATE … WHERE status IN (…)`` statements, so a duplicate or late
delivery cannot move a row backwards (e.g. a canceled job is never restarted).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from rq import get_current_job
from rq.job import JobStatus

from webapp.models import Job, mark_job_failed, utcnow

log = logging.getLogger(__name__)

STARTED = JobStatus.STARTED.value
FAILED = JobStatus.FAILED.value
FINISHED = JobStatus.FINISHED.value
# A job may (re)start from any of these: RQ delivers at least once, and a failed job may be requeued.
RESTARTABLE = (JobStatus.QUEUED.value, STARTED, FAILED, FINISHED, JobStatus.SCHEDULED.value, JobStatus.DEFERRED.value)

_META_INTERVAL = 0.5  # seconds between RQ meta writes for fine-grained progress


class JobTracker:
    """Status and progress reporting for the RQ job running in this work horse."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.stage: str | None = None
        self.progress = 0
        self._rq_job = get_current_job()
        self._last_meta = 0.0

    def start(self) -> bool:
        """Mark the row ``started``. Returns ``False`` if the job must not run (canceled, stopped, gone)."""
        now = utcnow()
        updated = (
            Job.update(status=STARTED, started_at=now, ended_at=None, error=None, stage=None, progress=0,
                       attempts=Job.attempts + 1)
            .where(Job.id == self.job_id, Job.status.in_(RESTARTABLE))
            .execute()
        )
        if not updated:
            log.warning("job %s: row missing or not restartable; not running it", self.job_id)
        return bool(updated)

    def report(self, stage: str, progress: int, persist: bool = False) -> None:
        """Record ``stage`` and ``progress`` (0–100 %).

        RQ meta is written at most every 0.5 s unless the stage changes; the database row only
        when ``persist`` is true (at stage changes).
        """
        progress = max(0, min(100, int(progress)))
        changed = stage != self.stage
        self.stage, self.progress = stage, progress
        now = time.monotonic()
        if self._rq_job is not None and (changed or persist or now - self._last_meta >= _META_INTERVAL):
            self._rq_job.meta.update(stage=stage, progress=progress)
            self._rq_job.save_meta()
            self._last_meta = now
        if persist:
            Job.update(stage=stage, progress=progress).where(Job.id == self.job_id, Job.status == STARTED).execute()

    def finish_query(self, result: dict[str, Any]):
        """The ``UPDATE`` that marks the row ``finished``; run it inside the job's final transaction."""
        return Job.update(status=FINISHED, progress=100, stage=None, result=result, error=None, ended_at=utcnow()).where(
            Job.id == self.job_id, Job.status == STARTED
        )

    def report_finished(self) -> None:
        """Set RQ meta to 100 % with no stage, after the row was marked ``finished``."""
        self.stage, self.progress = None, 100
        if self._rq_job is not None:
            self._rq_job.meta.update(stage=None, progress=100)
            self._rq_job.save_meta()

    def fail(self, message: str) -> None:
        """Mark the row ``failed`` with a human ``message`` (kept ≤ 1000 characters)."""
        mark_job_failed(self.job_id, message)


def on_work_horse_killed(job, retpid: int, ret_val: int, rusage) -> None:
    """``Worker(work_horse_killed_handler=…)``: the horse died (SIGKILL, OOM) without running our code.

    RQ then fails the job in Redis; this marks the database row failed too, so it does not stay
    ``started``. Runs in the worker parent, inside the app context the worker was started in.
    """
    import os
    import signal

    if ret_val and os.WIFSIGNALED(ret_val):
        number = os.WTERMSIG(ret_val)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = str(number)
        reason = f"the worker process running this job was killed ({name}); it may have run out of memory"
    else:
        reason = f"the worker process running this job exited unexpectedly (status {ret_val})"
    try:
        mark_job_failed(job.id, reason)
    except Exception:  # never let bookkeeping take the worker down
        log.exception("job %s: could not record the killed work horse", job.id)
