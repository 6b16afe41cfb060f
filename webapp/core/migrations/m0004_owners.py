"""Version 4: owners on every row and the ``apitoken`` table.

Released: never change it (databases that ran it will not run it again); a new change is a new
step. See :mod:`webapp.core.migrations`."""

from __future__ import annotations

import logging

from peewee import (
    BooleanField,
    CharField,
    Database,
    DateTimeField,
    Model,
)
from playhouse.migrate import SchemaMigrator

logger = logging.getLogger(__name__)

SCHEMA_VERSION_TABLE = "schema_version"
# The tables c792268's init-db created: all present without a schema_version table = version 1.
BASELINE_TABLES = ("document", "job", "chunk")
# PostgreSQL advisory lock key held by every upgrade transaction ("docket" in ASCII, a bigint).
MIGRATION_LOCK_ID = 0x646F636B6574



from webapp.core.migrations.steps import Migration, add_missing_columns

def _api_token_model(database: Database) -> type[Model]:
    """Migration 4's table ``api_token``, frozen as it was first declared."""
    bound = database

    class ApiToken(Model):
        id = CharField(primary_key=True, max_length=64)
        owner = CharField(max_length=64, index=True)
        name = CharField(max_length=100)
        token_hash = CharField(max_length=64, unique=True)
        prefix = CharField(max_length=16)
        admin = BooleanField()
        created_at = DateTimeField()
        last_used_at = DateTimeField(null=True)
        revoked_at = DateTimeField(null=True)

        class Meta:
            database = bound
            table_name = "api_token"

    return ApiToken


# Migration 4: whose row it is. Rows from before have no owner: only admins see them.
OWNER_COLUMNS = tuple(
    (table, "owner", CharField(max_length=64, null=True, index=True))
    for table in ("batch", "document", "job", "report", "schedule")
)


def _owners(migrator: SchemaMigrator, database: Database) -> None:
    """4: API tokens and the owner of every batch, document, job, report and schedule."""
    database.create_tables([_api_token_model(database)], safe=True)
    add_missing_columns(migrator, OWNER_COLUMNS)


STEP = Migration(4, "owners and tokens", _owners)
