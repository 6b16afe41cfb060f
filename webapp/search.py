"""Search: the top-k chunks by cosine similarity to a query, within one vector space."""

from __future__ import annotations

import itertools
from typing import Any, Iterator

import numpy as np
from flask import current_app

from webapp.embeddings import embedder_from_config, from_blobs
from webapp.models import Chunk, Document


def search_chunks(query: str, k: int, owner: str | None = None) -> list[dict[str, Any]]:
    """Embed ``query`` with the configured embedder and rank the chunks made with the same one.

    Chunks embedded by another model (another vector space) are never compared. The scan is
    exact and streams: the chunks are read in blocks of ``SEARCH_BLOCK_ROWS`` rows (keyset
    pagination on the id) and only the best ``k`` so far are kept, so a request's memory is bounded
    by the block (≈ rows × dimensions × 4 bytes, 16 MB at 2,048 rows of 2,048 dimensions), not by
    the number of chunks. Time still grows with the chunks of the vector space: a vector index
    (pgvector) is the step beyond that.

    Args:
        query: the search text (non-empty).
        k: how many results, ≥ 1.
        owner: rank only this owner's documents' chunks (the filter is applied before ranking);
            ``None``: every owner's (an admin's search).

    Returns:
        Up to ``k`` dicts ``{"document_id", "filename", "chunk_id", "page_start", "page_end",
        "score", "text"}``, best first (equal scores: the older chunk first); ``score`` is the
        cosine similarity (−1…1).

    Raises:
        webapp.embeddings.EmbeddingError: the embedding service failed for the query.
    """
    config = current_app.config
    embedder = embedder_from_config(config)
    blocks = _blocks(embedder.name, owner, config["SEARCH_BLOCK_ROWS"])
    first = next(blocks, None)
    if first is None:
        return []  # nothing to rank: the query is not embedded at all
    query_vector = np.asarray(embedder.embed([query])[0], dtype=np.float64)
    best_ids = np.zeros(0, dtype=np.int64)
    best_scores = np.zeros(0, dtype=np.float64)
    for ids, matrix in itertools.chain([first], blocks):
        best_ids = np.concatenate([best_ids, ids])
        # Rounded to the 6 decimals the API shows: the same vector scores the same in a block of
        # any size (BLAS kernels differ in the last bits), so equal scores rank by id everywhere.
        best_scores = np.concatenate([best_scores, np.round(matrix.astype(np.float64) @ query_vector, 6)])
        if len(best_ids) > k:
            keep = _top(best_ids, best_scores, k)
            best_ids, best_scores = best_ids[keep], best_scores[keep]
    order = _top(best_ids, best_scores, min(k, len(best_ids)))
    chunk_ids = [int(i) for i in best_ids[order]]
    score_of = {int(i): float(score) for i, score in zip(best_ids[order], best_scores[order])}
    details = {
        row["id"]: row
        for row in Chunk.select(
            Chunk.id, Chunk.document.alias("document_id"), Chunk.page_start, Chunk.page_end, Chunk.text,
            Document.filename,
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
            "page_start": details[chunk_id]["page_start"],
            "page_end": details[chunk_id]["page_end"],
            "score": round(score_of[chunk_id], 6),
            "text": details[chunk_id]["text"],
        }
        for chunk_id in chunk_ids
        if chunk_id in details  # deleted or reprocessed between the two queries: skipped, not a 500
    ]


def _blocks(model: str, owner: str | None, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The chunks of vector space ``model`` (of ``owner``'s documents, if given) in id order,
    ``size`` rows at a time: ``(ids, matrix)`` with ``matrix`` of shape (rows, dimensions)."""
    last_id = 0
    while True:
        query = Chunk.select(Chunk.id, Chunk.dimensions, Chunk.embedding).where(
            Chunk.embedding_model == model, Chunk.id > last_id)
        if owner is not None:
            query = query.join(Document).where(Document.owner == owner)
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
