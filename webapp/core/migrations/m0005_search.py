"""Version 5: search that scales (indexes, the full-text index, pgvector on PostgreSQL).

Released: never change it (databases that ran it will not run it again); a new change is a new
step. See :mod:`webapp.core.migrations`."""

from __future__ import annotations

import logging

from peewee import (
    Database,
    PostgresqlDatabase,
    SqliteDatabase,
)
from playhouse.migrate import SchemaMigrator, make_index_name, migrate

logger = logging.getLogger(__name__)

SCHEMA_VERSION_TABLE = "schema_version"
# The tables c792268's init-db created: all present without a schema_version table = version 1.
BASELINE_TABLES = ("document", "job", "chunk")
# PostgreSQL advisory lock key held by every upgrade transaction ("docket" in ASCII, a bigint).
MIGRATION_LOCK_ID = 0x646F636B6574



from webapp.core.migrations.steps import Migration

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


STEP = Migration(5, "search indexes", _search)
