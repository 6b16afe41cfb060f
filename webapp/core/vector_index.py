"""The search structures outside the models: pgvector vectors and HNSW indexes on PostgreSQL,
the full-text index on both databases.

What migration 5 (:mod:`webapp.core.migrations`) adds next to the ``chunk`` table:

* PostgreSQL: the ``vector`` extension; ``chunk.embedding_vector`` (pgvector ``vector`` without a
  fixed dimension, a copy of ``chunk.embedding`` that this module writes when a document's chunks
  are stored); a GIN index on ``to_tsvector('simple', text)`` (``simple``: no stemming nor stop
  words, as the documents are in many languages); and, per vector space (embedding model and
  dimensions), one partial HNSW index on ``embedding_vector::vector(D)`` (``halfvec(D)`` above
  2,000 dimensions; none above 4,000) restricted to that space's rows (an HNSW index needs one
  fixed dimension), created by :func:`ensure_vector_index` when a space is first stored.
* SQLite: ``chunk_fts``, an FTS5 external-content table over ``chunk.text`` kept in step by
  triggers on ``chunk`` (insert, delete, update; document deletes cascade to chunks and fire them).
  Vectors stay in ``chunk.embedding`` (float32 bytes) and are scanned exactly in bounded blocks
  (:mod:`webapp.core.search`).

:data:`SEARCH_SCHEMA` is the current declaration (the tests build a reference database from the
models plus these statements); the migration keeps its own frozen copy.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
from peewee import Database, DatabaseProxy, PostgresqlDatabase
from pgvector import Vector

# What a database has next to the models' tables (see the module docstring), per dialect.
SEARCH_SCHEMA: dict[str, tuple[str, ...]] = {
    "postgresql": (
        "CREATE EXTENSION IF NOT EXISTS vector",
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
    ),
}

HNSW_INDEX_PREFIX = "chunk_hnsw_"
# pgvector's HNSW limits (pgvector README, "Indexing"): ``vector`` up to 2,000 dimensions,
# ``halfvec`` (half precision) up to 4,000. Longer vectors get no index: exact, slower scans.
VECTOR_INDEX_MAX_DIMS = 2000
HALFVEC_INDEX_MAX_DIMS = 4000
# PostgreSQL advisory lock key taken while creating a vector space's index ("dkhnsw" in ASCII).
HNSW_LOCK_ID = 0x646B686E7377


def is_postgres(database: Database) -> bool:
    """Whether ``database`` (a database or the models' proxy) is PostgreSQL (pgvector search)
    rather than SQLite (exact scan)."""
    if isinstance(database, DatabaseProxy):
        database = database.obj
    return isinstance(database, PostgresqlDatabase)


def hnsw_index_name(space: str, dimensions: int) -> str:
    """The name of vector space ``space``'s HNSW index: ``chunk_hnsw_<16 hex of SHA-1>_<D>``
    (a hash: space names hold ``:`` and may be longer than PostgreSQL's 63-byte names)."""
    digest = hashlib.sha1(f"{space}\0{dimensions}".encode("utf-8")).hexdigest()[:16]
    return f"{HNSW_INDEX_PREFIX}{digest}_{int(dimensions)}"


def space_predicate(space: str, dimensions: int) -> str:
    """SQL restricting ``chunk`` (alias-free) to one vector space, with the values inlined as
    literals: the same text in the index's ``WHERE`` and in the search query, so the planner can
    prove that the partial index covers the query."""
    return f"\"embedding_model\" = '{space.replace(chr(39), chr(39) * 2)}' AND \"dimensions\" = {int(dimensions)}"


def vector_type(dimensions: int) -> str:
    """The pgvector type a space of ``dimensions`` is indexed (and searched) as: ``vector`` up to
    2,000 dimensions, ``halfvec`` up to 4,000 (e.g. hashing's 2,048, OpenAI's 3,072: the index
    finds candidates in half precision; their scores are then computed exactly)."""
    return "vector" if dimensions <= VECTOR_INDEX_MAX_DIMS else "halfvec"


def indexable(dimensions: int) -> bool:
    """Whether pgvector's HNSW can index vectors of ``dimensions`` (at most 4,000)."""
    return dimensions <= HALFVEC_INDEX_MAX_DIMS


def vector_expression(dimensions: int, table: str = "") -> str:
    """The indexed expression: the column cast to the space's type of fixed dimension."""
    column = f'{table}."embedding_vector"' if table else '"embedding_vector"'
    return f"({column}::{vector_type(dimensions)}({int(dimensions)}))"


def ensure_vector_index(database: Database, space: str, dimensions: int) -> bool:
    """Create vector space ``space``'s HNSW index (cosine) on PostgreSQL if it does not exist.

    Idempotent and safe when two workers race: a cheap catalog check first, then, only when it is
    missing, a transaction holding an advisory lock runs ``CREATE INDEX IF NOT EXISTS``. Call it
    outside the transaction that stores chunks (building the index waits for other writers of
    ``chunk`` to commit; inside a writing transaction two workers could deadlock).

    Args:
        database: the app's Peewee database, connected.
        space: the embedding model's name (``Chunk.embedding_model``).
        dimensions: the vectors' length.

    Returns:
        True if this call created the index; False if it existed, on SQLite (nothing to do), or
        when the vectors are longer than pgvector's HNSW can index (4,000 dimensions).
    """
    if not is_postgres(database) or not indexable(dimensions):
        return False
    name = hnsw_index_name(space, dimensions)
    if _index_exists(database, name):
        return False
    with database.atomic():
        database.execute_sql("SELECT pg_advisory_xact_lock(%s)", (HNSW_LOCK_ID,))
        if _index_exists(database, name):
            return False
        database.execute_sql(
            f'CREATE INDEX IF NOT EXISTS "{name}" ON "chunk" USING hnsw ({vector_expression(dimensions)} '
            f"{vector_type(dimensions)}_cosine_ops) WHERE {space_predicate(space, dimensions)}")
    return True


def _index_exists(database: Database, name: str) -> bool:
    return database.execute_sql(
        "SELECT 1 FROM pg_indexes WHERE schemaname = current_schema() AND indexname = %s", (name,)).fetchone() is not None


def vector_literal(vector: np.ndarray) -> str:
    """pgvector's text form ``[x,y,…]`` of a float32 vector (the pgvector package's, exact:
    each float32 written with the shortest decimal that reads back as the same value)."""
    return Vector(np.asarray(vector, dtype=np.float32)).to_text()


def store_vectors(database: Database, document_id: str, ordinals: Sequence[int], vectors: np.ndarray,
                  batch: int = 500) -> None:
    """Write ``chunk.embedding_vector`` of a document's chunks on PostgreSQL (nothing on SQLite).

    Call it inside the transaction that inserted the chunks, after inserting them.

    Args:
        database: the app's Peewee database, connected.
        document_id: the document whose chunks were just inserted.
        ordinals: each vector's chunk ``ordinal``.
        vectors: float32 array (chunks × dimensions), L2-normalised, one row per ordinal.
        batch: rows per ``UPDATE`` statement.
    """
    if not is_postgres(database):
        return
    for start in range(0, len(vectors), batch):
        part = vectors[start:start + batch]
        database.execute_sql(
            'UPDATE "chunk" SET "embedding_vector" = u.v::vector FROM unnest(%s::int[], %s::text[]) AS u(o, v) '
            'WHERE "chunk"."document_id" = %s AND "chunk"."ordinal" = u.o',
            ([int(o) for o in ordinals[start:start + batch]], [vector_literal(v) for v in part], document_id))
