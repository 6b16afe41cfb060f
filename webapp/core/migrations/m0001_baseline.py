"""The baseline (version 1): the tables c792268's ``init-db`` created, as they were.

Released: never change it (databases that ran it will not run it again); a new change is a new
step. See :mod:`webapp.core.migrations`."""

from __future__ import annotations

import logging

from peewee import (
    BlobField,
    CharField,
    Database,
    DateTimeField,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
)
from playhouse.migrate import SchemaMigrator

logger = logging.getLogger(__name__)

SCHEMA_VERSION_TABLE = "schema_version"
# The tables c792268's init-db created: all present without a schema_version table = version 1.
BASELINE_TABLES = ("document", "job", "chunk")
# PostgreSQL advisory lock key held by every upgrade transaction ("docket" in ASCII, a bigint).
MIGRATION_LOCK_ID = 0x646F636B6574



from webapp.core.migrations.steps import Migration

def _baseline_models(database: Database) -> list[type[Model]]:
    """``Document``, ``Job`` and ``Chunk`` as commit c792268 declared them, bound to ``database``.

    Frozen: never edit these, never import ``webapp.core.models`` here. JSON columns are ``TextField``
    (``JSONField``'s column type); Python-side defaults (``default=…``) are left out, as they are
    not part of the schema (Peewee writes no ``DEFAULT`` clause for them).
    """
    bound = database

    class Base(Model):
        class Meta:
            database = bound

    class Document(Base):
        id = CharField(primary_key=True, max_length=64)
        filename = CharField(max_length=255)
        content_type = CharField(max_length=100)
        size_bytes = IntegerField()
        sha256 = CharField(max_length=64, index=True)
        storage_key = CharField(max_length=255)
        password = TextField(null=True)
        job_id = CharField(max_length=64, null=True)
        pages = IntegerField(null=True)
        chars = IntegerField(null=True)
        chunk_count = IntegerField(null=True)
        warnings = TextField()
        created_at = DateTimeField(index=True)

        class Meta:
            table_name = "document"

    class Job(Base):
        id = CharField(primary_key=True, max_length=64)
        kind = CharField(max_length=32, index=True)
        queue = CharField(max_length=32)
        status = CharField(max_length=16, index=True)
        stage = CharField(max_length=32, null=True)
        progress = IntegerField()
        result = TextField(null=True)
        error = TextField(null=True)
        attempts = IntegerField()
        document = ForeignKeyField(Document, null=True, backref="+", on_delete="CASCADE")
        created_at = DateTimeField(index=True)
        enqueued_at = DateTimeField(null=True)
        started_at = DateTimeField(null=True)
        ended_at = DateTimeField(null=True)

        class Meta:
            table_name = "job"

    class Chunk(Base):
        document = ForeignKeyField(Document, backref="+", on_delete="CASCADE")
        ordinal = IntegerField()
        page_start = IntegerField(null=True)
        page_end = IntegerField(null=True)
        text = TextField()
        embedding_model = CharField(max_length=200, index=True)
        dimensions = IntegerField()
        embedding = BlobField()

        class Meta:
            table_name = "chunk"
            indexes = ((("document", "ordinal"), True),)

    return [Document, Job, Chunk]


def _baseline(migrator: SchemaMigrator, database: Database) -> None:
    """1: the tables ``init-db`` created at c792268 (an empty database starts here)."""
    database.create_tables(_baseline_models(database))


STEP = Migration(1, "baseline", _baseline)
