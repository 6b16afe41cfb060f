"""Version 2, the job protocol: ``params``, ``error_code``, batches, webhooks, ``retry_at``, ``updated_at``.

Released: never change it (databases that ran it will not run it again); a new change is a new
step. See :mod:`webapp.core.migrations`."""

from __future__ import annotations

import logging

from peewee import (
    CharField,
    Database,
    DateTimeField,
    Field,
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



from webapp.core.migrations.steps import Migration, add_missing_columns

# Migration 2's new columns as (table, column, field): frozen copies of the fields as this
# migration adds them. To add a column before migration 2 is released, append a line (copy the
# field from the model; JSONField → TextField). A field with index=True or unique=True also gets
# its index, named as create_tables names it (<table>_<column>).
JOB_PROTOCOL_COLUMNS: tuple[tuple[str, str, Field], ...] = (
    ("document", "batch_id", CharField(max_length=64, null=True, index=True)),
    ("job", "params", TextField(null=True)),
    ("job", "error_code", CharField(max_length=64, null=True)),
    ("job", "batch_id", CharField(max_length=64, null=True, index=True)),
    ("job", "callback_url", TextField(null=True)),
    ("job", "webhook", TextField(null=True)),
    ("job", "retry_at", DateTimeField(null=True)),
    ("job", "updated_at", DateTimeField(null=True, index=True)),
)


def _job_protocol_models(database: Database) -> list[type[Model]]:
    """Migration 2's new tables ``batch`` and ``report``, frozen as 83b199c declared them.

    Frozen copies rather than ``webapp.core.models.Batch``/``Report``: created from today's models,
    this step would also create whatever columns a later migration adds to those tables, and that
    later migration's ``add_column`` would then fail on a fresh install.
    """
    bound = database

    class Base(Model):
        class Meta:
            database = bound

    class Batch(Base):
        id = CharField(primary_key=True, max_length=64)
        size = IntegerField()
        created_at = DateTimeField(index=True)

        class Meta:
            table_name = "batch"

    class Report(Base):
        id = CharField(primary_key=True, max_length=64)
        type = CharField(max_length=32)
        params = TextField()
        job_id = CharField(max_length=64, null=True)
        files = TextField(null=True)
        created_at = DateTimeField(index=True)

        class Meta:
            table_name = "report"

    return [Batch, Report]


def _job_protocol(migrator: SchemaMigrator, database: Database) -> None:
    """2: params, error codes, batches, reports, webhooks, retries and ``updated_at`` (83b199c)."""
    database.create_tables(_job_protocol_models(database), safe=True)
    add_missing_columns(migrator, JOB_PROTOCOL_COLUMNS)


STEP = Migration(2, "job protocol", _job_protocol)
