"""Documents fetched by URL: ``POST /api/documents`` with JSON ``url``/``urls`` → a ``fetch`` job in a
real RQ worker downloads the document from a real loopback HTTP server and runs the pipeline.

The loopback server needs ``FETCH_ALLOW_PRIVATE_NETWORKS`` (its address is not public); the
refusals at submit time are tested with the setting off, and the checks after a redirect with
link-local destinations, which are refused whatever the setting says.
"""

from __future__ import annotations

import gzip
import time

import pytest
from werkzeug.wrappers import Request, Response

from tests.conftest import CORPUS, api_client, row, serve_wsgi
from webapp.core.db import connection
from webapp.core.models import Chunk, Document

PDF_NAME = "minimal-document.pdf"
PAGE = b"""<!doctype html><html><head><title>Retention</title></head><body>
<nav><a href="/">Home</a> | <a href="/about">About us</a> | <a href="/jobs">Careers at ACME</a></nav>
<main><article>
<h1>Retention policy</h1>
<p>Documents are kept for ninety days after their last job ended, then deleted together with their chunks.
An owner may ask for a shorter period per document; the shorter of the two applies in every case.</p>
<h2>Deleting documents</h2>
<p>An owner deletes a document with a DELETE request; its chunks leave search at once and its file is removed
from storage by the next orphans job, which runs every hour on the high queue.</p>
<table><tr><th>Kind</th><th>Days kept</th></tr><tr><td>upload</td><td>90</td></tr><tr><td>report</td><td>30</td></tr></table>
</article></main>
<footer>Copyright 2026 ACME Corporation. Privacy notice. Imprint. Cookie settings.</footer>
</body></html>"""


@pytest.fixture
def config(config):
    return {**config, "FETCH_ALLOW_PRIVATE_NETWORKS": True, "DOCUMENT_JOB_RETRIES": 0}


class Site:
    """A loopback web site: path → (status, headers, body); ``hits`` counts requests per path."""

    def __init__(self) -> None:
        self.pages: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.hits: dict[str, int] = {}
        self.delay: dict[str, float] = {}

    def __call__(self, environ, start_response):
        request = Request(environ)
        self.hits[request.path] = self.hits.get(request.path, 0) + 1
        time.sleep(self.delay.get(request.path, 0))
        status, headers, body = self.pages.get(request.path, (404, {}, b"not here"))
        return Response(body, status=status, headers=headers)(environ, start_response)


@pytest.fixture
def site():
    pages = Site()
    with serve_wsgi(pages) as base:
        pages.base = base
        yield pages


def fetch(client, *urls: str, **fields):
    body = {"url": urls[0]} if len(urls) == 1 else {"urls": list(urls)}
    return client.post("/api/documents", json={**body, **fields})


def document(app, document_id: str) -> Document:
    with app.app_context(), connection():
        return Document.get_by_id(document_id)


def chunk_texts(app, document_id: str) -> list[str]:
    with app.app_context(), connection():
        return [c.text for c in Chunk.select().where(Chunk.document == document_id).order_by(Chunk.ordinal)]


def test_a_pdf_and_a_web_page_are_fetched_detected_from_their_bytes_and_searchable(app, site, run_worker):
    pdf = (CORPUS / PDF_NAME).read_bytes()
    # A misleading Content-Type and no extension: the type comes from the bytes.
    site.pages["/files/latest"] = (200, {"Content-Type": "application/octet-stream", "ETag": '"v1-pdf"',
                                         "Last-Modified": "Tue, 01 Dec 2026 10:00:00 GMT"}, pdf)
    site.pages["/policy/retention.html"] = (200, {"Content-Type": "text/html; charset=utf-8"}, PAGE)
    client = api_client(app)
    response = fetch(client, f"{site.base}/files/latest", f"{site.base}/policy/retention.html")
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert body["refused"] == [] and body["batch_id"]
    pdf_doc, page_doc = body["documents"]
    assert [d["status"] for d in body["documents"]] == ["queued", "queued"]
    assert client.get(pdf_doc["document_url"]).get_json()["sha256"] is None  # not downloaded yet

    run_worker()
    for entry in body["documents"]:
        job = client.get(entry["status_url"]).get_json()
        assert job["status"] == "finished", job
        assert job["kind"] == "fetch"
    stored = client.get(pdf_doc["document_url"]).get_json()
    assert stored["content_type"] == "application/pdf"
    assert stored["source_url"] == f"{site.base}/files/latest"
    assert stored["etag"] == '"v1-pdf"' and stored["last_modified"] == "Tue, 01 Dec 2026 10:00:00 GMT"
    assert stored["bytes"] == len(pdf) and stored["chunks"] >= 1
    import hashlib
    assert stored["sha256"] == hashlib.sha256(pdf).hexdigest()

    page = client.get(page_doc["document_url"]).get_json()
    assert page["content_type"] == "text/html" and page["filename"] == "retention.html"
    texts = "\n".join(chunk_texts(app, page_doc["id"]))
    assert "ninety days" in texts and "| upload | 90 |" in texts  # the article, its table as pipe rows
    for boilerplate in ("Careers at ACME", "Cookie settings", "About us"):
        assert boilerplate not in texts  # navigation and footer are not the page's content
    with app.app_context(), connection():
        headings = {tuple(c.headings or ()) for c in Chunk.select().where(Chunk.document == page_doc["id"])}
    assert any("Retention policy" in path for path in headings)
    hits = client.get("/api/search", query_string={"q": "ninety days chunks deleted"}).get_json()["results"]
    assert hits and hits[0]["document_id"] == page_doc["id"]


def test_an_uploaded_html_file_is_still_read_whole(app, run_worker):
    """Uploads keep the reader that reads every part of the page (jobs/readers/web_page.py says why)."""
    import io

    client = api_client(app)
    response = client.post("/api/documents", data={"file": (io.BytesIO(PAGE), "saved.html")},
                           content_type="multipart/form-data")
    document_id = response.get_json()["documents"][0]["id"]
    run_worker()
    assert "Careers at ACME" in "\n".join(chunk_texts(app, document_id))


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:{port}/a.pdf", "http://[::1]:{port}/a.pdf", "http://169.254.169.254/latest/meta-data/",
    "http://0x7f000001:{port}/a.pdf", "http://localhost:{port}/a.pdf", "http://127.1/", "http://[::ffff:127.0.0.1]/",
    "file:///etc/passwd", "http://user:pw@127.0.0.1/", "http://127.0.0.1:{port}\\@93.184.216.34/",
])
def test_refused_addresses_are_answered_at_submit_and_nothing_is_recorded(app, url):
    app.config["FETCH_ALLOW_PRIVATE_NETWORKS"] = False
    client = api_client(app)
    response = fetch(client, url.format(port=8080))
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "url_refused" and "cannot be fetched" in error["message"], error
    with app.app_context(), connection():
        assert Document.select().count() == 0


def test_a_refused_url_refuses_only_itself(app, site):
    site.pages["/a.txt"] = (200, {}, b"A text to fetch.")
    response = fetch(api_client(app), f"{site.base}/a.txt", "http://169.254.169.254/latest/meta-data/")
    assert response.status_code == 202
    body = response.get_json()
    assert len(body["documents"]) == 1
    assert body["refused"][0]["error_code"] == "url_refused"
    assert "169.254.169.254" in body["refused"][0]["filename"]


@pytest.mark.parametrize("target", ["http://169.254.169.254/latest/meta-data/", "http://[::ffff:169.254.169.254]/",
                                    "http://[fe80::1]/"])
def test_a_redirect_to_a_refused_address_fails_the_job_and_reaches_nothing(app, site, run_worker, target):
    site.pages["/go"] = (302, {"Location": target}, b"")
    job_url = fetch(api_client(app), f"{site.base}/go").get_json()["documents"][0]["status_url"]
    run_worker()
    job = api_client(app).get(job_url).get_json()
    assert job["status"] == "failed" and job["error_code"] == "url_refused", job
    assert "not a public address" in job["error"]


def test_redirects_are_followed_five_times_at_most(app, site, run_worker):
    for n in range(7):
        site.pages[f"/r{n}"] = (302, {"Location": f"/r{n + 1}"}, b"")
    site.pages["/r7"] = (200, {}, b"Arrived after seven redirects.")
    for n in (1, 2):  # /r2 → 5 redirects → /r7; /r1 → 6 redirects
        site.pages[f"/s{n}"] = (301, {"Location": f"/r{n}"}, b"")
    client = api_client(app)
    ok, too_far = fetch(client, f"{site.base}/r2", f"{site.base}/r1").get_json()["documents"]
    run_worker()
    assert client.get(ok["status_url"]).get_json()["status"] == "finished"
    failed = client.get(too_far["status_url"]).get_json()
    assert failed["status"] == "failed" and failed["error_code"] == "too_many_redirects", failed
    assert client.get(ok["document_url"]).get_json()["filename"] == "r7"


def test_each_way_a_fetch_goes_wrong_has_its_error_code_and_only_transient_ones_are_retried(app, site, run_worker):
    site.pages["/big.txt"] = (200, {}, b"word " * 5000)
    site.pages["/bomb.txt"] = (200, {"Content-Encoding": "gzip"}, gzip.compress(b"a" * 5_000_000))
    site.pages["/gone"] = (404, {}, b"no")
    site.pages["/busy"] = (503, {"Retry-After": "5"}, b"later")
    site.pages["/binary"] = (200, {"Content-Type": "text/plain"}, b"\x00\x01\x02PK\x03\x04" * 50)
    site.pages["/empty"] = (200, {}, b"")
    site.pages["/slow"] = (200, {}, b"too late")
    site.delay["/slow"] = 4
    app.config["MAX_CONTENT_LENGTH"] = 20_000
    client = api_client(app)
    paths = ["/big.txt", "/bomb.txt", "/gone", "/busy", "/binary", "/empty", "/slow"]
    entries = fetch(client, *(site.base + p for p in paths)).get_json()["documents"]
    run_worker(MAX_CONTENT_LENGTH="20000", FETCH_READ_TIMEOUT="1", FETCH_JOB_RETRIES="2")
    outcome = {p: client.get(e["status_url"]).get_json() for p, e in zip(paths, entries)}
    expected = {"/big.txt": "file_too_large", "/bomb.txt": "file_too_large", "/gone": "http_error",
                "/binary": "unsupported_media_type", "/empty": "empty_file"}
    for path, code in expected.items():
        assert outcome[path]["status"] == "failed" and outcome[path]["error_code"] == code, (path, outcome[path])
        assert outcome[path]["attempts"] == 1  # permanent: not retried
    assert "404" in outcome["/gone"]["error"]
    assert "20,000-byte limit" in outcome["/bomb.txt"]["error"]
    for path, code in (("/busy", "http_error"), ("/slow", "fetch_timeout")):  # transient: a retry is scheduled
        job = outcome[path]
        assert job["status"] == "scheduled" and job["retry_at"], (path, job)
        assert row(app, entries[paths.index(path)]["job_id"]).error_code == code, path
    assert "FETCH_READ_TIMEOUT 1.0 s" in row(app, entries[paths.index("/slow")]["job_id"]).error


def test_bad_fetch_requests_get_a_sentence(app):
    client = api_client(app)
    for body, code in (({"urls": "http://x/"}, "no_url"), ({"urls": []}, "no_url"), ({"url": 5}, "no_url"),
                       ({"url": "http://x/", "urls": ["http://y/"]}, "no_url"), ({"urll": "x"}, "unknown_field"),
                       ([1, 2], "invalid_json")):
        response = client.post("/api/documents", json=body)
        assert response.status_code == 400 and response.get_json()["error"]["code"] == code, (body, response.get_json())
    app.config["MAX_FILES_PER_UPLOAD"] = 2
    response = fetch(client, "http://a.test/", "http://b.test/", "http://c.test/")
    assert response.status_code == 413 and response.get_json()["error"]["code"] == "too_many_files"


def test_the_orphans_job_leaves_a_fetch_that_has_not_downloaded_yet_alone(app, site, run_worker):
    """A fetched document's file exists only once its job ran; orphans must not call it lost."""
    from tests.jobs.test_retention_and_orphans_jobs import ONE_PROCESS, run_job

    client = api_client(app)
    waiting = fetch(client, f"{site.base}/later.txt", delay=3600).get_json()["documents"][0]
    orphans = run_job(app, run_worker, "orphans", {}, **ONE_PROCESS)
    assert orphans.status == "finished", (orphans.error, orphans.error_code)
    assert orphans.result["missing_documents"] == [] and orphans.result["failed_jobs"] == []
    assert row(app, waiting["job_id"]).status == "scheduled"


def test_a_failed_fetch_is_fetched_again_by_retry_and_by_reprocess(app, site, run_worker):
    client = api_client(app)
    entry = fetch(client, f"{site.base}/soon.txt").get_json()["documents"][0]
    run_worker()
    assert client.get(entry["status_url"]).get_json()["error_code"] == "http_error"  # 404: not there yet
    site.pages["/soon.txt"] = (200, {}, b"The notice arrived on the second try.")
    assert client.post(f"/api/jobs/{entry['job_id']}/retry").status_code == 202
    run_worker()
    job = client.get(entry["status_url"]).get_json()
    assert job["status"] == "finished" and job["attempts"] == 2, job
    assert "second try" in chunk_texts(app, entry["id"])[0]

    site.pages["/soon.txt"] = (404, {}, b"")
    other = fetch(client, f"{site.base}/soon.txt").get_json()["documents"][0]
    run_worker()
    site.pages["/soon.txt"] = (200, {}, b"The notice is back.")
    from webapp.core.documents import reprocess_document
    with app.app_context(), connection():
        job = reprocess_document(other["id"])
    assert job.kind == "fetch"  # never downloaded: fetched again, not read from an empty storage key
    run_worker()
    assert chunk_texts(app, other["id"]) == ["The notice is back."]
