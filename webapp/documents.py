"""Accepting documents: validate uploads, store their bytes, record rows, enqueue the job.

Order matters (the job protocol): bytes are stored, then the Document and Job rows are
committed, then the RQ job is enqueued with ``job_id`` = the Job row's id, then the row gets
``enqueued_at``. If Redis refuses, the row is marked ``failed`` and :class:`ApiError` 503 is
raised, so no row is left saying ``queued`` forever. No parsing happens on this path.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Iterable

from flask import current_app
from redis.exceptions import RedisError

from webapp import filetypes
from webapp.db import db
from webapp.errors import ApiError
from webapp.models import Document, Job, isoformat, mark_job_failed, new_id, utcnow
from webapp.queues import rq
from webapp.storage import StorageError, storage_from_config

DOCUMENT_JOB = "jobs.documents.process_document"
DOCUMENT_QUEUE = "default"
MAX_FILENAME = 255


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


def validate_uploads(uploads: Iterable[Upload]) -> list[ValidatedUpload]:
    """Check every upload before anything is stored.

    Raises:
        ApiError: 400 ``no_file`` when there is none, 400 ``empty_file`` for a zero-byte file,
            415 ``unsupported_media_type`` when the bytes are not a supported type.
    """
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


def accept_uploads(uploads: Iterable[Upload], password: str | None = None) -> list[Document]:
    """Validate, store and enqueue uploads; the whole request or nothing is accepted up to enqueueing.

    Args:
        uploads: files of one request (or one CLI call).
        password: for encrypted PDFs; kept with the document until its job ends.

    Returns:
        The new :class:`Document` rows, each with ``job_id`` set and its job enqueued.

    Raises:
        ApiError: 400/415 from :func:`validate_uploads` (nothing stored); 503 ``storage_unavailable``
            when the bytes cannot be stored; 503 ``queue_unavailable`` when Redis refuses the job
            (the rows are marked ``failed``).
    """
    validated = validate_uploads(uploads)
    storage = storage_from_config(current_app.config)
    documents: list[Document] = []
    jobs: list[Job] = []
    stored_keys: list[str] = []
    try:
        with db.database.atomic():
            for upload in validated:
                document_id = new_id()
                key = f"documents/{document_id[:2]}/{document_id}"
                storage.put(key, upload.data)
                stored_keys.append(key)
                job = Job(id=new_id(), kind="document", queue=DOCUMENT_QUEUE)
                document = Document.create(
                    id=document_id,
                    filename=upload.filename,
                    content_type=upload.content_type,
                    size_bytes=len(upload.data),
                    sha256=hashlib.sha256(upload.data).hexdigest(),
                    storage_key=key,
                    password=password or None,
                    job_id=job.id,
                )
                job.document = document
                job.save(force_insert=True)
                documents.append(document)
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

    for index, (document, job) in enumerate(zip(documents, jobs)):
        try:
            enqueue_document_job(job, document)
        except RedisError as exc:
            current_app.logger.error("enqueueing job %s failed: %s", job.id, exc)
            message = "The job queue (Redis) is unavailable, so the document could not be queued; upload it again later."
            for pending in jobs[index:]:
                mark_job_failed(pending.id, message)
            raise ApiError(503, "queue_unavailable", message) from exc
    return documents


def enqueue_document_job(job: Job, document: Document) -> None:
    """Enqueue ``process_document(document.id)`` under RQ job id ``job.id`` and stamp ``enqueued_at``.

    Raises:
        redis.exceptions.RedisError: Redis is unreachable or refused the command.
    """
    config = current_app.config
    rq.get_queue(job.queue).enqueue(
        DOCUMENT_JOB,
        document.id,
        job_id=job.id,
        job_timeout=config["DOCUMENT_JOB_TIMEOUT"],
        result_ttl=config["JOB_RESULT_TTL"],
        failure_ttl=config["JOB_FAILURE_TTL"],
        description=f"process document {document.filename} ({document.id})",
        meta={"stage": None, "progress": 0, "document_id": document.id},
    )
    Job.update(enqueued_at=utcnow()).where(Job.id == job.id).execute()


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
        "pages": document.pages,
        "chars": document.chars,
        "chunks": document.chunk_count,
        "warnings": document.warnings or [],
        "error": job.error if job else None,
        "job_id": document.job_id,
        "created_at": isoformat(document.created_at),
    }


def read_upload(file_storage) -> Upload:
    """An :class:`Upload` from a Werkzeug ``FileStorage`` (the size is bounded by MAX_CONTENT_LENGTH)."""
    return Upload(filename=file_storage.filename or "", data=file_storage.read())


def read_path(path: str | os.PathLike[str]) -> Upload:
    """An :class:`Upload` from a local file (for ``flask ingest``)."""
    with open(path, "rb") as fh:
        return Upload(filename=os.path.basename(path), data=fh.read())
