"""Version 6: delayed jobs (``job.run_at``).

Released: never change it (databases that ran it will not run it again); a new change is a new
step. See :mod:`webapp.core.migrations`."""

from __future__ import annotations

import logging

from peewee import (
    Database,
    DateTimeField,
)
from playhouse.migrate import SchemaMigrator

logger = logging.getLogger(__name__)

SCHEMA_VERSION_TABLE = "schema_version"
# The tables c792268's init-db created: all present without a schema_version table = version 1.
BASELINE_TABLES = ("document", "job", "chunk")
# PostgreSQL advisory lock key held by every upgrade transaction ("docket" in ASCII, a bigint).
MIGRATION_LOCK_ID = 0x646F636B6574



from webapp.core.migrations.steps import Migration, add_missing_columns

DELAYED_JOB_COLUMNS = (("job", "run_at", DateTimeField(null=True)),)


def _delayed_jobs(migrator: SchemaMigrator, database: Database) -> None:
    """6: the planned start of a delayed job (``job.run_at``)."""
    add_missing_columns(migrator, DELAYED_JOB_COLUMNS)


STEP = Migration(6, "delayed jobs", _delayed_jobs)
