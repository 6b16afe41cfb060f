"""GET /api/queues and the /queues page: counts from RQ's queue and registries, the oldest queued
job's age, the workers listening and the jobs-per-minute rates from the Job table — with real
worker processes and real Redis; admins only; 503 when Redis is down."""

from __future__ import annotations

import io
from datetime import datetime, timedelta

from bs4 import BeautifulSoup
from rq import Queue
from rq.job import Job as RQJob

from tests.conftest import api_client, browser_client, row, serve_wsgi, upload, wait_for
from tests.edge.test_dashboard import Receiver, webhook_of
from webapp import create_app
from webapp.core.db import connection, create_tables
from webapp.core.models import utcnow
from webapp.core.queue_stats import queue_statistics
from webapp.core.queues import QUEUE_NAMES

COUNT_KEYS = {"queued", "started", "scheduled", "deferred", "failed", "finished", "canceled"}


def text_document(client, text: str, **fields: str) -> str:
    """Upload a small text document; returns its job id."""
    body = client.post("/api/documents", data={"file": (io.BytesIO(text.encode()), "note.txt"), **fields},
                       content_type="multipart/form-data").get_json()
    return body["documents"][0]["job_id"]


def statistics(client) -> dict[str, dict]:
    answer = client.get("/api/queues")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    body = answer.get_json()
    assert set(body) == {"queues", "generated_at"}
    assert datetime.fromisoformat(body["generated_at"]).utcoffset() == timedelta(0)
    assert [q["name"] for q in body["queues"]] == list(QUEUE_NAMES)
    for queue in body["queues"]:
        assert set(queue) == {"name", "counts", "oldest_queued_age_seconds", "workers", "jobs_per_minute", "waiting",
                              "owners"}
        assert set(queue["counts"]) == COUNT_KEYS
        assert set(queue["jobs_per_minute"]) == {"last_5_minutes", "last_60_minutes"}
        assert set(queue["waiting"]) == {"delayed", "for_batch"}
    assert answer.headers["Cache-Control"] == "no-store"
    return {q["name"]: q for q in body["queues"]}


def test_counts_age_workers_and_rates_of_each_queue(app, client, redis, run_worker, start_worker):
    empty = statistics(client)
    for queue in empty.values():
        assert queue["counts"] == dict.fromkeys(COUNT_KEYS, 0)
        assert queue["oldest_queued_age_seconds"] is None and queue["workers"] == 0
        assert queue["jobs_per_minute"] == {"last_5_minutes": 0.0, "last_60_minutes": 0.0}
        assert queue["waiting"] == {"delayed": 0, "for_batch": 0}
        assert queue["owners"] == []

    # A burst worker: on default a finished, a failed and a canceled document; on high a finished report.
    finished = text_document(client, "A note that is processed.")
    failed = upload(client, "libreoffice-writer-password.pdf", password="wrong").get_json()["documents"][0]["job_id"]
    canceled = text_document(client, "A note that is canceled.")
    assert client.post(f"/api/jobs/{canceled}/cancel").status_code == 200
    report = client.post("/api/reports", json={"type": "activity", "params": {}}).get_json()["job_id"]
    run_worker()
    assert [row(app, j).status for j in (finished, failed, canceled, report)] == [
        "finished", "failed", "canceled", "finished"]

    # Two worker processes (one on high and default, one on high only), both held by a webhook.
    state = Receiver()
    with serve_wsgi(state.wsgi_app) as url:
        try:
            start_worker(WORKER_CONCURRENCY="1", HIGH_QUEUE_WORKERS="1", WEBHOOK_TIMEOUT="120",
                         WEBHOOK_JOB_TIMEOUT="300")
            held = [text_document(client, f"A note whose webhook is held, {n}.", callback_url=f"{url}/block")
                    for n in range(2)]
            for job_id in held:
                wait_for(lambda: (lambda w: w and w.status == "started")(webhook_of(app, job_id)), 60,
                         "the webhook to be held")
            # Both processes are busy: these wait.
            waiting_document = text_document(client, "A note that waits for a worker.")
            waiting_report = client.post("/api/reports", json={"type": "activity", "params": {}}).get_json()["job_id"]
            Queue("default", connection=redis).enqueue("tests.jobs_for_tests.describe_process",
                                                       depends_on=waiting_document, job_id="deferred-job")
            Queue("high", connection=redis).enqueue_in(timedelta(hours=1), "tests.jobs_for_tests.describe_process")

            # Waiting outside RQ's registries: two delayed documents with their batch's report, a
            # delayed report (rows, not RQ's scheduled registry: that one holds RQ's own delayed job).
            client.post("/api/documents", data={"file": [(io.BytesIO(b"later one"), "a.txt"),
                                                          (io.BytesIO(b"later two"), "b.txt")],
                                                 "delay": "3600", "report": "documents"},
                        content_type="multipart/form-data")
            client.post("/api/reports", json={"type": "activity", "delay": 3600})

            stats = statistics(client)
            assert stats["default"]["waiting"] == {"delayed": 2, "for_batch": 0}
            assert stats["high"]["waiting"] == {"delayed": 1, "for_batch": 1}
            assert stats["high"]["counts"] == {"queued": 1, "started": 2, "scheduled": 1, "deferred": 0,
                                               "failed": 0, "finished": 1, "canceled": 0}
            assert stats["default"]["counts"] == {"queued": 1, "started": 0, "scheduled": 0, "deferred": 1,
                                                  "failed": 1, "finished": 3, "canceled": 1}
            assert (stats["high"]["workers"], stats["default"]["workers"]) == (2, 1)
            # Each owner's depth, from the rows: the held webhooks run for their document's owner.
            assert stats["default"]["owners"] == [{"owner": "tester", "queued": 1, "started": 0}]
            assert stats["high"]["owners"] == [{"owner": "tester", "queued": 1, "started": 2}]
            # Ended jobs (finished, failed, canceled rows) per minute: 5 on default, 1 on high.
            assert stats["default"]["jobs_per_minute"] == {"last_5_minutes": 1.0, "last_60_minutes": 0.083}
            assert stats["high"]["jobs_per_minute"] == {"last_5_minutes": 0.2, "last_60_minutes": 0.017}
            for name in QUEUE_NAMES:
                assert 0 <= stats[name]["oldest_queued_age_seconds"] < 60

            # The same from the core, at chosen times: the age is RQ's enqueued_at of the queue's head,
            # and the windows end at "now".
            later = utcnow() + timedelta(minutes=10)
            with app.app_context(), connection():
                at_later = {q["name"]: q for q in queue_statistics(now=later)["queues"]}
            for name, job_id in (("default", waiting_document), ("high", waiting_report)):
                rq_enqueued = RQJob.fetch(job_id, connection=redis).enqueued_at
                expected = (later - rq_enqueued.replace(tzinfo=None)).total_seconds()
                assert abs(at_later[name]["oldest_queued_age_seconds"] - expected) <= 0.1
                assert at_later[name]["oldest_queued_age_seconds"] >= 600
            assert at_later["default"]["jobs_per_minute"] == {"last_5_minutes": 0.0, "last_60_minutes": 0.083}
            assert at_later["high"]["jobs_per_minute"] == {"last_5_minutes": 0.0, "last_60_minutes": 0.017}
        finally:
            state.release.set()


def test_only_admins_read_the_statistics_and_redis_down_is_503(app, config, unused_redis_url):
    assert api_client(app, owner="alice", admin=False).get("/api/queues").get_json()["error"]["code"] == \
        "admin_required"
    assert api_client(app, owner="alice", admin=False).get("/api/queues").status_code == 403
    assert browser_client(app, owner="alice", admin=False).get("/api/queues").status_code == 403
    assert app.test_client().get("/api/queues").status_code == 401
    assert browser_client(app).get("/api/queues").status_code == 200  # an admin's session, as the page asks

    down = create_app({**config, "REDIS_URL": unused_redis_url})
    with down.app_context():
        create_tables()
    answer = api_client(down).get("/api/queues")
    assert answer.status_code == 503
    assert answer.get_json()["error"]["code"] == "queue_unavailable" and answer.get_json()["error"]["message"]


def test_the_queues_page_renders_for_admins_only_and_links_to_the_dashboard(app):
    admin = browser_client(app)
    response = admin.get("/queues")
    assert response.status_code == 200 and response.mimetype == "text/html"
    page = BeautifulSoup(response.get_data(as_text=True), "html.parser")
    scripts = [s["src"] for s in page.find_all("script")]  # files only: KeyError for an inline one
    assert scripts == ["/static/common.js", "/static/queues.js"]
    assert not page.find_all(style=True) and not page.find("style")
    for url in scripts:
        assert admin.get(url).status_code == 200
    assert "/api/queues" in admin.get("/static/queues.js").get_data(as_text=True)
    links = {a.get_text(strip=True): a["href"] for a in page.find_all("a", href=True)}
    assert links["Queues"] == "/queues" and links["Dashboard"] == "/rq/" and links["Schedules"] == "/schedules"
    assert "/rq/" in {a["href"] for a in page.find("main").find_all("a", href=True)}
    current = page.find("a", attrs={"aria-current": "page"})
    assert current["href"] == "/queues"
    for href in ("/queues", "/rq/", "/schedules"):
        assert admin.get(href).status_code == 200, href

    non_admin = browser_client(app, owner="alice", admin=False)
    assert non_admin.get("/queues").status_code == 403
    home = BeautifulSoup(non_admin.get("/").get_data(as_text=True), "html.parser")
    hrefs = {a["href"] for a in home.find_all("a", href=True)}
    assert "/queues" not in hrefs and "/rq/" not in hrefs  # admin links are not shown to others
    signed_out = app.test_client().get("/queues")
    assert signed_out.status_code == 302 and signed_out.headers["Location"].startswith("/signin")
