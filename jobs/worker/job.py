"""The job as Docket's workers run it (RQ's ``job`` seam): :class:`DocketJob` notes while its
function runs, so that a stop or hand-back interrupts only the job's own code and never RQ's
bookkeeping around it, takes the kind's rate-limit unit right before the function, and keeps
going when Redis cannot store its live progress. :class:`JobHandedBack` is what interrupts it
when its worker shuts down. (The worker model as a whole: :mod:`jobs.worker`.)
"""

from __future__ import annotations

import logging
import signal
from typing import Any

from flask import current_app, has_app_context
from redis.exceptions import RedisError
from rq.job import Job as RQJob

from webapp.core.owner_caps import release_running_slot, take_running_slot
from webapp.core.workflows.rate_limits import acquire, begin_run

log = logging.getLogger(__name__)

# Interrupts the job running in a worker process's main thread on RQ's stop-job command.
STOP_JOB_SIGNAL = signal.SIGUSR1

_job_in_body: str | None = None  # the id of the job whose function is running in this process


def job_in_body() -> str | None:
    """The id of the job whose function runs in this process now, or ``None`` (between jobs, or
    in RQ's bookkeeping before and after a job's function)."""
    return _job_in_body


class JobHandedBack(BaseException):
    """Raised in a job's function when its worker shuts down before the job finished: the job
    goes back to its queue instead of failing. A ``BaseException``, so that no ``except
    Exception`` in a job or a parser turns it into the job's own failure."""


class DocketJob(RQJob):
    """RQ's job, noting while its function runs, so a stop request interrupts only the job's
    own code and never RQ's bookkeeping before or after it; its live progress (``meta``) is
    best effort."""

    def _execute(self) -> Any:
        global _job_in_body
        _job_in_body = self.id
        slot = False
        try:
            begin_run()  # nothing of an outside service's budget spent by this run yet
            self._take_kind_budget()
            slot = self._take_owner_slot()
            return super()._execute()
        finally:
            _job_in_body = None
            if slot:
                self._release_owner_slot()

    def _take_owner_slot(self) -> bool:
        """Take one of the job's owner's ``OWNER_MAX_RUNNING`` slots
        (:func:`webapp.core.owner_caps.take_running_slot`; it lasts 3 heartbeats and the worker's
        beat extends it). Over the cap it raises :class:`~webapp.core.owner_caps.OwnerBusy`, which
        the worker turns into a rescheduled job. Returns whether a slot was taken."""
        if not has_app_context():
            return False
        config = current_app.config
        ttl = 3 * config.get("WORKER_HEARTBEAT_INTERVAL", 5) + 1
        return take_running_slot(self.connection, config, self.meta.get("owner"), self.id, ttl)

    def _release_owner_slot(self) -> None:
        try:
            release_running_slot(self.connection, self.meta.get("owner"), self.id)
        except RedisError as exc:  # the slot expires 3 heartbeats on by itself
            log.warning("job %s: its owner's running slot not freed, Redis is unavailable: %s", self.id, exc)

    def _take_kind_budget(self) -> None:
        """Take one unit of the job kind's budget (``JOB_RATE_LIMITS``), before the job's function
        runs: a budget used up for longer than ``RATE_LIMIT_MAX_WAIT`` raises :class:`RateLimited`,
        which :class:`DocketWorker` turns into a rescheduled job. Free for an unlimited kind."""
        kind = self.meta.get("kind")
        if kind and has_app_context():
            acquire(current_app.config, f"job.{kind}")

    def save_meta(self) -> None:
        """Write ``meta`` (a running job's live stage and progress) to Redis, unless Redis is
        unreachable: then the job goes on — its row is the truth, and the next write (every
        0.5 s) tries again. Without this, a Redis restart failed every running job with an
        "unexpected" (permanent) error although its work could complete."""
        try:
            super().save_meta()
        except RedisError as exc:
            log.warning("job %s: live progress not saved, Redis is unavailable: %s", self.id, exc)


def log_fields(job: RQJob) -> dict[str, Any]:
    """The ids every log line of ``job`` carries: its id, kind, launching request and document."""
    try:
        document_id = (job.kwargs or {}).get("document_id")
    except Exception:  # arguments that cannot be read: RQ fails the job with the reason
        document_id = None
    return {"job_id": job.id, "kind": job.meta.get("kind"), "request_id": job.meta.get("request_id"),
            "document_id": document_id}
