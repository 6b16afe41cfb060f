"""The running job's side of the job protocol: start, progress, finish.

Two places are kept up to date:

* the RQ job's ``meta`` (``stage``, ``progress``) — live, cheap, read by the status API;
* the Job row — every few seconds while it runs and at the end; it outlives RQ's keys and is
  the source of truth. Its status changes go through the shared state machine
  (:mod:`webapp.core.protocol.states`), as the web process's and RQ's callbacks' do.

A persisted progress write that finds the row no longer ``started`` (canceled or stopped
meanwhile) raises :class:`~webapp.core.protocol.job_errors.JobStopped`: the job ends at that point.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from rq import get_current_job

from webapp.core.protocol import states as job_states
from webapp.core.protocol.job_errors import JobStopped

log = logging.getLogger(__name__)

# Seconds between progress writes. Progress goes to RQ meta (live, read by the status API) at
# most every META_INTERVAL, and to the database row at most every ROW_INTERVAL: a job shorter
# than that writes neither until it ends, so a small document costs two row updates, not six.
META_INTERVAL = 0.5
ROW_INTERVAL = 2.0
# What a job function returns when its row says not to run (canceled, stopped, or gone).
NOT_RUNNING = {"skipped": "the job row is missing, canceled or stopped"}


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
        self.ocr_pages = 0  # pages the job has begun to read by OCR (each grew its time limit)
        self._last_meta = self._last_row = time.monotonic()

    @classmethod
    def for_current_job(cls, function: str) -> "JobTracker":
        """The tracker of the RQ job this worker process is running now.

        Args:
            function: the job function's name, for the error.

        Raises:
            RuntimeError: called outside an RQ worker.
        """
        rq_job = get_current_job()
        if rq_job is None:
            raise RuntimeError(f"{function} must run in an RQ worker")
        return cls(rq_job.id, rq_job)

    def start(self) -> bool:
        """Mark the row ``started``. Returns ``False`` if the job must not run (canceled, stopped, gone)."""
        started = job_states.mark_started(self.job_id)
        if not started:
            log.warning("job %s: row missing, canceled or stopped; not running it", self.job_id)
        self._last_meta = self._last_row = time.monotonic()
        return started

    def set_progress(self, stage: str, progress: int) -> None:
        """Record ``stage`` and ``progress`` (0–100 %), written out at most every
        :data:`META_INTERVAL` s to RQ meta and every :data:`ROW_INTERVAL` s to the row.

        Raises:
            JobStopped: the row was canceled or stopped meanwhile (found by a row write).
        """
        self.stage, self.progress = stage, max(0, min(100, int(progress)))
        now = time.monotonic()
        if self.rq_job is not None and now - self._last_meta >= META_INTERVAL:
            self.rq_job.meta.update(stage=self.stage, progress=self.progress)
            self.rq_job.save_meta()
            self._last_meta = now
        if now - self._last_row >= ROW_INTERVAL:
            self._last_row = now
            if not job_states.record_progress(self.job_id, self.stage, self.progress):
                raise JobStopped(f"the job was stopped during {self.stage}")

    def finish_query(self, result: dict[str, Any]):
        """The ``UPDATE`` that marks the row ``finished``; run it inside the job's final transaction."""
        return job_states.finish_query(self.job_id, result)

    def finished(self) -> None:
        """After the final transaction committed: RQ meta to 100 %, then the terminal follow-ups
        (the document's password is forgotten, the webhook sent)."""
        self.stage, self.progress = None, 100
        if self.rq_job is not None:
            self.rq_job.meta.update(stage=None, progress=100)
            self.rq_job.save_meta()
        job_states.after_terminal(self.job_id)
