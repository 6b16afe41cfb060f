"""rq-dashboard at /rq: every page and JSON endpoint answers for jobs of every kind Docket makes in
every state RQ can hold them (real worker processes, real Redis), for admins only; its CSP lets
its script run; its job page works for jobs with dependencies; it links to Docket's schedules. Its
actions (requeue, delete, empty, compact) answer only a POST from this site with the page's CSRF
token — a cross-site link changes nothing —, every route of the blueprint is classified as reading
or acting; a job's exception shows as text; Redis down and a refused requeue are JSON sentences."""

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
from webapp import create_app
from webapp.core.db import connection
from webapp.core.protocol.kinds import JOB_KINDS
from webapp.core.models import Job
from webapp.core.queues import QUEUE_NAMES

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
    from webapp.core.schedules.table import SCHEDULABLE_JOBS

    with app.app_context(), connection():
        return [SCHEDULABLE_JOBS[name].start({}, app.config, None).id for name in ("reconcile", "retention", "orphans")]


def every_rq_job_id(redis) -> set[str]:
    """The ids in every queue and registry RQ has for Docket's queues."""
    from webapp.core.queue_stats import REGISTRIES as REGISTRY_CLASSES

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
    app.config["FETCH_ALLOW_PRIVATE_NETWORKS"] = True  # the receiver listens on 127.0.0.1
    queued_fetch = client.post("/api/documents", json={"url": f"{receiver.url}/ok.pdf"}).get_json()
    queued_fetch = queued_fetch["documents"][0]["job_id"]
    source = client.post("/api/sources", json={"kind": "s3", "url": "s3://dashboard-test/inbox/"}).get_json()
    queued_sync = client.post(f"/api/sources/{source['id']}/sync").get_json()["job_id"]
    queued_reindex = client.post("/api/admin/reindex").get_json()["job_id"]
    from webapp.core.protocol.launch import launch
    with app.app_context(), connection():
        queued_webhook = launch("webhook", {"job_id": delivered["job_id"]}).id
        # A big PDF's page-range part and join (tests/jobs/test_document_parts.py runs them).
        queued_part = launch("document_part", {"document_id": "none", "first_page": 1, "last_page": 25}).id
        queued_join = launch("document_join", {"document_id": "none", "job_id": "none"}).id
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
    for job_id in (queued_document, queued_report, queued_webhook, queued_fetch, queued_sync, queued_reindex,
                   queued_part, queued_join, *queued_maintenance):
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

    # Every reading route of the blueprint was requested (the actions are covered by the refusal tests).
    from webapp.edge.dashboard import ACTIONS

    requested = {urlsplit(path).path for path in pages}
    for rule in dashboard_routes(app):
        endpoint = rule.endpoint.removeprefix("rq_dashboard.")
        if "GET" in rule.methods and endpoint != "static" and endpoint not in ACTIONS:
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
    # Requeue (also by GET, which an admin would get a 405 for), delete, empty and compact changed nothing.
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

    from webapp.edge.dashboard import dashboard_redis_url

    assert dashboard_redis_url("redis://127.0.0.1:6379/2", tls_verify=False) == "redis://127.0.0.1:6379/2"
    assert dashboard_redis_url("rediss://h:6380/0") == "rediss://h:6380/0"
    unverified = dashboard_redis_url("rediss://:pw@h:6380/0?ssl_cert_reqs=required", tls_verify=False)
    assert unverified == "rediss://:pw@h:6380/0?ssl_cert_reqs=none"
    # rq-dashboard's own client factory (no connection is made) reads it as REDIS_TLS_VERIFY=false means.
    client = connect(unverified)[1]
    assert client.connection_pool.connection_kwargs["ssl_cert_reqs"] == "none"


# --- the dashboard's actions: POST only, with the page's CSRF token, from this site ----------------

SITE = "http://localhost"  # the test client's origin (request.host_url)
# A link followed from another site: a top-level GET navigation carries the session cookie (SameSite=Lax)
# but no CSRF token; a browser sends no Origin on it (the second variant adds one anyway).
CROSS_SITE = ({"Referer": "https://evil.example/page", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate",
               "Accept": "text/html,application/xhtml+xml,*/*;q=0.8"},
              {"Origin": "https://evil.example", "Referer": "https://evil.example/page", "Sec-Fetch-Site": "cross-site"})
SAME_SITE = ({"Referer": f"{SITE}/rq/", "Sec-Fetch-Site": "same-origin"}, {"Origin": SITE, "Referer": f"{SITE}/rq/"})


def session_without_token(app, admin_client):
    """A client with ``admin_client``'s session cookie and no CSRF token: what a forged request carries."""
    forged = app.test_client()
    forged.set_cookie("session", admin_client.get_cookie("session").value)
    return forged


def rq_state(redis, job_ids) -> dict:
    """What the dashboard's actions could change: the default queue's and registries' ids, each job's
    RQ status (``None`` once RQ has no record of it)."""
    from rq.registry import CanceledJobRegistry

    def status(job_id):
        return RQJob.fetch(job_id, connection=redis).get_status().value if RQJob.exists(job_id, connection=redis) \
            else None

    return {"queued": Queue("default", connection=redis).get_job_ids(),
            "failed": FailedJobRegistry("default", connection=redis).get_job_ids(cleanup=False),
            "canceled": CanceledJobRegistry("default", connection=redis).get_job_ids(cleanup=False),
            "statuses": {job_id: status(job_id) for job_id in job_ids}}


def action_requests(app, job_ids) -> list[str]:
    """A path for every state-changing route of the dashboard, for every one of ``job_ids`` and every
    registry the jobs are in."""
    from webapp.edge.dashboard import ACTIONS

    paths = []
    for rule in dashboard_routes(app):
        if rule.endpoint.removeprefix("rq_dashboard.") in ACTIONS:
            for job_id in job_ids:
                for registry in ("queued", "failed", "canceled"):
                    values = {"job_id": job_id, "queue_name": "default", "registry_name": registry}
                    paths.append(re.sub(r"<(?:[^:>]+:)?([^>]+)>", lambda m: values[m.group(1)], rule.rule))
    return sorted(set(paths))


def test_every_dashboard_route_is_classified_as_read_only_or_state_changing(app):
    """An upgrade of rq-dashboard that adds a route fails here until webapp/edge/dashboard.py says what it does."""
    from webapp.edge.dashboard import ACTIONS, PAGES, READS

    endpoints = {rule.endpoint.removeprefix("rq_dashboard.") for rule in dashboard_routes(app)}
    classified = set(PAGES) | set(READS) | set(ACTIONS)
    assert not endpoints - classified, f"rq-dashboard routes Docket has not classified: {sorted(endpoints - classified)}"
    assert not classified - endpoints, f"classified routes rq-dashboard no longer has: {sorted(classified - endpoints)}"
    assert len(classified) == len(PAGES) + len(READS) + len(ACTIONS)  # no endpoint in two lists
    assert {"requeue_all", "requeue_job_view", "delete_job_view", "empty_queue", "compact_queue"} <= set(ACTIONS)
    for rule in dashboard_routes(app):
        if rule.endpoint.removeprefix("rq_dashboard.") not in ACTIONS:  # reading routes take no POST, PUT, DELETE …
            assert rule.methods <= {"GET", "HEAD", "OPTIONS"}, rule.rule


def test_an_unclassified_dashboard_route_is_refused(app):
    """Fail closed at run time too: a route in the blueprint's name that no list classifies never runs."""
    calls = []

    def new_action():
        calls.append(1)
        return {"status": "OK"}

    app.add_url_rule("/rq/new-action", endpoint="rq_dashboard.new_action", view_func=new_action,
                     methods=["GET", "POST"])
    admin = browser_client(app)
    assert admin.get("/rq/new-action").status_code == 404
    assert admin.post("/rq/new-action", headers={"Origin": SITE}).status_code == 404
    assert calls == []


def test_dashboard_actions_refuse_get_and_without_the_csrf_token_or_from_another_site_change_nothing(
    app, client, redis, run_worker
):
    failed = upload(client, "libreoffice-writer-password.pdf", password="wrong").get_json()["documents"][0]["job_id"]
    run_worker()
    queued = upload(client, "pypdf-extract-text.md").get_json()["documents"][0]["job_id"]
    canceled = post_text_document(client, "canceled.txt")
    assert client.post(f"/api/jobs/{canceled}/cancel").get_json()["status"] == "canceled"
    job_ids = (failed, queued, canceled)
    before = rq_state(redis, job_ids)
    assert before["failed"] == [failed] and before["queued"] == [queued] and before["canceled"] == [canceled]
    assert before["statuses"] == {failed: "failed", queued: "queued", canceled: "canceled"}

    admin = browser_client(app)
    forged = session_without_token(app, admin)
    paths = action_requests(app, job_ids)
    assert any(path == "/rq/requeue/default" for path in paths) and len(paths) >= 8
    for path in paths:
        for headers in CROSS_SITE + SAME_SITE:
            for client_ in (forged, admin):  # without the token, and even with it
                for method in ("GET", "HEAD"):
                    answer = client_.open(path, method=method, headers=headers)
                    assert answer.status_code == 405, (method, path, headers, answer.status_code)
                    assert answer.headers["Allow"] == "POST", (method, path)
                    assert answer.mimetype == "application/json", (method, path)
                    if method == "GET":
                        error = answer.get_json()["error"]
                        assert error["code"] == "method_not_allowed" and error["message"].endswith("."), error
        assert rq_state(redis, job_ids) == before, path

    # A POST without the token, or from another site with it, is refused too.
    for path in paths:
        for headers in SAME_SITE:
            assert forged.post(path, headers=headers).status_code == 403, path
        assert admin.post(path, headers=CROSS_SITE[1]).status_code == 403, path
    assert rq_state(redis, job_ids) == before

    # The page's buttons: a POST from this site with the token requeues the failed job.
    answer = admin.post("/rq/requeue/default", headers=SAME_SITE[1])
    assert answer.status_code == 200 and answer.get_json()["count"] == 1 and answer.get_json()["refused"] == []
    after = rq_state(redis, job_ids)
    assert after["failed"] == [] and after["queued"] == [queued, failed] and after["statuses"][failed] == "queued"
    assert row(app, failed).status == "queued"  # Docket's retry: the row follows


def test_dashboard_actions_check_the_token_and_origin_themselves(app, client, redis, monkeypatch):
    """Should the app-wide hook ever stop checking POSTs (here: it takes POST for a safe method), the
    actions still refuse a POST without the page's token or from another site."""
    queued = post_text_document(client, "kept.txt")
    admin = browser_client(app)
    forged = session_without_token(app, admin)
    monkeypatch.setattr("webapp.edge.auth.SAFE_METHODS", frozenset({"GET", "HEAD", "OPTIONS", "POST"}))
    for path in ("/rq/queue/default/queued/empty", f"/rq/job/{queued}/delete"):
        assert forged.post(path, headers=SAME_SITE[1]).status_code == 403, path  # csrf_failed
        refused = admin.post(path, headers=CROSS_SITE[1])
        assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "cross_origin_refused", path
    assert Queue("default", connection=redis).get_job_ids() == [queued]
    emptied = admin.post("/rq/queue/default/queued/empty", headers=SAME_SITE[1]).get_json()
    assert emptied["status"] == "OK" and emptied["canceled"] == [queued]
    assert Queue("default", connection=redis).get_job_ids() == []


def test_the_dashboard_buttons_post_every_action_with_the_csrf_token(app, redis):
    """The buttons of the dashboard's pages (requeue, delete, empty, compact, requeue all) call the
    actions with jQuery's ``$.post`` after the overridden base template's ``$.ajaxSetup`` has added the
    page's CSRF token as ``X-CSRFToken``; no script reads an action with a GET."""
    job = Queue("default", connection=redis).enqueue("tests.jobs_for_tests.describe_process")
    admin = browser_client(app)
    setup = """$.ajaxSetup({ headers: { "X-CSRFToken": $('meta[name="csrf-token"]').attr("content") } });"""
    posted = set()
    for path in ("/rq/0/view/jobs/default/failed/8/asc/1", "/rq/0/view/jobs/default/queued/8/asc/1",
                 f"/rq/0/view/job/{job.id}"):
        page = BeautifulSoup(admin.get(path).get_data(as_text=True), "html.parser")
        token = page.find("meta", attrs={"name": "csrf-token"})["content"]
        assert token
        script = next(s.string for s in page.find_all("script") if s.get("nonce"))
        # The token is set up before the page's own script (content_scripts) binds its buttons.
        assert setup in script and script.index(setup) < script.index("$.post(")
        assert not re.search(r"\$\.(get|getJSON|ajax)\([^;]*(requeue|delete|empty|compact)", script)
        posted.update(re.findall(r"\$\.post\((url|\$this\.attr\('href'\))", script))
        for button in page.select("a#empty-btn, a#compact-btn, a#requeue-all-btn"):
            assert f"$('#{button['id']}').click(" in script  # its click handler POSTs; the href is never followed
    assert posted == {"url", "$this.attr('href')"}
    # What the script sends (the page's token as X-CSRFToken, this site's Origin) works.
    browser = session_without_token(app, admin)
    answer = browser.post(f"/rq/job/{job.id}/delete", headers={"Origin": SITE, "X-CSRFToken": token})
    # A job of no Docket row (enqueued by something else): RQ's own delete.
    assert answer.get_json()["status"] == "OK" and "not one of Docket's jobs" in answer.get_json()["message"]
    assert not RQJob.exists(job.id, connection=redis)


# --- what a job's page shows -----------------------------------------------------------------------

HOSTILE_NAME = '<img src=x onerror="document.title=1">'


def crafted_docx() -> bytes:
    """A .docx whose part is named with HTML and compressed with bzip2: Docket's extraction fails it
    with a sentence that names the part, which becomes the RQ job's exception string."""
    import io
    import zipfile

    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as archive:
        archive.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        archive.writestr("word/document.xml", "<w:document/>")
        archive.writestr(zipfile.ZipInfo(HOSTILE_NAME), b"x" * 100, compress_type=zipfile.ZIP_BZIP2)
    return data.getvalue()


def render_underscore(template: str, data: dict) -> str:
    """``template`` compiled by the dashboard's own underscore.js and called as its job page calls it,
    in Node (Playwright's own, a test requirement)."""
    import json
    import subprocess
    from pathlib import Path

    import playwright
    import rq_dashboard

    node = Path(playwright.__file__).parent / "driver" / "node"
    underscore = Path(rq_dashboard.__file__).parent / "static" / "js" / "underscore-umd-min.js"
    script = ("const _ = require(process.argv[1]); const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
              "globalThis.url_for_single_job_view = (id) => '/rq/0/view/job/' + encodeURIComponent(id);"
              "process.stdout.write(_.template(input.template)({d: input.data}, {variable: 'd'}));")
    result = subprocess.run([str(node), "-e", script, str(underscore)], input=json.dumps(
        {"template": template, "data": data}), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_jobs_exception_with_html_is_shown_as_text_on_its_page(app, client, run_worker):
    import io

    body = client.post("/api/documents", data={"file": (io.BytesIO(crafted_docx()), "crafted.docx")},
                       content_type="multipart/form-data").get_json()
    job_id = body["documents"][0]["job_id"]
    run_worker()
    assert row(app, job_id).status == "failed"
    admin = browser_client(app)
    answer = admin.get(f"/rq/0/data/job/{job_id}.json")
    assert answer.mimetype == "application/json" and answer.headers["X-Content-Type-Options"] == "nosniff"
    job = answer.get_json()
    assert HOSTILE_NAME in job["exc_info"]  # the data stays what RQ holds; the page escapes it

    page = BeautifulSoup(admin.get(f"/rq/0/view/job/{job_id}").get_data(as_text=True), "html.parser")
    template = page.find("script", attrs={"name": "job-info"}).string
    rendered = BeautifulSoup(render_underscore(template, job), "html.parser")
    assert rendered.find("img") is None, rendered
    assert HOSTILE_NAME in rendered.find("pre", class_="exc_info").get_text()
    # Every value the job page shows goes through underscore's escaping tag.
    assert not re.search(r"<%=", template), template


def test_docket_job_page_is_rq_dashboards_with_every_value_escaped():
    """Docket's copy of rq-dashboard's job page differs only in <%- %> for <%= %>: an upgrade that changes
    the page fails here, so that the copy is made again."""
    from pathlib import Path

    import rq_dashboard

    from tests.conftest import ROOT

    theirs = (Path(rq_dashboard.__file__).parent / "templates" / "rq_dashboard" / "job.html").read_text()
    ours = (ROOT / "webapp" / "templates" / "rq_dashboard" / "job.html").read_text()
    ours_without_comment = re.sub(r"\A\{#-.*?-#\}\n", "", ours, flags=re.S)
    assert ours_without_comment == theirs.replace("<%=", "<%-")


# --- errors of the dashboard's actions and data: JSON sentences, never a 500 -------------------------

# --- the dashboard's buttons go through Docket's job protocol: the API and the dashboard agree -------

def dashboard_ids(admin, queue_name: str, registry_name: str) -> list[str]:
    """The ids the dashboard lists in a queue's registry (its own JSON, first page of 100)."""
    answer = admin.get(f"/rq/0/data/jobs/{queue_name}/{registry_name}/100/asc/1.json")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return [job["id"] for job in answer.get_json()["jobs"]]


def assert_agree(admin, client, job_id: str) -> dict:
    """``GET /api/jobs/<id>`` and the dashboard's ``job.json`` say the same: the row's status is
    RQ's; a job RQ no longer has is a 404 in the dashboard and ``rq_status: null`` in the API.
    Returns the API's job."""
    api = client.get(f"/api/jobs/{job_id}").get_json()
    answer = admin.get(f"/rq/0/data/job/{job_id}.json")
    if answer.status_code == 404:
        assert api["rq_status"] is None, api
    else:
        assert answer.status_code == 200
        assert answer.get_json()["status"] == api["status"] == api["rq_status"], (answer.get_json(), api)
    return api


def launch_reconcile(app) -> str:
    """Start a reconcile job as the scheduler does; its job id."""
    from webapp.core.schedules.table import SCHEDULABLE_JOBS

    with app.app_context(), connection():
        return SCHEDULABLE_JOBS["reconcile"].start({}, app.config, None).id


def failed_upload(client, name: str = "libreoffice-writer-password.pdf") -> str:
    """A document job that fails for good (a wrong password) once a worker runs it; its job id."""
    return upload(client, name, password="wrong", reprocess="true").get_json()["documents"][0]["job_id"]


def test_empty_of_a_queue_cancels_its_jobs_and_reconcile_does_not_bring_them_back(app, client, redis, run_worker):
    queued = [post_text_document(client, f"waiting-{n}.txt") for n in range(3)]
    admin = browser_client(app)
    assert dashboard_ids(admin, "default", "queued") == queued

    answer = admin.post("/rq/queue/default/queued/empty")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    body = answer.get_json()
    assert body["status"] == "OK" and body["canceled"] == queued and body["count"] == 3
    assert body["message"] == "3 waiting jobs canceled (not to run)."
    for job_id in queued:
        job = assert_agree(admin, client, job_id)
        assert (job["status"], job["rq_status"], job["error_code"]) == ("canceled", "canceled", "canceled")
    assert dashboard_ids(admin, "default", "queued") == []
    assert sorted(dashboard_ids(admin, "default", "canceled")) == sorted(queued)

    # Reconcile (no grace: every row is old enough to be compared with RQ) leaves them canceled.
    reconcile = launch_reconcile(app)
    run_worker(RECONCILE_GRACE="0")
    assert row(app, reconcile).status == "finished"
    assert row(app, reconcile).result["restored"] == []
    for job_id in queued:
        job = assert_agree(admin, client, job_id)
        assert job["status"] == "canceled" and job["attempts"] == 0


def test_delete_of_a_running_job_stops_it_as_the_apis_cancel_does(
    app, openai_app, openai_client, openai_server, start_worker, redis
):
    from tests.conftest import long_text, post_text
    from tests.local_services import slow_worker_env
    from webapp.core.models import Chunk

    start_worker(**slow_worker_env(openai_server))
    document = post_text(openai_client, long_text()).get_json()["documents"][0]
    job_id = document["job_id"]
    wait_for(lambda: (lambda j: j["status"] == "started" and j["stage"] == "embed")(
        openai_client.get(f"/api/jobs/{job_id}").get_json()), 60, "the job to reach its embed stage")
    admin = browser_client(openai_app)
    assert job_id in dashboard_ids(admin, "default", "started")

    answer = admin.post(f"/rq/job/{job_id}/delete")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.get_json()["job_status"] == "stopped" and "stopped" in answer.get_json()["message"]
    job = wait_for(lambda: (lambda j: j if j["status"] == "stopped" and j["rq_status"] == "stopped" else None)(
        openai_client.get(f"/api/jobs/{job_id}").get_json()), 30, "the row and RQ to record the stop")
    assert job["error_code"] == "stopped"
    with openai_app.app_context(), connection():  # its partial output rolled back
        assert Chunk.select().where(Chunk.document == document["id"]).count() == 0
    assert_agree(admin, openai_client, job_id)
    assert job_id not in dashboard_ids(admin, "default", "started")


def test_requeue_of_a_failed_job_is_dockets_retry_of_the_same_row(app, client, redis, run_worker):
    failed = failed_upload(client)
    run_worker()
    assert (row(app, failed).status, row(app, failed).attempts) == ("failed", 1)
    admin = browser_client(app)
    assert dashboard_ids(admin, "default", "failed") == [failed]

    answer = admin.post(f"/rq/job/{failed}/requeue")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.get_json()["job_status"] == "queued" and "retried" in answer.get_json()["message"]
    job = assert_agree(admin, client, failed)
    assert (job["status"], job["error"], job["attempts"]) == ("queued", None, 1)
    assert dashboard_ids(admin, "default", "failed") == [] and dashboard_ids(admin, "default", "queued") == [failed]

    run_worker()  # it runs again (and fails again: the password is still wrong), counted
    job = assert_agree(admin, client, failed)
    assert (job["status"], job["attempts"]) == ("failed", 2)

    # A job Docket's retry refuses (it is running, queued or finished) is a 409 with the retry's sentence.
    finished = post_text_document(client, "finished.txt")
    run_worker()
    refused = admin.post(f"/rq/job/{finished}/requeue")
    assert refused.status_code == 409 and refused.mimetype == "application/json"
    error = refused.get_json()["error"]
    assert error["code"] == "job_not_requeueable" and "finished" in error["message"], error
    assert assert_agree(admin, client, finished)["status"] == "finished"
    missing = admin.post("/rq/job/no-such-job/requeue")
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "job_not_found"


def test_requeue_of_a_canceled_job_retries_it(app, client, redis, run_worker):
    canceled = post_text_document(client, "canceled.txt")
    assert client.post(f"/api/jobs/{canceled}/cancel").get_json()["status"] == "canceled"
    admin = browser_client(app)
    answer = admin.post(f"/rq/job/{canceled}/requeue")
    assert answer.status_code == 200 and answer.mimetype == "application/json", answer.get_data(as_text=True)
    assert assert_agree(admin, client, canceled)["status"] == "queued"
    assert dashboard_ids(admin, "default", "canceled") == [] and dashboard_ids(admin, "default", "queued") == [canceled]
    run_worker()
    job = assert_agree(admin, client, canceled)
    assert (job["status"], job["attempts"]) == ("finished", 1)


def test_requeue_all_is_dockets_retry_for_each_failed_job(app, client, redis, run_worker):
    failed = [failed_upload(client), failed_upload(client, "libreoffice-writer-password.pdf")]
    run_worker()
    failed = sorted(set(failed))
    assert {row(app, job_id).status for job_id in failed} == {"failed"}
    admin = browser_client(app)
    answer = admin.post("/rq/requeue/default")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    body = answer.get_json()
    assert body["count"] == len(failed) and body["refused"] == [] and body["message"].endswith("retried (as Docket's retry does).")
    for job_id in failed:
        assert assert_agree(admin, client, job_id)["status"] == "queued"
    assert dashboard_ids(admin, "default", "failed") == []
    run_worker()
    for job_id in failed:
        job = assert_agree(admin, client, job_id)
        assert (job["status"], job["attempts"]) == ("failed", 2)


def test_empty_of_the_scheduled_registry_cancels_its_jobs(app, client, redis):
    from webapp.core.protocol.states import mark_rate_limited

    waiting = post_text_document(client, "rate-limited.txt")
    # As the worker gives a job whose rate limit is used up to RQ's scheduler (jobs/worker/worker.py).
    retry_at = datetime.now(timezone.utc) + timedelta(hours=1)
    with app.app_context(), connection():
        assert mark_rate_limited(waiting, retry_at, "waiting for the test's rate limit")
    queue = Queue("default", connection=redis)
    queue.remove(waiting)
    queue.schedule_job(RQJob.fetch(waiting, connection=redis), retry_at)
    admin = browser_client(app)
    assert dashboard_ids(admin, "default", "scheduled") == [waiting]
    assert assert_agree(admin, client, waiting)["status"] == "scheduled"

    body = admin.post("/rq/queue/default/scheduled/empty").get_json()
    assert body["canceled"] == [waiting] and body["count"] == 1
    assert assert_agree(admin, client, waiting)["status"] == "canceled"
    assert dashboard_ids(admin, "default", "scheduled") == []


def test_delete_and_empty_of_ended_jobs_drop_only_rqs_records_and_the_rows_keep_their_truth(
    app, client, redis, run_worker
):
    failed = failed_upload(client)
    finished = [post_text_document(client, f"done-{n}.txt") for n in range(2)]
    run_worker()
    admin = browser_client(app)

    answer = admin.post(f"/rq/job/{failed}/delete")
    assert answer.status_code == 200 and answer.get_json()["job_status"] == "failed"
    assert "already ended (failed)" in answer.get_json()["message"]
    job = assert_agree(admin, client, failed)  # the dashboard no longer has it; the API says how it ended
    assert (job["status"], job["rq_status"]) == ("failed", None)
    assert dashboard_ids(admin, "default", "failed") == []

    body = admin.post("/rq/queue/default/finished/empty").get_json()
    assert sorted(body["removed"]) == sorted(finished) and body["canceled"] == body["stopped"] == []
    for job_id in finished:
        job = assert_agree(admin, client, job_id)
        assert (job["status"], job["rq_status"]) == ("finished", None)
    assert dashboard_ids(admin, "default", "finished") == []

    # A queued job deleted from the dashboard is canceled, as the API's cancel does.
    queued = post_text_document(client, "queued.txt")
    answer = admin.post(f"/rq/job/{queued}/delete").get_json()
    assert answer["job_status"] == "canceled"
    assert assert_agree(admin, client, queued)["status"] == "canceled"
    # Nothing left to do: an empty registry, and a job neither RQ nor Docket knows.
    assert admin.post("/rq/queue/default/started/empty").get_json()["count"] == 0
    assert admin.post("/rq/job/no-such-job/delete").status_code == 404
    unknown = admin.post("/rq/queue/default/no-such-registry/empty")
    assert unknown.status_code == 404 and unknown.get_json()["error"]["code"] == "registry_not_found"


def test_redis_down_is_503_json_on_the_dashboards_data(app, config, unused_redis_url):
    down = create_app({**config, "REDIS_URL": unused_redis_url})
    admin = browser_client(down)
    for path in ("/rq/0/data/queues.json", "/rq/0/data/workers.json", "/rq/0/data/jobs/default/failed/8/asc/1.json",
                 "/rq/0/data/job/some-job.json"):
        answer = admin.get(path)
        assert answer.status_code == 503 and answer.mimetype == "application/json", (path, answer.status_code)
        error = answer.get_json()["error"]
        assert error["code"] == "queue_unavailable" and "Redis" in error["message"], (path, error)
    for path in ("/rq/requeue/default", "/rq/queue/default/queued/empty", "/rq/job/some-job/delete",
                 "/rq/job/some-job/requeue"):
        answer = admin.post(path)
        assert answer.status_code == 503 and answer.get_json()["error"]["code"] == "queue_unavailable", path
    # A page a person opens gets the sentence on Docket's error page, no traceback.
    page = admin.get("/rq/0/view/workers", headers={"Accept": "text/html"})
    assert page.status_code == 503 and page.mimetype == "text/html"
    assert "Redis" in page.get_data(as_text=True) and "Traceback" not in page.get_data(as_text=True)
