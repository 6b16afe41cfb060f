"""Search: the top-k chunks for a query, by vector similarity, by full text, or both fused.

Rankings of the chunks in the search's scope, always filtered inside the queries (owner,
document, batch), never after. Each **vector space** (``Chunk.embedding_model``: one model's
vectors) present in the scope is ranked on its own, against the query embedded by that space's
model (:func:`webapp.core.embeddings.embedder_for_space`): usually there is one, the configured
embedder's; after a change of ``EMBEDDER`` there are two until a reindex has re-embedded every
document, and each document stays findable meanwhile. Scores of different models are never
compared: the rankings are fused by their ranks (reciprocal rank fusion). A space whose query
embedder cannot be built here (an OpenAI space without ``OPENAI_API_KEY``, a space of an older
Docket) is ranked by full text instead, logged once per process.

* **vector**: cosine similarity to the query's embedding. On PostgreSQL pgvector's HNSW index of
  the vector space (:mod:`webapp.core.vector_index`) proposes ``max(k, CANDIDATES)`` candidates (with
  filters, pgvector ≥ 0.8 keeps scanning the graph until enough pass them:
  ``hnsw.iterative_scan = relaxed_order``); on SQLite an exact scan streams the vectors in blocks
  of ``SEARCH_BLOCK_ROWS``. Either way the candidates' scores are then computed exactly in Python
  from the stored float32 vectors (float64 dot product rounded to 6 decimals, ties by chunk id),
  so both databases rank identically when the index finds the same candidates.
* **text**: the database's full-text index (FTS5 on SQLite, a ``tsvector`` GIN index on
  PostgreSQL, configuration ``simple``) finds, for each query word, up to
  max(50, ``TEXT_POOL`` / words) chunks containing it (best native rank first), so a rare
  word's chunks are always candidates; they are ranked by BM25 (k1 = 1.2, b = 0.75) computed
  from the words ``\\w+`` of their texts, with document frequencies counted in the index: the
  same ranking on both databases whenever each word's matches fit in its share of the pool (N
  and df are counted over every chunk, not only the filtered ones; words in ``DF_CAP`` chunks
  or more add no candidates unless all words do). The user's text never reaches FTS syntax:
  it is split into words, each quoted.
* **hybrid** (default): reciprocal rank fusion (Cormack, Clarke & Büttcher 2009) of the vector
  rankings (one per space) and the text ranking (every chunk in scope, of any space), each cut
  at ``CANDIDATES``: score = Σ 1 / (``RRF_K`` + rank), rank from 1.

With one vector space in scope, vector mode's scores are its cosine similarities; with several,
vector mode answers the reciprocal rank fusion of the spaces' rankings (and of the text
rankings standing in for spaces without a query embedder), scores as in hybrid mode.

Memory per request is bounded by the candidates and one block of vectors, whatever the number of
chunks; nothing loads a vector space into Python.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
from collections import Counter
from typing import Any, Iterator

import numpy as np
from flask import current_app

from webapp.core.embeddings import EmbeddingError, SpaceUnavailable, embedder_for_space, embedder_from_config, from_blobs
from webapp.core.models import Chunk, Document
from webapp.core.vector_index import is_postgres, space_predicate, vector_expression, vector_literal, vector_type

MODES = ("hybrid", "vector", "text")
CANDIDATES = 50  # each ranking's length before fusion (and the least pgvector is asked for)
TEXT_POOL = 400  # chunks the full-text index proposes for the BM25 ranking (≥ 50 per query word)
TEXT_POOL_PER_TERM = 50
# BM25's "average length" in words: a constant, so that a chunk's score depends on its own text
# and the index's counts only, never on which other chunks are candidates (≈ a full chunk of the
# default CHUNK_SIZE, 1,500 characters).
BM25_AVERAGE_WORDS = 200
RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al. 2009)
MAX_QUERY_TERMS = 32  # words of a query used by the text ranking (the first ones)
DF_CAP = 10_000  # chunks counted per query word for its document frequency (bounds the time)
BM25_K1, BM25_B = 1.2, 0.75
HNSW_MAX_EF_SEARCH = 1000  # pgvector's upper bound for hnsw.ef_search
# Candidates the HNSW graph walk keeps (pgvector's default is 40): more is better recall and
# slower; 200 for the 50 candidates asked for.
HNSW_EF_SEARCH = 200

WORD = re.compile(r"\w+")
log = logging.getLogger(__name__)


def search_chunks(query: str, k: int, owner: str | None = None, document_id: str | None = None,
                  batch_id: str | None = None, mode: str = "hybrid") -> list[dict[str, Any]]:
    """Rank the chunks in scope for ``query``, each vector space against its own model's embedding
    of the query (module docstring).

    Args:
        query: the search text (non-empty).
        k: how many results, ≥ 1.
        owner: only this owner's documents' chunks; ``None``: every owner's (an admin's search).
        document_id: only this document's chunks (the caller checks the document is visible).
        batch_id: only the chunks of this batch's documents.
        mode: ``"hybrid"`` (default), ``"vector"`` or ``"text"`` (see the module docstring).

    Returns:
        Up to ``k`` dicts ``{"document_id", "filename", "chunk_id", "ordinal", "page_start",
        "page_end", "headings", "ocr", "score", "text"}``, best first (equal scores: the older chunk first). ``score``: vector
        mode the cosine similarity (−1…1) with one vector space in scope, the fused RRF score with
        several; text mode the BM25 score (≥ 0); hybrid the fused RRF score. All rounded to 6 decimals.

    Raises:
        ValueError: ``mode`` is not one of :data:`MODES`.
        webapp.core.embeddings.EmbeddingError: the embedding service failed for the query in the
            configured embedder's space (vector and hybrid modes; another space falls back to
            its text ranking, logged).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    config = current_app.config
    everything = _Scope(None, owner, document_id, batch_id)
    if mode == "text":
        return _details(_text_ranking(everything, query, k))
    configured = embedder_from_config(config)
    n = k if mode == "vector" else max(k, CANDIDATES)
    vector_rankings, without_embedder = [], []
    for space in spaces_in_scope(everything) or [configured.name]:
        scope = everything.within(space)
        embedder = configured if space == configured.name else _space_embedder(config, space)
        if embedder is None:
            without_embedder.append(scope)
            continue
        try:
            vector_rankings.append(_vector_ranking(scope, query, embedder, n, config["SEARCH_BLOCK_ROWS"]))
        except EmbeddingError as exc:
            if space == configured.name:
                raise
            log.warning("search: the query could not be embedded for vector space %s (%s); its chunks are "
                        "ranked by full text for this search", space, exc)
            without_embedder.append(scope)
    if mode == "vector":
        if len(vector_rankings) == 1 and not without_embedder:
            ranked = vector_rankings[0]  # one space: its own scores (cosine similarity)
        else:
            ranked = fuse([*vector_rankings, *(_text_ranking(scope, query, n) for scope in without_embedder)])[:k]
    else:
        ranked = fuse([*vector_rankings, _text_ranking(everything, query, n)])[:k]
    return _details(ranked)


_UNAVAILABLE_LOGGED: set[str] = set()  # vector spaces whose missing query embedder this process logged


def _space_embedder(config, space: str):
    """The query embedder of vector space ``space``, or ``None`` (logged once per process) when it
    cannot be built here (:class:`~webapp.core.embeddings.SpaceUnavailable`)."""
    try:
        return embedder_for_space(config, space)
    except SpaceUnavailable as exc:
        if space not in _UNAVAILABLE_LOGGED:
            _UNAVAILABLE_LOGGED.add(space)
            log.warning("search: %s; its chunks are ranked by full text only", exc)
        return None


def spaces_in_scope(scope: "_Scope") -> list[str]:
    """The vector spaces (``Chunk.embedding_model``) of the chunks in ``scope``'s filters, in name
    order. A loose index scan (one indexed ``min`` per space: a recursive query), so its cost grows
    with the number of spaces, usually one or two, not with the number of chunks."""
    database = Chunk._meta.database
    param = "%s" if is_postgres(database) else "?"
    filters, values = scope.sql(param)
    # The join only for the document's columns: SQLite answers a single table's min() from the index.
    join = ' JOIN "document" d ON d.id = c.document_id' if scope.owner is not None or scope.batch_id is not None else ""
    step = f'SELECT min(c.embedding_model) FROM "chunk" c{join} WHERE {{after}}{filters}'
    sql = (f"WITH RECURSIVE spaces(m) AS (SELECT ({step.format(after='1 = 1')}) UNION ALL "
           f"SELECT ({step.format(after='c.embedding_model > spaces.m')}) FROM spaces WHERE spaces.m IS NOT NULL) "
           "SELECT m FROM spaces WHERE m IS NOT NULL")
    return [row[0] for row in database.execute_sql(sql, (*values, *values)).fetchall()]


class _Scope:
    """Which chunks a search ranks: one vector space (``None``: every space), optionally one owner,
    document, batch."""

    def __init__(self, space: str | None, owner: str | None, document_id: str | None, batch_id: str | None) -> None:
        self.space, self.owner, self.document_id, self.batch_id = space, owner, document_id, batch_id

    def within(self, space: str) -> "_Scope":
        """The same filters, in vector space ``space`` only."""
        return _Scope(space, self.owner, self.document_id, self.batch_id)

    def peewee(self, query):
        """``query`` (over ``Chunk``) restricted to the scope."""
        if self.space is not None:
            query = query.where(Chunk.embedding_model == self.space)
        if self.document_id is not None:
            query = query.where(Chunk.document == self.document_id)
        if self.owner is not None or self.batch_id is not None:
            query = query.join(Document)
            if self.owner is not None:
                query = query.where(Document.owner == self.owner)
            if self.batch_id is not None:
                query = query.where(Document.batch_id == self.batch_id)
        return query

    def sql(self, param: str) -> tuple[str, list[Any]]:
        """SQL conditions on ``c`` (chunk) and ``d`` (document) for the filters (not the space),
        and their values."""
        conditions, values = [], []
        for column, value in (("c.document_id", self.document_id), ("d.owner", self.owner),
                              ("d.batch_id", self.batch_id)):
            if value is not None:
                conditions.append(f"{column} = {param}")
                values.append(value)
        return "".join(f" AND {condition}" for condition in conditions), values


# --- rankings: lists of (chunk id, score), best first ------------------------------------------


def _vector_ranking(scope: _Scope, query: str, embedder, n: int, block_rows: int) -> list[tuple[int, float]]:
    database = Chunk._meta.database
    if is_postgres(database):
        if not _pg_has_space(database, scope.space):
            return []
        query_vector = np.asarray(embedder.embed([query])[0], dtype=np.float32)
        # At least CANDIDATES: the index's order is approximate, and chunks with equal scores
        # (the same text twice) must all be candidates for the exact ranking to break ties by id.
        ids, matrix = _pg_vector_candidates(database, scope, query_vector, max(n, CANDIDATES))
        return _exact(ids, matrix, query_vector, n)
    blocks = _blocks(scope, block_rows)
    first = next(blocks, None)
    if first is None:
        return []  # nothing to rank: the query is not embedded at all
    query_vector = np.asarray(embedder.embed([query])[0], dtype=np.float32)
    best: list[tuple[int, float]] = []
    for ids, matrix in itertools.chain([first], blocks):
        if best:
            ids = np.concatenate([np.asarray([i for i, _ in best], dtype=np.int64), ids])
            previous = np.asarray([s for _, s in best], dtype=np.float64)
        else:
            previous = np.zeros(0, dtype=np.float64)
        scores = np.concatenate([previous, _scores(matrix, query_vector)])
        keep = _top(ids, scores, n)
        best = [(int(ids[i]), float(scores[i])) for i in keep]
    return best


def _scores(matrix: np.ndarray, query_vector: np.ndarray) -> np.ndarray:
    # Rounded to the 6 decimals the API shows: the same vector scores the same in a block of any
    # size and on either database (BLAS kernels differ in the last bits), so ties rank by id.
    return np.round(matrix.astype(np.float64) @ query_vector.astype(np.float64), 6)


def _exact(ids: np.ndarray, matrix: np.ndarray, query_vector: np.ndarray, n: int) -> list[tuple[int, float]]:
    if len(ids) == 0:
        return []
    scores = _scores(matrix, query_vector)
    return [(int(ids[i]), float(scores[i])) for i in _top(ids, scores, n)]


def _pg_has_space(database, space: str) -> bool:
    return database.execute_sql('SELECT 1 FROM "chunk" WHERE "embedding_model" = %s LIMIT 1',
                                (space,)).fetchone() is not None


def _pg_vector_candidates(database, scope: _Scope, query_vector: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` candidates from the vector space's HNSW index (same expression and partial-index
    predicate as :func:`webapp.core.vector_index.ensure_vector_index`), with their stored vectors."""
    dims = len(query_vector)
    sql, values = pg_vector_query(scope, dims)
    with database.atomic():
        # pgvector ≥ 0.8: with filters, keep scanning the graph until n rows pass them (older
        # versions ignore the setting); ef_search ≥ n so the index can return n rows at all.
        database.execute_sql("SET LOCAL hnsw.iterative_scan = relaxed_order")
        database.execute_sql(f"SET LOCAL hnsw.ef_search = {min(HNSW_MAX_EF_SEARCH, max(HNSW_EF_SEARCH, 4 * n))}")
        rows = database.execute_sql(sql, (*values, vector_literal(query_vector), n)).fetchall()
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros((0, dims), dtype=np.float32)
    return np.asarray([row[0] for row in rows], dtype=np.int64), from_blobs([bytes(row[1]) for row in rows], dims)


def pg_vector_query(scope: _Scope, dims: int) -> tuple[str, list[Any]]:
    """The PostgreSQL query for a scope's nearest chunks: SQL with ``%s`` for the filters' values
    (returned), then the query vector (pgvector text) and the limit. It orders by the cosine
    distance on the indexed expression within the partial index's predicate, so the planner can
    walk the vector space's HNSW index."""
    filters, values = scope.sql("%s")
    distance = f"{vector_expression(dims)} <=> %s::{vector_type(dims)}({dims})"
    sql = (f'SELECT c.id, c.embedding FROM "chunk" c JOIN "document" d ON d.id = c.document_id '
           f"WHERE {space_predicate(scope.space, dims)}{filters} ORDER BY {distance} LIMIT %s")
    return sql, values


def _blocks(scope: _Scope, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The scope's chunks in id order, ``size`` rows at a time: ``(ids, matrix)`` with ``matrix``
    of shape (rows, dimensions)."""
    last_id = 0
    while True:
        query = scope.peewee(Chunk.select(Chunk.id, Chunk.dimensions, Chunk.embedding).where(Chunk.id > last_id))
        rows = list(query.order_by(Chunk.id).limit(size).tuples())
        if not rows:
            return
        last_id = rows[-1][0]
        yield np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows)), \
            from_blobs([row[2] for row in rows], rows[0][1])


def _top(ids: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` best of ``scores``, best first; equal scores by ascending id."""
    order = np.lexsort((ids, -scores))
    return order[:k]


def query_terms(query: str) -> list[str]:
    """The words of ``query`` the text ranking looks for: lower-cased ``\\w+`` runs, each once, the
    first :data:`MAX_QUERY_TERMS`. Punctuation and FTS operators (``"``, ``*``, ``NEAR(``, ``-``)
    are not words, so they never reach the full-text engine as syntax."""
    return list(dict.fromkeys(WORD.findall(query.lower())))[:MAX_QUERY_TERMS]


def fts5_match(terms: list[str]) -> str:
    """An FTS5 MATCH expression finding any of ``terms``: each a quoted string (``"`` doubled), OR-ed."""
    return " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)


def _text_ranking(scope: _Scope, query: str, n: int) -> list[tuple[int, float]]:
    terms = query_terms(query)
    if not terms:
        return []
    database = Chunk._meta.database
    frequencies = _frequencies(database, terms)
    # The pool is gathered word by word, so a rare word's chunks are always in it (a single
    # ranked query would let the common words' many matches crowd them out: PostgreSQL's
    # ts_rank has no notion of rarity).
    # A word in DF_CAP chunks or more is nearly a stop word: it adds no candidates (ranking all
    # its matches would cost the most and find the least), unless every word is that common.
    df = frequencies[1]
    useful = [t for t in terms if 0 < df[t] < DF_CAP] or [t for t in terms if df[t]]
    per_term = max(TEXT_POOL_PER_TERM, TEXT_POOL // max(len(useful), 1))
    pool: dict[int, str] = {}
    for term in useful:
        pool.update(_matches(database, scope, term, per_term))
    return bm25(sorted(pool.items()), terms, frequencies)[:n]


def _matches(database, scope: _Scope, term: str, limit: int) -> list[tuple[int, str]]:
    """Up to ``limit`` ``(chunk id, text)`` of the scope whose text has the word ``term``, best
    first by the database's own rank (FTS5's bm25, PostgreSQL's ts_rank_cd), ties by id."""
    param = "%s" if is_postgres(database) else "?"
    filters, values = scope.sql(param)
    if scope.space is not None:  # a space ranked by text for want of its query embedder
        filters, values = f" AND c.embedding_model = {param}{filters}", [scope.space, *values]
    if is_postgres(database):
        document, tsquery = "to_tsvector('simple', c.text)", "plainto_tsquery('simple', %s)"
        sql = (f'SELECT c.id, c.text FROM "chunk" c JOIN "document" d ON d.id = c.document_id '
               f"WHERE {document} @@ {tsquery}{filters} "
               f"ORDER BY ts_rank_cd({document}, {tsquery}) DESC, c.id LIMIT %s")
        params = (term, *values, term, limit)
    else:
        sql = ('SELECT c.id, c.text FROM (SELECT rowid AS id, bm25("chunk_fts") AS rank FROM "chunk_fts" '
               'WHERE "chunk_fts" MATCH ?) m JOIN "chunk" c ON c.id = m.id JOIN "document" d ON d.id = c.document_id '
               f"WHERE 1 = 1{filters} ORDER BY m.rank, c.id LIMIT ?")
        params = (fts5_match([term]), *values, limit)
    return [(int(row[0]), row[1]) for row in database.execute_sql(sql, params).fetchall()]


def _frequencies(database, terms: list[str]) -> tuple[int, dict[str, int]]:
    """``(N, {term: df})`` for BM25's idf, from the indexes, in bounded time and memory: N is the
    highest chunk id (the primary key's last entry: an upper bound of the number of chunks,
    exact while none was deleted), df the chunks whose text has the term, counted up to
    ``DF_CAP`` (a word in more chunks than that is common anyway)."""
    top = database.execute_sql('SELECT max("id") FROM "chunk"').fetchone()[0] or 0
    if is_postgres(database):
        sql = ("SELECT count(*) FROM (SELECT 1 FROM \"chunk\" WHERE to_tsvector('simple', \"text\") @@ "
               "plainto_tsquery('simple', %s) LIMIT %s) t")
        counts = {t: database.execute_sql(sql, (t, DF_CAP)).fetchone()[0] for t in terms}
    else:
        sql = 'SELECT count(*) FROM (SELECT 1 FROM "chunk_fts" WHERE "chunk_fts" MATCH ? LIMIT ?)'
        counts = {t: database.execute_sql(sql, (fts5_match([t]), DF_CAP)).fetchone()[0] for t in terms}
    return max(top, *counts.values(), 1), counts


def bm25(pool: list[tuple[int, str]], terms: list[str],
         frequencies: tuple[int, dict[str, int]]) -> list[tuple[int, float]]:
    """BM25 (k1 = 1.2, b = 0.75) of each ``(chunk id, text)`` of ``pool`` for ``terms``.

    Args:
        pool: the candidates; their words are ``\\w+`` runs, lower-cased; lengths are compared
            with :data:`BM25_AVERAGE_WORDS`.
        terms: the query's words.
        frequencies: ``(N, {term: df})``: chunks in all, and chunks with each term.

    Returns:
        ``(chunk id, score)`` best first, ties by id, scores rounded to 6 decimals; chunks with
        none of the words (the index matched a form the word split does not) are left out.
    """
    if not pool:
        return []
    counts = [Counter(WORD.findall(text.lower())) for _, text in pool]
    lengths = [sum(c.values()) for c in counts]
    average = BM25_AVERAGE_WORDS
    size, df = frequencies
    idf = {t: math.log(1 + (size - df.get(t, 0) + 0.5) / (df.get(t, 0) + 0.5)) for t in terms}
    scored = []
    for (chunk_id, _), count, length in zip(pool, counts, lengths):
        score = sum(idf[t] * count[t] * (BM25_K1 + 1) / (count[t] + BM25_K1 * (1 - BM25_B + BM25_B * length / average))
                    for t in terms if t in count)
        if score > 0:
            scored.append((int(chunk_id), round(score, 6)))
    return sorted(scored, key=lambda item: (-item[1], item[0]))


def fuse(rankings: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: each chunk scores Σ 1 / (``RRF_K`` + rank) over the rankings it is
    in (rank 1 = best); best first, ties by chunk id; scores rounded to 6 decimals."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, (chunk_id, _) in enumerate(ranking, start=1):
            fused[chunk_id] = fused.get(chunk_id, 0.0) + 1.0 / (RRF_K + rank)
    return sorted(((i, round(s, 6)) for i, s in fused.items()), key=lambda item: (-item[1], item[0]))


def _details(ranked: list[tuple[int, float]]) -> list[dict[str, Any]]:
    chunk_ids = [chunk_id for chunk_id, _ in ranked]
    if not chunk_ids:
        return []
    details = {
        row["id"]: row
        for row in Chunk.select(
            Chunk.id, Chunk.document.alias("document_id"), Chunk.ordinal, Chunk.page_start, Chunk.page_end,
            Chunk.headings, Chunk.ocr, Chunk.text, Document.filename,
        )
        .join(Document)
        .where(Chunk.id.in_(chunk_ids))
        .dicts()
    }
    return [
        {
            "document_id": details[chunk_id]["document_id"],
            "filename": details[chunk_id]["filename"],
            "chunk_id": chunk_id,
            "ordinal": details[chunk_id]["ordinal"],
            "page_start": details[chunk_id]["page_start"],
            "page_end": details[chunk_id]["page_end"],
            "headings": _headings(details[chunk_id]["headings"]),
            "ocr": bool(details[chunk_id]["ocr"]),
            "score": round(score, 6),
            "text": details[chunk_id]["text"],
        }
        for chunk_id, score in ranked
        if chunk_id in details  # deleted or reprocessed between the two queries: skipped, not a 500
    ]


def _headings(value: Any) -> list[str]:
    """A chunk's heading path as results show it: the stored JSON list, ``[]`` when unknown.
    ``.dicts()`` skips the field's conversion, so the JSON text is read here."""
    if isinstance(value, str):
        value = json.loads(value)
    return list(value or [])
