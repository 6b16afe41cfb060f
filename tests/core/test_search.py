"""Search streams the vector space in bounded blocks: the same results as one exact pass over
every chunk, whatever the block size, within the owner filter (real SQLite file)."""

from __future__ import annotations

import numpy as np
import pytest

from webapp.core.db import connection
from webapp.core.embeddings import embedder_from_config, from_blobs, to_blob
from webapp.core.models import Chunk, Document
from webapp.core.search import search_chunks
from webapp.core.vector_index import ensure_vector_index, is_postgres, store_vectors

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
    with app.app_context(), connection() as database:
        embedder = embedder_from_config(app.config)
        vectors = embedder.embed(TEXTS)
        ensure_vector_index(database, embedder.name, vectors.shape[1])  # as the store step does
        for n, (text, vector) in enumerate(zip(TEXTS, vectors)):
            owner = "alice" if n % 3 else "bob"
            document = Document.create(filename=f"doc-{n}.txt", content_type="text/plain", size_bytes=len(text),
                                       sha256=f"{n:064d}", storage_key=f"documents/x/{n}", owner=owner,
                                       batch_id="batch-a" if n < 12 else "batch-b")
            Chunk.create(document=document.id, ordinal=0, text=text, embedding_model=embedder.name,
                         dimensions=len(vector), embedding=to_blob(vector))
            store_vectors(database, document.id, [0], vectors[n:n + 1])
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


# --- filters, modes, full text (on whichever database the suite runs: SQLite, or PostgreSQL) -------


def _documents(app, **where) -> dict[str, str]:
    """Document id → owner of the documents matching ``where`` (field == value)."""
    with app.app_context(), connection():
        query = Document.select()
        for name, value in where.items():
            query = query.where(getattr(Document, name) == value)
        return {d.id: d.owner for d in query}


@pytest.mark.parametrize("mode", ["vector", "text", "hybrid"])
def test_document_and_batch_filters_apply_inside_every_ranking(indexed, mode):
    batch_b = _documents(indexed, batch_id="batch-b")
    one = sorted(_documents(indexed, filename="doc-5.txt"))[0]
    with indexed.test_request_context(), connection():
        in_batch = search_chunks("termination notice", 50, batch_id="batch-b", mode=mode)
        in_document = search_chunks("termination notice", 50, document_id=one, mode=mode)
        bobs_in_batch = search_chunks("notice", 50, owner="bob", batch_id="batch-b", mode=mode)
        everything = search_chunks("termination notice", 50, mode=mode)
    assert in_batch and {r["document_id"] for r in in_batch} <= set(batch_b)
    if mode != "text":  # every chunk has a vector; only some have the words
        assert len(in_batch) == len(batch_b)
    assert [r["document_id"] for r in in_document] == [one]  # "Notice of termination …"
    assert {batch_b[r["document_id"]] for r in bobs_in_batch} == {"bob"}
    # Filters inside the query, not after: the batch's best are found even when other
    # documents outrank them overall.
    assert len(everything) > len(in_batch)


def test_text_mode_ranks_the_chunks_with_the_rare_words_first(indexed):
    with indexed.test_request_context(), connection():
        results = search_chunks("Geneva arbitration", 5, mode="text")
    assert [r["text"] for r in results] == ["Disputes are settled by arbitration in Geneva."] * 3
    assert [r["chunk_id"] for r in results] == sorted(r["chunk_id"] for r in results)  # ties: older first
    assert all(r["score"] > 0 for r in results)


def test_hybrid_scores_are_the_reciprocal_rank_fusion_of_both_rankings(indexed):
    with indexed.test_request_context(), connection():
        vector = [r["chunk_id"] for r in search_chunks("termination notice", 50, mode="vector")]
        text = [r["chunk_id"] for r in search_chunks("termination notice", 50, mode="text")]
        hybrid = search_chunks("termination notice", 50, mode="hybrid")
    expected = {}
    for ranking in (vector, text):
        for rank, chunk_id in enumerate(ranking, start=1):
            expected[chunk_id] = expected.get(chunk_id, 0) + 1 / (60 + rank)
    assert {r["chunk_id"]: r["score"] for r in hybrid} == {i: round(s, 6) for i, s in expected.items()}
    assert [r["score"] for r in hybrid] == sorted((r["score"] for r in hybrid), reverse=True)


def test_an_unknown_mode_is_refused(indexed):
    with indexed.test_request_context(), connection(), pytest.raises(ValueError, match="mode must be one of"):
        search_chunks("notice", 5, mode="fuzzy")


HOSTILE = ['"', '""', "*", "NEAR(", "NEAR(a b, 2)", "-", "- notice", "AND", "termination AND", "OR NOT",
           "text:notice", "^notice", "(", ")", "'", "\\", "notice*", "'; DROP TABLE chunk; --", "🙂",
           "notice " * 300, "x" * 2000, "a\u0000b", "%", "_", ":", "{}", "[1,2]", "NOT"]


@pytest.mark.parametrize("mode", ["hybrid", "text", "vector"])
def test_hostile_queries_never_fail(indexed, mode):
    from tests.conftest import api_client

    client = api_client(indexed)
    for query in HOSTILE:
        for response in (client.get("/api/search", query_string={"q": query, "mode": mode, "k": 50}),
                         client.post("/api/search", json={"q": query, "mode": mode, "k": 50})):
            assert response.status_code in (200, 400), (query, response.status_code, response.get_data(as_text=True))
            assert "results" in response.get_json() or response.get_json()["error"]["code"] == "query_too_long"
    # FTS syntax is never interpreted: "notice*" finds the word "notice", not a prefix search,
    # and a query of punctuation only has no words to look for.
    assert client.get("/api/search", query_string={"q": '"*"', "mode": "text"}).get_json()["results"] == []


def test_the_api_filters_by_visible_documents_and_batches_only(indexed):
    from tests.conftest import api_client

    alice, admin = api_client(indexed, owner="alice", admin=False), api_client(indexed)
    bobs = sorted(_documents(indexed, owner="bob"))[0]
    alices = sorted(_documents(indexed, owner="alice"))[0]
    with indexed.app_context(), connection():
        from webapp.core.models import Batch

        Batch.create(id="batch-a", size=12, owner="alice")
        Batch.create(id="batch-b", size=12, owner="bob")

    got = alice.get("/api/search", query_string={"q": "notice", "document_id": alices}).get_json()["results"]
    assert {r["document_id"] for r in got} == {alices}
    assert alice.post("/api/search", json={"q": "notice", "batch_id": "batch-a", "k": 50}).status_code == 200
    for params in ({"document_id": bobs}, {"document_id": "no-such-document"}):
        response = alice.get("/api/search", query_string={"q": "notice", **params})
        assert response.status_code == 404 and response.get_json()["error"]["code"] == "document_not_found"
    for params in ({"batch_id": "batch-b"}, {"batch_id": "no-such-batch"}):
        response = alice.post("/api/search", json={"q": "notice", **params})
        assert response.status_code == 404 and response.get_json()["error"]["code"] == "batch_not_found"
    got = admin.get("/api/search", query_string={"q": "notice", "batch_id": "batch-b", "k": 50}).get_json()
    assert {r["document_id"] for r in got["results"]} == set(_documents(indexed, batch_id="batch-b"))
    response = alice.get("/api/search", query_string={"q": "notice", "mode": "semantic"})
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "invalid_mode"
    response = alice.post("/api/search", json={"q": "notice", "document_id": 7})
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "invalid_document_id"


def _fts_count(app, word: str) -> int:
    """Chunks the full-text index finds for ``word`` (the index itself, not the chunk table)."""
    with app.app_context(), connection() as database:
        if is_postgres(database):
            return database.execute_sql("SELECT count(*) FROM chunk WHERE to_tsvector('simple', text) @@ "
                                        "plainto_tsquery('simple', %s)", (word,)).fetchone()[0]
        return database.execute_sql('SELECT count(*) FROM chunk_fts WHERE chunk_fts MATCH ?',
                                    (f'"{word}"',)).fetchone()[0]


def test_deleting_a_document_removes_its_full_text_rows(indexed):
    from tests.conftest import api_client

    geneva = sorted(_documents(indexed, filename="doc-7.txt"))[0]  # one of the three Geneva chunks
    assert _fts_count(indexed, "geneva") == 3
    assert api_client(indexed).delete(f"/api/documents/{geneva}").status_code in (200, 202, 204)
    assert _fts_count(indexed, "geneva") == 2
    with indexed.app_context(), connection() as database:
        if not is_postgres(database):
            database.execute_sql("INSERT INTO chunk_fts(chunk_fts, rank) VALUES ('integrity-check', 1)")
    with indexed.test_request_context(), connection():
        assert geneva not in {r["document_id"] for r in search_chunks("Geneva", 50, mode="text")}


# --- several vector spaces at once (after a change of EMBEDDER, before the reindex ends) -----------

# One distinctive phrase per document; the first half embedded by hashing, the rest by WordLlama.
PHRASES = ["quarterly falconry budget", "submarine cable inspection", "vineyard irrigation schedule",
           "glacier retreat measurements", "lighthouse keeper roster", "orchestra tuning protocol"]


def _store(database, embedder, filename: str, text: str, space: str | None = None) -> str:
    vector = embedder.embed([text])
    document = Document.create(filename=filename, content_type="text/plain", size_bytes=len(text),
                               sha256=filename.rjust(64, "0"), storage_key=f"documents/x/{filename}", owner="alice")
    name = space or embedder.name
    ensure_vector_index(database, name, vector.shape[1])
    Chunk.create(document=document.id, ordinal=0, text=text, embedding_model=name, dimensions=vector.shape[1],
                 embedding=to_blob(vector[0]))
    store_vectors(database, document.id, [0], vector)
    return document.id


@pytest.fixture
def two_spaces(app):
    """The app (configured embedder: WordLlama) with documents in two vector spaces: hashing's
    (made before EMBEDDER changed) and WordLlama's. Returns (app, {phrase: document id})."""
    from webapp.core.embeddings import embedder_for_space

    assert embedder_from_config(app.config).name.startswith("wordllama")
    hashing = embedder_for_space(app.config, "hashing-v1:2048")
    with app.app_context(), connection() as database:
        documents = {}
        for n, phrase in enumerate(PHRASES):
            embedder = hashing if n < len(PHRASES) // 2 else embedder_from_config(app.config)
            documents[phrase] = _store(database, embedder, f"doc-{n}.txt",
                                       f"Minutes of the meeting about the {phrase}, with actions.")
    return app, documents


@pytest.mark.parametrize("mode", ["hybrid", "vector", "text"])
def test_every_document_is_found_whichever_vector_space_its_chunks_are_in(two_spaces, mode):
    app, documents = two_spaces
    with app.test_request_context(), connection():
        for phrase, document_id in documents.items():
            results = search_chunks(phrase, 3, mode=mode)
            # Vector mode interleaves the spaces' rankings (rank 1 of each ties): among the first
            # two; hybrid's and text's full-text ranking puts it first.
            top = [r["document_id"] for r in results[:2 if mode == "vector" else 1]]
            assert document_id in top, (phrase, mode, results)


def test_vector_mode_fuses_each_spaces_own_ranking_by_rank_never_by_score(two_spaces):
    from webapp.core.embeddings import embedder_for_space
    from webapp.core.search import fuse

    app, documents = two_spaces
    query = "falconry budget meeting"
    with app.test_request_context(), connection():
        expected = []
        for space in sorted({c.embedding_model for c in Chunk.select()}):
            embedder = embedder_for_space(app.config, space)
            rows = list(Chunk.select().where(Chunk.embedding_model == space).order_by(Chunk.id))
            query_vector = np.asarray(embedder.embed([query])[0], dtype=np.float64)
            scores = [round(float(from_blobs([c.embedding], c.dimensions)[0].astype(np.float64) @ query_vector), 6)
                      for c in rows]
            expected.append(sorted(zip((c.id for c in rows), scores), key=lambda pair: (-pair[1], pair[0])))
        got = [(r["chunk_id"], r["score"]) for r in search_chunks(query, 50, mode="vector")]
    assert got == fuse(expected)
    assert len(got) == len(PHRASES)  # every chunk of both spaces, each ranked in its own


def test_a_space_without_a_query_embedder_is_ranked_by_full_text(two_spaces, caplog):
    app, documents = two_spaces
    from webapp.core.embeddings import embedder_for_space

    with app.app_context(), connection() as database:
        # Chunks of an OpenAI model while this app has no OPENAI_API_KEY, and of a retired model.
        openai = _store(database, embedder_for_space(app.config, "hashing-v1:2048"), "openai.txt",
                        "The saxophone maintenance checklist.", space="openai:text-embedding-3-small")
        retired = _store(database, embedder_for_space(app.config, "hashing-v1:2048"), "retired.txt",
                         "The trombone rehearsal calendar.", space="hashing-v0:1024")
    with app.test_request_context(), connection():
        for mode in ("vector", "hybrid"):
            for query, document_id in (("saxophone maintenance", openai), ("trombone rehearsal", retired),
                                       ("lighthouse keeper roster", documents["lighthouse keeper roster"])):
                # Ranked by text only, such a chunk ties with the other rankings' first ones.
                found = [r["document_id"] for r in search_chunks(query, 4, mode=mode)]
                assert document_id in found, (query, mode, found)
    assert any("needs OPENAI_API_KEY" in record.getMessage() for record in caplog.records)
