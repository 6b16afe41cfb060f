"""Version 9: sources kept in sync (issue 23): the ``source``, ``source_item`` and ``source_sync``
tables.

Released: never change it (databases that ran it will not run it again); a new change is a new
step. See :mod:`webapp.core.migrations`."""

from __future__ import annotations

from peewee import CharField, Database, DateTimeField, ForeignKeyField, Model, TextField
from playhouse.migrate import SchemaMigrator

from webapp.core.migrations.steps import Migration


def _sources_models(database: Database) -> list[type[Model]]:
    """Migration 9's tables, frozen as they were first declared."""
    bound = database

    class Source(Model):
        id = CharField(primary_key=True, max_length=64)
        owner = CharField(max_length=64, null=True, index=True)
        kind = CharField(max_length=16)
        name = CharField(max_length=200)
        url = TextField(null=True)
        urls = TextField(null=True)  # JSON
        schedule_id = CharField(max_length=64, null=True)
        sync_job_id = CharField(max_length=64, null=True, index=True)
        created_at = DateTimeField(index=True)

        class Meta:
            database = bound
            table_name = "source"

    class SourceItem(Model):
        id = CharField(primary_key=True, max_length=64)
        source = ForeignKeyField(Source, on_delete="CASCADE")
        key = CharField(max_length=2048)
        document_id = CharField(max_length=64, null=True, index=True)
        version = CharField(max_length=255, null=True)
        synced_version = CharField(max_length=255, null=True)
        state = CharField(max_length=16)
        error = TextField(null=True)
        updated_at = DateTimeField()

        class Meta:
            database = bound
            table_name = "source_item"
            indexes = ((("source", "key"), True),)

    class SourceSync(Model):
        job_id = CharField(primary_key=True, max_length=64)
        source = ForeignKeyField(Source, on_delete="CASCADE")
        counts = TextField(null=True)  # JSON
        created_at = DateTimeField(index=True)

        class Meta:
            database = bound
            table_name = "source_sync"

    return [Source, SourceItem, SourceSync]


def _sources(migrator: SchemaMigrator, database: Database) -> None:
    """9: sources, their items and their syncs."""
    database.create_tables(_sources_models(database), safe=True)


STEP = Migration(9, "sources", _sources)
