"""Prometheus metrics: what the web, worker and scheduler processes count, and what ``GET /metrics`` reads.

Two kinds of numbers, each kept where it is true:

* **Read at scrape time** (:class:`DocketCollector`, no state in any process): the jobs in each
  queue and RQ registry, the workers per queue and the head job's age (Redis, the counts
  :mod:`webapp.core.queue_stats` computes for ``GET /api/queues``), and the Job rows per kind and status
  (one ``GROUP BY`` on the Job table). Right whichever process answers the scrape.
* **Counted where it happens**, with ``prometheus_client``'s multiprocess mode: job durations and
  queue waits (histograms, observed in the worker process as a job ends, ``jobs/worker/``),
  documents, pages and chunks processed (``jobs/document_job.py``), embedding calls and their errors
  (``webapp/core/embeddings.py``). Each process writes its own memory-mapped files (``<kind>_<pid>.db``)
  in ``PROMETHEUS_MULTIPROC_DIR``; a scrape sums the files of every process, dead ones included —
  a replaced worker process's counts are not lost. Only counters and histograms are kept this way
  (no gauges), so no file needs ``mark_process_dead`` when a process exits.

The directory must be chosen before ``prometheus_client`` is imported in a process:
:func:`init_app` (called by ``create_app``, which every process runs before any job or request)
puts it in the environment, which forked processes (gunicorn workers, RQ pool processes) inherit;
the instruments themselves are only built on first use (:func:`instruments`). All processes of one
machine share it (web and worker must see the same folder to be summed by one scrape); the local
run command (:mod:`webapp.local.supervisor`) empties it when the service starts. On a Heroku-style
platform every dyno has its own folder (an empty disk at each start), so a web dyno's scrape sums
its own processes only: the worker dynos' histograms and counters are not visible through it,
while the queue and job gauges (read from Redis and the database) are complete.

Recording never fails a job or a request: an error writing a metric is logged once and ignored.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Seconds. Job durations: a webhook or small report takes well under a second, a large document
# minutes, a time limit is at most 10 minutes (DOCUMENT_JOB_TIMEOUT's default 600 s).
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
# Seconds from enqueue to start: milliseconds on an idle service, up to hours behind a backlog.
QUEUE_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

_warned = False


def init_app(app) -> None:
    """Choose this process's multiprocess directory (``PROMETHEUS_MULTIPROC_DIR``, default
    ``<instance>/prometheus``) before anything imports ``prometheus_client``, and create it.

    The first directory a process chooses stays (the metric files already open point there): a
    second app in the same process with another setting gets the first one in its config.
    """
    directory = configure(app.config["PROMETHEUS_MULTIPROC_DIR"])
    app.config["PROMETHEUS_MULTIPROC_DIR"] = directory


def configure(directory: str) -> str:
    """Put ``directory`` in ``os.environ[PROMETHEUS_MULTIPROC_DIR]`` unless the process has one
    already, create it, and return the directory in effect.

    Raises:
        OSError: the directory cannot be created.
    """
    directory = os.environ.setdefault(MULTIPROC_ENV, str(directory))
    os.makedirs(directory, exist_ok=True)
    values = sys.modules.get("prometheus_client.values")
    if values is not None and not getattr(values.ValueClass, "_multiprocess", False):
        log.warning("prometheus_client was imported before %s was set: this process's metrics are not shared "
                    "with the other processes", MULTIPROC_ENV)
    return directory


def wipe(directory: str | os.PathLike[str]) -> int:
    """Delete the metric files (``*.db``) of earlier runs from ``directory``; call it when the
    service starts, before any of its processes. Returns how many files were deleted (0 when the
    directory does not exist). Other files are left alone."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return 0
    deleted = 0
    for name in names:
        if name.endswith(".db"):
            try:
                os.remove(os.path.join(directory, name))
                deleted += 1
            except FileNotFoundError:
                pass
    return deleted


# --- instruments (built on first use, after init_app chose the directory) -------------------
class Instruments:
    """The counters and histograms Docket records (names in the README's metrics table)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.job_duration = Histogram(
            "docket_job_duration_seconds", "Seconds a job ran in a worker process (RQ started_at to ended_at), "
            "by kind and the RQ status it ended with", ["kind", "status"], buckets=DURATION_BUCKETS)
        self.job_queue_wait = Histogram(
            "docket_job_queue_wait_seconds", "Seconds a job waited in its queue (RQ enqueued_at to started_at), by kind",
            ["kind"], buckets=QUEUE_WAIT_BUCKETS)
        self.documents = Counter("docket_documents_processed", "Documents turned into stored chunks")
        self.pages = Counter("docket_pages_processed", "Pages of the documents processed")
        self.chunks = Counter("docket_chunks_stored", "Chunks stored with their embeddings")
        self.embedding_requests = Counter(
            "docket_embedding_requests", "Calls to an embedder (one per job batch or search query), by embedder",
            ["embedder"])
        self.embedding_texts = Counter("docket_embedding_texts", "Texts sent to an embedder, by embedder", ["embedder"])
        self.embedding_errors = Counter("docket_embedding_errors", "Embedder calls that raised, by embedder",
                                        ["embedder"])


@functools.lru_cache(maxsize=None)
def instruments() -> Instruments:
    """This process's instruments (one set per process; a forked child writes its own files)."""
    return Instruments()


def _record(action: Callable[[Instruments], None]) -> None:
    global _warned
    try:
        action(instruments())
    except Exception as exc:  # a metric is never worth a failed job or request
        if not _warned:
            _warned = True
            log.warning("metrics: could not record (%s: %s); further errors are not logged", type(exc).__name__, exc)


def observe_job(kind: str | None, status: str | None, started_at: datetime | None, ended_at: datetime | None,
                enqueued_at: datetime | None) -> None:
    """Record a job that ended in this worker process: its duration (``started_at`` →
    ``ended_at``) by kind and RQ status, and its queue wait (``enqueued_at`` → ``started_at``) by
    kind. Times are RQ's (UTC, naive or aware). Nothing when ``started_at`` or ``ended_at`` is
    missing (a job handed back to its queue has no end)."""
    if started_at is None or ended_at is None:
        return
    kind = kind or "unknown"

    status = getattr(status, "value", status) or "unknown"  # RQ's JobStatus enum → "finished"

    def action(metrics: Instruments) -> None:
        metrics.job_duration.labels(kind, status).observe(_seconds(started_at, ended_at))
        if enqueued_at is not None:
            metrics.job_queue_wait.labels(kind).observe(_seconds(enqueued_at, started_at))

    _record(action)


def count_document(pages: int | None, chunks: int) -> None:
    """Record one processed document of ``pages`` pages (``None``: a format without pages, such
    as HTML or text, counts none) and ``chunks`` stored chunks."""
    def action(metrics: Instruments) -> None:
        metrics.pages.inc(pages or 0)
        metrics.chunks.inc(chunks)
        metrics.documents.inc()

    _record(action)


def counted_embed(embed: Callable) -> Callable:
    """Decorator of an embedder's ``embed(self, texts, …)``: counts each call, its texts and each
    call that raised, labelled with the embedder's ``name`` (its vector space)."""
    @functools.wraps(embed)
    def wrapper(self, texts, *args, **kwargs):
        name = getattr(self, "name", type(self).__name__)
        _record(lambda metrics: (metrics.embedding_requests.labels(name).inc(),
                                 metrics.embedding_texts.labels(name).inc(len(texts))))
        try:
            return embed(self, texts, *args, **kwargs)
        except Exception:
            _record(lambda metrics: metrics.embedding_errors.labels(name).inc())
            raise

    return wrapper


def _seconds(start: datetime, end: datetime) -> float:
    return max(0.0, (_utc(end) - _utc(start)).total_seconds())


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


# --- the scrape --------------------------------------------------------------------------------
class DocketCollector:
    """Gauges read at scrape time from Redis and the Job table (a ``prometheus_client`` custom
    collector). A source that cannot be read is left out and ``docket_scrape_source_up`` says 0
    for it: the scrape itself still answers.

    Args:
        connection: the Redis client of the app's queues.
        database_scope: a context manager factory that holds a database connection open for the
            ``GROUP BY`` (:func:`webapp.core.db.connection`).
    """

    def __init__(self, connection, database_scope: Callable) -> None:
        self.connection = connection
        self.database_scope = database_scope

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("docket_scrape_source_up", "1 when the scrape could read the source, else 0",
                               labels=["source"])
        try:
            families = list(self._queue_families())
            up.add_metric(["redis"], 1)
            yield from families
        except Exception as exc:
            log.warning("metrics: queue statistics not read (Redis unavailable?): %s", exc)
            up.add_metric(["redis"], 0)
        try:
            families = list(self._job_families())
            up.add_metric(["database"], 1)
            yield from families
        except Exception as exc:
            log.warning("metrics: job counts not read (database unavailable?): %s", exc)
            up.add_metric(["database"], 0)
        yield up

    def _queue_families(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily
        from rq import Queue, Worker

        from webapp.core.models import utcnow
        from webapp.core.queue_stats import REGISTRIES, oldest_queued_age
        from webapp.core.queues import QUEUE_NAMES

        jobs = GaugeMetricFamily("docket_queue_jobs", "Jobs in each queue (registry 'queued') and each RQ registry "
                                 "of the queue, as RQ counts them now", labels=["queue", "registry"])
        workers = GaugeMetricFamily("docket_queue_workers", "Workers listening on each queue", labels=["queue"])
        age = GaugeMetricFamily("docket_queue_oldest_job_age_seconds",
                                "Seconds the job at the head of each queue has waited (0 when empty)", labels=["queue"])
        now = utcnow()
        for name in QUEUE_NAMES:
            queue = Queue(name, connection=self.connection)
            jobs.add_metric([name, "queued"], queue.count)
            for registry, registry_class in REGISTRIES.items():
                jobs.add_metric([name, registry],
                                registry_class(name, connection=self.connection).get_job_count(cleanup=False))
            workers.add_metric([name], len(Worker.all(queue=queue)))
            age.add_metric([name], oldest_queued_age(queue, now) or 0.0)
        yield from (jobs, workers, age)

    def _job_families(self) -> Iterator[Any]:
        from peewee import fn
        from prometheus_client.core import GaugeMetricFamily

        from webapp.core.protocol.kinds import JOB_KINDS
        from webapp.core.protocol.states import STARTED, TERMINAL, WAITING
        from webapp.core.models import Job

        # Every kind × every status a row can have, 0 when none (a series that vanishes is no 0).
        counts = {(kind, status): 0 for kind in JOB_KINDS for status in WAITING | TERMINAL | {STARTED}}
        with self.database_scope():
            rows = Job.select(Job.kind, Job.status, fn.COUNT(Job.id).alias("n")).group_by(Job.kind, Job.status).tuples()
            counts.update({(kind, status): n for kind, status, n in rows})
        family = GaugeMetricFamily("docket_jobs", "Job rows by kind and status (the database's truth)",
                                   labels=["kind", "status"])
        for (kind, status), n in sorted(counts.items()):
            family.add_metric([kind, status], n)
        yield family


def render(connection, database_scope: Callable) -> tuple[bytes, str]:
    """The exposition of a scrape: every process's counters and histograms (summed from
    ``PROMETHEUS_MULTIPROC_DIR``, or this process's own when none is set) and the gauges of
    :class:`DocketCollector`.

    Returns:
        ``(body, content_type)``: Prometheus's text format (``text/plain; version=…``).
    """
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    directory = os.environ.get(MULTIPROC_ENV)
    if directory and os.path.isdir(directory):
        MultiProcessCollector(registry, path=directory)
    else:
        instruments()  # this process alone: its own registry
        registry = _Both(REGISTRY, registry)
    registry.register(DocketCollector(connection, database_scope))
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _Both:
    """Two registries exposed as one (single-process mode: the default registry + the gauges)."""

    def __init__(self, first, second) -> None:
        self.first, self.second = first, second

    def register(self, collector) -> None:
        self.second.register(collector)

    def collect(self):
        yield from self.first.collect()
        yield from self.second.collect()
