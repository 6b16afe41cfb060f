"""Sources kept in sync (issue 23): an S3-compatible prefix, a list of web URLs or a sitemap whose
items become documents of the source's owner, and stay in step with it at every sync.

This module is the service (validation, the one-sync-at-a-time guard, deletion, the item
bookkeeping that follows a document job's end); the sync itself is the ``sync`` job
(:mod:`jobs.sync_job`), the HTTP API :mod:`webapp.edge.sources_api`.

* **One sync at a time.** :func:`start_sync` launches a ``sync`` job only through a guarded
  ``UPDATE source SET sync_job_id = <new> WHERE id = ? AND sync_job_id = <previous>``, after
  checking that the previous one ended (like :func:`webapp.core.documents.reprocess_document`),
  in the same transaction as the new Job row: two requests at once launch one job, the other
  gets :class:`SyncRunning` with the running job. Scheduled syncs go through the same guard.
* **Synced only once processed.** A sync never waits for the document jobs it launches (with one
  worker that would deadlock). :func:`item_job_ended` (a :data:`~webapp.core.protocol.states.job_ended`
  receiver) stamps ``SourceItem.synced_version`` when the item's current document job finished,
  and marks the item ``failed`` when it failed, was stopped or canceled; the next sync ingests
  every item not synced at its listed version again.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Mapping
from urllib.parse import urlsplit

from flask import Flask, current_app
from peewee import fn

from webapp.core import egress
from webapp.core.db import db
from webapp.core.documents import delete_document
from webapp.core.models import Document, Job, Source, SourceItem, SourceSync, utcnow
from webapp.core.protocol.control import cancel_job
from webapp.core.protocol.launch import enqueue_jobs, new_job
from webapp.core.protocol.states import FINISHED, TERMINAL, JobStateError, job_ended
from webapp.core.service_errors import ServiceError

log = logging.getLogger(__name__)

KINDS = ("s3", "web", "sitemap")
FIELDS = ("kind", "name", "url", "urls", "cron")
MAX_NAME = 200
# S3 bucket names: 3–63 lower-case letters, digits, dots and hyphens (AWS's rules, loosely).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
# Item states (SourceItem.state).
PENDING, SYNCED, FAILED_ITEM = "pending", "synced", "failed"
COUNT_NAMES = ("listed", "ingested", "changed", "deleted", "unchanged", "failed", "retried", "in_flight")


class SyncRunning(Exception):
    """A sync of this source is waiting or running; no second one was launched.

    Attributes:
        job: the Job row of the sync that is waiting or running.
    """

    def __init__(self, job: Job) -> None:
        super().__init__(f"A sync of this source is already {job.status} (job {job.id}).")
        self.job = job


def parse_s3_source_url(url: str) -> tuple[str, str]:
    """Split ``s3://bucket/prefix/`` into ``(bucket, prefix)`` (the prefix as S3 keys start, ``""``
    for the whole bucket, ending with ``/`` when it names a folder).

    Raises:
        ValueError: not ``s3://``, no valid bucket, credentials, a query or a fragment; the
            message is a sentence for the client.
    """
    parts = urlsplit(url.strip())
    if parts.scheme != "s3":
        raise ValueError("An s3 source's url must look like s3://bucket/prefix/.")
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise ValueError("An s3 source's url holds a bucket and a prefix only; credentials come from the "
                         "AWS_* settings.")
    if not parts.hostname or not _BUCKET.match(parts.netloc):
        raise ValueError("An s3 source's url must name a bucket: s3://bucket/prefix/.")
    return parts.netloc, parts.path.lstrip("/")


def check_source_url(url: Any, config: Mapping[str, Any], field: str = "url") -> str:
    """``url`` if Docket may fetch it: an http(s) URL whose host resolves to addresses
    :func:`webapp.core.egress.resolve` accepts (private ones only with ``FETCH_ALLOW_PRIVATE_NETWORKS``).
    The fetch checks every request again (DNS may change).

    Raises:
        ServiceError: 400 ``invalid_source`` when it is not a string, 400 ``url_refused`` with the reason.
    """
    if not isinstance(url, str) or not url.strip():
        raise ServiceError(400, "invalid_source", f"'{field}' must be an http or https URL.")
    try:
        egress.resolve(url, bool(config["FETCH_ALLOW_PRIVATE_NETWORKS"]))
    except egress.DestinationRefused as exc:
        raise ServiceError(400, "url_refused", f"The URL {url.strip()[:200]} is refused: {exc}.") from None
    return url.strip()


def validate_source(body: Any, config: Mapping[str, Any]) -> dict[str, Any]:
    """Check a ``POST /api/sources`` body (the cron is the schedule table's to check).

    Args:
        body: the decoded JSON: ``{"kind": "s3", "url": "s3://bucket/prefix/"}``, ``{"kind": "web",
            "urls": [...]}`` or ``{"kind": "sitemap", "url": ...}``, optional ``name`` and ``cron``.
        config: the app's settings (``SOURCE_MAX_ITEMS``, ``FETCH_ALLOW_PRIVATE_NETWORKS``).

    Returns:
        ``{"kind", "name", "url", "urls", "cron"}`` (``url``/``urls``/``cron`` ``None`` when not given).

    Raises:
        ServiceError: 400 ``invalid_json``, ``invalid_source`` or ``url_refused`` with a sentence.
    """
    if not isinstance(body, dict):
        raise ServiceError(400, "invalid_json", 'Send a JSON object such as {"kind": "s3", "url": "s3://bucket/prefix/"}.')
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise ServiceError(400, "invalid_source", f"Unknown field(s) {', '.join(unknown)}; accepted: {', '.join(FIELDS)}.")
    kind = body.get("kind")
    if kind not in KINDS:
        raise ServiceError(400, "invalid_source", f"'kind' must be one of {', '.join(KINDS)}.")
    url, urls = body.get("url"), body.get("urls")
    if kind == "web":
        if url is not None:
            raise ServiceError(400, "invalid_source", "A web source takes 'urls' (a list), not 'url'.")
        limit = int(config["SOURCE_MAX_ITEMS"])
        if not isinstance(urls, list) or not urls:
            raise ServiceError(400, "invalid_source", "'urls' must be a non-empty list of http or https URLs.")
        if len(urls) > limit:
            raise ServiceError(400, "invalid_source", f"A web source may hold at most {limit} URLs "
                                                      f"(SOURCE_MAX_ITEMS); this one has {len(urls)}.")
        urls = list(dict.fromkeys(check_source_url(item, config, "urls") for item in urls))
    else:
        if urls is not None:
            raise ServiceError(400, "invalid_source", f"A {kind} source takes 'url', not 'urls'.")
        if not isinstance(url, str):
            raise ServiceError(400, "invalid_source", f"A {kind} source needs 'url'.")
        if kind == "s3":
            try:
                bucket, prefix = parse_s3_source_url(url)
            except ValueError as exc:
                raise ServiceError(400, "invalid_source", str(exc)) from None
            url = f"s3://{bucket}/{prefix}"
        else:
            url = check_source_url(url, config)
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME):
        raise ServiceError(400, "invalid_source", f"'name' must be a non-empty text of at most {MAX_NAME} characters.")
    name = (name or url or urls[0]).strip()[:MAX_NAME]
    cron = body.get("cron")
    if cron is not None and not isinstance(cron, str):
        raise ServiceError(400, "invalid_source", "'cron' must be five cron fields (UTC), e.g. \"0 * * * *\".")
    return {"kind": kind, "name": name, "url": url, "urls": urls if kind == "web" else None, "cron": cron}


def start_sync(source_id: str) -> Job:
    """Launch a sync of source ``source_id`` now, unless one is waiting or running.

    The job protocol's order: the Job row (kind ``sync``, ``params={"source_id"}``, owner = the
    source's), its :class:`SourceSync` row and the source's ``sync_job_id`` pointing at it are
    committed together — only if ``sync_job_id`` is still the ended job read before (guarded
    ``UPDATE``) — then the job is enqueued.

    Returns:
        The new job, enqueued.

    Raises:
        LookupError: there is no such source.
        SyncRunning: a sync of it is waiting or running (or another request launched one meanwhile).
        QueueUnavailable: Redis refused (the row is ``failed``; the next request may launch again).
    """
    source = Source.get_or_none(Source.id == source_id)
    if source is None:
        raise LookupError(source_id)
    previous = Job.find(source.sync_job_id) if source.sync_job_id else None
    if previous is not None and previous.status not in TERMINAL:
        raise SyncRunning(previous)
    job = new_job("sync", {"source_id": source.id}, owner=source.owner)
    with db.database.atomic() as transaction:
        job.save(force_insert=True)
        guard = (Source.sync_job_id == source.sync_job_id) if source.sync_job_id else Source.sync_job_id.is_null()
        moved = Source.update(sync_job_id=job.id).where(Source.id == source.id, guard).execute()
        if not moved:  # another request launched one meanwhile
            transaction.rollback()
            running = Source.get_or_none(Source.id == source.id)
            other = Job.find(running.sync_job_id) if running is not None and running.sync_job_id else None
            if other is None:
                raise LookupError(source_id)
            raise SyncRunning(other)
        SourceSync.create(job_id=job.id, source=source.id, counts=None)
    enqueue_jobs([job])
    return job


def start_scheduled_sync(params: dict[str, Any], config: Mapping[str, Any], owner: str | None) -> Job | None:
    """The ``sync_source`` schedule's start (:data:`webapp.core.schedules.table.SCHEDULABLE_JOBS`):
    :func:`start_sync` of ``params["source_id"]`` if the schedule's owner may (its own source, or
    the system's schedule). A due time while a sync runs is skipped and logged.

    Returns:
        The job launched, or ``None`` (no such source, not the owner's, or a sync still running).
    """
    source = Source.get_or_none(Source.id == params.get("source_id"))
    if source is None or (owner is not None and source.owner != owner):
        log.warning("schedule of source %s: no such source of %s; nothing started", params.get("source_id"), owner)
        return None
    try:
        return start_sync(source.id)
    except SyncRunning as exc:
        log.info("source %s: a sync (%s, %s) is still running at its scheduled time; skipped",
                 source.id, exc.job.id, exc.job.status)
        return None
    except LookupError:
        return None


def delete_source(source: Source, delete_documents: bool = False) -> int:
    """Delete a source: its running sync is canceled (or stopped), then, if asked, every document
    made from its items (:func:`webapp.core.documents.delete_document`: their chunks leave search),
    then the source with its items and sync history. Without ``delete_documents`` the documents stay,
    owned as before and detached from any source. Its schedule is the caller's to remove.

    Returns:
        How many documents were deleted.
    """
    if source.sync_job_id:
        job = Job.find(source.sync_job_id)
        if job is not None and job.status not in TERMINAL:
            try:
                cancel_job(job.id)
            except JobStateError:
                pass
    deleted = 0
    if delete_documents:
        for (document_id,) in (SourceItem.select(SourceItem.document_id)
                               .where(SourceItem.source == source.id, SourceItem.document_id.is_null(False)).tuples()):
            if Document.get_or_none(Document.id == document_id) is not None:
                delete_document(document_id)
                deleted += 1
    with db.database.atomic():
        SourceItem.delete().where(SourceItem.source == source.id).execute()
        SourceSync.delete().where(SourceSync.source == source.id).execute()
        Source.delete().where(Source.id == source.id).execute()
    return deleted


def item_counts(source_id: str) -> dict[str, int]:
    """``{"total", "synced", "pending", "failed"}``: the source's items by state."""
    counts = {"total": 0, PENDING: 0, SYNCED: 0, FAILED_ITEM: 0}
    for state, count in (SourceItem.select(SourceItem.state, fn.COUNT(SourceItem.id))
                         .where(SourceItem.source == source_id).group_by(SourceItem.state).tuples()):
        counts[state] = counts.get(state, 0) + count
        counts["total"] += count
    return counts


def item_job_ended(app: Flask, row: dict[str, Any], **_: Any) -> None:
    """A :data:`~webapp.core.protocol.states.job_ended` receiver: when a ``document`` job that is its
    document's current job ends, the source item of that document (if any) is ``synced`` at the
    version the document holds (finished) or ``failed`` with the job's error (failed, stopped,
    canceled), so the next sync ingests it again."""
    if row.get("kind") != "document" or not row.get("document"):
        return
    document_id = row["document"]
    current = Document.select(Document.job_id).where(Document.id == document_id).scalar()
    if current != row["id"]:
        return  # an older job of the document; its current one decides
    if row.get("status") == FINISHED:
        changes = {"synced_version": SourceItem.version, "state": SYNCED, "error": None}
    else:
        changes = {"state": FAILED_ITEM, "error": row.get("error") or f"its document job was {row.get('status')}"}
    SourceItem.update(updated_at=utcnow(), **changes).where(SourceItem.document_id == document_id).execute()


def init_app(app: Flask) -> None:
    """Keep ``app``'s source items in step with their document jobs (:func:`item_job_ended`)."""
    job_ended.connect(item_job_ended, sender=app)


def max_items() -> int:
    """``SOURCE_MAX_ITEMS`` of the current app."""
    return int(current_app.config["SOURCE_MAX_ITEMS"])
