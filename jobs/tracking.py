"""Job bookkeeping from inside a worker: status, stage and progress of the running job.

Two places are kept up to date, as the job protocol says:

* the RQ job's ``meta`` (``stage``, ``progress``) — live, cheap, read by the status API;
* the Peewee :class:`~webapp.models.Job` row — every few seconds while it runs and at the end;
  it outlives RQ's keys and is the source of truth.

Status changes are guarded ``UPDATE … WHERE status IN (…)`` statements, so a duplicate or late
delivery cannot move a row backwards (e.g. a canceled job is never restarted).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from rq.job import JobStatus

from webapp.models import Job, mark_job_failed, utcnow

log = logging.getLogger(__name__)

STARTED = JobStatus.STARTED.value
FAILED = JobStatus.FAILED.value
FINISHED = JobStatus.FINISHED.value
# A job may (re)start from any of these: RQ delivers at least once, and a failed job may be requeued.
RESTARTABLE = (JobStatus.QUEUED.value, STARTED, FAILED, FINISHED, JobStatus.SCHEDULED.value, JobStatus.DEFERRED.value)

# Seconds between progress writes. Progress goes to RQ meta (live, read by the status API) at
# most every META_INTERVAL, and to the database row at most every ROW_INTERVAL: a job shorter
# than that writes neither until it ends, so a small document costs two row updates, not six.
META_INTERVAL = 0.5
ROW_INTERVAL = 2.0


class JobTracker:
    """Status and progress of one job, from the process that runs it.

    Args:
        job_id: the Job row's id (also the RQ job id).
        rq_job: the running RQ job whose ``meta`` gets live progress; ``None`` when the job body
            runs outside RQ (the pipeline benchmark), which leaves only the row.
    """

    def __init__(self, job_id: str, rq_job=None) -> None:
        self.job_id = job_id
        self.rq_job = rq_job
        self.stage: str | None = None
        self.progress = 0
        self._last_meta = self._last_row = time.monotonic()

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
        self._last_meta = self._last_row = time.monotonic()
        return bool(updated)

    def set_progress(self, stage: str, progress: int) -> None:
        """Record ``stage`` and ``progress`` (0–100 %), written out at most every
        :data:`META_INTERVAL` s to RQ meta and every :data:`ROW_INTERVAL` s to the row."""
        self.stage, self.progress = stage, max(0, min(100, int(progress)))
        now = time.monotonic()
        if self.rq_job is not None and now - self._last_meta >= META_INTERVAL:
            self.rq_job.meta.update(stage=self.stage, progress=self.progress)
            self.rq_job.save_meta()
            self._last_meta = now
        if now - self._last_row >= ROW_INTERVAL:
            Job.update(stage=self.stage, progress=self.progress).where(
                Job.id == self.job_id, Job.status == STARTED
            ).execute()
            self._last_row = now

    def finish_query(self, result: dict[str, Any]):
        """The ``UPDATE`` that marks the row ``finished``; run it inside the job's final transaction."""
        return Job.update(status=FINISHED, progress=100, stage=None, result=result, error=None, ended_at=utcnow()).where(
            Job.id == self.job_id, Job.status == STARTED
        )

    def mark_meta_finished(self) -> None:
        """Set RQ meta to 100 % with no stage, after the row was marked ``finished``."""
        self.stage, self.progress = None, 100
        if self.rq_job is not None:
            self.rq_job.meta.update(stage=None, progress=100)
            self.rq_job.save_meta()

    def fail(self, message: str) -> None:
        """Mark the row ``failed`` with a human ``message`` (kept ≤ 1000 characters)."""
        mark_job_failed(self.job_id, message)
