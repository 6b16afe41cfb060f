"""The retention job (kind ``retention``, queue ``high``): the scheduler (:mod:`webapp.core.schedules`)
launches it daily through :func:`webapp.core.protocol.launch.launch`, so each run is a Job row whose
``result`` says what it did.

:func:`apply_retention` deletes what ended long ago: terminal jobs' rows (``ended_at``, or
``created_at`` when it never started, older than ``max_age_days``, default ``RETENTION_DAYS``),
documents all of whose jobs are such jobs with their chunks and stored upload, reports whose job
is such a job with their stored files, and batches left without documents. Stored files a crash
left behind are the orphans job's (:mod:`jobs.orphans_job`).

Why this is safe:

* **Nothing a job not yet ended needs is deleted.** Every ``DELETE`` carries its own condition
  (terminal and old), so a job retried or restarted between the choice and the delete stays;
  a document stays while any job names it (``Job.document`` or ``Document.job_id``) that is
  not terminal and old; a job row stays while a kept document or report names it, or a webhook
  not yet delivered reports it; a document stays while a documents report being built lists it.
  Schedules are never touched (a schedule's ``last_job_id`` may name a deleted job: the API
  shows ``null``).
* **Bounded transactions.** Rows are deleted :data:`BATCH_ROWS` at a time (a batch of documents
  also stops at :data:`BATCH_CHUNKS` chunks past its first document: one document's chunks were
  inserted in one transaction, so they are deleted in one), walking ids in order, so a huge
  backlog never holds one giant transaction and a row kept by a guard is not picked again.
* **Rows first, files after.** Stored files are deleted after their rows' transaction
  committed: a file left behind by a crash is an orphan the orphans job finds; a row naming a
  deleted file would be worse.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable

from flask import current_app
from peewee import JOIN, fn

from jobs.document_errors import JobError
from jobs.tracking import NOT_RUNNING, JobTracker
from webapp.core.db import connection
from webapp.core.protocol.kinds import JOB_KINDS, hook
from webapp.core.models import TERMINAL_STATUSES, Batch, Chunk, Document, Job, Report, isoformat, utcnow
from webapp.core.storage import Storage, StorageError, storage_from_config

log = logging.getLogger(__name__)

BATCH_ROWS = 500  # rows (jobs, documents, reports, batches) deleted per transaction
BATCH_CHUNKS = 10_000  # chunks a batch of documents may hold past its first document
FILE_MISSING = ("The uploaded file is missing from storage (it was deleted or lost after the upload), "
                "so the document cannot be processed; upload it again.")

Progress = Callable[[str, int], None]


# --- retention --------------------------------------------------------------------------------

def apply_retention(max_age_days: int | None = None) -> dict[str, Any]:
    """The RQ job: delete terminal jobs, their documents, chunks, uploads, reports and report
    files that ended more than ``max_age_days`` days ago, and batches left without documents.

    Args:
        max_age_days: days to keep (≥ 1); ``None``: the ``RETENTION_DAYS`` setting (30).

    Returns:
        ``{"jobs", "documents", "chunks", "reports", "batches", "files"}`` — rows and stored files
        deleted — and ``"cutoff"`` (ISO-8601 UTC: what ended before it was deleted); also the Job
        row's ``result``. ``{"skipped": reason}`` when the row says not to run.

    Raises:
        JobError: ``invalid_params`` when ``max_age_days`` is not a whole number ≥ 1.
        RuntimeError: called outside an RQ worker.
    """
    tracker = JobTracker.for_current_job("apply_retention")
    config = current_app.config
    days = config["RETENTION_DAYS"] if max_age_days is None else max_age_days
    with connection() as database:
        if not tracker.start():
            return NOT_RUNNING
        if isinstance(days, bool) or not isinstance(days, int) or days < 1:
            raise JobError(f"max_age_days must be a whole number of days, at least 1 (got {days!r})",
                           code="invalid_params")
        cutoff = utcnow() - timedelta(days=days)
        counts = Retention(database, storage_from_config(config), cutoff, tracker.set_progress).run()
        result = {**counts, "cutoff": isoformat(cutoff)}
        if not tracker.finish_query(result).execute():
            return {"skipped": "the job row changed while the job ran"}
    tracker.finished()
    return result


class Retention:
    """One retention run: four passes (reports, documents, batches, jobs), each in transactions
    of at most :data:`BATCH_ROWS` rows, walking ids in order.

    Args:
        database: the open database.
        storage: where uploads and report files live.
        cutoff: naive UTC; terminal jobs that ended (or, never started, were created) before it go.
        progress: ``progress(stage, percent)``; may raise to stop between two batches.
    """

    def __init__(self, database, storage: Storage, cutoff: datetime, progress: Progress) -> None:
        self.database, self.storage, self.cutoff, self.progress = database, storage, cutoff, progress
        self.counts = {"jobs": 0, "documents": 0, "chunks": 0, "reports": 0, "batches": 0, "files": 0}
        self.needed_jobs, self.needed_documents = needed_by_live_jobs()

    def run(self) -> dict[str, int]:
        """Delete everything past the cutoff; return the counts."""
        for percent, (stage, one_batch) in zip((0, 25, 50, 75), (
                ("reports", self._reports), ("documents", self._documents), ("batches", self._batches),
                ("jobs", self._jobs))):
            self.progress(stage, percent)
            after = ""
            while after is not None:
                after = one_batch(after)
                self.progress(stage, percent)
        return self.counts

    def old(self):
        """The condition on ``Job`` of a row retention may delete: terminal, ended (or created)
        before the cutoff, and not reported by a webhook that is still to be delivered."""
        condition = (Job.status.in_(tuple(TERMINAL_STATUSES))
                     & (fn.COALESCE(Job.ended_at, Job.created_at) < self.cutoff))
        return condition & Job.id.not_in(list(self.needed_jobs)) if self.needed_jobs else condition

    def _reports(self, after: str) -> str | None:
        """One batch of reports whose job is old (or whose job row is gone and which is old):
        their rows and jobs' rows, then their files. Returns the last id looked at, ``None`` at the end."""
        with self.database.atomic():
            candidates = list(
                Report.select(Report.id, Report.job_id)
                .join(Job, JOIN.LEFT_OUTER, on=(Job.id == Report.job_id))
                .where(Report.id > after, self.old() | (Job.id.is_null() & (Report.created_at < self.cutoff)))
                .order_by(Report.id).limit(BATCH_ROWS))
            if not candidates:
                return None
            ids = [report.id for report in candidates]
            self.counts["jobs"] += Job.delete().where(
                Job.id.in_([report.job_id for report in candidates if report.job_id]), self.old()).execute()
            # A report goes only once its job row is gone: one that restarted meanwhile stays.
            gone = list(Report.select(Report.id, Report.files)
                        .join(Job, JOIN.LEFT_OUTER, on=(Job.id == Report.job_id))
                        .where(Report.id.in_(ids), Job.id.is_null()))
            self.counts["reports"] += Report.delete().where(Report.id.in_([report.id for report in gone])).execute()
        self._delete_files(key for report in gone for key in (report.files or {}).values())
        return ids[-1]

    def _documents(self, after: str) -> str | None:
        """One batch of documents no job that is live or recent names: their jobs' rows, chunks
        and rows, then their uploads."""
        live_or_recent = (Job.select(Job.id)
                          .where((Job.document == Document.id) | (Job.id == Document.job_id), ~self.old()))
        with self.database.atomic():
            candidates = list(
                Document.select(Document.id, Document.job_id, Document.chunk_count)
                .where(Document.id > after, Document.created_at < self.cutoff, ~fn.EXISTS(live_or_recent),
                       *([Document.id.not_in(list(self.needed_documents))] if self.needed_documents else []))
                .order_by(Document.id).limit(BATCH_ROWS))
            if not candidates:
                return None
            batch, chunks = [], 0
            for document in candidates:
                if batch and chunks + (document.chunk_count or 0) > BATCH_CHUNKS:
                    break
                batch.append(document)
                chunks += document.chunk_count or 0
            ids = [document.id for document in batch]
            self.counts["jobs"] += Job.delete().where(
                Job.document.in_(ids) | Job.id.in_([document.job_id for document in batch if document.job_id]),
                self.old()).execute()
            # A document goes only once no job names it any more: one retried meanwhile stays.
            any_job = Job.select(Job.id).where((Job.document == Document.id) | (Job.id == Document.job_id))
            gone = list(Document.select(Document.id, Document.storage_key)
                        .where(Document.id.in_(ids), ~fn.EXISTS(any_job)))
            gone_ids = [document.id for document in gone]
            self.counts["chunks"] += Chunk.delete().where(Chunk.document.in_(gone_ids)).execute()
            self.counts["documents"] += Document.delete().where(Document.id.in_(gone_ids)).execute()
        self._delete_files(document.storage_key for document in gone)
        return ids[-1]

    def _batches(self, after: str) -> str | None:
        """One batch of upload batches from before the cutoff that no document or job names."""
        with self.database.atomic():
            ids = [batch.id for batch in Batch.select(Batch.id).where(Batch.id > after, *self._empty_batch())
                   .order_by(Batch.id).limit(BATCH_ROWS)]
            if not ids:
                return None
            self.counts["batches"] += Batch.delete().where(Batch.id.in_(ids), *self._empty_batch()).execute()
        return ids[-1]

    def _empty_batch(self) -> list:
        return [Batch.created_at < self.cutoff,
                ~fn.EXISTS(Document.select(Document.id).where(Document.batch_id == Batch.id)),
                ~fn.EXISTS(Job.select(Job.id).where(Job.batch_id == Batch.id))]

    def _jobs(self, after: str) -> str | None:
        """One batch of the remaining old rows (webhook, maintenance and other jobs), except those
        a kept document or report names as its job."""
        named = [Job.id.not_in(Document.select(Document.job_id).where(Document.job_id.is_null(False))),
                 Job.id.not_in(Report.select(Report.job_id).where(Report.job_id.is_null(False)))]
        with self.database.atomic():
            ids = [job.id for job in Job.select(Job.id).where(Job.id > after, self.old(), *named)
                   .order_by(Job.id).limit(BATCH_ROWS)]
            if not ids:
                return None
            self.counts["jobs"] += Job.delete().where(Job.id.in_(ids), self.old(), *named).execute()
        return ids[-1]

    def _delete_files(self, keys: Iterable[str]) -> None:
        """Delete stored files whose rows were deleted (committed). One that cannot be deleted
        now is left for the orphans job."""
        for key in keys:
            try:
                self.storage.delete(key)
            except StorageError as exc:
                log.warning("retention: %s (left for the orphans job)", exc)
                continue
            self.counts["files"] += 1


def needed_by_live_jobs() -> tuple[set[str], set[str]]:
    """What jobs that have not ended need besides their own rows: ``(job ids, document ids)``, as
    each kind's ``keeps`` hook says (the job a webhook still to be delivered reports, the
    documents a documents report still to be built lists). A document job's document and a
    report job's report are kept by the retention queries themselves."""
    keepers = {name: hook(kind.keeps) for name, kind in JOB_KINDS.items() if kind.keeps}
    job_ids: set[str] = set()
    document_ids: set[str] = set()
    if not keepers:
        return job_ids, document_ids
    live = Job.select(Job.id, Job.kind, Job.params).where(Job.status.not_in(tuple(TERMINAL_STATUSES)),
                                                           Job.kind.in_(tuple(keepers)))
    for job in live:
        jobs, documents = keepers[job.kind](job)
        job_ids.update(jobs)
        document_ids.update(documents)
    return job_ids, document_ids
