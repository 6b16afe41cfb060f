"""Why a job ended without finishing: exceptions with a machine-readable ``code``, a human
``message`` and whether trying again later may help (``transient``).

They live in the shared core because three places read them: the job path raises them, the
state machine (:mod:`webapp.job_states`) records them on the row, and the API returns them.
"""

from __future__ import annotations


class JobError(Exception):
    """A job cannot complete, for a reason a user can read.

    Attributes:
        code: snake_case reason, e.g. ``password_required``; stored as the row's ``error_code``.
        message: one human sentence, stored as the row's ``error``.
        transient: ``True`` when the cause may go away by itself (a service briefly down, a
            rate limit); the job is then retried automatically if its kind allows retries.
    """

    code = "job_failed"
    transient = False

    def __init__(self, message: str, code: str | None = None, transient: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if transient is not None:
            self.transient = transient


class TransientJobError(JobError):
    """A failure that may not happen again: embedding API 429/5xx/timeout, a connection reset,
    the database or storage briefly unavailable."""

    code = "temporarily_unavailable"
    transient = True


class JobStopped(JobError):
    """The job was stopped on request (RQ's stop-job command, or its row was canceled or
    stopped while it ran). Raised inside the job; never retried."""

    code = "stopped"

    def __init__(self, message: str = "the job was stopped on request") -> None:
        super().__init__(message)


class WorkerProcessDied(JobError):
    """The worker process running the job died (killed, out of memory, crashed) or was
    abandoned; the job did not get to record its own failure. Retried if the kind allows."""

    code = "worker_died"
    transient = True
