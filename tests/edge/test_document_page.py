"""A document's own page: ``GET /api/documents/<id>/chunks`` (paged like the job list, owner-checked),
the HTML page ``/documents/<id>`` (facts, chunks in order with heading paths and OCR marks, pages
of 100 chunks), and search results that carry a chunk's headings, OCR mark and ordinal.

Rows are written directly (the document job's own tests cover how they are made); real SQLite
file or PostgreSQL (``TEST_DATABASE_URL=postgres``).
"""

from __future__ import annotations

import re
from html import unescape

import pytest

from tests.conftest import api_client, browser_client
from webapp.core.db import connection
from webapp.core.embeddings import embedder_from_config, to_blob
from webapp.core.models import Chunk, Document, Job
from webapp.core.vector_index import ensure_vector_index, store_vectors
from webapp.edge.job_json import encode_keyset


def add_document(app, owner: str, texts: list[str], *, headings=None, ocr=None, filename="report.pdf",
                 status="finished", **fields) -> str:
    """A finished document of ``owner`` whose chunks have ``texts`` (ordinal i = texts[i]), with
    ``headings(i)`` and ``ocr(i)`` → (bool, confidence); returns its id."""
    with app.app_context(), connection() as database:
        embedder = embedder_from_config(app.config)
        vectors = embedder.embed(texts)
        ensure_vector_index(database, embedder.name, vectors.shape[1])
        document = Document.create(filename=filename, content_type="application/pdf", size_bytes=1234,
                                   sha256="0" * 64, storage_key="documents/x/y", owner=owner, pages=len(texts),
                                   chunk_count=len(texts), **fields)
        job = Job.create(kind="document", queue="default", params={"document_id": document.id}, status=status,
                         document=document.id, owner=owner)
        Document.update(job_id=job.id).where(Document.id == document.id).execute()
        rows = []
        for i, (text, vector) in enumerate(zip(texts, vectors)):
            is_ocr, confidence = ocr(i) if ocr else (False, None)
            rows.append({"document": document.id, "ordinal": i, "page_start": i + 1, "page_end": i + 1,
                         "text": text, "headings": headings(i) if headings else None, "ocr": is_ocr,
                         "ocr_confidence": confidence, "embedding_model": embedder.name,
                         "dimensions": len(vector), "embedding": to_blob(vector)})
        for start in range(0, len(rows), 200):
            Chunk.insert_many(rows[start:start + 200]).execute()
        store_vectors(database, document.id, list(range(len(texts))), vectors)
        return document.id


def all_pages(client, url: str) -> list[dict]:
    """Every chunk of a paged answer, following ``next``."""
    chunks, cursor = [], None
    while True:
        response = client.get(url, query_string={"limit": 3, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert len(body["chunks"]) <= 3
        chunks += body["chunks"]
        cursor = body["next"]
        if cursor is None:
            return chunks


def test_chunks_api_pages_through_a_documents_chunks_in_order(app):
    texts = [f"Paragraph {i} of the survey." for i in range(8)]
    document_id = add_document(app, "alice", texts, headings=lambda i: ["Survey", f"Part {i // 4}"] if i else None,
                               ocr=lambda i: (i == 2, 0.875 if i == 2 else None))
    client = api_client(app, "alice", admin=False)

    chunks = all_pages(client, f"/api/documents/{document_id}/chunks")

    assert [c["ordinal"] for c in chunks] == list(range(8))
    assert [c["text"] for c in chunks] == texts
    assert chunks[0]["headings"] == []  # NULL (made before headings were kept) is an empty list
    assert chunks[5]["headings"] == ["Survey", "Part 1"]
    assert chunks[2]["ocr"] is True and chunks[2]["ocr_confidence"] == 0.875
    assert chunks[3]["ocr"] is False and chunks[3]["ocr_confidence"] is None
    assert chunks[4]["page_start"] == 5 and chunks[4]["page_end"] == 5
    assert set(chunks[0]) == {"ordinal", "page_start", "page_end", "headings", "ocr", "ocr_confidence", "text"}

    whole = client.get(f"/api/documents/{document_id}/chunks").get_json()  # default limit 20: one page
    assert len(whole["chunks"]) == 8 and whole["next"] is None


def test_chunks_api_is_owner_checked_and_refuses_bad_limits_and_cursors(app):
    document_id = add_document(app, "alice", ["one", "two"])
    bob = api_client(app, "bob", admin=False)
    response = bob.get(f"/api/documents/{document_id}/chunks")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "document_not_found"
    missing = bob.get("/api/documents/no-such-document/chunks").get_json()["error"]["message"]
    assert response.get_json()["error"]["message"] == missing.replace("no-such-document", document_id)  # the same
    admin = api_client(app, "root", admin=True)
    assert admin.get(f"/api/documents/{document_id}/chunks").status_code == 200

    alice = api_client(app, "alice", admin=False)
    for query, code in [({"limit": "0"}, "invalid_limit"), ({"limit": "101"}, "invalid_limit"),
                        ({"limit": "x"}, "invalid_limit"), ({"cursor": "%%%"}, "invalid_cursor"),
                        ({"cursor": encode_keyset(["2020-01-01", "job"])}, "invalid_cursor"),  # a job list's
                        ({"cursor": encode_keyset([True])}, "invalid_cursor"),
                        ({"cursor": encode_keyset([10**30])}, "invalid_cursor")]:
        response = alice.get(f"/api/documents/{document_id}/chunks", query_string=query)
        assert response.status_code == 400, (query, response.get_json())
        error = response.get_json()["error"]
        assert error["code"] == code and error["message"].endswith("."), error


def page_ordinals(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'<li class="chunk" id="chunk-(\d+)"', html)]


def test_document_page_shows_facts_and_chunks_with_headings_and_ocr(app):
    texts = ["Intro <b>bold</b> & more", "Method text", "Scanned text"]
    document_id = add_document(app, "alice", texts, filename="<script>x</script>.pdf", ocr_pages=1,
                               warnings=["page 3: read by OCR"],
                               headings=lambda i: ["Study", "Methods & data"] if i == 1 else [],
                               ocr=lambda i: (i == 2, 0.91 if i == 2 else None))
    client = browser_client(app, "alice", admin=False)

    html = client.get(f"/documents/{document_id}").get_data(as_text=True)

    assert "<script>x</script>" not in html and "&lt;script&gt;x&lt;/script&gt;.pdf" in html  # escaped
    assert "Intro &lt;b&gt;bold&lt;/b&gt; &amp; more" in html
    assert page_ordinals(html) == [0, 1, 2]
    assert re.search(r"<li>Study</li><li>Methods &amp; data</li>", html)
    assert "OCR · confidence 91 %" in html
    assert "page 3: read by OCR" in html
    facts = unescape(re.sub(r"<[^>]+>|\s+", " ", html.split('id="document-facts"')[1].split("</dl>")[0]))
    assert "Status finished" in re.sub(r"\s+", " ", facts) and "Pages read by OCR 1" in re.sub(r"\s+", " ", facts)

    index = client.get("/").get_data(as_text=True)  # the list links to it (drawn by app.js)
    assert "documentUrl" in client.get("/static/app.js").get_data(as_text=True) and "app.js" in index


def test_document_page_is_owner_checked_and_signed_in(app):
    document_id = add_document(app, "alice", ["one"])
    bob = browser_client(app, "bob", admin=False)
    response = bob.get(f"/documents/{document_id}", headers={"Accept": "text/html"})
    assert response.status_code == 404
    assert "There is no document with id" in response.get_data(as_text=True)
    signed_out = app.test_client().get(f"/documents/{document_id}")
    assert signed_out.status_code in (302, 303) and "/signin" in signed_out.headers["Location"]
    alice = browser_client(app, "alice", admin=False)
    for query in ("cursor=%25%25", "chunk=x", "chunk=-1"):
        assert alice.get(f"/documents/{document_id}?{query}").status_code == 400, query


def test_a_big_documents_page_shows_100_chunks_with_next_and_previous_links(app):
    texts = [f"chunk number {i}" for i in range(250)]
    document_id = add_document(app, "alice", texts)
    client = browser_client(app, "alice", admin=False)

    first = client.get(f"/documents/{document_id}").get_data(as_text=True)
    assert page_ordinals(first) == list(range(100))
    assert 'rel="prev"' not in first and "Chunks 1–100 of 250" in first
    next_url = unescape(re.search(r'<a rel="next" href="([^"]+)"', first).group(1))

    second = client.get(next_url).get_data(as_text=True)
    assert page_ordinals(second) == list(range(100, 200))
    third = client.get(unescape(re.search(r'<a rel="next" href="([^"]+)"', second).group(1))).get_data(as_text=True)
    assert page_ordinals(third) == list(range(200, 250)) and 'rel="next"' not in third
    back = client.get(unescape(re.search(r'<a rel="prev" href="([^"]+)"', third).group(1))).get_data(as_text=True)
    assert page_ordinals(back) == list(range(100, 200))
    back = client.get(unescape(re.search(r'<a rel="prev" href="([^"]+)"', back).group(1))).get_data(as_text=True)
    assert page_ordinals(back) == list(range(100))

    # A search hit's link: the page holding that chunk, whose next link continues from it.
    landing = client.get(f"/documents/{document_id}?chunk=137").get_data(as_text=True)
    assert page_ordinals(landing) == list(range(100, 200)) and 'id="chunk-137"' in landing
    assert page_ordinals(client.get(f"/documents/{document_id}?chunk=99").get_data(as_text=True)) == list(range(100))
    assert page_ordinals(client.get(f"/documents/{document_id}?chunk=249").get_data(as_text=True)) == \
        list(range(200, 250))


@pytest.mark.parametrize("mode", ["text", "vector", "hybrid"])
def test_search_results_carry_headings_ocr_and_the_ordinal(app, mode):
    texts = ["Warranty terms for the pump.", "Termination requires ninety days notice.", "Annex tables."]
    document_id = add_document(app, "alice", texts, headings=lambda i: ["Contract", "Termination"] if i == 1 else None,
                               ocr=lambda i: (i == 1, 0.8 if i == 1 else None))
    client = api_client(app, "alice", admin=False)

    results = client.get("/api/search", query_string={"q": "termination notice", "mode": mode, "k": 3}).get_json()

    hit = next(r for r in results["results"] if r["text"] == texts[1])
    assert hit["document_id"] == document_id and hit["ordinal"] == 1
    assert hit["headings"] == ["Contract", "Termination"] and hit["ocr"] is True
    others = [r for r in results["results"] if r["text"] != texts[1]]
    assert all(r["headings"] == [] and r["ocr"] is False for r in others)


def test_a_big_pdf_read_in_parts_shows_its_pages_read_so_far(app):
    """While a big PDF's page-range parts run (jobs/document_parts.py), its page says how many of
    its pages they have read (the job's pages_done of pages_total), and the list's script words it."""
    with app.app_context(), connection():
        document = Document.create(filename="big.pdf", content_type="application/pdf", size_bytes=1234,
                                   sha256="0" * 64, storage_key="documents/x/y", owner="alice")
        job = Job.create(kind="document", queue="default", params={"document_id": document.id}, status="started",
                         stage="parts", document=document.id, owner="alice", pages_done=125, pages_total=1_000)
        Document.update(job_id=job.id).where(Document.id == document.id).execute()
    client = browser_client(app, "alice", admin=False)

    html = client.get(f"/documents/{document.id}").get_data(as_text=True)

    facts = re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html.split('id="document-facts"')[1].split("</dl>")[0])))
    assert "Pages 125 of 1,000 read" in facts
    script = client.get("/static/common.js").get_data(as_text=True)
    assert "of ${job.pages_total} pages" in script and 'parts: "Reading pages in parts"' in script
