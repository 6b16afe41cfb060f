"""The orphans job (kind ``orphans``, queue ``high``), launched daily by the scheduler
(:mod:`webapp.core.schedules`): :func:`clean_orphans` brings storage and rows into agreement. A
stored file no row names and older than ``ORPHAN_GRACE`` seconds is deleted; a document whose
upload is gone is reported, and its job, if still waiting to run, fails with ``file_missing``
instead of waiting forever; a finished report whose files are gone is reported.

Why this is safe: only files older than ``ORPHAN_GRACE`` are deleted (an upload's bytes, and a
report's files, are stored before the row naming them commits), never a file of a report whose
job is still running, and the job refuses to act on a storage that lists no file at all while
documents exist (an unmounted ``STORAGE_PATH``, a ``STORAGE_URL`` naming the wrong bucket or
prefix).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from flask import current_app
from redis.exceptions import RedisError
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job as RQJob

from jobs.document_errors import JobError
from jobs.tracking import NOT_RUNNING, JobTracker
from webapp.core.db import connection
from webapp.core.protocol.states import FINISHED, WAITING, mark_failed
from webapp.core.models import Document, Job, Report
from webapp.core.protocol.kinds import JOB_KINDS, hook
from webapp.core.queues import rq
from webapp.core.storage import Storage, StorageError, storage_from_config

log = logging.getLogger(__name__)

BATCH_ROWS = 500  # rows read per query, files deleted between two progress writes
LIST_LIMIT = 100  # entries of each list kept in the orphans job's result (the counts are complete)
FILE_MISSING = ("The uploaded file is missing from storage (it was deleted or lost after the upload), "
                "so the document cannot be processed; upload it again.")

Progress = Callable[[str, int], None]


# --- orphans ----------------------------------------------------------------------------------

def clean_orphans() -> dict[str, Any]:
    """The RQ job: delete stored files no row names (older than ``ORPHAN_GRACE`` seconds), fail
    the waiting jobs of documents whose upload is gone, list finished reports whose files are gone.

    A document job that already started is left to itself: it reads its upload first and fails
    with ``file_missing`` when it is gone, or it already has the bytes and may well finish.

    Returns:
        ``{"deleted_files": [keys], "missing_documents": [ids], "failed_jobs": [ids],
        "missing_report_files": [report ids]}``, each list cut at :data:`LIST_LIMIT` entries,
        with the full numbers in ``"deleted_file_count"``, ``"missing_document_count"``,
        ``"failed_job_count"`` and ``"missing_report_file_count"``; also the Job row's ``result``.
        ``{"skipped": reason}`` when the row says not to run.

    Raises:
        JobError: ``storage_unavailable`` when the storage cannot be listed, or lists no file
            at all although documents exist (nothing is changed then).
        RuntimeError: called outside an RQ worker.
    """
    tracker = JobTracker.for_current_job("clean_orphans")
    config = current_app.config
    storage = storage_from_config(config)
    with connection():
        if not tracker.start():
            return NOT_RUNNING
        try:
            result = _clean_orphans(storage, float(config["ORPHAN_GRACE"]), tracker.set_progress)
        except StorageError as exc:
            raise JobError(f"the storage could not be listed: {exc}", code="storage_unavailable",
                           transient=exc.transient) from exc
        if not tracker.finish_query(result).execute():
            return {"skipped": "the job row changed while the job ran"}
    tracker.finished()
    return result


def _clean_orphans(storage: Storage, grace: float, progress: Progress) -> dict[str, Any]:
    found: dict[str, list[str]] = {"deleted_files": [], "missing_documents": [], "failed_jobs": [],
                                   "missing_report_files": []}
    counts = dict.fromkeys(found, 0)

    def note(name: str, value: str) -> None:
        counts[name] += 1
        if len(found[name]) < LIST_LIMIT:
            found[name].append(value)

    progress("files", 0)
    referenced = referenced_keys()
    listed_at = time.time()
    present: set[str] = set()
    for key, modified in storage.keys():
        present.add(key)
        # Young files may belong to a row not yet committed (an upload, a report being stored).
        if key in referenced or listed_at - modified < grace:
            continue
        try:
            storage.delete(key)
        except StorageError as exc:
            log.warning("orphans: %s", exc)
            continue
        note("deleted_files", key)
        if counts["deleted_files"] % BATCH_ROWS == 0:
            progress("files", 10)
    if not present and Document.select().where(Document.sha256 != "").exists():
        raise JobError("the storage lists no file at all although documents are recorded (is STORAGE_PATH "
                       "mounted, or STORAGE_URL the right bucket and prefix?); nothing was changed",
                       code="storage_unavailable", transient=False)

    progress("documents", 40)
    after = ""
    while True:
        documents = list(Document.select(Document.id, Document.storage_key, Document.job_id, Document.source_url,
                                         Document.sha256)
                         .where(Document.id > after).order_by(Document.id).limit(BATCH_ROWS))
        if not documents:
            break
        after = documents[-1].id
        # Listed before the row was read? A document uploaded since is checked again by key.
        # A fetched document not downloaded yet has no file so far: nothing is missing.
        missing = [d for d in documents if d.storage_key not in present and not d.awaiting_fetch
                   and not _exists(storage, d.storage_key)]
        jobs = Job.by_id(document.job_id for document in missing)
        for document in missing:
            note("missing_documents", document.id)
            job = jobs.get(document.job_id)
            if job is not None and job.status in WAITING and mark_failed(job.id, FILE_MISSING, "file_missing"):
                _cancel_in_rq(job.id)
                note("failed_jobs", job.id)
        progress("documents", 40)

    progress("reports", 70)
    after = ""
    while True:
        reports = list(Report.select(Report.id, Report.files)
                       .join(Job, on=(Job.id == Report.job_id))
                       .where(Report.id > after, Job.status == FINISHED)
                       .order_by(Report.id).limit(BATCH_ROWS))
        if not reports:
            break
        after = reports[-1].id
        for report in reports:
            keys = list((report.files or {}).values())
            if not keys or any(key not in present and not _exists(storage, key) for key in keys):
                note("missing_report_files", report.id)
        progress("reports", 70)

    result: dict[str, Any] = dict(found)
    for name, singular in (("deleted_files", "deleted_file"), ("missing_documents", "missing_document"),
                           ("failed_jobs", "failed_job"), ("missing_report_files", "missing_report_file")):
        result[f"{singular}_count"] = counts[name]
    return result


def referenced_keys() -> set[str]:
    """Every storage key a row names, as each job kind's ``owns`` hook says (the document kind's
    uploads; the report kind's files, and every file a report whose job has not ended may be
    writing: its files are stored before its row names them).

    One pass over the key columns per kind; held in memory as a set (≈100 bytes a document).
    """
    keys: set[str] = set()
    for kind in JOB_KINDS.values():
        if kind.owns:
            keys.update(hook(kind.owns)())
    return keys


def _exists(storage: Storage, key: str) -> bool:
    """Whether ``key`` is stored now (listing its own prefix: one folder for local storage)."""
    return any(listed == key for listed, _ in storage.keys(key))


def _cancel_in_rq(job_id: str) -> None:
    """Take a failed job out of RQ's queue, so no worker starts it (a start would be allowed from
    ``failed`` and only fail again). RQ may not have it any more; the row is what counts."""
    try:
        RQJob.fetch(job_id, connection=rq.connection).cancel()
    except (NoSuchJobError, InvalidJobOperation, RedisError):
        pass
