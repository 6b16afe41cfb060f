"""Accepting documents: validate uploads, store their bytes, record rows, launch the jobs.

Order matters (the job protocol, :mod:`webapp.launch`): bytes are stored, then the Batch,
Document and Job rows are committed in one transaction, then every job of the upload is
enqueued in one Redis transaction (job id = Job row id), then the rows get ``enqueued_at``.
If Redis refuses, the rows are marked ``failed`` and :class:`ApiError` 503 is raised, so no row
is left saying ``queued`` forever and no file is left queued. No parsing happens on this path.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Iterable

from flask import current_app
from webapp import filetypes
from webapp.db import db
from webapp.errors import ApiError
from webapp.job_states import FINISHED, STARTED, TERMINAL, WAITING
from webapp.launch import QueueUnavailable, enqueue_jobs, new_job
from webapp.models import Batch, Document, Job, isoformat, new_id
from webapp.storage import StorageError, storage_from_config

MAX_FILENAME = 255
# A document in one of these states counts as already uploaded (finished or in flight).
DUPLICATE_STATUSES = tuple(WAITING | {STARTED, FINISHED})


@dataclass
class Upload:
    """One file of a request: the client's name and its bytes."""

    filename: str
    data: bytes


@dataclass
class ValidatedUpload:
    filename: str
    data: bytes
    content_type: str


def clean_filename(name: str | None) -> str:
    """The client's file name without folders, control characters or excess length (display only)."""
    name = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    return name[:MAX_FILENAME] or "upload"


def check_file_count(count: int) -> None:
    """Raise 413 ``too_many_files`` when ``count`` files are more than one upload may hold
    (``MAX_FILES_PER_UPLOAD``)."""
    limit = current_app.config["MAX_FILES_PER_UPLOAD"]
    if count > limit:
        raise ApiError(413, "too_many_files", f"An upload may hold at most {limit} files; this one has more "
                                              f"({count}). Send them in several uploads; nothing was uploaded.")


def validate_uploads(uploads: Iterable[Upload]) -> list[ValidatedUpload]:
    """Check every upload before anything is stored.

    Raises:
        ApiError: 400 ``no_file`` when there is none, 400 ``empty_file`` for a zero-byte file,
            415 ``unsupported_media_type`` when the bytes are not a supported type, 413
            ``too_many_files`` above ``MAX_FILES_PER_UPLOAD`` files.
    """
    uploads = list(uploads)
    check_file_count(len(uploads))
    validated = []
    for upload in uploads:
        filename = clean_filename(upload.filename)
        if not upload.data:
            raise ApiError(400, "empty_file", f"{filename} is empty (0 bytes); nothing was uploaded.")
        content_type = filetypes.detect_content_type(upload.data, filename)
        if content_type is None:
            raise ApiError(
                415,
                "unsupported_media_type",
                f"{filename} is not a supported document; Docket accepts {filetypes.SUPPORTED_SENTENCE}. "
                "Nothing was uploaded.",
            )
        validated.append(ValidatedUpload(filename, upload.data, content_type))
    if not validated:
        raise ApiError(400, "no_file", "No file was sent; attach one or more files as form fields named 'file'.")
    return validated


@dataclass
class Accepted:
    """One file of an accepted upload: its document, and whether it is an earlier upload of the
    same bytes (``duplicate``: nothing was stored or enqueued for it)."""

    document: Document
    duplicate: bool = False


@dataclass
class UploadResult:
    """What :func:`accept_uploads` accepted, in the request's order of files."""

    files: list[Accepted]
    batch_id: str | None  # the batch of the new documents; None when every file was a duplicate


def accept_uploads(uploads: Iterable[Upload], password: str | None = None, *, reprocess: bool = False,
                   callback_url: str | None = None) -> UploadResult:
    """Validate, store and launch uploads; the whole request or nothing is accepted.

    Files whose bytes (SHA-256) match a document that finished or is still in flight are not
    processed again: the result points at that document (``duplicate``), unless ``reprocess``.
    The new documents form one batch; their jobs are enqueued in one Redis transaction.

    Args:
        uploads: files of one request (or one CLI call).
        password: for encrypted PDFs; kept with the document until its job reaches a terminal state.
        reprocess: process files again even when the same bytes were uploaded before.
        callback_url: ``http(s)://`` URL that gets each job's final state (:mod:`webapp.webhooks`).

    Returns:
        The accepted files and the batch id.

    Raises:
        ApiError: 400/415 from :func:`validate_uploads` (nothing stored); 400 ``invalid_callback_url``;
            503 ``storage_unavailable`` when the bytes cannot be stored; 503 ``queue_unavailable``
            when Redis refuses the jobs (their rows are marked ``failed``; none was enqueued).
    """
    validated = validate_uploads(uploads)
    if callback_url is not None:
        callback_url = check_callback_url(callback_url)
    storage = storage_from_config(current_app.config)
    files: list[Accepted | None] = []
    new: list[tuple[int, ValidatedUpload, str]] = []
    seen: dict[str, int] = {}  # sha256 → index of the first new file with those bytes
    for upload in validated:
        digest = hashlib.sha256(upload.data).hexdigest()
        existing = None if reprocess else find_duplicate(digest, finished_only=bool(password))
        if existing is not None:
            files.append(Accepted(existing, duplicate=True))
        elif not reprocess and digest in seen:
            files.append(None)  # the same bytes twice in one request: filled in below
        else:
            seen[digest] = len(files)
            new.append((len(files), upload, digest))
            files.append(None)

    batch_id = new_id() if new else None
    jobs: list[Job] = []
    stored_keys: list[str] = []
    try:
        with db.database.atomic():
            if batch_id:
                Batch.create(id=batch_id, size=len(new))
            for index, upload, digest in new:
                document_id = new_id()
                key = f"documents/{document_id[:2]}/{document_id}"
                storage.put(key, upload.data)
                stored_keys.append(key)
                job = new_job("document", {"document_id": document_id}, document_id=document_id,
                              batch_id=batch_id, callback_url=callback_url)
                document = Document.create(
                    id=document_id,
                    filename=upload.filename,
                    content_type=upload.content_type,
                    size_bytes=len(upload.data),
                    sha256=digest,
                    storage_key=key,
                    password=password or None,
                    job_id=job.id,
                    batch_id=batch_id,
                )
                job.save(force_insert=True)
                files[index] = Accepted(document)
                jobs.append(job)
    except StorageError as exc:
        for key in stored_keys:
            storage.delete(key)
        current_app.logger.error("storing an upload failed: %s", exc)
        raise ApiError(503, "storage_unavailable", "The upload could not be stored; please try again later.") from exc
    except Exception:
        for key in stored_keys:
            storage.delete(key)
        raise

    for index, upload in enumerate(validated):  # repeated bytes within the request
        if files[index] is None:
            first = files[seen[hashlib.sha256(upload.data).hexdigest()]]
            files[index] = Accepted(first.document, duplicate=True)
    try:
        enqueue_jobs(jobs)
    except QueueUnavailable as exc:
        raise ApiError(503, "queue_unavailable", str(exc)) from exc
    return UploadResult(files=[f for f in files if f is not None], batch_id=batch_id)


def find_duplicate(sha256: str, finished_only: bool = False) -> Document | None:
    """The newest document with these bytes whose current job finished or is still in flight
    (queued, scheduled, deferred, started); ``None`` otherwise (never uploaded, or every earlier
    copy failed, was stopped or canceled — then it is processed again).

    ``finished_only``: count only a finished copy — an upload that brings a PDF password must
    not be folded into an earlier copy still in flight without one (it would fail the same way).
    """
    statuses = (FINISHED,) if finished_only else DUPLICATE_STATUSES
    return (
        Document.select()
        .join(Job, on=(Job.id == Document.job_id))
        .where(Document.sha256 == sha256, Job.status.in_(statuses))
        .order_by(Document.created_at.desc())
        .first()
    )


def check_callback_url(url: str) -> str:
    """``url`` if it is an absolute ``http``/``https`` URL of at most 2000 characters.

    Raises:
        ApiError: 400 ``invalid_callback_url`` otherwise.
    """
    from urllib.parse import urlsplit

    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > 2000:
        raise ApiError(400, "invalid_callback_url",
                       "callback_url must be an absolute http:// or https:// URL (at most 2000 characters).")
    return url


def document_to_dict(document: Document, job: Job | None = None) -> dict[str, Any]:
    """The API representation of a document (``GET /api/documents/<id>``).

    ``status`` and ``error`` are those of the document's current job.
    """
    if job is None and document.job_id:
        job = Job.get_or_none(Job.id == document.job_id)
    return {
        "id": document.id,
        "filename": document.filename,
        "content_type": document.content_type,
        "bytes": document.size_bytes,
        "sha256": document.sha256,
        "status": job.status if job else None,
        "batch_id": document.batch_id,
        "pages": document.pages,
        "chars": document.chars,
        "chunks": document.chunk_count,
        "warnings": document.warnings or [],
        "error": job.error if job else None,
        "error_code": job.error_code if job else None,
        "job_id": document.job_id,
        "created_at": isoformat(document.created_at),
    }


def batch_to_dict(batch: Batch) -> dict[str, Any]:
    """The API representation of a batch (``GET /api/batches/<id>``).

    ``totals`` counts the documents by their current job's status; ``progress`` (0–100 %) is
    the mean over the documents, an ended job counting 100.
    """
    documents = list(Document.select().where(Document.batch_id == batch.id).order_by(Document.created_at, Document.id))
    jobs = Job.by_id(d.job_id for d in documents)
    totals: dict[str, int] = {}
    done = 0
    for document in documents:
        job = jobs.get(document.job_id)
        status = job.status if job else "unknown"
        totals[status] = totals.get(status, 0) + 1
        done += 100 if status in TERMINAL else (job.progress if job else 0)
    ended = sum(count for status, count in totals.items() if status in TERMINAL)
    return {
        "id": batch.id,
        "size": batch.size,
        "created_at": isoformat(batch.created_at),
        "totals": totals,
        "ended": ended,
        "finished": ended == len(documents),
        "progress": done // len(documents) if documents else 100,
        "documents": [document_to_dict(d, jobs.get(d.job_id)) for d in documents],
    }


def read_upload(file_storage) -> Upload:
    """An :class:`Upload` from a Werkzeug ``FileStorage`` (the size is bounded by MAX_CONTENT_LENGTH)."""
    return Upload(filename=file_storage.filename or "", data=file_storage.read())


def read_path(path: str | os.PathLike[str]) -> Upload:
    """An :class:`Upload` from a local file (for ``flask ingest``)."""
    with open(path, "rb") as fh:
        return Upload(filename=os.path.basename(path), data=fh.read())
