"""Schema migrations: numbered steps that take any Docket database to the schema the models declare.

``create_tables(safe=True)`` only creates missing tables: it never adds a column to a table that
already holds rows, and every feature after the baseline adds columns. So the schema is built by
:data:`MIGRATIONS`, an ordered list of numbered steps written with ``playhouse.migrate``, and a
``schema_version`` table records which steps a database has (``version`` primary key, ``name``,
``applied_at`` in naive UTC). :func:`upgrade` applies the pending ones; ``flask --app wsgi init-db``
(the Procfile's ``release`` phase) and ``flask --app wsgi dev`` (the run command) call it through
:func:`webapp.core.db.create_tables`.

Which database is which version:

* an empty database is version 0: every migration runs, from the baseline on, so a fresh install
  and an upgraded one are built by the same statements (``tests/core/test_migrations.py`` holds that
  both equal what the current models create);
* a database with Docket's baseline tables (``document``, ``job``, ``chunk``) and no
  ``schema_version`` table was made by ``init-db`` before migrations existed (commit c792268): it is
  version 1, recorded as such by the next :func:`upgrade`.

Each migration runs in its own transaction together with its ``schema_version`` row, so it is
applied entirely or not at all: SQLite and PostgreSQL (the databases Docket supports) both roll DDL
back with the transaction.

Concurrent upgrades (two ``release`` phases, or ``release`` and a ``dev`` run on one database):
every transaction of :func:`upgrade` first takes a database-wide lock, then reads the version,
so a second process waits for the first one's migration to commit, sees the new version and does
not apply it again.

* PostgreSQL: ``pg_advisory_xact_lock(MIGRATION_LOCK_ID)``, released by the commit or rollback
  (advisory locks are per database, so other databases on the server are not held up). A waiting
  process waits as long as the migration takes.
* SQLite: the transaction starts with ``BEGIN IMMEDIATE``, which takes the database's write lock at
  once (a plain ``BEGIN`` would let both read the old version first). A waiting process waits up to
  the connection's ``busy_timeout`` (10 s, ``webapp.core.db.SQLITE_PRAGMAS``) and then fails with
  "database is locked"; nothing is half-applied, and running ``init-db`` again finishes the job.

Writing the next migration (the rules that keep upgraded == fresh):

* Add a module ``m<NNNN>_<name>.py`` beside the others with ``STEP = Migration(<next number>, "<name>", <function>)`` and append it to :data:`MIGRATIONS`; never change a
  migration that has been released (databases that ran it will not run it again).
* Declare what it adds as frozen copies (fields, tables) inside the migration, never today's
  models: a later change to a model must not change what an old step did.
* Add columns nullable, or not null with a ``default`` (``add_column`` fills existing rows, then
  adds NOT NULL; on SQLite that rebuilds the table, with foreign keys switched off by
  ``SqliteMigrator.migration_context`` so no ``ON DELETE CASCADE`` fires).
* ``tests/core/test_migrations.py`` compares an upgraded database, a fresh one and one made from the
  models column by column, index by index and key by key: it fails until the models and the
  migrations agree.

Why not ``playhouse.migrations.Runner`` (peewee ≥ 4.5): it finds migrations as files in a folder,
records them by file name, and decides what to run before any lock is held, so two release
processes could both apply a step. Its building blocks (``SchemaMigrator``, its
``migration_context``, ``migrate``) are used here.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Iterator

from peewee import (
    CharField,
    Database,
    DateTimeField,
    IntegerField,
    Model,
    PostgresqlDatabase,
    SqliteDatabase,
    fn,
)
from playhouse.migrate import SchemaMigrator

from webapp.core.migrations import (m0001_baseline, m0002_job_protocol, m0003_schedules, m0004_owners, m0005_search,
                                    m0006_delayed_jobs, m0007_structure, m0008_fetched_documents, m0009_sources,
                                    m0010_index_digest, m0011_page_parts)
from webapp.core.migrations.m0002_job_protocol import JOB_PROTOCOL_COLUMNS  # noqa: F401  (the tests read it)
from webapp.core.migrations.m0004_owners import OWNER_COLUMNS  # noqa: F401
from webapp.core.migrations.m0005_search import PGVECTOR_MISSING, SEARCH_INDEX_COLUMNS  # noqa: F401
from webapp.core.migrations.m0006_delayed_jobs import DELAYED_JOB_COLUMNS  # noqa: F401
from webapp.core.migrations.m0007_structure import STRUCTURE_COLUMNS  # noqa: F401
from webapp.core.migrations.m0008_fetched_documents import FETCH_COLUMNS  # noqa: F401
from webapp.core.migrations.m0010_index_digest import INDEX_DIGEST_COLUMNS  # noqa: F401
from webapp.core.migrations.m0011_page_parts import PAGE_PART_COLUMNS  # noqa: F401
from webapp.core.migrations.steps import Migration, add_missing_columns  # noqa: F401

logger = logging.getLogger(__name__)

SCHEMA_VERSION_TABLE = "schema_version"
# The tables c792268's init-db created: all present without a schema_version table = version 1.
BASELINE_TABLES = ("document", "job", "chunk")
# PostgreSQL advisory lock key held by every upgrade transaction ("docket" in ASCII, a bigint).
MIGRATION_LOCK_ID = 0x646F636B6574

#: Every step, in order (one module each, beside this one).
MIGRATIONS: tuple[Migration, ...] = tuple(module.STEP for module in (
    m0001_baseline, m0002_job_protocol, m0003_schedules, m0004_owners, m0005_search, m0006_delayed_jobs,
    m0007_structure, m0008_fetched_documents, m0009_sources, m0010_index_digest, m0011_page_parts))
LATEST_VERSION = MIGRATIONS[-1].version


def _schema_version_model(database: Database) -> type[Model]:
    bound = database

    class SchemaVersion(Model):
        version = IntegerField(primary_key=True)
        name = CharField(max_length=200)
        applied_at = DateTimeField()  # naive UTC, like every timestamp column

        class Meta:
            database = bound
            table_name = SCHEMA_VERSION_TABLE

    return SchemaVersion


def _utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


@contextmanager
def _connection(database: Database) -> Iterator[None]:
    """Use the thread's open connection, or open one and close it (back to the pool) afterwards."""
    if not database.is_closed():
        yield
        return
    with database.connection_context():
        yield


def _version_without_history(tables: set[str]) -> int:
    found = [table for table in BASELINE_TABLES if table in tables]
    if not found:
        return 0
    if len(found) == len(BASELINE_TABLES):
        return 1
    raise RuntimeError(
        f"the database has some of Docket's tables ({', '.join(found)}) but not all of "
        f"{', '.join(BASELINE_TABLES)}, and no {SCHEMA_VERSION_TABLE} table: it was not made by "
        "Docket's init-db; repair it by hand"
    )


def current_version(database: Database) -> int:
    """The schema version of ``database`` (read only; nothing is created).

    Args:
        database: a Peewee database (``db.database`` inside an app context); a connection is
            opened for the call if the thread has none.

    Returns:
        The highest version in ``schema_version``; without that table 1 when Docket's baseline
        tables exist (made by ``init-db`` before migrations), 0 when the database is empty.

    Raises:
        RuntimeError: only some of the baseline tables exist and there is no ``schema_version``.
    """
    with _connection(database):
        tables = set(database.get_tables())
        if SCHEMA_VERSION_TABLE in tables:
            SchemaVersion = _schema_version_model(database)
            version = SchemaVersion.select(fn.MAX(SchemaVersion.version)).scalar()
            if version is not None:
                return version
        return _version_without_history(tables)


@contextmanager
def _locked_transaction(database: Database) -> Iterator[None]:
    """A transaction no other :func:`upgrade` runs alongside (see the module docstring)."""
    if isinstance(database, SqliteDatabase):
        with database.atomic("IMMEDIATE"):
            yield
    elif isinstance(database, PostgresqlDatabase):
        with database.atomic():
            database.execute_sql("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_ID,))
            yield
    else:  # not a database Docket supports: no guard, and its DDL may commit on its own
        with database.atomic():
            yield


def upgrade(database: Database, target: int | None = None) -> list[int]:
    """Apply the pending migrations to ``database``, oldest first, each in its own transaction.

    Each transaction takes the migration lock, creates ``schema_version`` if missing (recording
    version 1 for a database made before migrations), reads the version, applies the next
    migration and records it; so concurrent upgrades apply each migration once.

    Args:
        database: a Peewee database (``db.database`` inside an app context); a connection is
            opened for the call if the thread has none, and closed again.
        target: stop after this version (tests build the baseline alone); ``None``: the latest.

    Returns:
        The versions applied by this call, oldest first; ``[]`` when the schema was current.

    Raises:
        RuntimeError: a transaction is already open (the migration would not be atomic on its
            own, nor locked), or the database holds only some of Docket's baseline tables.
        peewee.DatabaseError: a migration failed; it was rolled back and the database keeps
            the version it had before it.
    """
    applied: list[int] = []
    with _connection(database):
        if database.in_transaction():
            raise RuntimeError("upgrade() opens its own transactions: call it outside a transaction")
        migrator = SchemaMigrator.from_database(database)
        SchemaVersion = _schema_version_model(database)
        while True:
            # atomic=False: the migrator's context only switches SQLite's foreign keys off around
            # the transaction (a table rebuild must not cascade); the transaction is ours.
            with migrator.migration_context(atomic=False), _locked_transaction(database):
                tables = set(database.get_tables())
                if SCHEMA_VERSION_TABLE not in tables:
                    SchemaVersion.create_table()
                    if _version_without_history(tables) == 1:
                        SchemaVersion.create(version=1, name=MIGRATIONS[0].name, applied_at=_utcnow())
                version = SchemaVersion.select(fn.MAX(SchemaVersion.version)).scalar() or 0
                pending = [m for m in MIGRATIONS
                           if m.version > version and (target is None or m.version <= target)]
                if not pending:
                    break
                migration = pending[0]
                migration.up(migrator, database)
                SchemaVersion.create(version=migration.version, name=migration.name, applied_at=_utcnow())
            logger.info("Applied schema migration %d (%s)", migration.version, migration.name)
            applied.append(migration.version)
    return applied
