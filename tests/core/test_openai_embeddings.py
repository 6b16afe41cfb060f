"""The OpenAI embedding path through the real ``openai`` client, against a local OpenAI-compatible server.

The server (:class:`LocalEmbeddingServer`) is a Werkzeug WSGI app on 127.0.0.1 that answers
``POST /v1/embeddings`` the way OpenAI does. It runs in a thread of the pytest process, so it can
record every request in memory even though the requests come from RQ worker processes. Its
vectors are a signed bag-of-words hash into 64 dimensions, deliberately *not* normalised, and its
``data`` comes back in shuffled index order: a stored vector equal to the normalised vector of its
chunk's text proves that Docket normalises and sorts by ``index``.
"""

from __future__ import annotations

import random
import numpy as np
import pytest

from jobs.chunking import TextChunk, embedding_text
from tests.conftest import api_client, upload
from tests.local_services import API_KEY, DEFAULT_MODEL, DIMENSIONS, fake_embedding, openai_worker_env
from webapp import create_app
from webapp.local.embedded_redis import free_port
from webapp.core.embeddings import (
    OPENAI_MAX_INPUTS_PER_REQUEST,
    OPENAI_MAX_TOKENS_PER_INPUT,
    OPENAI_MAX_TOKENS_PER_REQUEST,
    batches,
    embedder_name,
    token_upper_bound,
)
from webapp.core.db import connection
from webapp.core.models import Chunk

DPR_QUERY = "dense passage retrieval question answering"


def embedded(chunk: Chunk) -> str:
    """What the document job sends to the embedding API for a stored chunk: its heading path as
    a contextual header line, then its text (jobs.chunking.embedding_text)."""
    return embedding_text(TextChunk(chunk.ordinal, chunk.text, chunk.page_start, chunk.page_end,
                                    headings=chunk.headings or []))


def normalised(vector: list[float]) -> np.ndarray:
    array = np.asarray(vector, dtype=np.float64)
    return array / np.linalg.norm(array)


def chunks_of(app, document_id: str) -> list[Chunk]:
    # connection() closes what it opens: a connection left open would break the next request.
    with app.app_context(), connection():
        return list(Chunk.select().where(Chunk.document == document_id).order_by(Chunk.ordinal))


def vectors_of(chunks: list[Chunk]) -> np.ndarray:
    return np.stack([np.frombuffer(chunk.embedding, dtype="<f4") for chunk in chunks]).astype(np.float64)


def assert_openai_chunks(chunks: list[Chunk], model: str = DEFAULT_MODEL) -> None:
    """Every chunk is in the OpenAI vector space, 64-dim, unit length, equal to the normalised server vector."""
    assert chunks
    for chunk in chunks:
        assert chunk.embedding_model == f"openai:{model}"
        assert chunk.dimensions == DIMENSIONS and len(chunk.embedding) == 4 * DIMENSIONS
    vectors = vectors_of(chunks)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    expected = np.stack([normalised(fake_embedding(embedded(chunk))) for chunk in chunks])
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    # The server's raw vectors are not unit length, so the equality above needs Docket's normalising.
    raw_norms = [np.linalg.norm(fake_embedding(embedded(chunk))) for chunk in chunks]
    assert max(abs(norm - 1.0) for norm in raw_norms) > 0.5


# --- 1. a document through the OpenAI path, then search ----------------------------------------


def test_openai_embedded_chunks_are_normalised_searchable_and_kept_apart_from_hashing_ones(
    app, client, openai_app, openai_client, openai_server, run_worker
):
    # A document embedded by the offline default embedder first: a second vector space in the database.
    hashed = upload(client, "minimal-document.pdf").get_json()["documents"][0]
    run_worker()
    assert client.get(hashed["status_url"]).get_json()["status"] == "finished"
    assert openai_server.requests == []  # no key, no request
    hashed_chunks = chunks_of(app, hashed["id"])
    assert hashed_chunks and all(c.embedding_model == embedder_name(app.config) != f"openai:{DEFAULT_MODEL}"
                                 for c in hashed_chunks)

    response = upload(openai_client, "dpr-paper-two-column.pdf", "latex-two-column-lorem.pdf")
    assert response.status_code == 202
    dpr, lorem = response.get_json()["documents"]
    run_worker(**openai_worker_env(openai_server))

    for document in (dpr, lorem):
        job = openai_client.get(document["status_url"]).get_json()
        assert job["status"] == "finished", job
        assert job["result"]["embedding_model"] == "openai:text-embedding-3-small"
    dpr_chunks, lorem_chunks = chunks_of(app, dpr["id"]), chunks_of(app, lorem["id"])
    assert len(dpr_chunks) > 10
    assert_openai_chunks(dpr_chunks)
    assert_openai_chunks(lorem_chunks)

    worker_requests = list(openai_server.requests)
    assert worker_requests
    for recorded in worker_requests:
        assert recorded.authorization == f"Bearer {API_KEY}"
        assert recorded.model == DEFAULT_MODEL and recorded.encoding_format == "base64"
        assert 1 <= len(recorded.inputs) <= OPENAI_MAX_INPUTS_PER_REQUEST
    sent = [text for recorded in worker_requests for text in recorded.inputs]
    assert sorted(sent) == sorted(embedded(c) for c in dpr_chunks + lorem_chunks)
    assert any(recorded.shuffled for recorded in worker_requests)

    # Search on the OpenAI-configured app: the query goes through the local server as well, for
    # the OpenAI chunks; the offline embedder's chunk is ranked in its own space against its own
    # embedding of the query (no request), and the two rankings are fused by rank.
    hits = openai_client.get("/api/search", query_string={"q": DPR_QUERY, "k": 50, "mode": "vector"})
    assert hits.status_code == 200, hits.get_json()
    results = hits.get_json()["results"]
    query_request = openai_server.requests[-1]
    assert len(openai_server.requests) == len(worker_requests) + 1
    assert query_request.inputs == [DPR_QUERY] and query_request.authorization == f"Bearer {API_KEY}"
    assert len(dpr_chunks + lorem_chunks) > 50 and len(results) == 50
    openai_ids = {c.id for c in dpr_chunks + lorem_chunks}
    assert {c.id for c in hashed_chunks} <= {r["chunk_id"] for r in results}  # its space's best: ranked too
    in_openai = [r for r in results if r["chunk_id"] in openai_ids]
    assert in_openai[0]["document_id"] == dpr["id"] and in_openai[0]["filename"] == "dpr-paper-two-column.pdf"
    # Within the OpenAI space, the order of the cosine similarities to the server's query vector;
    # scores are the fusion's (1 / (60 + rank in its space)), never one model's score against another's.
    query_vector = normalised(fake_embedding(DPR_QUERY))
    by_id = {c.id: c for c in dpr_chunks + lorem_chunks}
    cosines = [round(float(vectors_of([by_id[r["chunk_id"]]])[0] @ query_vector), 6) for r in in_openai]
    assert cosines == sorted(cosines, reverse=True)
    assert [r["score"] for r in in_openai] == [round(1 / (60 + rank), 6) for rank in range(1, len(in_openai) + 1)]
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)

    # Search on an app without a key (the offline embedder): its chunk by its own vectors; the
    # OpenAI space cannot embed the query here, so its chunks are ranked by full text only.
    hashing_hits = client.get("/api/search", query_string={"q": DPR_QUERY, "k": 50})
    assert hashing_hits.status_code == 200
    found = [r["chunk_id"] for r in hashing_hits.get_json()["results"]]
    assert {c.id for c in hashed_chunks} <= set(found) and set(found) - {c.id for c in hashed_chunks} <= openai_ids
    assert len(openai_server.requests) == len(worker_requests) + 1  # the offline search called nobody

    # The query cannot be embedded: a 502 with the service's reason, not a 500.
    openai_server.mode = "unauthorized"
    failed = openai_client.get("/api/search", query_string={"q": DPR_QUERY})
    assert failed.status_code == 502
    error = failed.get_json()["error"]
    assert error["code"] == "embedding_unavailable"
    assert "401" in error["message"] and "Incorrect API key provided" in error["message"]


def test_embedding_model_setting_names_the_model_and_the_vector_space(app, config, openai_client, openai_server, run_worker):
    document = upload(openai_client, "minimal-document.pdf").get_json()["documents"][0]
    run_worker(**openai_worker_env(openai_server, EMBEDDING_MODEL="text-embedding-3-large"))

    job = openai_client.get(document["status_url"]).get_json()
    assert job["status"] == "finished", job
    assert job["result"]["embedding_model"] == "openai:text-embedding-3-large"
    assert_openai_chunks(chunks_of(app, document["id"]), model="text-embedding-3-large")
    assert openai_server.requests and {r.model for r in openai_server.requests} == {"text-embedding-3-large"}

    # An app on the default model finds it too: the chunks' vector space is ranked with its own
    # model (text-embedding-3-large), never against a text-embedding-3-small query vector.
    count = len(openai_server.requests)
    results = openai_client.get("/api/search", query_string={"q": "lorem ipsum"}).get_json()["results"]
    assert [r["document_id"] for r in results] == [document["id"]]
    assert len(openai_server.requests) == count + 1 and openai_server.requests[-1].model == "text-embedding-3-large"
    large = create_app({**config, "OPENAI_API_KEY": API_KEY, "OPENAI_BASE_URL": openai_server.url,
                        "EMBEDDING_MODEL": "text-embedding-3-large"})
    results = api_client(large).get("/api/search", query_string={"q": "lorem ipsum"}).get_json()["results"]
    assert [r["document_id"] for r in results] == [document["id"]]
    assert openai_server.requests[-1].model == "text-embedding-3-large"


def test_a_server_that_answers_floats_to_a_base64_request_is_understood(app, openai_client, openai_server, run_worker):
    openai_server.mode = "floats_only"
    document = upload(openai_client, "latex-two-column-lorem.pdf").get_json()["documents"][0]
    run_worker(**openai_worker_env(openai_server))

    assert openai_client.get(document["status_url"]).get_json()["status"] == "finished"
    assert {r.encoding_format for r in openai_server.requests} == {"base64"}
    assert_openai_chunks(chunks_of(app, document["id"]))


# --- 2. batching ---------------------------------------------------------------------------------


def test_embedding_batch_size_caps_the_inputs_per_request(app, openai_client, openai_server, run_worker):
    document = upload(openai_client, "latex-two-column-lorem.pdf").get_json()["documents"][0]
    run_worker(**openai_worker_env(openai_server, EMBEDDING_BATCH_SIZE="2"))

    chunks = chunks_of(app, document["id"])
    assert len(chunks) >= 3, "the document must need more than one request of two inputs"
    assert [len(r.inputs) for r in openai_server.requests] == [2] * (len(chunks) // 2) + [1] * (len(chunks) % 2)
    assert_openai_chunks(chunks)


def test_a_large_document_is_embedded_in_requests_within_openai_limits(app, openai_client, openai_server, run_worker):
    document = upload(openai_client, "metapost-manual-ru.pdf").get_json()["documents"][0]
    run_worker(**openai_worker_env(openai_server))

    job = openai_client.get(document["status_url"]).get_json()
    assert job["status"] == "finished", job
    chunks = chunks_of(app, document["id"])
    assert len(chunks) >= 150 and job["result"]["chunks"] == len(chunks)
    requests = list(openai_server.requests)
    total_bytes = sum(r.input_bytes for r in requests)
    assert total_bytes > OPENAI_MAX_TOKENS_PER_REQUEST  # so one request could not have carried it
    assert len(requests) >= 2
    for recorded in requests:
        assert recorded.status == 200
        assert 1 <= len(recorded.inputs) <= OPENAI_MAX_INPUTS_PER_REQUEST
        assert recorded.input_bytes <= OPENAI_MAX_TOKENS_PER_REQUEST
    # The batches, concatenated, are the chunks in order: nothing lost, repeated or reordered.
    # Several requests are in flight at once (MAX_REQUESTS_IN_FLIGHT): each carries a run of
    # consecutive chunks, and together they carry every chunk once.
    expected = [embedded(c) for c in chunks]
    runs = sorted((expected.index(r.inputs[0]), r.inputs) for r in requests)
    assert [text for _, inputs in runs for text in inputs] == expected
    assert all(r.shuffled for r in requests if len(r.inputs) > 1)
    assert_openai_chunks(chunks)


def _check_batches(texts: list[str], runs: list[tuple[int, int]], max_inputs: int, max_tokens: int) -> None:
    assert [i for start, stop in runs for i in range(start, stop)] == list(range(len(texts)))
    for number, (start, stop) in enumerate(runs):
        size = sum(token_upper_bound(text) for text in texts[start:stop])
        assert 1 <= stop - start <= max_inputs and size <= max_tokens
        if number + 1 < len(runs):  # greedy: the next text would not have fitted
            assert stop - start == max_inputs or size + token_upper_bound(texts[stop]) > max_tokens


def test_batches_split_many_small_texts_at_2048_inputs():
    texts = [f"t{i}" for i in range(5000)]
    runs = list(batches(texts))
    assert runs == [(0, 2048), (2048, 4096), (4096, 5000)]
    _check_batches(texts, runs, OPENAI_MAX_INPUTS_PER_REQUEST, OPENAI_MAX_TOKENS_PER_REQUEST)


def test_batches_split_by_utf8_bytes_not_characters():
    # 4,000 Cyrillic characters are 8,000 bytes: 37 fit in 300,000 bytes, though 75 would by characters.
    rng = random.Random(7)
    texts = ["я" * 4000] * 100 + ["a" * rng.randint(1, 8192) for _ in range(300)] + ["€" * 2730] * 50
    assert sum(len(t.encode("utf-8")) for t in texts) > 3 * OPENAI_MAX_TOKENS_PER_REQUEST
    runs = list(batches(texts))
    assert runs[0] == (0, 37)
    assert len(runs) >= 4
    _check_batches(texts, runs, OPENAI_MAX_INPUTS_PER_REQUEST, OPENAI_MAX_TOKENS_PER_REQUEST)
    # Custom limits are honoured too.
    small = list(batches(texts, max_inputs=7, max_tokens=20_000))
    _check_batches(texts, small, 7, 20_000)


def test_batches_reject_one_text_over_the_per_input_limit_and_accept_one_at_it():
    assert list(batches([])) == []
    assert list(batches(["x" * OPENAI_MAX_TOKENS_PER_INPUT])) == [(0, 1)]
    with pytest.raises(ValueError, match="input 1"):
        list(batches(["ok", "x" * (OPENAI_MAX_TOKENS_PER_INPUT + 1)]))
    # 4,097 characters but 8,194 bytes: over the limit.
    with pytest.raises(ValueError):
        list(batches(["я" * 4097]))


# --- 3./4. the service fails ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, extra_env, expected, requests",
    [
        pytest.param("unauthorized", {}, ["HTTP 401", "Incorrect API key provided"], 1, id="401-invalid-key"),
        pytest.param("server_error", {"OPENAI_MAX_RETRIES": "0"},
                     ["HTTP 500", "The server had an error while processing your request."], 1, id="500-no-retries"),
        pytest.param("server_error", {"OPENAI_MAX_RETRIES": "1"}, ["HTTP 500"], 2, id="500-one-retry"),
        pytest.param("unreachable", {"OPENAI_MAX_RETRIES": "0"}, ["could not be reached"], 0, id="connection-refused"),
    ],
)
def test_a_failing_embedding_service_fails_the_job_with_a_readable_reason(
    app, openai_client, openai_server, run_worker, mode, extra_env, expected, requests
):
    openai_client.application.config["DOCUMENT_JOB_RETRIES"] = 0  # the job's own retries are tested elsewhere
    document = upload(openai_client, "minimal-document.pdf").get_json()["documents"][0]
    env = openai_worker_env(openai_server, **extra_env)
    if mode == "unreachable":
        env["OPENAI_BASE_URL"] = f"http://127.0.0.1:{free_port()}/v1"
    else:
        openai_server.mode = mode
    run_worker(**env)

    job = openai_client.get(document["status_url"]).get_json()
    assert job["status"] == "failed" and job["rq_status"] == "failed", job
    # A 401 will repeat (permanent); a 500 or an unreachable service may pass (transient: retried
    # when the kind allows, DOCUMENT_JOB_RETRIES is 0 here).
    assert job["error_code"] == ("embedding_failed" if "HTTP 401" in expected else "embedding_unavailable")
    error = job["error"]
    assert error.startswith("embedding failed: ")
    for text in expected:
        assert text in error
    assert "Traceback" not in error and "\n" not in error
    assert openai_client.get(f"/api/documents/{document['id']}").get_json()["error"] == error
    assert chunks_of(app, document["id"]) == []
    assert len(openai_server.requests) == requests
    assert all(r.authorization == f"Bearer {API_KEY}" for r in openai_server.requests)


def test_a_transient_500_is_retried_by_the_client_and_the_job_finishes(app, openai_client, openai_server, run_worker):
    openai_server.mode = "fail_once"
    document = upload(openai_client, "minimal-document.pdf").get_json()["documents"][0]
    run_worker(**openai_worker_env(openai_server, OPENAI_MAX_RETRIES="1"))

    job = openai_client.get(document["status_url"]).get_json()
    assert job["status"] == "finished", job
    assert [r.status for r in openai_server.requests] == [500, 200]
    assert openai_server.requests[0].inputs == openai_server.requests[1].inputs
    assert_openai_chunks(chunks_of(app, document["id"]))
