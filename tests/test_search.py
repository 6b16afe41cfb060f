"""Search streams the vector space in bounded blocks: the same results as one exact pass over
every chunk, whatever the block size, within the owner filter (real SQLite file)."""

from __future__ import annotations

import numpy as np
import pytest

from webapp.db import connection
from webapp.embeddings import embedder_from_config, from_blobs, to_blob
from webapp.models import Chunk, Document
from webapp.search import search_chunks

TEXTS = [
    "The termination clause requires ninety days of written notice.",
    "Payment is due within thirty days of the invoice date.",
    "Either party may terminate the agreement for material breach.",
    "The supplier shall deliver the goods to the buyer's warehouse.",
    "Confidential information must not be disclosed to third parties.",
    "Notice of termination shall be sent by registered mail.",
    "The warranty period is twelve months from delivery.",
    "Disputes are settled by arbitration in Geneva.",
] * 3  # repeated texts: equal scores, ordered by the older chunk


@pytest.fixture
def indexed(app):
    """Two owners' documents, their chunks embedded by the configured embedder; returns the app."""
    with app.app_context(), connection():
        embedder = embedder_from_config(app.config)
        vectors = embedder.embed(TEXTS)
        for n, (text, vector) in enumerate(zip(TEXTS, vectors)):
            owner = "alice" if n % 3 else "bob"
            document = Document.create(filename=f"doc-{n}.txt", content_type="text/plain", size_bytes=len(text),
                                       sha256=f"{n:064d}", storage_key=f"documents/x/{n}", owner=owner)
            Chunk.create(document=document.id, ordinal=0, text=text, embedding_model=embedder.name,
                         dimensions=len(vector), embedding=to_blob(vector))
    return app


def exact(app, query: str, k: int, owner: str | None) -> list[tuple[int, float]]:
    """One brute-force pass over every chunk: (chunk id, score), best first, ties by id."""
    embedder = embedder_from_config(app.config)
    rows = list(Chunk.select(Chunk.id, Chunk.dimensions, Chunk.embedding, Document.owner).join(Document)
                .order_by(Chunk.id).tuples())
    rows = [row for row in rows if owner is None or row[3] == owner]
    query_vector = np.asarray(embedder.embed([query])[0], dtype=np.float64)
    scores = [round(float(np.dot(vector.astype(np.float64), query_vector)), 6)  # one row at a time
              for vector in from_blobs([row[2] for row in rows], rows[0][1])]
    ranked = sorted(zip((row[0] for row in rows), scores), key=lambda pair: (-pair[1], pair[0]))
    return ranked[:k]


@pytest.mark.parametrize("block", [1, 2, 5, 7, 2048])
@pytest.mark.parametrize("owner", [None, "alice", "bob"])
def test_blocks_of_any_size_give_the_exact_ranking(indexed, block, owner):
    indexed.config["SEARCH_BLOCK_ROWS"] = block
    with indexed.test_request_context(), connection():
        for query, k in (("termination notice", 5), ("payment invoice", 3), ("arbitration", 24)):
            got = [(r["chunk_id"], r["score"]) for r in search_chunks(query, k, owner=owner, mode="vector")]
            assert got == exact(indexed, query, k, owner), (query, k, block, owner)


def test_an_owner_filter_ranks_only_that_owners_chunks(indexed):
    with indexed.test_request_context(), connection():
        results = search_chunks("termination notice", 50, owner="bob", mode="vector")
        owners = {Document.get_by_id(r["document_id"]).owner for r in results}
    assert owners == {"bob"} and len(results) == len(TEXTS) // 3
    assert np.all(np.diff([r["score"] for r in results]) <= 0)


def test_no_chunks_means_no_results_and_no_embedding_call(app):
    app.config["OPENAI_API_KEY"], app.config["OPENAI_BASE_URL"] = "sk-unused", "http://127.0.0.1:9/v1"
    with app.test_request_context(), connection():
        assert search_chunks("anything", 5) == []  # the unreachable embedding API is never asked
