"""The sync job (kind ``sync``, queue ``default``): one sync of one source (:mod:`webapp.core.sources`).

List the source (S3: ``list_objects_v2`` over the prefix; web: its URLs; sitemap: the ``<loc>``s
of the sitemap, nested sitemap indexes one level deep; at most ``SOURCE_MAX_ITEMS``), then decide
for each item, in listing order:

* **new** (no document yet, or its document was deleted) → its bytes are stored, a Document of
  the source's owner and its ``document`` job are committed together, then the job is enqueued;
* **changed** (S3: the listing's ETag differs from the version the document holds; web: the
  server did not answer 304 to the conditional GET and the body's SHA-256 differs) → the SAME
  Document gets the new bytes under a new storage key and a new ``document`` job, through the
  guarded move of ``Document.job_id`` (:func:`webapp.core.documents.reprocess_document`); the job's
  final write replaces the chunks in one transaction, so search serves the old chunks until then;
* **unchanged** (the listed version is the one its last *finished* document job processed:
  ``SourceItem.synced_version``) → nothing, not even a download (S3) or a body (web, on 304);
* **retried** (same version, but its document job failed, was stopped or canceled) → a new
  document job for the same bytes;
* **in flight** (its document job is still waiting or running) → left alone this time;
* **gone** (not in a complete listing; a web page answering 404 or 410) → the document is
  deleted (:func:`webapp.core.documents.delete_document`: its chunks leave search). A 5xx, a
  timeout or a refused address is a *failed* item, never a deletion; a listing cut at
  ``SOURCE_MAX_ITEMS`` or a nested sitemap that failed deletes nothing.

The job never waits for the document jobs it launches (with one worker that would deadlock);
:func:`webapp.core.sources.item_job_ended` marks each item synced or failed when its job ends.
Resumable and safe to repeat (RQ delivers at least once): every decision is read from the rows,
one Document per (source, key) is held by the unique index, and a run killed midway leaves items
new (not yet committed), in flight or synced, each of which the next run handles. A run whose
source no longer names it as its sync (superseded by a newer one, or the source deleted) does
nothing. Cancel (``POST /api/jobs/<id>/cancel``) stops it between items.

Progress: stage ``list`` then ``sync`` with 0–100 %, and the counts (``listed``, ``ingested``,
``changed``, ``deleted``, ``unchanged``, ``failed``, ``retried``, ``in_flight``) in RQ meta, in the
source's :class:`~webapp.core.models.SourceSync` row and in the live events of ``GET
/api/jobs/<id>/events`` (each ``job`` event of a running sync carries ``counts``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import unquote, urlsplit

from flask import current_app
from peewee import IntegrityError, InterfaceError, OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from rq.timeouts import JobTimeoutException

from jobs.tracking import NOT_RUNNING, JobTracker
from webapp.core import egress
from webapp.core.db import connection
from webapp.core.documents import clean_filename, delete_document, reprocess_document
from webapp.core.filetypes import detect_content_type
from webapp.core.models import Document, Job, Source, SourceItem, SourceSync, new_id, utcnow
from webapp.core.protocol.events import EVENT_COLUMNS, job_channel, job_event
from webapp.core.protocol.job_errors import JobError, JobStopped
from webapp.core.protocol.launch import QueueUnavailable, enqueue_jobs, new_job
from webapp.core.protocol.states import FINISHED, STARTED, TERMINAL
from webapp.core.queues import rq
from webapp.core.sources import COUNT_NAMES, FAILED_ITEM, PENDING, parse_s3_source_url
from webapp.core.storage import StorageError, s3_client, storage_from_config

log = logging.getLogger(__name__)

REPORT_INTERVAL = 1.0  # seconds between progress reports (RQ meta, row, live event, SourceSync)
LIST_END = 5  # % of the progress bar the listing ends at
GONE_STATUSES = (404, 410)  # a web item answering these no longer exists
MAX_ERRORS_KEPT = 20  # item errors listed in the job's result


@dataclass(frozen=True)
class Listed:
    """One item of a listing: ``key`` (an S3 object key or a URL), ``version`` (the S3 ETag;
    ``None`` for a URL, whose version is decided by fetching it) and ``size`` (bytes, S3 only)."""

    key: str
    version: str | None = None
    size: int | None = None


class ItemFailed(Exception):
    """This item could not be listed, downloaded or stored; the message is a sentence."""


def sync_source(source_id: str) -> dict[str, Any]:
    """The RQ job: one sync of source ``source_id``.

    Returns:
        ``{"source_id", "counts": {listed, ingested, changed, deleted, unchanged, failed, retried,
        in_flight}, "complete": listing complete (deletions done), "errors": [{"key", "error"}]}``,
        also the Job row's ``result``; ``{"skipped": reason}`` when the row or source says not to run.

    Raises:
        JobError: the listing failed (``source_unavailable``, transient when asking later may help),
            Docket's storage or queue is away (transient), the time limit passed (``timeout``).
        JobStopped: canceled or stopped on request (between items).
    """
    tracker = JobTracker.for_current_job("sync_source")
    config = current_app.config
    with connection():
        if not tracker.start():
            return NOT_RUNNING
        try:
            return _run(source_id, tracker, config)
        except JobError:
            raise
        except (OperationalError, InterfaceError, RedisConnectionError):
            raise  # transient for the failure callback: RQ retries the sync, which repeats nothing
        except JobTimeoutException as exc:
            raise JobError(f"the sync took longer than its time limit (during {tracker.stage or 'start-up'}); "
                           "the next sync goes on where it stopped", code="timeout") from exc
        except Exception as exc:
            log.exception("sync job %s: unexpected error", tracker.job_id)
            raise JobError(f"unexpected error during {tracker.stage or 'start-up'}: {type(exc).__name__}: {exc}",
                           code="internal_error") from exc


class _Progress:
    """Counts and progress of one run, reported at most every :data:`REPORT_INTERVAL` seconds."""

    def __init__(self, tracker: JobTracker) -> None:
        self.tracker = tracker
        self.counts = dict.fromkeys(COUNT_NAMES, 0)
        self.errors: list[dict[str, str]] = []
        self._last = 0.0

    def add(self, outcome: str, key: str | None = None, error: str | None = None) -> None:
        self.counts[outcome] += 1
        if error and len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append({"key": key or "", "error": error})

    def check_running(self) -> None:
        """Raise :class:`JobStopped` when the row is no longer ``started`` (canceled, stopped)."""
        status = Job.select(Job.status).where(Job.id == self.tracker.job_id).scalar()
        if status != STARTED:
            raise JobStopped(f"the sync was stopped during {self.tracker.stage}")

    def report(self, stage: str, progress: int, force: bool = False) -> None:
        """Write stage, progress and counts to RQ meta, the row (guarded: raises
        :class:`JobStopped` when the row is no longer ``started``), the SourceSync row and a live event."""
        self.tracker.stage, self.tracker.progress = stage, max(0, min(100, int(progress)))
        now = time.monotonic()
        if not force and now - self._last < REPORT_INTERVAL:
            return
        self._last = now
        job_id = self.tracker.job_id
        if self.tracker.rq_job is not None:
            self.tracker.rq_job.meta.update(stage=stage, progress=self.tracker.progress, counts=self.counts)
            self.tracker.rq_job.save_meta()
        rows = list(Job.update(stage=stage, progress=self.tracker.progress, updated_at=utcnow())
                    .where(Job.id == job_id, Job.status == STARTED)
                    .returning(*[getattr(Job, name) for name in EVENT_COLUMNS]).dicts().execute())
        if not rows:
            raise JobStopped(f"the sync was stopped during {stage}")
        SourceSync.update(counts=self.counts).where(SourceSync.job_id == job_id).execute()
        try:
            message = {**job_event(rows[0]), "counts": self.counts}
            rq.connection.publish(job_channel(job_id), json.dumps(message, separators=(",", ":")))
        except Exception as exc:  # a live hint only; the row and SourceSync hold the truth
            log.debug("sync job %s: progress event not published: %s", job_id, exc)


def _run(source_id: str, tracker: JobTracker, config: Mapping[str, Any]) -> dict[str, Any]:
    source = Source.get_or_none(Source.id == source_id)
    if source is None:
        return {"skipped": "the source was deleted"}
    if source.sync_job_id != tracker.job_id:
        # A retry of an older sync while a newer one owns the source: never two at once.
        return {"skipped": f"the source's current sync is {source.sync_job_id}, not this one"}
    progress = _Progress(tracker)
    progress.report("list", 0, force=True)
    listing, complete = list_source(source, config, progress)
    progress.counts["listed"] = len(listing)
    progress.report("sync", LIST_END, force=True)

    items = {item.key: item for item in SourceItem.select().where(SourceItem.source == source.id)}
    storage = storage_from_config(config)
    total = len(listing) + (len(items) if complete else 0)
    for index, listed in enumerate(listing):
        progress.check_running()
        outcome, error = _sync_item(source, listed, items.get(listed.key), storage, config)
        progress.add(outcome, listed.key, error)
        progress.report("sync", LIST_END + (100 - LIST_END) * (index + 1) // max(total, 1))
    if complete:
        listed_keys = {listed.key for listed in listing}
        for index, (key, item) in enumerate(items.items()):
            if key in listed_keys:
                continue
            progress.check_running()
            _remove_item(item)
            progress.add("deleted")
            progress.report("sync", LIST_END + (100 - LIST_END) * (len(listing) + index + 1) // max(total, 1))

    result = {"source_id": source.id, "counts": progress.counts, "complete": complete, "errors": progress.errors}
    database = Job._meta.database
    with database.atomic() as transaction:
        SourceSync.update(counts=progress.counts).where(SourceSync.job_id == tracker.job_id).execute()
        if not tracker.finish_query(result).execute():
            transaction.rollback()  # canceled or ended elsewhere meanwhile
            return {"skipped": "the job row changed while the job ran"}
    tracker.finished()
    log.info("sync job %s: source %s synced: %s", tracker.job_id, source.id, progress.counts)
    return result


# --- listing --------------------------------------------------------------------------------------


def list_source(source: Source, config: Mapping[str, Any], progress: _Progress | None = None
                ) -> tuple[list[Listed], bool]:
    """The items of ``source``, at most ``SOURCE_MAX_ITEMS``.

    Returns:
        ``(items, complete)``: ``complete`` is false when the listing was cut at the bound or a
        nested sitemap could not be read — then nothing is deleted as gone.

    Raises:
        JobError: ``source_unavailable`` when the listing itself failed (the bucket or the sitemap),
            transient when asking again later may help.
    """
    limit = int(config["SOURCE_MAX_ITEMS"])
    if source.kind == "s3":
        return _list_s3(source.url, limit)
    if source.kind == "web":
        urls = list(source.urls or [])
        return [Listed(url) for url in urls[:limit]], len(urls) <= limit
    if source.kind == "sitemap":
        return _list_sitemap(source.url, limit, config, progress)
    raise JobError(f"unknown source kind {source.kind!r}", code="invalid_source")


def _list_s3(url: str, limit: int) -> tuple[list[Listed], bool]:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = parse_s3_source_url(url)
    found: list[Listed] = []
    try:
        client = s3_client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for entry in page.get("Contents", ()):
                if entry["Key"].endswith("/"):
                    continue  # a "folder" marker, no document
                if len(found) >= limit:
                    return found, False
                found.append(Listed(entry["Key"], entry.get("ETag"), entry.get("Size")))
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        permanent = code in ("NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch")
        raise JobError(f"the bucket {bucket} could not be listed: {code or exc}", code="source_unavailable",
                       transient=not permanent) from exc
    except (BotoCoreError, StorageError) as exc:
        raise JobError(f"the bucket {bucket} could not be listed: {exc}", code="source_unavailable",
                       transient=True) from exc
    return found, True


def _fetch(url: str, config: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> egress.Fetched:
    return egress.fetch(url, max_bytes=int(config["MAX_CONTENT_LENGTH"]),
                        allow_private=bool(config["FETCH_ALLOW_PRIVATE_NETWORKS"]),
                        connect_timeout=float(config["FETCH_CONNECT_TIMEOUT"]),
                        read_timeout=float(config["FETCH_READ_TIMEOUT"]),
                        headers={"User-Agent": config["FETCH_USER_AGENT"], **(headers or {})})


_FETCH_ERRORS = (egress.DestinationRefused, egress.RequestFailed, egress.FetchStatusError,
                 egress.TooManyRedirects, egress.FetchTooLarge)


def _sitemap_locs(body: bytes) -> tuple[str, list[str]]:
    """``("urlset" | "sitemapindex", [loc, ...])`` of a sitemap document (no DTD, no entities, no network).

    Raises:
        ValueError: not a sitemap (not XML, or another root element).
    """
    from lxml import etree

    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
    try:
        root = etree.fromstring(body, parser=parser)
    except etree.XMLSyntaxError as exc:
        raise ValueError(f"it is not XML ({exc})") from None
    kind = etree.QName(root).localname
    if kind not in ("urlset", "sitemapindex"):
        raise ValueError(f"its root element is <{kind}>, not <urlset> or <sitemapindex>")
    child = "url" if kind == "urlset" else "sitemap"
    locs = [(loc.text or "").strip() for loc in root.iterfind(f"{{*}}{child}/{{*}}loc")]
    return kind, [loc for loc in locs if loc]


def _list_sitemap(url: str, limit: int, config: Mapping[str, Any], progress: _Progress | None
                  ) -> tuple[list[Listed], bool]:
    try:
        kind, locs = _sitemap_locs(_fetch(url, config).body)
    except _FETCH_ERRORS as exc:
        raise JobError(f"the sitemap {url} could not be fetched: {exc}", code="source_unavailable",
                       transient=bool(getattr(exc, "transient", False)) or isinstance(exc, egress.RequestFailed)) from exc
    except ValueError as exc:
        raise JobError(f"the sitemap {url} could not be read: {exc}", code="source_unavailable") from exc
    complete = True
    if kind == "sitemapindex":  # one level deep: the nested sitemaps' own <sitemap>s are ignored
        urls: list[str] = []
        for nested in locs:
            if len(urls) >= limit:
                complete = False
                break
            try:
                nested_kind, nested_locs = _sitemap_locs(_fetch(nested, config).body)
            except (*_FETCH_ERRORS, ValueError) as exc:
                complete = False  # its pages are not listed: none of them may be taken as gone
                if progress is not None:
                    progress.errors.append({"key": nested, "error": f"the nested sitemap could not be read: {exc}"})
                continue
            if nested_kind == "urlset":
                urls.extend(nested_locs)
        locs = urls
    unique = list(dict.fromkeys(locs))
    if len(unique) > limit:
        unique, complete = unique[:limit], False
    return [Listed(loc) for loc in unique], complete


# --- one item ---------------------------------------------------------------------------------------


def _sync_item(source: Source, listed: Listed, item: SourceItem | None, storage, config: Mapping[str, Any]
               ) -> tuple[str, str | None]:
    """Bring one listed item in step. Returns ``(outcome, error sentence or None)``; the outcome
    names a count (``ingested``, ``changed``, ``unchanged``, ``retried``, ``in_flight``,
    ``deleted``, ``failed``)."""
    document = (Document.get_or_none(Document.id == item.document_id)
                if item is not None and item.document_id else None)
    job = Job.find(document.job_id) if document is not None and document.job_id else None
    if job is not None and job.status not in TERMINAL:
        return "in_flight", None
    # Processed at the version it holds: its current job finished (or retention removed the row).
    processed = document is not None and (job is None or job.status == FINISHED)
    synced = processed and item.synced_version is not None and item.synced_version == item.version
    try:
        if source.kind == "s3":
            if synced and listed.version == item.synced_version:
                return "unchanged", None
            if document is not None and listed.version == item.version:
                return _relaunch(item, document, None, listed.version, "retried")
            data = _download_s3(source, listed, config)
            fetched_meta: dict[str, Any] = {}
            version = listed.version
        else:
            headers = {}
            if synced and document.etag:
                headers["If-None-Match"] = document.etag
            if synced and document.last_modified:
                headers["If-Modified-Since"] = document.last_modified
            try:
                fetched = _fetch(listed.key, config, headers)
            except egress.FetchStatusError as exc:
                if exc.status in GONE_STATUSES and item is not None:
                    _remove_item(item)
                    return "deleted", None
                raise ItemFailed(str(exc)) from None
            except _FETCH_ERRORS as exc:
                raise ItemFailed(f"it could not be fetched: {exc}") from None
            if fetched.not_modified and synced:
                return "unchanged", None
            data = fetched.body
            version = hashlib.sha256(data).hexdigest()
            fetched_meta = {"etag": fetched.etag, "last_modified": fetched.last_modified}
            if synced and version == item.synced_version:
                if (document.etag, document.last_modified) != (fetched.etag, fetched.last_modified):
                    Document.update(**fetched_meta).where(Document.id == document.id).execute()
                return "unchanged", None
            if document is not None and version == item.version and document.sha256 == version:
                return _relaunch(item, document, None, version, "retried", fetched_meta)
        if not data:
            raise ItemFailed("it is empty")
        name = _display_name(listed.key)
        content_type = detect_content_type(data, name)
        if content_type is None:
            raise ItemFailed("its type is not supported (PDF, Word, PowerPoint, Excel, EPUB, HTML, text, "
                             "Markdown, CSV or an image are)")
        if document is None:
            return _ingest_new(source, listed, item, data, version, content_type, fetched_meta, storage)
        return _replace(item, document, data, version, content_type, fetched_meta, storage)
    except ItemFailed as exc:
        _mark_failed(source, listed.key, item, str(exc))
        return "failed", f"{listed.key}: {exc}"


def _display_name(key: str) -> str:
    """The item's name for display and type hints: an S3 key's last part, a URL's last path segment."""
    if "://" in key:
        path = unquote(urlsplit(key).path)
        return clean_filename(path.rstrip("/").rsplit("/", 1)[-1] or urlsplit(key).hostname or "page")
    return clean_filename(key)


def _download_s3(source: Source, listed: Listed, config: Mapping[str, Any]) -> bytes:
    from botocore.exceptions import BotoCoreError, ClientError

    limit = int(config["MAX_CONTENT_LENGTH"])
    if listed.size is not None and listed.size > limit:
        raise ItemFailed(f"it is larger than the {limit:,}-byte limit (MAX_CONTENT_LENGTH)")
    bucket, _ = parse_s3_source_url(source.url)
    try:
        body = s3_client().get_object(Bucket=bucket, Key=listed.key)["Body"]
        data = body.read(limit + 1)
    except (BotoCoreError, ClientError, StorageError) as exc:
        raise ItemFailed(f"it could not be downloaded: {exc}") from None
    if len(data) > limit:
        raise ItemFailed(f"it is larger than the {limit:,}-byte limit (MAX_CONTENT_LENGTH)")
    return data


def _storage_key(document_id: str, digest: str) -> str:
    """A new storage key per version of a document's bytes: the old version's file stays whole
    until the new one is committed, and is deleted after."""
    return f"documents/{document_id[:2]}/{document_id}-{digest[:16]}"


def _put(storage, key: str, data: bytes) -> None:
    try:
        storage.put(key, data)
    except StorageError as exc:
        raise JobError(f"Docket's storage is unavailable: {exc}", code="storage_unavailable",
                       transient=exc.transient) from exc


def _ingest_new(source: Source, listed: Listed, item: SourceItem | None, data: bytes, version: str | None,
                content_type: str, fetched_meta: dict[str, Any], storage) -> tuple[str, str | None]:
    """A new Document for the item: bytes stored, then Document, Job and item committed together,
    then the job enqueued (the job protocol's order)."""
    document_id = new_id()
    digest = hashlib.sha256(data).hexdigest()
    key = _storage_key(document_id, digest)
    _put(storage, key, data)
    job = new_job("document", {"document_id": document_id}, document_id=document_id, owner=source.owner)
    try:
        with Job._meta.database.atomic():
            Document.create(id=document_id, filename=(listed.key if "://" in listed.key else _display_name(listed.key))[:255],
                            content_type=content_type, size_bytes=len(data), sha256=digest, storage_key=key,
                            job_id=job.id, owner=source.owner,
                            source_url=listed.key if source.kind != "s3" else None,
                            etag=fetched_meta.get("etag"), last_modified=fetched_meta.get("last_modified"))
            job.save(force_insert=True)
            fields = {"document_id": document_id, "version": version, "synced_version": None, "state": PENDING,
                      "error": None, "updated_at": utcnow()}
            if item is None:
                SourceItem.create(source=source.id, key=listed.key, **fields)
            elif not SourceItem.update(**fields).where(SourceItem.id == item.id,
                                                       SourceItem.document_id == item.document_id).execute():
                raise IntegrityError("the item changed meanwhile")
    except IntegrityError:  # another run of this sync took the item first (at-least-once delivery)
        storage.delete(key)
        return "in_flight", None
    except Exception:
        storage.delete(key)
        raise
    _enqueue(job)
    return "ingested", None


def _replace(item: SourceItem, document: Document, data: bytes, version: str | None, content_type: str,
             fetched_meta: dict[str, Any], storage) -> tuple[str, str | None]:
    """The item's new bytes into its same Document, with a new document job."""
    digest = hashlib.sha256(data).hexdigest()
    key = _storage_key(document.id, digest)
    if key == document.storage_key:  # same bytes as stored (its job failed): no new file
        return _relaunch(item, document, None, version, "retried", fetched_meta)
    _put(storage, key, data)
    new_version = {"storage_key": key, "sha256": digest, "size_bytes": len(data), "content_type": content_type,
                   **fetched_meta}
    try:
        outcome = _relaunch(item, document, new_version, version, "changed")
    except Exception:
        storage.delete(key)
        raise
    if outcome[0] != "changed":
        storage.delete(key)
    else:
        try:
            storage.delete(document.storage_key)  # the old version's file; its job ended
        except StorageError as exc:
            log.warning("document %s: its old file stays until the orphans job: %s", document.id, exc)
    return outcome


def _relaunch(item: SourceItem, document: Document, new_version: dict[str, Any] | None, version: str | None,
              outcome: str, fetched_meta: dict[str, Any] | None = None) -> tuple[str, str | None]:
    """A new document job for the item's document (guarded move of its ``job_id``), with the item
    marked pending at ``version`` in the same transaction."""
    if new_version is None and fetched_meta:
        new_version = dict(fetched_meta)

    def mark(job: Job) -> None:
        SourceItem.update(version=version, state=PENDING, error=None, updated_at=utcnow()).where(
            SourceItem.id == item.id).execute()

    try:
        job = reprocess_document(document.id, new_version=new_version, in_transaction=mark)
    except QueueUnavailable as exc:
        raise JobError(str(exc), code="queue_unavailable", transient=True) from exc
    if job is None:
        return "in_flight", None
    return outcome, None


def _enqueue(job: Job) -> None:
    try:
        enqueue_jobs([job])
    except QueueUnavailable as exc:
        raise JobError(str(exc), code="queue_unavailable", transient=True) from exc


def _mark_failed(source: Source, key: str, item: SourceItem | None, error: str) -> None:
    """Record a failed item (it stays not synced, so the next sync tries it again)."""
    if item is None:
        try:
            with Job._meta.database.atomic():
                SourceItem.create(source=source.id, key=key, state=FAILED_ITEM, error=error[:1000], updated_at=utcnow())
        except IntegrityError:
            pass
        return
    SourceItem.update(state=FAILED_ITEM, error=error[:1000], updated_at=utcnow()).where(
        SourceItem.id == item.id).execute()


def _remove_item(item: SourceItem) -> None:
    """The item is gone from its source: its document is deleted (chunks leave search), then the item."""
    if item.document_id and Document.get_or_none(Document.id == item.document_id) is not None:
        delete_document(item.document_id)
    SourceItem.delete().where(SourceItem.id == item.id).execute()
