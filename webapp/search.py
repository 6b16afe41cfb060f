"""Search: the top-k chunks by cosine similarity to a query, within one vector space."""

from __future__ import annotations

from typing import Any

import numpy as np
from flask import current_app

from webapp.embeddings import embedder_from_config, from_blobs
from webapp.models import Chunk, Document


def search_chunks(query: str, k: int, owner: str | None = None) -> list[dict[str, Any]]:
    """Embed ``query`` with the configured embedder and rank the chunks made with the same one.

    Chunks embedded by another model (another vector space) are never compared. The scan is
    brute force over all chunks of that model: fine for tens of thousands of chunks; a vector
    index (e.g. pgvector) is the next step beyond that.

    Args:
        query: the search text (non-empty).
        k: how many results, ≥ 1.
        owner: rank only this owner's documents' chunks (the filter is applied before ranking);
            ``None``: every owner's (an admin's search).

    Returns:
        Up to ``k`` dicts ``{"document_id", "filename", "chunk_id", "page_start", "page_end",
        "score", "text"}``, best first; ``score`` is the cosine similarity (−1…1).

    Raises:
        webapp.embeddings.EmbeddingError: the embedding service failed for the query.
    """
    embedder = embedder_from_config(current_app.config)
    candidates = Chunk.select(Chunk.id, Chunk.dimensions, Chunk.embedding).where(Chunk.embedding_model == embedder.name)
    if owner is not None:
        candidates = candidates.join(Document).where(Document.owner == owner)
    rows = list(candidates.order_by(Chunk.id).tuples())
    if not rows:
        return []
    query_vector = embedder.embed([query])[0]
    dimensions = rows[0][1]
    matrix = from_blobs([row[2] for row in rows], dimensions)
    scores = matrix @ query_vector
    k = min(k, len(rows))
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top], kind="stable")]
    chunk_ids = [rows[i][0] for i in top]
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
            "score": round(float(scores[i]), 6),
            "text": details[chunk_id]["text"],
        }
        for i, chunk_id in zip(top, chunk_ids)
        if chunk_id in details  # deleted or reprocessed between the two queries: skipped, not a 500
    ]
