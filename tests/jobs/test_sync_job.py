"""Sources kept in sync (issue 23) with real RQ workers, real Redis, the test database, moto's S3
server (tests/s3_server.py) and loopback HTTP servers for web and sitemap sources.

* An S3 source synced; 3 objects changed, 2 deleted, 5 added → exactly those counts; search no
  longer returns the deleted ones, finds the changed ones' new text and not their old text.
* A failed item (unsupported bytes; a document job that fails) is retried by the next sync and
  counted synced only once its document job finished.
* Two syncs of one source never overlap: a second request while one waits answers 409 with the
  first one's job, a scheduled one is skipped.
* Web sources: conditional GETs (ETag, Last-Modified) answered 304 are unchanged, a page without
  either is compared by SHA-256, a 404 deletes, a 5xx is a failed item and deletes nothing.
* A sitemap source; refused URLs at registration; DELETE with and without its documents; owners.
"""

from __future__ import annotations

import threading

import boto3
import pytest

from tests.conftest import api_client, serve_wsgi
from tests.s3_server import bucket, s3_endpoint, s3_env  # noqa: F401  (fixtures)
from webapp.core.db import connection
from webapp.core.models import Document, Schedule, SourceItem
from webapp.core.search import search_chunks


@pytest.fixture
def config(config, s3_env):
    """The usual test config plus boto3's variables for moto (process_env hands them to the
    workers) and private networks allowed for fetches (the test servers listen on 127.0.0.1)."""
    return {**config, **s3_env, "FETCH_ALLOW_PRIVATE_NETWORKS": True}


def run_sync(app, client, source_id: str, run_worker) -> dict:
    """Start a sync, run a burst worker (the sync, then the document jobs it launched) and return
    the sync's entry of ``GET /api/sources/<id>``."""
    response = client.post(f"/api/sources/{source_id}/sync")
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["job_id"]
    run_worker(FETCH_ALLOW_PRIVATE_NETWORKS="true")
    source = client.get(f"/api/sources/{source_id}").get_json()
    sync = source["syncs"][0]
    assert sync["job_id"] == job_id
    assert sync["status"] == "finished", sync
    return sync


def found(app, word: str, owner: str = "alice") -> set[str]:
    """The file names of the documents whose chunks a text search for ``word`` returns."""
    with app.app_context(), connection():
        return {hit["filename"] for hit in search_chunks(word, 50, owner=owner, mode="text")}


def counts(sync: dict, **expected: int) -> dict:
    return {name: sync["counts"][name] for name in expected}


def text(word: str) -> bytes:
    return f"This note is about {word}. It says {word} twice, and nothing else of note.".encode()


def test_an_s3_source_follows_changes_deletions_and_additions(app, bucket, run_worker):
    s3 = boto3.client("s3")
    for n in range(10):
        s3.put_object(Bucket=bucket, Key=f"notes/note{n}.txt", Body=text(f"kumquat{n}"))
    s3.put_object(Bucket=bucket, Key="elsewhere/outside.txt", Body=text("outsider"))
    client = api_client(app, "alice", admin=False)
    response = client.post("/api/sources", json={"kind": "s3", "url": f"s3://{bucket}/notes/"})
    assert response.status_code == 201, response.get_json()
    source_id = response.get_json()["id"]
    assert response.get_json()["url"] == f"s3://{bucket}/notes/"
    assert response.get_json()["source_url"] == f"/api/sources/{source_id}"

    first = client.post(f"/api/sources/{source_id}/sync")
    assert first.status_code == 202
    # A second request while the first waits: 409 with the first one's job, never a second sync.
    second = client.post(f"/api/sources/{source_id}/sync")
    assert second.status_code == 409, second.get_json()
    assert second.get_json()["job_id"] == first.get_json()["job_id"]
    assert second.get_json()["error"]["code"] == "sync_running"
    run_worker()
    sync = client.get(f"/api/sources/{source_id}").get_json()["syncs"][0]
    assert sync["status"] == "finished"
    assert counts(sync, listed=10, ingested=10, changed=0, deleted=0, unchanged=0, failed=0) == \
        dict(listed=10, ingested=10, changed=0, deleted=0, unchanged=0, failed=0)
    assert found(app, "kumquat3") == {"note3.txt"}
    assert found(app, "outsider") == set()
    assert client.get(f"/api/sources/{source_id}").get_json()["items"]["synced"] == 10

    for n in (0, 1, 2):
        s3.put_object(Bucket=bucket, Key=f"notes/note{n}.txt", Body=text(f"rambutan{n}"))
    for n in (3, 4):
        s3.delete_object(Bucket=bucket, Key=f"notes/note{n}.txt")
    for n in range(10, 15):
        s3.put_object(Bucket=bucket, Key=f"notes/note{n}.txt", Body=text(f"kumquat{n}"))
    sync = run_sync(app, client, source_id, run_worker)
    assert counts(sync, listed=13, ingested=5, changed=3, deleted=2, unchanged=5, failed=0, retried=0) == \
        dict(listed=13, ingested=5, changed=3, deleted=2, unchanged=5, failed=0, retried=0)
    assert found(app, "kumquat3") == found(app, "kumquat4") == set()  # deleted: gone from search
    assert found(app, "rambutan1") == {"note1.txt"}  # changed: the new text found …
    assert found(app, "kumquat1") == set()  # … the old text gone
    assert found(app, "kumquat12") == {"note12.txt"}
    with app.app_context(), connection():
        assert Document.select().where(Document.owner == "alice").count() == 13  # one per item, the same rows
    detail = client.get(f"/api/sources/{source_id}").get_json()
    assert detail["items"] == {"total": 13, "synced": 13, "pending": 0, "failed": 0}

    # Nothing changed: nothing downloaded or launched.
    sync = run_sync(app, client, source_id, run_worker)
    assert counts(sync, unchanged=13, ingested=0, changed=0, deleted=0) == dict(unchanged=13, ingested=0, changed=0,
                                                                                 deleted=0)


def test_a_failed_item_is_retried_by_the_next_sync(app, bucket, run_worker):
    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key="in/good.txt", Body=text("persimmon"))
    s3.put_object(Bucket=bucket, Key="in/odd.bin", Body=bytes(range(256)) * 4)  # no supported type
    s3.put_object(Bucket=bucket, Key="in/broken.pdf", Body=b"%PDF-1.4\n" + b"\x00garbage" * 50)  # its job fails
    client = api_client(app, "alice", admin=False)
    source_id = client.post("/api/sources", json={"kind": "s3", "url": f"s3://{bucket}/in/"}).get_json()["id"]

    sync = run_sync(app, client, source_id, run_worker)
    assert counts(sync, listed=3, ingested=2, failed=1) == dict(listed=3, ingested=2, failed=1)
    detail = client.get(f"/api/sources/{source_id}").get_json()
    assert detail["items"] == {"total": 3, "synced": 1, "pending": 0, "failed": 2}

    # Unchanged, but not synced: the unsupported one is tried again, the broken PDF's job launched again.
    sync = run_sync(app, client, source_id, run_worker)
    assert counts(sync, unchanged=1, failed=1, retried=1, ingested=0) == dict(unchanged=1, failed=1, retried=1,
                                                                                ingested=0)

    s3.put_object(Bucket=bucket, Key="in/odd.bin", Body=text("tamarind"))
    s3.put_object(Bucket=bucket, Key="in/broken.pdf", Body=text("soursop"))
    sync = run_sync(app, client, source_id, run_worker)
    assert counts(sync, unchanged=1, ingested=1, changed=1, failed=0) == dict(unchanged=1, ingested=1, changed=1,
                                                                                failed=0)
    assert client.get(f"/api/sources/{source_id}").get_json()["items"]["synced"] == 3
    assert found(app, "tamarind") == {"odd.bin"}
    assert found(app, "soursop") == {"broken.pdf"}


def test_a_scheduled_sync_goes_through_the_same_guard(app, bucket):
    from webapp.core.schedules.table import fire

    client = api_client(app, "alice", admin=False)
    bad = client.post("/api/sources", json={"kind": "s3", "url": f"s3://{bucket}/x/", "cron": "every hour"})
    assert bad.status_code == 400 and bad.get_json()["error"]["code"] == "invalid_source"
    response = client.post("/api/sources", json={"kind": "s3", "url": f"s3://{bucket}/x/", "cron": "0 * * * *"})
    assert response.status_code == 201, response.get_json()
    source = response.get_json()
    assert source["schedule"]["cron"] == "0 * * * *" and source["schedule"]["next_run_at"]
    with app.app_context(), connection():
        schedule = Schedule.get_by_id(source["schedule"]["id"])
        assert (schedule.job, schedule.params, schedule.owner) == ("sync_source", {"source_id": source["id"]}, "alice")
        started = fire(schedule.id)  # the scheduler's call when the time comes
        assert started is not None and started.kind == "sync"
    running = client.post(f"/api/sources/{source['id']}/sync")
    assert running.status_code == 409 and running.get_json()["job_id"] == started.id
    with app.app_context(), connection():
        # The schedule's own "previous run still waiting" rule aside, the source's guard skips it.
        Schedule.update(last_job_id=None).where(Schedule.id == schedule.id).execute()
        assert fire(schedule.id) is None
    assert client.delete(f"/api/sources/{source['id']}").status_code == 204
    with app.app_context(), connection():
        assert Schedule.get_or_none(Schedule.id == schedule.id) is None


class Site:
    """A small web site for web and sitemap sources: ``pages`` path → (body, headers); a path
    missing answers 404; ``status`` path → a forced status. Honours If-None-Match and
    If-Modified-Since (exact match) with 304, and records every request's conditional headers."""

    def __init__(self) -> None:
        self.pages: dict[str, tuple[bytes, dict[str, str]]] = {}
        self.status: dict[str, int] = {}
        self.requests: list[tuple[str, str | None, str | None, int]] = []
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        path = environ["PATH_INFO"]
        etag, since = environ.get("HTTP_IF_NONE_MATCH"), environ.get("HTTP_IF_MODIFIED_SINCE")
        code, body, headers = 404, b"not here", {}
        if path in self.status:
            code, body = self.status[path], b"server trouble"
        elif path in self.pages:
            body, headers = self.pages[path]
            code = 200
            if (etag and etag == headers.get("ETag")) or (since and since == headers.get("Last-Modified")):
                code, body = 304, b""
        with self.lock:
            self.requests.append((path, etag, since, code))
        reasons = {200: "OK", 304: "Not Modified", 404: "Not Found", 503: "Service Unavailable"}
        start_response(f"{code} {reasons.get(code, 'X')}",
                       [("Content-Type", "text/html; charset=utf-8"), *headers.items()])
        return [body]


def page(word: str) -> bytes:
    return f"<!doctype html><html><head><title>{word}</title></head><body><main><h1>{word}</h1>" \
           f"<p>This page is about {word}. {word} is all it says.</p></main></body></html>".encode()


def test_a_web_source_uses_etag_last_modified_then_sha256(app, run_worker):
    site = Site()
    site.pages["/a"] = (page("durian"), {"ETag": '"a1"'})
    site.pages["/b"] = (page("longan"), {"Last-Modified": "Wed, 01 Jan 2025 00:00:00 GMT"})
    site.pages["/c"] = (page("salak"), {})
    site.pages["/d"] = (page("mangosteen"), {})
    client = api_client(app, "alice", admin=False)
    with serve_wsgi(site) as base:
        urls = [f"{base}/a", f"{base}/b", f"{base}/c", f"{base}/d"]
        source_id = client.post("/api/sources", json={"kind": "web", "urls": urls}).get_json()["id"]
        sync = run_sync(app, client, source_id, run_worker)
        assert counts(sync, listed=4, ingested=4, failed=0) == dict(listed=4, ingested=4, failed=0)
        assert found(app, "durian") == {f"{base}/a"}
        with app.app_context(), connection():
            assert Document.get(Document.source_url == f"{base}/a").etag == '"a1"'

        site.requests.clear()
        sync = run_sync(app, client, source_id, run_worker)
        assert counts(sync, unchanged=4, changed=0, ingested=0) == dict(unchanged=4, changed=0, ingested=0)
        answered = {path: (etag, since, code) for path, etag, since, code in site.requests}
        assert answered["/a"] == ('"a1"', None, 304)
        assert answered["/b"] == (None, "Wed, 01 Jan 2025 00:00:00 GMT", 304)
        assert answered["/c"] == (None, None, 200)  # neither: compared by SHA-256

        site.pages["/c"] = (page("jackfruit"), {})
        del site.pages["/b"]  # 404: gone
        site.status["/d"] = 503  # a server error is a failed item, never a deletion
        sync = run_sync(app, client, source_id, run_worker)
        assert counts(sync, unchanged=1, changed=1, deleted=1, failed=1) == dict(unchanged=1, changed=1, deleted=1,
                                                                                  failed=1)
        assert found(app, "longan") == set()
        assert found(app, "jackfruit") == {f"{base}/c"} and found(app, "salak") == set()
        assert found(app, "mangosteen") == {f"{base}/d"}  # its document stays


def test_a_sitemap_source_deletes_what_leaves_the_sitemap(app, run_worker):
    site = Site()
    client = api_client(app, "alice", admin=False)
    with serve_wsgi(site) as base:
        def sitemap(*paths: str) -> bytes:
            locs = "".join(f"<url><loc>{base}{path}</loc></url>" for path in paths)
            return (f'<?xml version="1.0" encoding="UTF-8"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
                    f"{locs}</urlset>").encode()

        site.pages["/p1"] = (page("cherimoya"), {"ETag": '"p1"'})
        site.pages["/p2"] = (page("feijoa"), {"ETag": '"p2"'})
        site.pages["/inner.xml"] = (sitemap("/p1", "/p2"), {})
        site.pages["/sitemap.xml"] = (
            f'<?xml version="1.0"?><sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
            f"<sitemap><loc>{base}/inner.xml</loc></sitemap></sitemapindex>".encode(), {})
        source_id = client.post("/api/sources", json={"kind": "sitemap", "url": f"{base}/sitemap.xml"}).get_json()["id"]
        sync = run_sync(app, client, source_id, run_worker)
        assert counts(sync, listed=2, ingested=2) == dict(listed=2, ingested=2)
        assert found(app, "feijoa") == {f"{base}/p2"}

        site.pages["/inner.xml"] = (sitemap("/p1"), {})
        sync = run_sync(app, client, source_id, run_worker)
        assert counts(sync, listed=1, unchanged=1, deleted=1) == dict(listed=1, unchanged=1, deleted=1)
        assert found(app, "feijoa") == set()


def test_refused_and_invalid_sources_answer_400(app, config):
    app.config["FETCH_ALLOW_PRIVATE_NETWORKS"] = False
    client = api_client(app, "alice", admin=False)
    for body, code in [
        ({"kind": "web", "urls": ["http://127.0.0.1:8080/page"]}, "url_refused"),
        ({"kind": "sitemap", "url": "http://10.0.0.1/sitemap.xml"}, "url_refused"),
        ({"kind": "web", "urls": ["http://169.254.169.254/latest/meta-data/"]}, "url_refused"),
        ({"kind": "s3", "url": "https://bucket/prefix/"}, "invalid_source"),
        ({"kind": "s3", "url": "s3://key:secret@bucket/prefix/"}, "invalid_source"),
        ({"kind": "ftp", "url": "ftp://example.com/"}, "invalid_source"),
        ({"kind": "web", "urls": []}, "invalid_source"),
        ({"kind": "web", "urls": ["https://example.com/"], "extra": 1}, "invalid_source"),
    ]:
        response = client.post("/api/sources", json=body)
        assert response.status_code == 400, (body, response.get_json())
        error = response.get_json()["error"]
        assert error["code"] == code and error["message"].endswith("."), (body, error)
    app.config["SOURCE_MAX_ITEMS"] = 2
    response = client.post("/api/sources", json={"kind": "s3", "url": "s3://bucket/p/"})
    assert response.status_code == 201
    response = client.post("/api/sources", json={"kind": "web", "urls": [f"https://example.com/{n}" for n in range(3)]})
    assert response.status_code == 400 and "SOURCE_MAX_ITEMS" in response.get_json()["error"]["message"]


def test_delete_keeps_or_deletes_the_documents_and_owners_are_checked(app, run_worker):
    site = Site()
    site.pages["/x"] = (page("ackee"), {})
    site.pages["/y"] = (page("lucuma"), {})
    alice = api_client(app, "alice", admin=False)
    bob = api_client(app, "bob", admin=False)
    admin = api_client(app, "root", admin=True)
    with serve_wsgi(site) as base:
        keep = alice.post("/api/sources", json={"kind": "web", "urls": [f"{base}/x"], "name": "keep"}).get_json()["id"]
        drop = alice.post("/api/sources", json={"kind": "web", "urls": [f"{base}/y"]}).get_json()["id"]
        run_sync(app, alice, keep, run_worker)
        run_sync(app, alice, drop, run_worker)

    # Another owner sees nothing of them; an admin sees them all.
    assert bob.get("/api/sources").get_json() == {"sources": []}
    for method, path in [("get", f"/api/sources/{keep}"), ("post", f"/api/sources/{keep}/sync"),
                         ("delete", f"/api/sources/{keep}")]:
        response = getattr(bob, method)(path)
        assert response.status_code == 404 and response.get_json()["error"]["code"] == "source_not_found"
    assert {s["id"] for s in admin.get("/api/sources").get_json()["sources"]} == {keep, drop}
    assert [s["name"] for s in alice.get("/api/sources").get_json()["sources"]][0] == "keep"

    assert alice.delete(f"/api/sources/{keep}").status_code == 204
    assert found(app, "ackee") == {f"{base}/x"}  # detached, still searchable
    assert alice.delete(f"/api/sources/{drop}?delete_documents=true").status_code == 204
    assert found(app, "lucuma") == set()
    assert alice.get(f"/api/sources/{drop}").status_code == 404
    with app.app_context(), connection():
        assert SourceItem.select().count() == 0
        assert Document.select().where(Document.owner == "alice").count() == 1


def test_the_sources_page_has_the_form_and_a_nav_link(app):
    from tests.conftest import browser_client

    client = browser_client(app, "alice", admin=False)
    html = client.get("/sources").get_data(as_text=True)
    assert 'id="source-form"' in html and 'aria-current="page">Sources</a>' in html
    assert 'name="csrf-token"' in html and "sources.js" in html


class SlowSite(Site):
    """A web site that takes ``delay`` seconds per answer, so that a sync is still running when it is canceled."""

    delay = 0.4

    def __call__(self, environ, start_response):
        import time

        time.sleep(self.delay)
        return super().__call__(environ, start_response)


FRUITS = ["rambutan", "pitaya", "soursop", "kiwano", "tamarillo", "bilimbi", "santol", "mamoncillo"]


def test_a_sync_stopped_midway_leaves_the_next_one_correct(app, start_worker):
    """Cancel of a running sync stops it between items; the next sync ingests the rest, counts what the first
    one ingested as unchanged once processed, and every URL ends with exactly one document."""
    from tests.conftest import wait_for

    site = SlowSite()
    for fruit in FRUITS:
        site.pages[f"/{fruit}"] = (page(fruit), {"ETag": f'"{fruit}"'})
    client = api_client(app, "alice", admin=False)
    with serve_wsgi(site) as base:
        source_id = client.post("/api/sources", json={"kind": "web", "urls": [f"{base}/{f}" for f in FRUITS]}
                                ).get_json()["id"]
        job_id = client.post(f"/api/sources/{source_id}/sync").get_json()["job_id"]
        start_worker(WORKER_CONCURRENCY="1", HIGH_QUEUE_WORKERS="0", FETCH_ALLOW_PRIVATE_NETWORKS="true")
        wait_for(lambda: (client.get(f"/api/sources/{source_id}").get_json()["syncs"] or [{}])[0]
                 .get("counts", {}).get("ingested", 0) >= 2, 120, "the sync to ingest two pages")
        assert client.post(f"/api/jobs/{job_id}/cancel").get_json()["status"] == "stopped"
        first = client.get(f"/api/sources/{source_id}").get_json()["syncs"][0]
        assert first["status"] == "stopped" and 2 <= first["counts"]["ingested"] < len(FRUITS), first

        def settled():  # every document job the stopped sync launched has ended
            with app.app_context(), connection():
                from webapp.core.models import Job
                jobs = [Job.get_by_id(d.job_id).status for d in Document.select()]
            return jobs and all(status in ("finished", "failed") for status in jobs)

        wait_for(settled, 120, "the documents of the stopped sync to be processed")
        second_id = client.post(f"/api/sources/{source_id}/sync").get_json()["job_id"]
        wait_for(lambda: client.get(f"/api/jobs/{second_id}").get_json()["status"] == "finished", 120,
                 "the second sync")
        second = client.get(f"/api/sources/{source_id}").get_json()["syncs"][0]
        done = first["counts"]["ingested"]
        assert second["counts"]["listed"] == len(FRUITS)
        assert second["counts"]["unchanged"] == done and second["counts"]["ingested"] == len(FRUITS) - done, second
        assert second["counts"]["failed"] == 0
        wait_for(lambda: settled() and len(found(app, "mamoncillo")) == 1, 120, "the last page's document")
    with app.app_context(), connection():
        urls = [d.source_url for d in Document.select()]
        assert sorted(urls) == sorted(f"{base}/{f}" for f in FRUITS)  # one document per URL, none doubled
        assert SourceItem.select().where(SourceItem.synced_version.is_null()).count() == 0
    for fruit in FRUITS:
        assert len(found(app, fruit)) == 1, fruit


def test_a_syncs_counts_come_over_its_event_stream(app, config, start_worker, tmp_path):
    from tests.conftest import make_token, procfile_web
    from tests.edge.test_sse import EventStream, bearer

    site = SlowSite()
    for fruit in FRUITS[:5]:
        site.pages[f"/{fruit}"] = (page(fruit), {})
    token = make_token(app, "alice")
    client = api_client(app, "alice", admin=False, token=token)
    with serve_wsgi(site) as base, procfile_web(config, tmp_path / "web.log") as web:
        source_id = client.post("/api/sources", json={"kind": "web", "urls": [f"{base}/{f}" for f in FRUITS[:5]]}
                                ).get_json()["id"]
        job_id = client.post(f"/api/sources/{source_id}/sync").get_json()["job_id"]
        stream = EventStream(web, f"/api/jobs/{job_id}/events", bearer(token))
        events = stream.events()
        assert next(events)[1]["status"] == "queued"
        start_worker(WORKER_CONCURRENCY="1", HIGH_QUEUE_WORKERS="0", FETCH_ALLOW_PRIVATE_NETWORKS="true")
        rest = [data for name, data in events if name == "job"]
        stream.close()
    running = [event["counts"] for event in rest if event["status"] == "started" and event.get("counts")]
    assert running, rest  # the counts move while the sync runs
    ingested = [counts["ingested"] for counts in running]
    assert ingested == sorted(ingested) and running[-1]["listed"] == 5
    assert rest[-1]["status"] == "finished"
