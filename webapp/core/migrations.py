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

* Append ``Migration(<next number>, "<name>", <function>)`` to :data:`MIGRATIONS`; never change a
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
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterator

from peewee import (
    BlobField,
    BooleanField,
    CharField,
    Database,
    DateTimeField,
    Field,
    ForeignKeyField,
    IntegerField,
    Model,
    PostgresqlDatabase,
    SqliteDatabase,
    TextField,
    fn,
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


# --- 1: the baseline -------------------------------------------------------------------------


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


# --- 2: the job protocol ---------------------------------------------------------------------

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


# --- 5: search that scales ------------------------------------------------------------------

# Frozen copy of what migration 5 adds beside the models (today's declaration:
# webapp.core.vector_index.SEARCH_SCHEMA; the tests compare the two databases they build).
SEARCH_STATEMENTS: dict[str, tuple[str, ...]] = {
    "postgresql": (
        'ALTER TABLE "chunk" ADD COLUMN IF NOT EXISTS "embedding_vector" vector',
        "CREATE INDEX IF NOT EXISTS \"chunk_text_search\" ON \"chunk\" USING gin (to_tsvector('simple', \"text\"))",
    ),
    "sqlite": (
        "CREATE VIRTUAL TABLE IF NOT EXISTS \"chunk_fts\" USING fts5(text, content='chunk', content_rowid='id', "
        "tokenize='unicode61 remove_diacritics 2')",
        'CREATE TRIGGER IF NOT EXISTS "chunk_fts_insert" AFTER INSERT ON "chunk" BEGIN '
        'INSERT INTO "chunk_fts"(rowid, text) VALUES (new.id, new.text); END',
        'CREATE TRIGGER IF NOT EXISTS "chunk_fts_delete" AFTER DELETE ON "chunk" BEGIN '
        "INSERT INTO \"chunk_fts\"(\"chunk_fts\", rowid, text) VALUES ('delete', old.id, old.text); END",
        'CREATE TRIGGER IF NOT EXISTS "chunk_fts_update" AFTER UPDATE OF text ON "chunk" BEGIN '
        "INSERT INTO \"chunk_fts\"(\"chunk_fts\", rowid, text) VALUES ('delete', old.id, old.text); "
        'INSERT INTO "chunk_fts"(rowid, text) VALUES (new.id, new.text); END',
        # Index the rows that were there before the triggers.
        "INSERT INTO \"chunk_fts\"(\"chunk_fts\") VALUES ('rebuild')",
    ),
}
SEARCH_INDEX_COLUMNS = (("document", "storage_key"), ("document", "job_id"))
PGVECTOR_MISSING = (
    "PostgreSQL has no 'vector' extension, which Docket's search needs (migration 5): install pgvector "
    "on the database server (Debian/Ubuntu: apt-get install postgresql-<major>-pgvector; Heroku Postgres, "
    "AWS RDS, Google Cloud SQL and Azure have it built in) and run init-db again"
)


def _create_pgvector(database: Database) -> None:
    """``CREATE EXTENSION IF NOT EXISTS vector``, or a RuntimeError saying what to install."""
    available = database.execute_sql(
        "SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'").fetchone()[0]
    if not available:
        raise RuntimeError(PGVECTOR_MISSING)
    database.execute_sql("CREATE EXTENSION IF NOT EXISTS vector")


def _backfill_vectors(database: Database, block: int = 500) -> None:
    """Copy every chunk's float32 blob into ``embedding_vector`` (500 rows at a time, keyset on the
    id, so memory stays bounded), then build each vector space's HNSW index as
    :func:`webapp.core.vector_index.ensure_vector_index` names it (frozen copy of the name and SQL)."""
    import hashlib
    import struct

    last_id = 0
    while True:
        rows = database.execute_sql(
            'SELECT "id", "dimensions", "embedding" FROM "chunk" WHERE "id" > %s ORDER BY "id" LIMIT %s',
            (last_id, block)).fetchall()
        if not rows:
            break
        last_id = rows[-1][0]
        ids = [row[0] for row in rows]
        literals = ["[" + ",".join(repr(x) for x in struct.unpack(f"<{dims}f", bytes(blob))) + "]"
                    for _, dims, blob in rows]
        database.execute_sql(
            'UPDATE "chunk" SET "embedding_vector" = u.v::vector FROM unnest(%s::int[], %s::text[]) AS u(i, v) '
            'WHERE "chunk"."id" = u.i', (ids, literals))
    spaces = database.execute_sql('SELECT DISTINCT "embedding_model", "dimensions" FROM "chunk"').fetchall()
    for space, dims in spaces:
        if dims > 4000:  # beyond pgvector's HNSW (halfvec: 4,000 dimensions): no index
            continue
        kind = "vector" if dims <= 2000 else "halfvec"
        name = "chunk_hnsw_" + hashlib.sha1(f"{space}\0{dims}".encode("utf-8")).hexdigest()[:16] + f"_{int(dims)}"
        literal = space.replace("'", "''")
        database.execute_sql(
            f'CREATE INDEX IF NOT EXISTS "{name}" ON "chunk" USING hnsw (("embedding_vector"::{kind}({int(dims)})) '
            f"{kind}_cosine_ops) WHERE \"embedding_model\" = '{literal}' AND \"dimensions\" = {int(dims)}")


def _search(migrator: SchemaMigrator, database: Database) -> None:
    """5: pgvector vectors and HNSW indexes (PostgreSQL), full-text indexes (FTS5 on SQLite,
    tsvector GIN on PostgreSQL), indexes on ``document.storage_key`` and ``document.job_id``."""
    indexes = {i.name for i in database.get_indexes("document")}
    migrate(*[migrator.add_index(table, (column,), False) for table, column in SEARCH_INDEX_COLUMNS
              if make_index_name(table, (column,)) not in indexes])
    if isinstance(database, PostgresqlDatabase):
        _create_pgvector(database)
        for statement in SEARCH_STATEMENTS["postgresql"]:
            database.execute_sql(statement)
        _backfill_vectors(database)
    elif isinstance(database, SqliteDatabase):
        for statement in SEARCH_STATEMENTS["sqlite"]:
            database.execute_sql(statement)


# Migration 6: delayed jobs (frozen copy).
DELAYED_JOB_COLUMNS = (("job", "run_at", DateTimeField(null=True)),)


def _delayed_jobs(migrator: SchemaMigrator, database: Database) -> None:
    """6: the planned start of a delayed job (``job.run_at``)."""
    add_missing_columns(migrator, DELAYED_JOB_COLUMNS)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "baseline", _baseline),
    Migration(2, "job protocol", _job_protocol),
    Migration(3, "schedules", _schedules),
    Migration(4, "owners and tokens", _owners),
    Migration(5, "search indexes", _search),
    Migration(6, "delayed jobs", _delayed_jobs),
)
LATEST_VERSION = MIGRATIONS[-1].version


# --- running them ----------------------------------------------------------------------------


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
