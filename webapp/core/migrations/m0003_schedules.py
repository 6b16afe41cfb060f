"""Version 3: the ``schedule`` table of periodic jobs.

Released: never change it (databases that ran it will not run it again); a new change is a new
step. See :mod:`webapp.core.migrations`."""

from __future__ import annotations

import logging

from peewee import (
    BooleanField,
    CharField,
    Database,
    DateTimeField,
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

def _schedules_model(database: Database) -> type[Model]:
    """Migration 3's table ``schedule``, frozen as it was first declared."""
    bound = database

    class Schedule(Model):
        id = CharField(primary_key=True, max_length=64)
        job = CharField(max_length=32)
        cron = CharField(max_length=100, null=True)
        interval = IntegerField(null=True)
        params = TextField()
        builtin = BooleanField()
        paused = BooleanField()
        created_at = DateTimeField()
        last_run_at = DateTimeField(null=True)
        last_job_id = CharField(max_length=64, null=True)

        class Meta:
            database = bound
            table_name = "schedule"

    return Schedule


def _schedules(migrator: SchemaMigrator, database: Database) -> None:
    """3: periodic jobs (built-in and added at runtime) for rq-scheduler."""
    database.create_tables([_schedules_model(database)], safe=True)


STEP = Migration(3, "schedules", _schedules)
