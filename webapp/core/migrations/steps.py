"""What every migration step shares: :class:`Migration` and :func:`add_missing_columns`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from peewee import (
    Database,
    Field,
)
from playhouse.migrate import SchemaMigrator, make_index_name, migrate

logger = logging.getLogger(__name__)

SCHEMA_VERSION_TABLE = "schema_version"
# The tables c792268's init-db created: all present without a schema_version table = version 1.
BASELINE_TABLES = ("document", "job", "chunk")
# PostgreSQL advisory lock key held by every upgrade transaction ("docket" in ASCII, a bigint).
MIGRATION_LOCK_ID = 0x646F636B6574



@dataclass(frozen=True)
class Migration:
    """One numbered schema change.

    Attributes:
        version: its number: 1, 2, … in :data:`MIGRATIONS` order, without gaps.
        name: a few words for ``schema_version.name`` and ``init-db``'s output.
        up: ``up(migrator, database)`` makes the change (inside the transaction :func:`upgrade`
            opens; it must not commit).
    """

    version: int
    name: str
    up: Callable[[SchemaMigrator, Database], None]


def add_missing_columns(migrator: SchemaMigrator, columns: tuple[tuple[str, str, Field], ...]) -> None:
    """Add each column (and its index) that its table does not have yet.

    A column already there is left alone, so a database made by ``create_tables`` between the
    commit that declared these columns and this migration (unreleased development databases)
    upgrades too instead of failing on "duplicate column".

    Args:
        migrator: the database's ``SchemaMigrator``.
        columns: ``(table, column, field)``; a field with ``index``/``unique`` also gets the
            index ``<table>_<column>``.
    """
    database = migrator.database
    tables = {table for table, _, _ in columns}
    existing = {table: {c.name for c in database.get_columns(table)} for table in tables}
    indexes = {table: {i.name for i in database.get_indexes(table)} for table in tables}
    operations = []
    for table, column, field in columns:
        if column not in existing[table]:
            operations.append(migrator.add_column(table, column, field))  # with its index
        elif (field.index or field.unique) and make_index_name(table, (column,)) not in indexes[table]:
            operations.append(migrator.add_index(table, (column,), field.unique))
    migrate(*operations)
