"""Peewee models: job metadata next to RQ's own status, documents, and their chunks.

The database is the source of truth: RQ's keys in Redis expire (``result_ttl``) or can be lost,
the rows stay. Status words are RQ's own (:class:`rq.job.JobStatus`).

Row updates that change a job's status are single ``UPDATE … WHERE`` statements guarded by the
status the row must currently have, so a late or duplicate delivery of a job (RQ delivers at
least once) cannot move a row backwards.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

from peewee import (
    BlobField,
    BooleanField,
    CharField,
    DateTimeField,
    FloatField,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
)
from rq.job import JobStatus

from webapp.core.db import db

TERMINAL_STATUSES = frozenset(
    {JobStatus.FINISHED.value, JobStatus.FAILED.value, JobStatus.STOPPED.value, JobStatus.CANCELED.value}
)
ALL_STATUSES = frozenset(s.value for s in JobStatus)


def utcnow() -> datetime:
    """Current time as a naive UTC datetime (how every timestamp column stores time)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def new_id() -> str:
    """A 32-character hex id; valid as an RQ job id (letters, digits, ``_`` and ``-`` only)."""
    return uuid.uuid4().hex


def isoformat(value: datetime | None) -> str | None:
    """ISO-8601 with an explicit UTC offset, or ``None``."""
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc).isoformat()


class JSONField(TextField):
    """A JSON document stored as text (portable across SQLite and PostgreSQL)."""

    def db_value(self, value: Any) -> str | None:
        return None if value is None else json.dumps(value, ensure_ascii=False)

    def python_value(self, value: str | None) -> Any:
        return None if value is None else json.loads(value)


class Batch(db.Model):
    """The documents of one multi-file upload (``GET /api/batches/<id>``)."""

    id = CharField(primary_key=True, max_length=64, default=new_id)
    size = IntegerField()  # documents accepted in the upload
    owner = CharField(max_length=64, null=True, index=True)  # ApiToken.owner of the uploader
    created_at = DateTimeField(default=utcnow, index=True)

    class Meta:
        table_name = "batch"


class Document(db.Model):
    """An uploaded document. Its bytes live in storage under ``storage_key``."""

    id = CharField(primary_key=True, max_length=64, default=new_id)
    filename = CharField(max_length=255)  # the client's name, for display only
    content_type = CharField(max_length=100)
    size_bytes = IntegerField()
    sha256 = CharField(max_length=64, index=True)
    storage_key = CharField(max_length=255, index=True)
    # Password for an encrypted PDF, kept only until its job reaches a terminal state.
    password = TextField(null=True)
    job_id = CharField(max_length=64, null=True, index=True)  # the current job (Job.id)
    batch_id = CharField(max_length=64, null=True, index=True)  # Batch.id of its upload
    pages = IntegerField(null=True)
    chars = IntegerField(null=True)  # non-whitespace characters of the extracted text
    chunk_count = IntegerField(null=True)
    warnings = JSONField(default=list)
    ocr_pages = IntegerField(null=True)  # pages read by OCR in the run that made its chunks
    # jobs.readers.base.EXTRACTOR_VERSION of that run; None: chunks made before structure was kept
    extractor_version = IntegerField(null=True)
    # webapp.core.indexing.index_digest of the settings that made its chunks (extractor, chunk
    # size and overlap, vector space, OCR, PDF tables); None: made before digests were kept.
    index_digest = CharField(max_length=64, null=True)
    owner = CharField(max_length=64, null=True, index=True)  # ApiToken.owner of the uploader
    created_at = DateTimeField(default=utcnow, index=True)
    # A fetched document (POST /api/documents with JSON urls): the URL its fetch job downloads, and the
    # ETag / Last-Modified its server sent with the stored bytes. None for an upload.
    source_url = TextField(null=True)
    etag = CharField(max_length=200, null=True)
    last_modified = CharField(max_length=64, null=True)

    class Meta:
        table_name = "document"

    @property
    def awaiting_fetch(self) -> bool:
        """A fetched document whose bytes have not been downloaded yet (its storage key names
        nothing so far)."""
        return self.source_url is not None and not self.sha256


class Job(db.Model):
    """One background job. ``id`` is also the RQ job id.

    ``kind`` names its entry in the job registry (:mod:`webapp.core.protocol.kinds`) and ``params`` holds
    the job function's JSON arguments, so any row can be enqueued again from the database
    alone. ``status`` changes only through the state machine (:mod:`webapp.core.protocol.states`):
    guarded ``UPDATE … WHERE status IN (…)`` statements that also set ``updated_at``.
    ``stage``/``progress`` are written every few seconds while the job runs; finer progress
    lives in the RQ job's ``meta``.
    """

    id = CharField(primary_key=True, max_length=64, default=new_id)
    kind = CharField(max_length=32, index=True)  # a name in webapp.core.protocol.kinds.JOB_KINDS
    queue = CharField(max_length=32)
    params = JSONField(null=True)  # the job function's keyword arguments (JSON)
    status = CharField(max_length=16, default=JobStatus.QUEUED.value, index=True)
    stage = CharField(max_length=32, null=True)
    progress = IntegerField(default=0)  # 0–100 %
    result = JSONField(null=True)
    error = TextField(null=True)  # a human sentence, never a traceback
    error_code = CharField(max_length=64, null=True)  # machine-readable reason, e.g. "password_required"
    attempts = IntegerField(default=0)  # how many times a worker started it
    document = ForeignKeyField(
        Document, null=True, backref="jobs", on_delete="CASCADE", lazy_load=False
    )
    batch_id = CharField(max_length=64, null=True, index=True)
    callback_url = TextField(null=True)  # webhook: POSTed the final state once (webapp/core/webhooks.py)
    webhook = JSONField(null=True)  # the webhook's outcome: {"status", "attempts", "http_status", "error", "at"}
    # Whose job it is (ApiToken.owner); None for the system's own (periodic maintenance) jobs,
    # which only admins see.
    owner = CharField(max_length=64, null=True, index=True)
    created_at = DateTimeField(default=utcnow, index=True)
    enqueued_at = DateTimeField(null=True)
    started_at = DateTimeField(null=True)
    ended_at = DateTimeField(null=True)
    retry_at = DateTimeField(null=True)  # when a scheduled retry is due
    # A delayed job's planned start (``run_at``/``delay`` of the request): the row is
    # ``scheduled`` until then, with no ``retry_at`` (webapp/core/protocol/delayed.py).
    run_at = DateTimeField(null=True)
    updated_at = DateTimeField(null=True, index=True)  # the last transition or persisted progress
    # A big PDF read in page-range parts (jobs/document_parts.py, migration 11): a part's and the
    # join's row name the document job they work for; that job counts the pages its finished
    # parts read (pages_done) of the document's pages (pages_total). None: not split.
    parent_id = CharField(max_length=64, null=True, index=True)
    pages_done = IntegerField(null=True)
    pages_total = IntegerField(null=True)

    class Meta:
        table_name = "job"

    @classmethod
    def by_id(cls, job_ids) -> "dict[str, Job]":
        """The rows of ``job_ids`` (``None`` entries skipped) in one query, keyed by id."""
        wanted = [job_id for job_id in job_ids if job_id]
        return {job.id: job for job in cls.select().where(cls.id.in_(wanted))} if wanted else {}

    @classmethod
    def find(cls, job_id: str) -> "Job | None":
        """The row ``job_id``, or ``None``: ``Job.get_or_none(Job.id == job_id)`` with its SQL built once.

        Peewee builds a query's SQL again on every execution — ≈0.3 ms for this row, more than
        SQLite takes to run it — and ``GET /api/jobs/<id>`` is the request clients repeat most
        while they wait. The SQL depends only on the kind of database (quoting, placeholder), so
        it is kept per database class; the id is always a bound parameter.
        """
        sql = _select_by_id_sql(cls, type(_unproxied(cls._meta.database)))
        return next(iter(cls.raw(sql, job_id)), None)


class Report(db.Model):
    """A report: what was asked (``type``, ``params``), the job that builds it, and its files
    (``{"html": storage key, "csv": …, "json": …, "pdf": …}``) once that job finished."""

    id = CharField(primary_key=True, max_length=64, default=new_id)
    type = CharField(max_length=32)  # "activity" or "documents"
    params = JSONField(default=dict)
    job_id = CharField(max_length=64, null=True)
    files = JSONField(null=True)
    owner = CharField(max_length=64, null=True, index=True)  # None: made by a built-in schedule
    created_at = DateTimeField(default=utcnow, index=True)

    class Meta:
        table_name = "report"


class Chunk(db.Model):
    """A searchable piece of a document's text with its embedding (float32 bytes).

    Beside these columns (migration 5, :mod:`webapp.core.vector_index`): on PostgreSQL the pgvector
    copy ``embedding_vector`` with one HNSW index per vector space and a full-text GIN index; on
    SQLite the FTS5 table ``chunk_fts`` kept in step by triggers.
    """

    document = ForeignKeyField(Document, backref="chunks", on_delete="CASCADE")
    ordinal = IntegerField()  # 0-based position in the document
    page_start = IntegerField(null=True)  # 1-based; None for formats without pages
    page_end = IntegerField(null=True)
    text = TextField()
    headings = JSONField(null=True)  # the heading path of its section, outermost first; None before version 7
    ocr = BooleanField(null=True, default=False)  # its text was read by OCR (from at least one of its pages)
    ocr_confidence = FloatField(null=True)  # the OCR engine's mean confidence, 0–1, over its OCR'd pages
    embedding_model = CharField(max_length=200, index=True)
    dimensions = IntegerField()
    embedding = BlobField()  # little-endian float32 × dimensions, L2-normalised

    class Meta:
        table_name = "chunk"
        indexes = ((("document", "ordinal"), True),)


class PartPages(db.Model):
    """What one page-range part of a big PDF read (migration 11; ``jobs/document_parts.py``),
    kept until the document's join has made its one chunk set: the pages' text and structure
    notes (``pages``, :meth:`jobs.readers.pdf.PdfPages.to_json`) and the vectors of the chunks
    the part made of its pages alone (``vector_keys``: the SHA-256 of each chunk's embedded text, in the
    order of ``vectors``, float32 × ``dimensions`` each, of the ``embedding_model`` space), which
    the join reuses for every chunk of the whole document whose embedded text is the same.
    One row per part job (``id`` = the part's Job id): a second run replaces it."""

    id = CharField(primary_key=True, max_length=64)
    document = ForeignKeyField(Document, on_delete="CASCADE", lazy_load=False)
    parent_id = CharField(max_length=64, index=True)  # the document job (Job.id)
    first_page = IntegerField()
    last_page = IntegerField()
    pages = JSONField()
    embedding_model = CharField(max_length=200, null=True)
    dimensions = IntegerField(null=True)
    vector_keys = JSONField(default=list)
    vectors = BlobField(null=True)
    created_at = DateTimeField(default=utcnow)

    class Meta:
        table_name = "part_pages"


class Schedule(db.Model):
    """A periodic job: built into the code (:func:`webapp.core.schedules.table.builtin_schedules`, fixed
    ``id``) or added at runtime (``POST /api/schedules``). The table is the truth; ``flask schedule
    sync`` and the scheduler process write rq-scheduler's entries in Redis from it.

    Exactly one of ``cron`` (five fields, UTC) and ``interval`` (seconds) is set.
    """

    id = CharField(primary_key=True, max_length=64, default=new_id)
    job = CharField(max_length=32)  # a name in webapp.core.schedules.table.SCHEDULABLE_JOBS
    cron = CharField(max_length=100, null=True)
    interval = IntegerField(null=True)  # seconds
    params = JSONField(default=dict)
    builtin = BooleanField(default=False)
    paused = BooleanField(default=False)
    created_at = DateTimeField(default=utcnow)
    last_run_at = DateTimeField(null=True)
    last_job_id = CharField(max_length=64, null=True)  # the Job row of its last run
    owner = CharField(max_length=64, null=True, index=True)  # None for the built-ins

    class Meta:
        table_name = "schedule"


class ApiToken(db.Model):
    """A bearer token for the API and the UI's sign-in (``flask --app wsgi tokens create``).

    Only the SHA-256 of the token is stored: a token is 256 random bits, so a fast hash is as
    safe as a slow one and the plain token cannot be recovered from the table. ``owner`` names
    whose rows its requests see; several tokens may share an owner (rotation). ``admin`` tokens
    see every owner's rows, the dashboard and the queue statistics.
    """

    id = CharField(primary_key=True, max_length=64, default=new_id)
    owner = CharField(max_length=64, index=True)
    name = CharField(max_length=100)  # what it is for, e.g. "ci" or "laptop"
    token_hash = CharField(max_length=64, unique=True)  # hex SHA-256 of the token
    prefix = CharField(max_length=16)  # the token's first characters, to recognise it in lists
    admin = BooleanField(default=False)
    created_at = DateTimeField(default=utcnow)
    last_used_at = DateTimeField(null=True)
    revoked_at = DateTimeField(null=True)

    class Meta:
        table_name = "api_token"

    @classmethod
    def find_by_hash(cls, token_hash: str) -> "ApiToken | None":
        """The row whose ``token_hash`` is this, or ``None`` (SQL built once, as :meth:`Job.find`:
        every API request authenticates)."""
        sql = _select_by_id_sql(cls, type(_unproxied(cls._meta.database)), "token_hash")
        return next(iter(cls.raw(sql, token_hash)), None)


# --- Sources (issue 23): an S3 prefix, web URLs or a sitemap kept in sync --------------------------


class Source(db.Model):
    """A place whose items are kept in sync as documents (``POST /api/sources``,
    :mod:`webapp.core.sources`): ``kind`` ``s3`` (``url`` ``s3://bucket/prefix/``), ``web`` (``urls``,
    a JSON list) or ``sitemap`` (``url`` of a ``sitemap.xml``). ``sync_job_id`` is the Job of the
    running or last sync: a new sync is launched only by a guarded ``UPDATE … WHERE sync_job_id =
    <that ended job>``, so two syncs of one source never overlap."""

    id = CharField(primary_key=True, max_length=64, default=new_id)
    owner = CharField(max_length=64, null=True, index=True)  # ApiToken.owner; the documents' owner
    kind = CharField(max_length=16)  # "s3", "web" or "sitemap"
    name = CharField(max_length=200)
    url = TextField(null=True)  # s3://bucket/prefix/ or the sitemap's URL; None for "web"
    urls = JSONField(null=True)  # the "web" kind's URLs
    schedule_id = CharField(max_length=64, null=True)  # Schedule.id of its cron, None: on request only
    sync_job_id = CharField(max_length=64, null=True, index=True)  # Job.id of the running/last sync
    created_at = DateTimeField(default=utcnow, index=True)

    class Meta:
        table_name = "source"


class SourceItem(db.Model):
    """One item of a source (an S3 object key or a URL) and the document made from it.

    ``version`` is the version whose bytes the document holds now (S3: the listing's ETag; web:
    the body's SHA-256); ``synced_version`` is set only once a document job of that version
    finished (:func:`webapp.core.sources.item_job_ended`), so an item whose job failed or never ran
    is ingested again by the next sync. Unique per (source, key): one document per item."""

    id = CharField(primary_key=True, max_length=64, default=new_id)
    source = ForeignKeyField(Source, backref="items", on_delete="CASCADE", lazy_load=False)
    key = CharField(max_length=2048)
    document_id = CharField(max_length=64, null=True, index=True)  # Document.id, None until ingested
    version = CharField(max_length=255, null=True)
    synced_version = CharField(max_length=255, null=True)
    state = CharField(max_length=16, default="pending")  # "pending", "synced" or "failed"
    error = TextField(null=True)  # why its last attempt failed (a sentence)
    updated_at = DateTimeField(default=utcnow)

    class Meta:
        table_name = "source_item"
        indexes = ((("source", "key"), True),)


class SourceSync(db.Model):
    """One sync of a source: its Job (status, times, error) and its counts (``listed``,
    ``ingested``, ``changed``, ``deleted``, ``unchanged``, ``failed``, ``retried``, ``in_flight``),
    written while it runs, so a canceled or failed sync keeps what it did."""

    job_id = CharField(primary_key=True, max_length=64)  # Job.id (kind "sync")
    source = ForeignKeyField(Source, backref="syncs", on_delete="CASCADE", lazy_load=False)
    counts = JSONField(null=True)
    created_at = DateTimeField(default=utcnow, index=True)

    class Meta:
        table_name = "source_sync"


ALL_MODELS = [Batch, Document, Job, Report, Chunk, Schedule, ApiToken, Source, SourceItem, SourceSync,
              PartPages]


def _unproxied(database):
    """The database behind the models' proxy (the current app's)."""
    return getattr(database, "obj", database)


@lru_cache(maxsize=None)
def _select_by_id_sql(model: type[Model], database_class: type, column: str = "id") -> str:
    """``SELECT <every column> FROM <table> WHERE <column> = <placeholder>`` in ``database_class``'s dialect."""
    sql, params = model.select().where(getattr(model, column) == "?").sql()
    assert params == ["?"], params  # exactly one bound parameter: the id
    return sql
