"""Why a job ended without finishing: exceptions with a machine-readable ``code``, a human
``message`` and whether trying again later may help (``transient``).

They live in the shared core because three places read them: the job path raises them, the
state machine (:mod:`webapp.core.protocol.states`) records them on the row, and the API returns them.
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


class RateLimited(BaseException):
    """A rate limit's budget (:mod:`webapp.core.workflows.rate_limits`) is not free within ``RATE_LIMIT_MAX_WAIT``.

    Raised in a job (before its function runs, or inside it at an API request), the worker
    reschedules the job for when the budget frees units: row ``scheduled`` with ``error_code``
    ``rate_limited``, never a failure, RQ's retries untouched (``jobs/worker/``). A
    ``BaseException``, like the worker's hand-back, so that no ``except Exception`` in a job or
    a library turns waiting into the job's own failure.

    Attributes:
        name: the budget, e.g. ``openai.requests`` or ``job.document``.
        retry_after: seconds until the budget frees units (> 0).
        limit: the limit as configured, e.g. ``600/minute`` or ``OPENAI_REQUESTS_PER_MINUTE=3000``.
        code: ``rate_limited`` (the row's ``error_code``).
        reason: what the job waits for, in words.
        message: one human sentence.
    """

    code = "rate_limited"

    def __init__(self, name: str, retry_after: float, limit: str = "") -> None:
        self.name = name
        self.retry_after = retry_after
        self.limit = limit
        #: what the job waits for, in words ("the openai.requests rate limit (3000/minute)")
        self.reason = f"the {name} rate limit" + (f" ({limit})" if limit else "")
        self.message = f"waiting for {self.reason}; units free again in {retry_after:.1f} s"
        super().__init__(self.message)
