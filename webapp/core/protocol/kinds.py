"""The job kinds: one declaration each says everything about a kind of job.

A :class:`JobKind` names its function (by dotted path, so the web process never imports the job
path), its queue, its default time limit, its retry policy, its description for the API
documents, and the hooks that replace ``kind == "…"`` checks elsewhere: what the worker loads
before it forks (``warm_up``), whether it counts in its batch's progress (``batch_member``),
and what a run not yet ended needs kept (``keeps``). Settings follow from the name:
``<NAME>_JOB_TIMEOUT`` and ``<NAME>_JOB_RETRIES`` override the declaration's time limit and
retries when set (:func:`webapp.core.config.load_config` reads them for any kind).

Adding a kind is one declaration plus its function::

    register(JobKind(
        name="thumbnail", function="jobs.thumbnail_job.make_thumbnail", queue="default",
        timeout=120, retry=RetryPolicy(max_retries=2, base_delay=5, max_delay=60),
        description="Render the first page of a document as a PNG.",
    ))

in a module of the core (the built-in kinds are below), or as a module-level ``JobKind`` of a
module named by ``JOB_KIND_MODULES`` (imported by ``create_app`` in every process: web, worker,
scheduler; :func:`load_kind_modules` registers its declarations). Every producer then uses
:func:`webapp.core.protocol.launch.launch`, and rows, callbacks, cancel, retry, reconcile,
metrics, ``/api/queues`` and the dashboard work unchanged. ``function`` is called with the row's
``params`` as keyword arguments (JSON values only).
"""

from __future__ import annotations

import importlib
import random

import limits
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping


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
    """One kind of job, declared once.

    Attributes:
        name: the row's ``kind`` (lower case, letters, digits and ``_``).
        function: dotted path of the job function, called with the row's ``params``.
        queue: ``high`` or ``default``.
        timeout: seconds the job may run (RQ's ``job_timeout``) unless ``<NAME>_JOB_TIMEOUT``
            (or ``timeout_setting``) says otherwise.
        retry: automatic retries of transient failures; ``<NAME>_JOB_RETRIES`` overrides the count.
        description: one sentence for the API documents (the ``kind`` values of the OpenAPI document).
        timeout_setting: an older shared setting that also sets the time limit (the maintenance
            kinds' ``MAINTENANCE_JOB_TIMEOUT``), below ``<NAME>_JOB_TIMEOUT``.
        warm_up: dotted path of ``warm_up(app) -> None``, run once by the worker command before it
            forks its processes (after importing every kind's function); heavy, fork-safe state
            only (parsers, models), never a socket or a database connection.
        batch_member: a job of this kind counts in its batch's totals and progress (the
            documents of an upload; not the batch's report).
        keeps: dotted path of ``keeps(job) -> (job ids, document ids)``: what a run of this
            kind that has not ended needs, so that retention keeps it.
        owns: dotted path of ``owns() -> Iterable[str]``: every storage key that rows of this
            kind's work name (an upload, a report's files, the files a running report may be
            writing), so that the orphans job never deletes them.
        rate_limit: the kind's default budget of job starts, shared by every worker (``"600/minute"``,
            the ``limits`` notation); ``JOB_RATE_LIMITS`` replaces it. ``None``: unlimited.
        result_ttl_setting / failure_ttl_setting: config keys for how long RQ keeps the job's
            record after it finished / failed (seconds); the row stays regardless.
    """

    name: str
    function: str
    queue: str
    timeout: int
    retry: RetryPolicy = RetryPolicy()
    description: str = ""
    timeout_setting: str | None = None
    warm_up: str | None = None
    batch_member: bool = False
    keeps: str | None = None
    owns: str | None = None
    rate_limit: str | None = None
    result_ttl_setting: str = "JOB_RESULT_TTL"
    failure_ttl_setting: str = "JOB_FAILURE_TTL"

    @property
    def setting_prefix(self) -> str:
        """``DOCUMENT`` for ``document``: the prefix of the kind's own settings."""
        return self.name.upper()

    def time_limit(self, config: Mapping[str, Any]) -> int:
        """Seconds the job may run: ``<NAME>_JOB_TIMEOUT``, else ``timeout_setting``, else the
        declaration's ``timeout``."""
        for key in (f"{self.setting_prefix}_JOB_TIMEOUT", self.timeout_setting):
            if key and config.get(key) is not None:
                return int(config[key])
        return int(self.timeout)

    def retry_policy(self, config: Mapping[str, Any]) -> RetryPolicy:
        """The declared retry policy, with the operator's overrides from ``config``:
        ``<NAME>_JOB_RETRIES`` (e.g. ``DOCUMENT_JOB_RETRIES``) and ``RETRY_MAX_DELAY`` (seconds)."""
        retries = config.get(f"{self.setting_prefix}_JOB_RETRIES")
        max_delay = config.get("RETRY_MAX_DELAY")
        return RetryPolicy(
            max_retries=self.retry.max_retries if retries is None else int(retries),
            base_delay=self.retry.base_delay if max_delay is None else min(self.retry.base_delay, max_delay),
            max_delay=self.retry.max_delay if max_delay is None else min(self.retry.max_delay, max_delay),
        )


#: Every kind this process knows, by name: the built-in ones below, then those of
#: ``JOB_KIND_MODULES``. Declarations are code, the same in every app of the process.
JOB_KINDS: dict[str, JobKind] = {}


class UnknownJobKind(KeyError):
    """No declared kind has this name."""


def register(kind: JobKind) -> JobKind:
    """Declare ``kind`` (at import of the module that declares it). Declaring the same kind
    again (a module imported twice) changes nothing.

    Returns:
        ``kind``.

    Raises:
        ValueError: another declaration already has this name, or the name or queue is invalid.
    """
    if not kind.name.replace("_", "").isalnum() or kind.name != kind.name.lower() or len(kind.name) > 32:
        raise ValueError(f"a job kind's name is lower case letters, digits and _ (at most 32): {kind.name!r}")
    if kind.queue not in ("high", "default"):
        raise ValueError(f"job kind {kind.name!r}: its queue must be high or default, not {kind.queue!r}")
    if kind.rate_limit:
        try:
            limits.parse(kind.rate_limit)
        except ValueError:
            raise ValueError(f"job kind {kind.name!r}: its rate_limit {kind.rate_limit!r} is not in the limits "
                             "notation (e.g. 600/minute)") from None
    known = JOB_KINDS.get(kind.name)
    if known is not None and known != kind:
        raise ValueError(f"job kind {kind.name!r} is declared twice, differently")
    JOB_KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> JobKind:
    """The declaration of kind ``name``.

    Raises:
        UnknownJobKind: no such kind.
    """
    try:
        return JOB_KINDS[name]
    except KeyError:
        raise UnknownJobKind(name) from None


def load_kind_modules(names: Iterable[str]) -> None:
    """Import the modules that declare more kinds (``JOB_KIND_MODULES``) and register every
    :class:`JobKind` each one holds at module level (a module may also call :func:`register`
    itself). The core names them as strings: it imports nothing above it.

    Raises:
        ImportError: a module cannot be imported.
        ValueError: from :func:`register`, for an invalid or conflicting declaration.
    """
    for name in names:
        module = importlib.import_module(name)
        for value in list(vars(module).values()):
            if isinstance(value, JobKind):
                register(value)


def batch_member_kinds() -> tuple[str, ...]:
    """The kinds whose jobs count in their batch's totals and progress (``batch_member``)."""
    return tuple(name for name, kind in JOB_KINDS.items() if kind.batch_member)


def hook(path: str) -> Callable[..., Any]:
    """The function at dotted ``path`` (a kind's ``warm_up`` or ``keeps``), imported now."""
    module, _, attribute = path.rpartition(".")
    return getattr(importlib.import_module(module), attribute)


# --- The built-in kinds --------------------------------------------------------------------------

for _kind in (
    JobKind(
        name="document", function="jobs.document_job.process_document", queue="default", timeout=600,
        retry=RetryPolicy(max_retries=3, base_delay=10, max_delay=300),
        description="Extract → chunk → embed → store one uploaded document (CPU-bound, minutes at most).",
        warm_up="jobs.document_job.warm_up", batch_member=True, owns="jobs.document_job.stored_uploads",
    ),
    JobKind(
        name="fetch", function="jobs.fetch_job.fetch_document", queue="default", timeout=600,
        retry=RetryPolicy(max_retries=3, base_delay=10, max_delay=300),
        description="Download a document from its URL (every redirect SSRF-checked), then extract → chunk → "
                    "embed → store it like an upload.",
        batch_member=True,
    ),
    JobKind(
        name="report", function="jobs.report_job.build_report", queue="high", timeout=300,
        retry=RetryPolicy(max_retries=2, base_delay=5, max_delay=60),
        description="Build a report (activity, documents) in four formats; on high, never behind documents.",
        keeps="jobs.report_job.needed_by_report", owns="jobs.report_job.stored_report_files",
    ),
    JobKind(
        name="webhook", function="jobs.webhook_job.deliver_webhook", queue="high", timeout=60,
        retry=RetryPolicy(max_retries=3, base_delay=2, max_delay=30),
        description="POST a job's final state to its callback_url (a few quick retries, bounded timeout).",
        keeps="jobs.webhook_job.needed_by_delivery",
    ),
    # Re-indexing after a settings change (POST /api/admin/reindex; webapp/core/indexing.py). On
    # high, so that it starts at once and HIGH_QUEUE_WORKERS' process may hold it while the
    # others run the document jobs it launches; it mostly sleeps (paced, bounded), so its time
    # limit is a day. A transient failure (Redis refused a launch) is retried: a new run resumes
    # with the documents still stale.
    JobKind(
        name="reindex", function="jobs.reindex_job.reindex", queue="high", timeout=24 * 3600,
        retry=RetryPolicy(max_retries=3, base_delay=10, max_delay=120),
        description="Launch a document job for every document a settings change left stale, at a bounded rate.",
    ),
    # Periodic maintenance (webapp/core/schedules/ launches them), on `high` so that a long
    # document backlog never delays recovery. Each run is cheap and the next one comes soon, so
    # a transient failure is not retried.
    JobKind(
        name="reconcile", function="jobs.reconcile_job.reconcile", queue="high", timeout=300,
        timeout_setting="MAINTENANCE_JOB_TIMEOUT", retry=RetryPolicy(max_retries=0),
        description="Bring rows and RQ into agreement: restore lost jobs, re-run or fail abandoned ones.",
    ),
    JobKind(
        name="retention", function="jobs.retention_job.apply_retention", queue="high", timeout=300,
        timeout_setting="MAINTENANCE_JOB_TIMEOUT", retry=RetryPolicy(max_retries=0),
        description="Delete terminal jobs' rows, uploads, chunks and report files older than RETENTION_DAYS.",
    ),
    JobKind(
        name="orphans", function="jobs.orphans_job.clean_orphans", queue="high", timeout=300,
        timeout_setting="MAINTENANCE_JOB_TIMEOUT", retry=RetryPolicy(max_retries=0),
        description="Delete stored files no row references; fail waiting jobs whose upload is gone.",
    ),
):
    register(_kind)


# --- Sources (issue 23) --------------------------------------------------------------------------

register(JobKind(
    name="sync", function="jobs.sync_job.sync_source", queue="default", timeout=3600,
    # A failed listing (S3 or the sitemap briefly away) is tried again twice; items already done
    # are seen as synced or in flight, so a retry repeats nothing.
    retry=RetryPolicy(max_retries=2, base_delay=30, max_delay=300),
    description="Sync one source (S3 prefix, web URLs, sitemap): ingest new and changed items, delete gone ones.",
))


# --- Big documents (issue 19): a PDF of more than SPLIT_PDF_PAGES pages read in page-range parts --
# (webapp/core/workflows/page_parts.py, jobs/document_parts.py). Each part is an ordinary job on
# `default`, beside the document jobs, so that every worker process takes one; the join, deferred
# until every part finished, makes the document's one chunk set and finishes its document job.

register(JobKind(
    name="document_part", function="jobs.document_parts.process_part", queue="default", timeout=600,
    retry=RetryPolicy(max_retries=3, base_delay=10, max_delay=300),
    description="Read one page range of a big PDF (extract → chunk → embed its pages) for its document's join.",
))
register(JobKind(
    name="document_join", function="jobs.document_parts.join_parts", queue="default", timeout=600,
    retry=RetryPolicy(max_retries=3, base_delay=10, max_delay=300),
    description="Join a big PDF's page-range parts into its one chunk set, in page order, and finish its document job.",
))
