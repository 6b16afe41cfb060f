"""Schema migrations (``webapp/core/migrations/``) on SQLite and PostgreSQL.

The promise under test: a database made by c792268's ``init-db`` (the schema before migrations,
frozen below as the SQL that commit executed) upgrades to exactly the schema a fresh install
creates, with its rows kept; and a fresh install has exactly the schema the current models
declare. "Exactly": every column (name, type, nullability, default), index (name, columns,
uniqueness) and key (foreign keys with their actions) as the database itself reports them.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sqlite3
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import pytest
from peewee import Database, PostgresqlDatabase

from tests.conftest import ROOT, process_env, wait_for
from webapp import create_app
from webapp.core.db import connection, create_tables, make_database
from webapp.core.vector_index import HNSW_INDEX_PREFIX, hnsw_index_name
from webapp.core.migrations import (
    JOB_PROTOCOL_COLUMNS,
    LATEST_VERSION,
    MIGRATIONS,
    MIGRATION_LOCK_ID,
    SCHEMA_VERSION_TABLE,
    add_missing_columns,
    current_version,
    upgrade,
)

# The statements c792268's `flask init-db` executed (Peewee's create_tables for Document, Chunk and
# Job), captured from that commit's code with Peewee's query log, once, so that this test does not
# need the commit's code or the repository's history.
C792268_DDL = {
    "sqlite": [
        'CREATE TABLE IF NOT EXISTS "document" ("id" VARCHAR(64) NOT NULL PRIMARY KEY, "filename" VARCHAR(255) NOT NULL, "content_type" VARCHAR(100) NOT NULL, "size_bytes" INTEGER NOT NULL, "sha256" VARCHAR(64) NOT NULL, "storage_key" VARCHAR(255) NOT NULL, "password" TEXT, "job_id" VARCHAR(64), "pages" INTEGER, "chars" INTEGER, "chunk_count" INTEGER, "warnings" TEXT NOT NULL, "created_at" DATETIME NOT NULL)',  # noqa: E501
        'CREATE INDEX IF NOT EXISTS "document_sha256" ON "document" ("sha256")',
        'CREATE INDEX IF NOT EXISTS "document_created_at" ON "document" ("created_at")',
        'CREATE TABLE IF NOT EXISTS "chunk" ("id" INTEGER NOT NULL PRIMARY KEY, "document_id" VARCHAR(64) NOT NULL, "ordinal" INTEGER NOT NULL, "page_start" INTEGER, "page_end" INTEGER, "text" TEXT NOT NULL, "embedding_model" VARCHAR(200) NOT NULL, "dimensions" INTEGER NOT NULL, "embedding" BLOB NOT NULL, FOREIGN KEY ("document_id") REFERENCES "document" ("id") ON DELETE CASCADE)',  # noqa: E501
        'CREATE INDEX IF NOT EXISTS "chunk_document_id" ON "chunk" ("document_id")',
        'CREATE INDEX IF NOT EXISTS "chunk_embedding_model" ON "chunk" ("embedding_model")',
        'CREATE UNIQUE INDEX IF NOT EXISTS "chunk_document_id_ordinal" ON "chunk" ("document_id", "ordinal")',
        'CREATE TABLE IF NOT EXISTS "job" ("id" VARCHAR(64) NOT NULL PRIMARY KEY, "kind" VARCHAR(32) NOT NULL, "queue" VARCHAR(32) NOT NULL, "status" VARCHAR(16) NOT NULL, "stage" VARCHAR(32), "progress" INTEGER NOT NULL, "result" TEXT, "error" TEXT, "attempts" INTEGER NOT NULL, "document_id" VARCHAR(64), "created_at" DATETIME NOT NULL, "enqueued_at" DATETIME, "started_at" DATETIME, "ended_at" DATETIME, FOREIGN KEY ("document_id") REFERENCES "document" ("id") ON DELETE CASCADE)',  # noqa: E501
        'CREATE INDEX IF NOT EXISTS "job_kind" ON "job" ("kind")',
        'CREATE INDEX IF NOT EXISTS "job_status" ON "job" ("status")',
        'CREATE INDEX IF NOT EXISTS "job_document_id" ON "job" ("document_id")',
        'CREATE INDEX IF NOT EXISTS "job_created_at" ON "job" ("created_at")',
    ],
    "postgresql": [
        'CREATE TABLE IF NOT EXISTS "document" ("id" VARCHAR(64) NOT NULL PRIMARY KEY, "filename" VARCHAR(255) NOT NULL, "content_type" VARCHAR(100) NOT NULL, "size_bytes" INTEGER NOT NULL, "sha256" VARCHAR(64) NOT NULL, "storage_key" VARCHAR(255) NOT NULL, "password" TEXT, "job_id" VARCHAR(64), "pages" INTEGER, "chars" INTEGER, "chunk_count" INTEGER, "warnings" TEXT NOT NULL, "created_at" TIMESTAMP NOT NULL)',  # noqa: E501
        'CREATE INDEX IF NOT EXISTS "document_sha256" ON "document" ("sha256")',
        'CREATE INDEX IF NOT EXISTS "document_created_at" ON "document" ("created_at")',
        'CREATE TABLE IF NOT EXISTS "chunk" ("id" SERIAL NOT NULL PRIMARY KEY, "document_id" VARCHAR(64) NOT NULL, "ordinal" INTEGER NOT NULL, "page_start" INTEGER, "page_end" INTEGER, "text" TEXT NOT NULL, "embedding_model" VARCHAR(200) NOT NULL, "dimensions" INTEGER NOT NULL, "embedding" BYTEA NOT NULL, FOREIGN KEY ("document_id") REFERENCES "document" ("id") ON DELETE CASCADE)',  # noqa: E501
        'CREATE INDEX IF NOT EXISTS "chunk_document_id" ON "chunk" ("document_id")',
        'CREATE INDEX IF NOT EXISTS "chunk_embedding_model" ON "chunk" ("embedding_model")',
        'CREATE UNIQUE INDEX IF NOT EXISTS "chunk_document_id_ordinal" ON "chunk" ("document_id", "ordinal")',
        'CREATE TABLE IF NOT EXISTS "job" ("id" VARCHAR(64) NOT NULL PRIMARY KEY, "kind" VARCHAR(32) NOT NULL, "queue" VARCHAR(32) NOT NULL, "status" VARCHAR(16) NOT NULL, "stage" VARCHAR(32), "progress" INTEGER NOT NULL, "result" TEXT, "error" TEXT, "attempts" INTEGER NOT NULL, "document_id" VARCHAR(64), "created_at" TIMESTAMP NOT NULL, "enqueued_at" TIMESTAMP, "started_at" TIMESTAMP, "ended_at" TIMESTAMP, FOREIGN KEY ("document_id") REFERENCES "document" ("id") ON DELETE CASCADE)',  # noqa: E501
        'CREATE INDEX IF NOT EXISTS "job_kind" ON "job" ("kind")',
        'CREATE INDEX IF NOT EXISTS "job_status" ON "job" ("status")',
        'CREATE INDEX IF NOT EXISTS "job_document_id" ON "job" ("document_id")',
        'CREATE INDEX IF NOT EXISTS "job_created_at" ON "job" ("created_at")',
    ],
}

# Rows as c792268 wrote them (JSON as text, timestamps as naive UTC).
OLD_ROWS: dict[str, list[dict[str, Any]]] = {
    "document": [
        {"id": "doc-finished", "filename": "report.pdf", "content_type": "application/pdf", "size_bytes": 383508,
         "sha256": "3e67" * 16, "storage_key": "3e/doc-finished", "password": None, "job_id": "job-finished",
         "pages": 13, "chars": 47204, "chunk_count": 2, "warnings": '["no text layer (needs OCR)"]',
         "created_at": "2026-11-20 15:08:23.076000"},
        {"id": "doc-queued", "filename": "locked.pdf", "content_type": "application/pdf", "size_bytes": 1024,
         "sha256": "ab" * 32, "storage_key": "ab/doc-queued", "password": "1234", "job_id": "job-queued",
         "pages": None, "chars": None, "chunk_count": None, "warnings": "[]",
         "created_at": "2026-11-21 09:00:00"},
    ],
    "job": [
        {"id": "job-finished", "kind": "document", "queue": "default", "status": "finished", "stage": None,
         "progress": 100, "result": '{"chunks": 2, "pages": 13}', "error": None, "attempts": 1,
         "document_id": "doc-finished", "created_at": "2026-11-20 15:08:23.080000",
         "enqueued_at": "2026-11-20 15:08:23.100000", "started_at": "2026-11-20 15:08:24",
         "ended_at": "2026-11-20 15:08:30.500000"},
        {"id": "job-queued", "kind": "document", "queue": "high", "status": "queued", "stage": None,
         "progress": 0, "result": None, "error": None, "attempts": 0, "document_id": "doc-queued",
         "created_at": "2026-11-21 09:00:00.000100", "enqueued_at": None, "started_at": None, "ended_at": None},
    ],
    "chunk": [
        {"id": 1, "document_id": "doc-finished", "ordinal": 0, "page_start": 1, "page_end": 2,
         "text": "Dense passage retrieval …", "embedding_model": "hashing-v1:2048", "dimensions": 2,
         "embedding": b"\x00\x00\x80?\x00\x00\x00\x00"},
        {"id": 2, "document_id": "doc-finished", "ordinal": 1, "page_start": 2, "page_end": None,
         "text": "정책 보고서", "embedding_model": "hashing-v1:2048", "dimensions": 2,
         "embedding": b"\x00\x00\x00\x00\x00\x00\x80?"},
    ],
}


def dialect(database: Database) -> str:
    return "postgresql" if isinstance(database, PostgresqlDatabase) else "sqlite"


# --- what the database reports about its schema ----------------------------------------------


def schema(database: Database) -> dict[str, dict[str, Any]]:
    """Each table's columns (in table order), indexes and constraints, read from the database's own
    catalog: SQLite's PRAGMAs, PostgreSQL's information_schema and pg_catalog."""
    with connection_to(database):
        if dialect(database) == "sqlite":
            return {table: _sqlite_table(database, table) for table in database.get_tables()}
        return {table: _postgres_table(database, table) for table in database.get_tables()}


def _sqlite_table(database: Database, table: str) -> dict[str, Any]:
    def pragma(name: str, argument: str) -> list[tuple]:
        return database.execute_sql(f'PRAGMA {name}("{argument}")').fetchall()

    columns = [(name, type_, bool(notnull), default, pk) for _, name, type_, notnull, default, pk
               in pragma("table_info", table)]
    indexes = sorted(
        (name, tuple(column for _, _, column in sorted(pragma("index_info", name))), bool(unique), origin,
         bool(partial))
        for _, name, unique, origin, partial in pragma("index_list", table)
    )
    # (column, referenced table, referenced column, ON UPDATE, ON DELETE, MATCH)
    foreign_keys = sorted(tuple(row[3:8]) + (row[2],) for row in pragma("foreign_key_list", table))
    return {"columns": columns, "indexes": indexes, "constraints": foreign_keys}


def _postgres_table(database: Database, table: str) -> dict[str, Any]:
    columns = database.execute_sql(
        "SELECT column_name, data_type, character_maximum_length, is_nullable, column_default "
        "FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = %s "
        "ORDER BY ordinal_position", (table,)).fetchall()
    # indexdef is PostgreSQL's own CREATE [UNIQUE] INDEX name ON table USING method (columns).
    indexes = sorted(database.execute_sql(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = %s",
        (table,)).fetchall())
    # Constraints by kind and definition (e.g. "FOREIGN KEY (document_id) REFERENCES document(id)
    # ON DELETE CASCADE"), without their names: a foreign key added by ALTER TABLE gets a name
    # of Peewee's making, one created with its table PostgreSQL's, and neither is ever used by name.
    constraints = sorted(database.execute_sql(
        "SELECT contype, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass",
        (f'"{table}"',)).fetchall())
    return {"columns": [tuple(c) for c in columns], "indexes": [tuple(i) for i in indexes],
            "constraints": [tuple(c) for c in constraints]}


def without_order(snapshot: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The snapshot with each table's columns sorted by name.

    ``ALTER TABLE … ADD COLUMN`` appends, so a table that got a column later lists it last, while
    ``CREATE TABLE`` from the models lists it where the model declares it. Nothing depends on
    column order (every statement Peewee builds names its columns); a fresh install and an
    upgraded database are compared with the order, since both are built by the migrations.
    """
    return {table: {**parts, "columns": sorted(parts["columns"])} for table, parts in snapshot.items()}


def without_version_table(snapshot: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {table: parts for table, parts in snapshot.items() if table != SCHEMA_VERSION_TABLE}


def version_rows(database: Database) -> list[tuple[int, str]]:
    with connection_to(database):
        return [tuple(row) for row in database.execute_sql(
            f'SELECT version, name FROM "{SCHEMA_VERSION_TABLE}" ORDER BY version').fetchall()]


def rows(database: Database, table: str, columns: list[str]) -> list[tuple]:
    """``columns`` of every row of ``table`` ordered by id, blobs as bytes."""
    names = ", ".join(f'"{c}"' for c in columns)
    with connection_to(database):
        fetched = database.execute_sql(f'SELECT {names} FROM "{table}" ORDER BY "id"').fetchall()
    return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in fetched]


# --- building databases ----------------------------------------------------------------------


def connection_to(database: Database):
    """A connection for the block: the thread's open one, or a new one returned to the pool after."""
    return nullcontext() if not database.is_closed() else database.connection_context()


def build_c792268_database(database: Database, with_rows: bool = True) -> None:
    """Make ``database`` what c792268's ``init-db`` made, then (by default) write ``OLD_ROWS``."""
    with connection_to(database), database.atomic():
        for statement in C792268_DDL[dialect(database)]:
            database.execute_sql(statement)
        if with_rows:
            for table, table_rows in OLD_ROWS.items():
                for row in table_rows:
                    names = ", ".join(f'"{c}"' for c in row)
                    placeholders = ", ".join([database.param] * len(row))
                    database.execute_sql(f'INSERT INTO "{table}" ({names}) VALUES ({placeholders})',
                                         list(row.values()))


@pytest.fixture(params=["sqlite", "postgresql"])
def new_database_url(request, tmp_path) -> Callable[[], str]:
    """A function returning the URL of a new, empty database of the parametrized kind."""
    if request.param == "postgresql":
        return request.getfixturevalue("new_postgres_url")
    counter = itertools.count()
    return lambda: f"sqlite:///{tmp_path / f'database-{next(counter)}.sqlite3'}"


@pytest.fixture
def open_database() -> Callable[[str], Database]:
    """A function returning Docket's Peewee database for a URL (``make_database``: pooled, and
    with SQLite's pragmas, as the app uses it); every pool is closed after the test."""
    opened: list[Database] = []

    def open_(url: str) -> Database:
        database = make_database(url)
        opened.append(database)
        return database

    yield open_
    for database in opened:
        database.close_all()


def fresh_install(url: str, config: dict[str, Any]) -> list[int]:
    """Create the database at ``url`` by the current code path (``create_tables``, as ``init-db``
    and ``flask dev`` do); return the versions applied."""
    app = create_app({**config, "DATABASE_URL": url})
    with app.app_context():
        return create_tables()


def from_models(url: str, config: dict[str, Any]) -> None:
    """Create the database at ``url`` straight from the current models and the search structures
    declared beside them (``webapp.core.vector_index.SEARCH_SCHEMA``): the reference schema."""
    from webapp.core.models import ALL_MODELS
    from webapp.core.vector_index import SEARCH_SCHEMA

    app = create_app({**config, "DATABASE_URL": url})
    with app.app_context(), connection() as database:
        database.create_tables(ALL_MODELS)
        for statement in SEARCH_SCHEMA[dialect(database)]:
            database.execute_sql(statement)


def without_vector_space_indexes(snapshot: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The snapshot without the per-vector-space HNSW indexes: they exist where chunks of that
    space exist (made by the store step or migration 5's backfill), not in an empty database."""
    return {table: {**parts, "indexes": [i for i in parts["indexes"] if not i[0].startswith(HNSW_INDEX_PREFIX)]}
            for table, parts in snapshot.items()}


def run_init_db(config: dict[str, Any], url: str, **popen) -> subprocess.Popen:
    """Start ``flask --app wsgi init-db`` (the Procfile's release command) against ``url``."""
    return subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "wsgi", "init-db"], cwd=ROOT,
        env=process_env(config, DATABASE_URL=url), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        **popen,
    )


def finish(process: subprocess.Popen, timeout: float = 60) -> str:
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr[-4000:]
    return stdout


def applied_line(versions: list[int]) -> str:
    names = {m.version: m.name for m in MIGRATIONS}
    return "Applied schema migrations " + ", ".join(f"{v} ({names[v]})" for v in versions)


# --- the tests -------------------------------------------------------------------------------


def test_migrations_are_numbered_from_one_without_gaps():
    versions = [m.version for m in MIGRATIONS]
    assert versions == sorted(set(versions)) and versions[0] == 1
    assert versions == list(range(1, LATEST_VERSION + 1))
    assert LATEST_VERSION == versions[-1]
    assert len({m.name for m in MIGRATIONS}) == len(MIGRATIONS)


def test_a_fresh_install_has_exactly_the_schema_the_models_declare(new_database_url, config, open_database):
    fresh, reference = new_database_url(), new_database_url()
    assert fresh_install(fresh, config) == [m.version for m in MIGRATIONS]
    assert fresh_install(fresh, config) == []  # the release phase runs it on every deploy
    from_models(reference, config)

    fresh_db = open_database(fresh)
    assert without_order(without_version_table(schema(fresh_db))) == without_order(schema(open_database(reference)))
    assert version_rows(fresh_db) == [(m.version, m.name) for m in MIGRATIONS]
    assert current_version(fresh_db) == LATEST_VERSION


def test_migration_1_builds_exactly_what_c792268_built(new_database_url, open_database):
    made_by_c792268, baseline = open_database(new_database_url()), open_database(new_database_url())
    build_c792268_database(made_by_c792268, with_rows=False)
    assert current_version(made_by_c792268) == 1  # Docket's tables, no schema_version table
    assert current_version(baseline) == 0

    assert upgrade(baseline, target=1) == [1]
    assert without_version_table(schema(baseline)) == schema(made_by_c792268)  # column order too
    assert current_version(baseline) == 1


def test_a_database_made_by_c792268_upgrades_to_exactly_a_fresh_install_with_its_rows(
    new_database_url, config, open_database
):
    old_url, fresh_url = new_database_url(), new_database_url()
    old = open_database(old_url)
    build_c792268_database(old)
    old_schema = schema(old)
    old_columns = {table: [c[0] for c in parts["columns"]] for table, parts in old_schema.items()}
    before = {table: rows(old, table, columns) for table, columns in old_columns.items()}

    assert upgrade(old) == [m.version for m in MIGRATIONS if m.version > 1]
    fresh_install(fresh_url, config)
    upgraded = schema(old)
    # Column order too: both built by the migrations.
    assert without_vector_space_indexes(upgraded) == schema(open_database(fresh_url))
    assert version_rows(old) == [(m.version, m.name) for m in MIGRATIONS]

    # Every row kept with its values; the columns the migrations added hold their default (NULL).
    from webapp.core.models import ALL_MODELS

    models = {model._meta.table_name: model for model in ALL_MODELS}
    for table, columns in old_columns.items():
        assert rows(old, table, columns) == before[table], table
        fields = {f.column_name: f for f in models[table]._meta.sorted_fields}
        added = [c[0] for c in upgraded[table]["columns"] if c[0] not in columns and c[0] in fields]
        for column in added:
            default = fields[column].default
            if callable(default):
                continue
            expected = None if default is None else fields[column].db_value(default)
            assert rows(old, table, [column]) == [(expected,)] * len(before[table]), f"{table}.{column}"

    # The app reads the upgraded rows through today's models.
    app = create_app({**config, "DATABASE_URL": old_url})
    with app.app_context(), connection():
        from webapp.core.models import Chunk, Document, Job

        job = Job.find("job-finished")
        assert job.document_id == "doc-finished" and job.result == {"chunks": 2, "pages": 13}
        assert job.params is None and job.updated_at is None
        assert Document.get_by_id("doc-finished").warnings == ["no text layer (needs OCR)"]
        assert [c.text for c in Chunk.select().order_by(Chunk.ordinal)] == ["Dense passage retrieval …", "정책 보고서"]

    # Migration 5's search structures hold the old chunks: full text, and on PostgreSQL their
    # vectors copied from the blobs with their vector space's HNSW index.
    with connection_to(old):
        if dialect(old) == "postgresql":
            assert [tuple(r) for r in old.execute_sql(
                'SELECT id, embedding_vector::text FROM chunk ORDER BY id').fetchall()] == [(1, "[1,0]"), (2, "[0,1]")]
            assert hnsw_index_name("hashing-v1:2048", 2) in [i[0] for i in upgraded["chunk"]["indexes"]]
            found = old.execute_sql("SELECT id FROM chunk WHERE to_tsvector('simple', text) @@ "
                                    "plainto_tsquery('simple', '보고서')").fetchall()
        else:
            found = old.execute_sql("SELECT rowid FROM chunk_fts WHERE chunk_fts MATCH '\"보고서\"'").fetchall()
        assert [tuple(r) for r in found] == [(2,)]

    assert upgrade(old) == []  # nothing the second time
    assert schema(old) == upgraded


def test_a_partly_applied_job_protocol_is_completed(new_database_url, config, open_database):
    """A development database made by ``create_tables`` from the models between 83b199c and the
    migrations already has some of migration 2's columns: migration 2 adds only the rest."""
    from peewee import CharField
    from playhouse.migrate import SchemaMigrator

    partial_url, fresh_url = new_database_url(), new_database_url()
    partial = open_database(partial_url)
    build_c792268_database(partial)
    migrator = SchemaMigrator.from_database(partial)
    with connection_to(partial), partial.atomic():
        add_missing_columns(migrator, JOB_PROTOCOL_COLUMNS[1:4])
        # A column that is there without its index.
        add_missing_columns(migrator, (("document", "batch_id", CharField(max_length=64, null=True)),))

    assert upgrade(partial) == [m.version for m in MIGRATIONS if m.version > 1]
    fresh_install(fresh_url, config)
    assert without_vector_space_indexes(without_order(schema(partial))) == \
        without_order(schema(open_database(fresh_url)))


def test_init_db_upgrades_a_database_made_by_c792268(new_database_url, config, open_database):
    url = new_database_url()
    old = open_database(url)
    build_c792268_database(old)

    output = finish(run_init_db(config, url))
    assert applied_line([m.version for m in MIGRATIONS if m.version > 1]) in output, output
    assert f"is current (schema version {LATEST_VERSION})" in finish(run_init_db(config, url))
    assert current_version(old) == LATEST_VERSION
    assert len(rows(old, "chunk", ["id"])) == len(OLD_ROWS["chunk"])


def test_init_db_on_an_empty_database_applies_every_migration(new_database_url, config):
    output = finish(run_init_db(config, new_database_url()))
    assert applied_line([m.version for m in MIGRATIONS]) in output, output


def test_concurrent_init_db_runs_apply_each_migration_once(new_database_url, config, open_database):
    """Two release phases at once: the second waits for the first one's lock, then finds the
    schema current. The test holds the lock itself until both are waiting for it."""
    url = new_database_url()
    old = open_database(url)
    build_c792268_database(old)

    if dialect(old) == "postgresql":
        import psycopg2

        holder = psycopg2.connect(url)  # a transaction holding upgrade()'s advisory lock
        holder.cursor().execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_ID,))

        def both_waiting() -> bool:
            cursor = holder.cursor()
            cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                           "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
            return cursor.fetchone()[0] == 2
    else:
        path = url.removeprefix("sqlite:///")
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # the write lock upgrade()'s BEGIN IMMEDIATE waits for

        def both_waiting() -> bool:
            # SQLite shows no waiters: wait until both have the file open; their next statement
            # is BEGIN IMMEDIATE, which waits (busy_timeout) for this transaction.
            return all(_has_open(process.pid, path) for process in processes)

    processes = [run_init_db(config, url), run_init_db(config, url)]
    try:
        wait_for(both_waiting, 60, "both init-db processes to wait for the migration lock")
    finally:
        holder.commit()
        holder.close()
    outputs = [finish(process) for process in processes]

    # Each migration is its own locked transaction, so the two may share the pending ones (one
    # applies 2, the other then finds 3 pending); what matters is that each is applied once.
    names = {m.version: m.name for m in MIGRATIONS}
    lines = [line.split(" to the database")[0] for output in outputs for line in output.splitlines()
             if line.startswith("Applied schema migration")]
    applied = [version for line in lines for version in names if f"{version} ({names[version]})" in line]
    assert sorted(applied) == [m.version for m in MIGRATIONS if m.version > 1], outputs
    assert version_rows(old) == [(m.version, m.name) for m in MIGRATIONS]


def _has_open(pid: int, path: str) -> bool:
    folder = Path(f"/proc/{pid}/fd")
    try:
        return any(os.readlink(fd) == path for fd in folder.iterdir())
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_a_database_with_only_some_of_dockets_tables_is_refused(tmp_path, open_database):
    database = open_database(f"sqlite:///{tmp_path / 'odd.sqlite3'}")
    with connection_to(database):
        database.execute_sql('CREATE TABLE "document" ("id" VARCHAR(64) NOT NULL PRIMARY KEY)')
    with pytest.raises(RuntimeError, match="some of Docket's tables"):
        current_version(database)
    with pytest.raises(RuntimeError, match="some of Docket's tables"):
        upgrade(database)
    with connection_to(database):
        assert SCHEMA_VERSION_TABLE not in database.get_tables()  # the failed upgrade left nothing behind


@pytest.mark.own_database("starts a PostgreSQL without pgvector itself")
def test_migration_5_says_what_to_install_when_postgresql_has_no_pgvector(open_database):
    """On a PostgreSQL server without the extension's files (the machine's own binaries; skipped
    where they are missing, or where they have pgvector), migration 5 fails with a sentence naming
    the package, and the database keeps version 4."""
    import glob
    import tempfile

    from tests.local_services import PgvectorPostgres
    from webapp.core.migrations import PGVECTOR_MISSING

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.skip("no PostgreSQL binaries of the machine's (apt-get install postgresql)")
    work_dir = Path(tempfile.mkdtemp(prefix="docket-no-pgvector-"))
    server = PgvectorPostgres(work_dir, bin_dir=Path(found[-1]).parent)
    server.start()
    try:
        database = open_database(server.url)
        with connection_to(database):
            if database.execute_sql("SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'").fetchone()[0]:
                pytest.skip("this machine's PostgreSQL has pgvector")
        assert upgrade(database, target=4) == [1, 2, 3, 4]
        with pytest.raises(RuntimeError, match="install pgvector") as raised:
            upgrade(database)
        assert str(raised.value) == PGVECTOR_MISSING
        assert current_version(database) == 4
        database.close_all()
    finally:
        server.remove()
        shutil.rmtree(work_dir, ignore_errors=True)
