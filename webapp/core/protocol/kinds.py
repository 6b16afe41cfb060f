"""The registry of job kinds: what runs, on which queue, for how long, and how it is retried.

Adding a kind of job is one entry here plus its function in ``jobs/`` (named by dotted path,
so the web process never imports the job path). Every producer then uses the same
:func:`webapp.core.protocol.launch.launch`, and rows, callbacks, cancel, retry and the API work unchanged.

Example, the report kind::

    "report": JobKind(
        name="report", function="jobs.report_job.build_report", queue="high",
        timeout_setting="REPORT_JOB_TIMEOUT", retry=RetryPolicy(max_retries=2, base_delay=5, max_delay=60),
    )

``function`` is called with the row's ``params`` as keyword arguments (JSON values only).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class RetryPolicy:
    """Automatic retries of transient failures (a rate limit, a service briefly down).

    Delays grow exponentially and are drawn with *full jitter* (AWS Architecture Blog,
    "Exponential Backoff and Jitter"): the n-th retry waits a uniformly random time in
    ``[0, min(max_delay, base_delay × 2ⁿ⁻¹)]`` seconds, so many jobs failing together do not
    retry together.

    Attributes:
        max_retries: retries after the first attempt (0: none).
        base_delay: seconds; the upper bound of the first retry's delay.
        max_delay: seconds; no delay bound grows past this.
    """

    max_retries: int = 3
    base_delay: float = 10.0
    max_delay: float = 300.0

    def delays(self, rng: random.Random | None = None) -> list[int]:
        """Seconds before each retry, jittered: ``max_retries`` whole numbers ≥ 1.

        RQ's ``Retry(max, interval=[...])`` takes a fixed list and has no backoff or jitter of
        its own, so the list is drawn here when the job is enqueued. RQ's scheduler works in
        whole seconds; a delay of 0 would make RQ enqueue the retry at once without the
        scheduler, so the floor is 1 s.
        """
        rng = rng or random
        return [max(1, round(rng.uniform(0, min(self.max_delay, self.base_delay * 2 ** n))))
                for n in range(self.max_retries)]


@dataclass(frozen=True)
class JobKind:
    """One kind of job.

    Attributes:
        name: the row's ``kind``.
        function: dotted path of the job function, called with the row's ``params``.
        queue: ``high`` or ``default``.
        timeout_setting: config key holding the time limit in seconds (RQ's ``job_timeout``).
        retry: automatic retries of transient failures.
        result_ttl_setting / failure_ttl_setting: config keys for how long RQ keeps the job's
            record after it finished / failed (seconds); the row stays regardless.
    """

    name: str
    function: str
    queue: str
    timeout_setting: str
    retry: RetryPolicy = RetryPolicy()
    result_ttl_setting: str = "JOB_RESULT_TTL"
    failure_ttl_setting: str = "JOB_FAILURE_TTL"

    def timeout(self, config: Mapping[str, Any]) -> int:
        """The time limit in seconds from ``config``."""
        return int(config[self.timeout_setting])

    def retry_policy(self, config: Mapping[str, Any]) -> RetryPolicy:
        """The registry's retry policy, with the operator's overrides from ``config``:
        ``<KIND>_JOB_RETRIES`` (e.g. ``DOCUMENT_JOB_RETRIES``) and ``RETRY_MAX_DELAY`` (seconds)."""
        retries = config.get(f"{self.name.upper()}_JOB_RETRIES")
        max_delay = config.get("RETRY_MAX_DELAY")
        return RetryPolicy(
            max_retries=self.retry.max_retries if retries is None else int(retries),
            base_delay=self.retry.base_delay if max_delay is None else min(self.retry.base_delay, max_delay),
            max_delay=self.retry.max_delay if max_delay is None else min(self.retry.max_delay, max_delay),
        )


JOB_KINDS: dict[str, JobKind] = {
    kind.name: kind
    for kind in (
        # Extract → chunk → embed → store one uploaded document (CPU-bound, minutes at most).
        JobKind(
            name="document", function="jobs.document_job.process_document", queue="default",
            timeout_setting="DOCUMENT_JOB_TIMEOUT", retry=RetryPolicy(max_retries=3, base_delay=10, max_delay=300),
        ),
        # Build a report (activity, documents) in four formats; on `high`, so it never waits
        # behind documents.
        JobKind(
            name="report", function="jobs.report_job.build_report", queue="high",
            timeout_setting="REPORT_JOB_TIMEOUT", retry=RetryPolicy(max_retries=2, base_delay=5, max_delay=60),
        ),
        # POST a job's final state to its callback_url (a few quick retries, bounded timeout).
        JobKind(
            name="webhook", function="jobs.webhook_job.deliver_webhook", queue="high",
            timeout_setting="WEBHOOK_JOB_TIMEOUT", retry=RetryPolicy(max_retries=3, base_delay=2, max_delay=30),
        ),
        # Periodic maintenance (webapp/core/schedules.py launches them), on `high` so that a long
        # document backlog never delays recovery. Each run is cheap and the next one comes
        # soon, so a transient failure is not retried.
        # Bring rows and RQ into agreement: restore lost jobs, re-run or fail abandoned ones.
        JobKind(
            name="reconcile", function="jobs.reconcile_job.reconcile", queue="high",
            timeout_setting="MAINTENANCE_JOB_TIMEOUT", retry=RetryPolicy(max_retries=0),
        ),
        # Delete terminal jobs' rows, uploads, chunks and report files older than RETENTION_DAYS.
        JobKind(
            name="retention", function="jobs.retention_job.apply_retention", queue="high",
            timeout_setting="MAINTENANCE_JOB_TIMEOUT", retry=RetryPolicy(max_retries=0),
        ),
        # Stored files no row references (deleted) and rows whose file is gone (failed).
        JobKind(
            name="orphans", function="jobs.orphans_job.clean_orphans", queue="high",
            timeout_setting="MAINTENANCE_JOB_TIMEOUT", retry=RetryPolicy(max_retries=0),
        ),
    )
}


class UnknownJobKind(KeyError):
    """No entry in :data:`JOB_KINDS` has this name."""


def get_kind(name: str) -> JobKind:
    """The registry entry ``name``.

    Raises:
        UnknownJobKind: no such kind.
    """
    try:
        return JOB_KINDS[name]
    except KeyError:
        raise UnknownJobKind(name) from None
