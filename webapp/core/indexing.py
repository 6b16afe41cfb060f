"""What made a document's chunks, which documents a settings change left stale, and the reindex
that brings them up to date.

A document's chunks depend on settings beside its bytes. :func:`index_recipe` names them — the
*recipe* — and :func:`index_digest` reduces it to one hex SHA-256, which the document job stores
on the document (``Document.index_digest``) in the transaction that stores its chunks. The
recipe's ingredients, each one because changing it changes the chunks or their vectors:

* ``extractor_version`` — :data:`~webapp.core.extractor.EXTRACTOR_VERSION` (the readers and the chunker);
* ``chunk_size`` and ``chunk_overlap`` — ``CHUNK_SIZE``, ``CHUNK_OVERLAP`` (characters);
* ``embedder`` — the vector space (:func:`~webapp.core.embeddings.embedder_name`: the embedder and
  its model, e.g. ``openai:text-embedding-3-small``, ``wordllama:l2_supercat-256``);
* ``ocr`` — ``OCR`` (``auto``/``off``/``force``: which pages are read by OCR);
* ``pdf_tables`` — ``PDF_TABLES`` (whether ruled PDF tables become whole rows).

Left out on purpose: the limits (``MAX_DOCUMENT_CHUNKS``, ``MAX_PDF_PAGES``, …: they refuse a
document, they never change its chunks), ``OCR_LANGUAGE`` (one multilingual model reads every
value), ``EMBEDDING_BATCH_SIZE`` and the OpenAI timeouts (same vectors), ``OPENAI_BASE_URL`` (the
vector space is named by its model, as search names it; a server that answers other vectors for
the same model name is a new ``EMBEDDING_MODEL``).

**Stale**: a document that has chunks (``chunk_count`` set: one of its jobs stored them) whose
digest is ``NULL`` (made before digests were kept) or differs from the current configuration's.
A document that never got chunks (its only job failed, or has not run yet) is not stale: there is
nothing to bring up to date; retry its job instead. A stale document whose job is waiting or
running is counted (``in_flight``) but not launched again: that job replaces its chunks anyway.

The reindex (``flask --app wsgi documents reindex``, or the ``reindex`` job that ``POST
/api/admin/reindex`` launches) launches an ordinary document job per stale document at a bounded
rate (:mod:`webapp.core.relaunch`). While it runs, search answers from each document's chunks
as they are — the old set until the new one's transaction commits — ranking every vector space
present with its own model (:mod:`webapp.core.search`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

from peewee import fn

from webapp.core.embeddings import embedder_name
from webapp.core.extractor import EXTRACTOR_VERSION
from webapp.core.models import Chunk, Document, Job
from webapp.core.protocol.launch import launch
from webapp.core.protocol.states import STARTED, TERMINAL, WAITING
from webapp.core.queues import rq

REINDEX_KIND = "reindex"
# Redis lock held while a reindex job is chosen and launched, so two requests at once launch one.
REINDEX_LOCK = "docket:reindex:launch"
REINDEX_LOCK_SECONDS = 30  # the lock's expiry, should the holder die
REINDEX_LOCK_WAIT = 10  # seconds a second request waits for the lock before it answers 503


def index_recipe(config: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that make a document's chunks and vectors (see the module docstring).

    Args:
        config: the app's configuration (``CHUNK_SIZE``, ``CHUNK_OVERLAP``, ``EMBEDDER`` …).

    Returns:
        ``{"extractor_version": int, "chunk_size": int, "chunk_overlap": int, "embedder": str,
        "ocr": str, "pdf_tables": str}`` — JSON values, readable as they are.

    Raises:
        ValueError: ``EMBEDDER`` is invalid (:func:`~webapp.core.embeddings.embedder_kind`).
    """
    return {
        "extractor_version": EXTRACTOR_VERSION,
        "chunk_size": int(config["CHUNK_SIZE"]),
        "chunk_overlap": int(config["CHUNK_OVERLAP"]),
        "embedder": embedder_name(config),
        "ocr": str(config.get("OCR") or "auto"),
        "pdf_tables": str(config.get("PDF_TABLES") or "off"),
    }


def index_digest(config: Mapping[str, Any]) -> str:
    """The hex SHA-256 (64 characters) of :func:`index_recipe` as canonical JSON (sorted keys, no
    spaces): equal for equal recipes in every process and on every machine.

    Raises:
        ValueError: see :func:`index_recipe`.
    """
    canonical = json.dumps(index_recipe(config), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def stale_documents(digest: str, owner: str | None = None):
    """The stale documents (module docstring), oldest first: a query of :class:`Document`.

    Args:
        digest: the current configuration's :func:`index_digest`.
        owner: only this owner's documents; ``None``: every owner's.
    """
    query = (Document.select()
             .where(Document.chunk_count.is_null(False),
                    Document.index_digest.is_null() | (Document.index_digest != digest))
             .order_by(Document.created_at, Document.id))
    if owner is not None:
        query = query.where(Document.owner == owner)
    return query


def in_flight(selection) -> int:
    """How many documents of ``selection`` (a query of :class:`Document`) have a job waiting or
    running (a reprocess or reindex skips them: not doubled)."""
    return (selection.select(Document.id).join(Job, on=(Job.id == Document.job_id))
            .where(Job.status.not_in(tuple(TERMINAL))).count())


def index_status(config: Mapping[str, Any]) -> dict[str, Any]:
    """Where the documents stand against the current configuration (``GET /api/admin/reindex``).

    Returns:
        ``{"recipe": index_recipe, "digest": str, "space": the configured vector space,
        "documents": {"current", "stale", "stale_in_flight", "without_chunks"},
        "spaces": [{"space", "documents", "chunks", "current": bool}, …]}`` — counts of documents
        (``stale_in_flight``: stale ones whose job is waiting or running; ``without_chunks``: never
        processed, or every job failed) and, per vector space present in the chunks, how many
        documents and chunks are in it (ordered by name; ``current``: the configured space).
    """
    digest = index_digest(config)
    space = embedder_name(config)
    stale = stale_documents(digest)
    spaces = (Chunk.select(Chunk.embedding_model, fn.COUNT(fn.DISTINCT(Chunk.document)), fn.COUNT(Chunk.id))
              .group_by(Chunk.embedding_model).order_by(Chunk.embedding_model).tuples())
    return {
        "recipe": index_recipe(config),
        "digest": digest,
        "space": space,
        "documents": {
            "current": Document.select().where(Document.chunk_count.is_null(False),
                                               Document.index_digest == digest).count(),
            "stale": stale.count(),
            "stale_in_flight": in_flight(stale),
            "without_chunks": Document.select().where(Document.chunk_count.is_null()).count(),
        },
        "spaces": [{"space": name, "documents": documents, "chunks": chunks, "current": name == space}
                   for name, documents, chunks in spaces],
    }


def active_reindex() -> Job | None:
    """The reindex job that is waiting or running (the newest, should there be several), or ``None``."""
    return (Job.select().where(Job.kind == REINDEX_KIND, Job.status.in_(tuple(WAITING | {STARTED})))
            .order_by(Job.created_at.desc(), Job.id.desc()).first())


def last_reindex() -> Job | None:
    """The newest reindex job, whatever its status, or ``None``."""
    return Job.select().where(Job.kind == REINDEX_KIND).order_by(Job.created_at.desc(), Job.id.desc()).first()


def launch_reindex() -> tuple[Job, bool]:
    """Launch the ``reindex`` job (``jobs.reindex_job.reindex``), unless one is waiting or running.

    One at a time: the check and the launch hold a Redis lock (:data:`REINDEX_LOCK`), so two
    requests at once launch one job.

    Returns:
        ``(job, launched)``: the new job and ``True``; or the reindex job already waiting or
        running and ``False`` (nothing launched).

    Raises:
        QueueUnavailable: Redis refused the enqueue (the row is marked ``failed``).
        redis.exceptions.RedisError: Redis cannot be reached (for the lock).
        redis.exceptions.LockError: the lock was not free within :data:`REINDEX_LOCK_WAIT` seconds.
    """
    with rq.connection.lock(REINDEX_LOCK, timeout=REINDEX_LOCK_SECONDS, blocking_timeout=REINDEX_LOCK_WAIT):
        running = active_reindex()
        if running is not None:
            return running, False
        return launch(REINDEX_KIND, {}), True

