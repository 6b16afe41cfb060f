"""rq-dashboard at /rq: every page and JSON endpoint answers for jobs of every kind Docket makes in
every state RQ can hold them (real worker processes, real Redis), for admins only; its CSP lets
its script run; its job page works for jobs with dependencies; it links to Docket's schedules."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import pytest
from bs4 import BeautifulSoup
from rq import Queue
from rq.job import Job as RQJob
from rq.registry import FailedJobRegistry, ScheduledJobRegistry
from werkzeug.wrappers import Request, Response

from tests.conftest import api_client, browser_client, row, serve_wsgi, upload, wait_for
from webapp.db import connection
from webapp.job_kinds import JOB_KINDS
from webapp.models import Job
from webapp.queues import QUEUE_NAMES

REGISTRIES = ("queued", "started", "scheduled", "deferred", "failed", "finished", "canceled")
RQ_STATES = {"queued", "started", "finished", "failed", "canceled", "stopped", "scheduled", "deferred"}
# Values for the variable parts of rq-dashboard's routes (a job id is added per test).
SAMPLE_ARGS = {"instance_number": "0", "queue_name": "default", "registry_name": "failed", "per_page": "8",
               "order": "asc", "page": "1", "filename": "css/main.css"}


@dataclass
class Receiver:
    """A webhook receiver: ``/ok`` answers 204, ``/reject`` 400 (permanent), ``/error`` 500
    (transient: retried), ``/block`` holds the request until :attr:`release` is set (≤ 120 s)."""

    url: str = ""
    release: threading.Event = field(default_factory=threading.Event)
    blocked: list[str] = field(default_factory=list)

    def wsgi_app(self, environ, start_response):
        request = Request(environ)
        request.get_data()
        status = {"/ok": 204, "/reject": 400, "/error": 500}.get(request.path, 204)
        if request.path == "/block":
            self.blocked.append(request.path)
            self.release.wait(120)
        return Response(status=status)(environ, start_response)


@pytest.fixture
def receiver():
    state = Receiver()
    with serve_wsgi(state.wsgi_app) as url:
        state.url = url
        yield state
        state.release.set()


def dashboard_routes(app) -> list:
    """Every URL rule of rq-dashboard's blueprint in ``app``."""
    return [rule for rule in app.url_map.iter_rules() if rule.endpoint.startswith("rq_dashboard.")]


def sample_path(rule, job_id: str) -> str:
    values = {**SAMPLE_ARGS, "job_id": job_id}
    return re.sub(r"<(?:[^:>]+:)?([^>]+)>", lambda m: values[m.group(1)], rule.rule)


def webhook_of(app, job_id: str) -> Job | None:
    """The webhook delivery row launched for job ``job_id`` (its params name it)."""
    with app.app_context(), connection():
        rows = [j for j in Job.select().where(Job.kind == "webhook") if (j.params or {}).get("job_id") == job_id]
    return rows[-1] if rows else None


def start_maintenance(app) -> list[str]:
    """Start reconcile, retention and orphans as the scheduler does (their ``start``); their job ids."""
    from webapp.scheduling import SCHEDULABLE_JOBS

    with app.app_context(), connection():
        return [SCHEDULABLE_JOBS[name].start({}, app.config, None).id for name in ("reconcile", "retention", "orphans")]


def every_rq_job_id(redis) -> set[str]:
    """The ids in every queue and registry RQ has for Docket's queues."""
    from webapp.queue_stats import REGISTRIES as REGISTRY_CLASSES

    ids = set()
    for name in QUEUE_NAMES:
        ids.update(Queue(name, connection=redis).get_job_ids())
        for registry_class in REGISTRY_CLASSES.values():
            ids.update(registry_class(name, connection=redis).get_job_ids(cleanup=False))
    return ids


def test_every_dashboard_page_answers_for_every_kind_of_job_in_every_state(
    app, client, redis, receiver, run_worker, start_worker
):
    # --- phase 1, a burst worker: finished and failed jobs of every kind, canceled ones ---------
    delivered = upload(client, "pypdf-extract-text.md", callback_url=f"{receiver.url}/ok").get_json()["documents"][0]
    rejected = upload(client, "minimal-document.pdf", callback_url=f"{receiver.url}/reject").get_json()["documents"][0]
    wrong_password = upload(client, "libreoffice-writer-password.pdf", password="wrong").get_json()["documents"][0]
    report = client.post("/api/reports", json={"type": "activity", "params": {}}).get_json()
    maintenance = start_maintenance(app)
    canceled_document = post_text_document(client, "canceled.txt")
    canceled_report = client.post("/api/reports", json={"type": "documents", "params": {}}).get_json()
    for job_id in (canceled_document, canceled_report["job_id"]):
        assert client.post(f"/api/jobs/{job_id}/cancel").get_json()["status"] == "canceled"
    run_worker()
    run_worker()  # the webhooks launched when the documents ended
    assert row(app, delivered["job_id"]).status == "finished"
    assert row(app, wrong_password["job_id"]).status == "failed"
    assert row(app, report["job_id"]).status == "finished"
    assert {row(app, job_id).status for job_id in maintenance} == {"finished"}
    assert webhook_of(app, delivered["job_id"]).status == "finished"
    assert webhook_of(app, rejected["job_id"]).status == "failed"

    # --- phase 2, one long-running worker process: scheduled, stopped, started, then queued ------
    start_worker(WORKER_CONCURRENCY="1", HIGH_QUEUE_WORKERS="0", WEBHOOK_TIMEOUT="120", WEBHOOK_JOB_TIMEOUT="300")
    retried = upload(client, "pypdf-extract-text.md", callback_url=f"{receiver.url}/error",
                     reprocess="true").get_json()["documents"][0]
    scheduled_id = wait_for(lambda: (lambda w: w and w.status == "scheduled" and w.id)(
        webhook_of(app, retried["job_id"])), 60, "the failing webhook to wait for its retry")
    registry = ScheduledJobRegistry("high", connection=redis)
    wait_for(lambda: scheduled_id in registry.get_job_ids(cleanup=False), 30, "RQ to schedule the retry")
    # Its jittered delay is a second or two; a retry delay of an hour holds it there for the test.
    registry.schedule(RQJob.fetch(scheduled_id, connection=redis), datetime.now(timezone.utc) + timedelta(hours=1))

    to_stop = upload(client, "minimal-document.pdf", callback_url=f"{receiver.url}/block",
                     reprocess="true").get_json()["documents"][0]
    stopped_id = wait_for(lambda: (lambda w: w and w.status == "started" and w.id)(
        webhook_of(app, to_stop["job_id"])), 60, "the webhook to start")
    wait_for(lambda: receiver.blocked, 30, "the receiver to hold the webhook")
    assert client.post(f"/api/jobs/{stopped_id}/cancel").status_code == 200
    wait_for(lambda: row(app, stopped_id).status == "stopped", 30, "the running webhook to stop")

    running = upload(client, "pypdf-extract-text.md", callback_url=f"{receiver.url}/block",
                     reprocess="true").get_json()["documents"][0]
    started_id = wait_for(lambda: (lambda w: w and w.status == "started" and w.id)(
        webhook_of(app, running["job_id"])), 60, "the second webhook to start")

    # The only worker process is busy: everything launched now waits.
    queued_document = post_text_document(client, "queued.txt")
    queued_report = client.post("/api/reports", json={"type": "activity", "params": {}}).get_json()["job_id"]
    queued_maintenance = start_maintenance(app)
    from webapp.launch import launch
    with app.app_context(), connection():
        queued_webhook = launch("webhook", {"job_id": delivered["job_id"]}).id
    # A job created with depends_on (Docket makes none yet): deferred behind the queued document.
    deferred = Queue("default", connection=redis).enqueue(
        "tests.jobs_for_tests.describe_process", depends_on=[queued_document, delivered["job_id"]],
        job_id="deferred-job")

    # --- what RQ and the rows say -----------------------------------------------------------------
    job_ids = every_rq_job_id(redis)
    states = {job_id: RQJob.fetch(job_id, connection=redis).get_status().value for job_id in job_ids}
    assert set(states.values()) == RQ_STATES, states
    assert states[deferred.id] == "deferred" and states[started_id] == "started"
    assert states[scheduled_id] == "scheduled" and states[stopped_id] == "stopped"
    for job_id in (queued_document, queued_report, queued_webhook, *queued_maintenance):
        assert states[job_id] == "queued" and row(app, job_id).status == "queued"
    assert (row(app, scheduled_id).status, row(app, stopped_id).status, row(app, started_id).status) == (
        "scheduled", "stopped", "started")
    kinds = {row(app, job_id).kind for job_id in job_ids if job_id != deferred.id}
    assert kinds == set(JOB_KINDS)

    # --- every page, as an admin's browser --------------------------------------------------------
    admin = browser_client(app)
    pages = ["/rq/", "/rq/0/", "/rq/0/view", "/rq/0/view/queues", "/rq/0/view/workers", "/rq/0/view/jobs",
             "/rq/0/data/queues.json", "/rq/0/data/workers.json", "/rq/favicon.ico"]
    for queue_name in QUEUE_NAMES:
        for registry_name in REGISTRIES:
            for order in ("asc", "dsc"):
                pages.append(f"/rq/0/view/jobs/{queue_name}/{registry_name}/8/{order}/1")
                pages.append(f"/rq/0/data/jobs/{queue_name}/{registry_name}/8/{order}/1.json")
    for job_id in sorted(job_ids):
        pages += [f"/rq/0/view/job/{job_id}", f"/rq/0/data/job/{job_id}.json"]
    for path in pages:
        response = admin.get(path, follow_redirects=True)
        assert response.status_code == 200, (path, response.get_data(as_text=True)[:500])

    # The JSON the pages read shows the jobs where they are.
    overview = {q["name"]: q for q in admin.get("/rq/0/data/queues.json").get_json()["queues"]}
    assert overview["high"]["scheduled_job_registry_count"] == 1
    assert overview["high"]["started_job_registry_count"] == 1
    assert overview["default"]["deferred_job_registry_count"] == 1
    listed = admin.get("/rq/0/data/jobs/default/deferred/8/asc/1.json").get_json()["jobs"]
    assert [job["id"] for job in listed] == [deferred.id]
    detail = admin.get(f"/rq/0/data/job/{deferred.id}.json").get_json()
    assert sorted(detail["depends_on"]) == sorted([queued_document, delivered["job_id"]])
    assert detail["depends_on_status"] == ["active", "active"] and detail["status"] == "deferred"
    workers = admin.get("/rq/0/data/workers.json").get_json()["workers"]
    assert any(w["current_job"] != "idle" and w["current_job"]["job_id"] == started_id for w in workers)
    assert all(set(w["queues"]) <= set(QUEUE_NAMES) for w in workers)

    # Every route of the blueprint was requested (the POST actions are covered by the refusal test).
    requested = {urlsplit(path).path for path in pages}
    for rule in dashboard_routes(app):
        if "GET" in rule.methods and rule.endpoint not in ("rq_dashboard.static", "rq_dashboard.requeue_all"):
            pattern = re.sub(r"<[^>]+>", "[^/]+", re.escape(rule.rule))
            assert any(re.fullmatch(pattern, path) for path in requested), rule.rule


def post_text_document(client, name: str) -> str:
    """Upload a small text document of its own (distinct bytes); returns its job id."""
    import io

    body = client.post("/api/documents", data={"file": (io.BytesIO(f"A note called {name}.".encode()), name)},
                       content_type="multipart/form-data").get_json()
    return body["documents"][0]["job_id"]


def test_the_dashboard_pages_run_their_script_under_their_own_csp_and_link_to_docket(app, client, redis):
    admin = browser_client(app)
    response = admin.get("/rq/")
    assert response.status_code == 200
    policy = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in policy and "'unsafe-inline'" not in policy.split("script-src")[1].split(";")[0]
    assert response.headers["X-Frame-Options"] == "DENY"
    page = BeautifulSoup(response.get_data(as_text=True), "html.parser")
    nonce = re.search(r"'nonce-([^']+)'", policy).group(1)
    # The inline script runs with the nonce; underscore's templates (type text/template) never run.
    inline = [s for s in page.find_all("script") if not s.get("src") and s.get("type", "text/javascript") == "text/javascript"]
    assert len(inline) == 1 and inline[0].get("nonce") == nonce
    assert admin.get("/rq/").headers["Content-Security-Policy"] != policy  # a new nonce per answer
    for script in page.find_all("script", src=True) + page.find_all("link", rel="stylesheet"):
        url = script.get("src") or script.get("href")
        assert urlsplit(url).netloc == "" and admin.get(url).status_code == 200, url  # no CDN
    links = {a["href"] for a in page.find_all("a", href=True)}
    assert {"/schedules", "/queues", "/"} <= links
    # The dashboard's POSTs carry the page's CSRF token (jQuery's ajaxSetup reads this meta tag).
    assert page.find("meta", attrs={"name": "csrf-token"})["content"]
    assert admin.post("/rq/queue/default/compact").get_json() == {"status": "OK"}  # empty: nothing to do
    queued = post_text_document(client, "compact.txt")
    assert admin.post("/rq/queue/default/compact").get_json() == {"status": "OK"}
    assert Queue("default", connection=redis).get_job_ids() == [queued]
    without_token = app.test_client()
    without_token.set_cookie("session", admin.get_cookie("session").value)
    refused = without_token.post("/rq/queue/default/compact")
    assert refused.status_code == 403  # csrf_failed
    # Other pages keep the strict policy.
    assert "'unsafe-eval'" not in admin.get("/").headers["Content-Security-Policy"]


def test_only_admins_reach_the_dashboard_and_refused_actions_leave_the_jobs_alone(app, client, redis, run_worker):
    failed = upload(client, "libreoffice-writer-password.pdf", password="wrong").get_json()["documents"][0]["job_id"]
    run_worker()
    queued = upload(client, "pypdf-extract-text.md").get_json()["documents"][0]["job_id"]
    assert row(app, failed).status == "failed" and row(app, queued).status == "queued"
    routes = dashboard_routes(app)
    assert len(routes) >= 15

    def requests_of(job_id):
        for rule in routes:
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                yield method, sample_path(rule, job_id)

    non_admin = browser_client(app, owner="alice", admin=False)
    signed_out = app.test_client()
    admin_token = api_client(app)  # a bearer token signs in /api only, never the HTML pages
    def open_(client_, path, method):
        """The answer for ``path``; a route of instance 0 redirects (308) to its canonical URL first."""
        answer = client_.open(path, method=method)
        return client_.open(answer.headers["Location"], method=method) if answer.status_code == 308 else answer

    for job_id in (failed, queued):
        for method, path in requests_of(job_id):
            answer = open_(non_admin, path, method)
            assert answer.status_code == 403, (method, path, answer.status_code)
            assert answer.get_json()["error"]["code"] == "admin_required", (method, path)
            for anonymous in (signed_out, admin_token):
                answer = open_(anonymous, path, method)
                assert answer.status_code == 302, (method, path, answer.status_code)
                assert urlsplit(answer.headers["Location"]).path == "/signin", (method, path)
    # Requeue (also by GET), delete, empty and compact changed nothing.
    for path in ("/rq/requeue/default", f"/rq/job/{failed}/requeue", f"/rq/job/{failed}/delete",
                 "/rq/queue/default/failed/empty", "/rq/queue/default/queued/empty"):
        assert non_admin.post(path).status_code == 403
    assert non_admin.get("/rq/requeue/default").status_code == 403
    assert FailedJobRegistry("default", connection=redis).get_job_ids(cleanup=False) == [failed]
    assert Queue("default", connection=redis).get_job_ids() == [queued]
    assert RQJob.fetch(failed, connection=redis).get_status().value == "failed"
    assert (row(app, failed).status, row(app, queued).status) == ("failed", "queued")
    # The non-admin's own pages still work; an admin's session reaches the dashboard.
    assert non_admin.get("/").status_code == 200
    assert browser_client(app).get("/rq/").status_code == 200


def test_the_dashboard_uses_the_apps_redis_and_tls_setting():
    from redis_sentinel_url import connect

    from webapp.dashboard import dashboard_redis_url

    assert dashboard_redis_url("redis://127.0.0.1:6379/2", tls_verify=False) == "redis://127.0.0.1:6379/2"
    assert dashboard_redis_url("rediss://h:6380/0") == "rediss://h:6380/0"
    unverified = dashboard_redis_url("rediss://:pw@h:6380/0?ssl_cert_reqs=required", tls_verify=False)
    assert unverified == "rediss://:pw@h:6380/0?ssl_cert_reqs=none"
    # rq-dashboard's own client factory (no connection is made) reads it as REDIS_TLS_VERIFY=false means.
    client = connect(unverified)[1]
    assert client.connection_pool.connection_kwargs["ssl_cert_reqs"] == "none"
