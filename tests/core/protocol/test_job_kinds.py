"""A job kind is one declaration (webapp/core/protocol/kinds.py): a kind declared here, in this
test file and nowhere else, runs through launch, progress, cancel of a queued and of a running
run, retry, reconcile after FLUSHALL, the metrics, /api/queues and the dashboard — with no other
file of the project changed. The worker processes learn it the way an operator's would:
``JOB_KIND_MODULES`` names this module."""

from __future__ import annotations

import time
from typing import Any

import pytest

from jobs.reconcile_job import reconcile_jobs
from jobs.tracking import NOT_RUNNING, JobTracker
from tests.conftest import api_client, browser_client, row, wait_for
from webapp import create_app
from webapp.core.config import load_config
from webapp.core.db import connection, create_tables
from webapp.core.protocol.kinds import JOB_KINDS, JobKind, RetryPolicy, get_kind, register
from webapp.core.protocol.launch import launch
from webapp.core.workflows.rate_limits import configured_limits
from webapp.edge.openapi import openapi_document

# Declared, not registered at import: JOB_KIND_MODULES registers it in the processes that name this
# module (the kind_app fixture's app, the workers it starts), and the fixture takes it out of this
# process's registry afterwards, so no other test of the suite sees a kind it does not know.
SLEEPER = JobKind(
    name="sleeper", function=f"{__name__}.sleep_in_steps", queue="default", timeout=45,
    retry=RetryPolicy(max_retries=0), description="A test kind: sleeps in steps, reporting its progress.",
)


def sleep_in_steps(steps: int, seconds: float) -> dict[str, Any]:
    """The kind's function, written as the README's walkthrough says: start, progress, finish."""
    tracker = JobTracker.for_current_job("sleep_in_steps")
    with connection():
        if not tracker.start():
            return NOT_RUNNING
    for step in range(steps):
        time.sleep(seconds)
        with connection():
            tracker.set_progress("sleeping", round(100 * (step + 1) / steps))
    result = {"slept": steps * seconds}
    with connection() as database:
        with database.atomic() as transaction:
            if not tracker.finish_query(result).execute():
                transaction.rollback()
                return NOT_RUNNING
    tracker.finished()
    return result


@pytest.fixture
def kind_app(config):
    app = create_app({**config, "JOB_KIND_MODULES": (__name__,)})  # registers SLEEPER here
    with app.app_context():
        create_tables()
    yield app
    JOB_KINDS.pop(SLEEPER.name, None)


def _launch(app, steps: int, seconds: float) -> str:
    with app.app_context(), connection():
        return launch("sleeper", {"steps": steps, "seconds": seconds}, owner="tester").id


def test_the_declaration_is_the_kinds_only_description(kind_app):
    assert get_kind("sleeper") is SLEEPER and JOB_KINDS["sleeper"].queue == "default"
    assert SLEEPER.time_limit({}) == 45 and SLEEPER.time_limit({"SLEEPER_JOB_TIMEOUT": 7}) == 7
    # Settings follow from the name for any kind, declared in the core or not.
    config = load_config("/tmp", {"SLEEPER_JOB_TIMEOUT": "9", "SLEEPER_JOB_RETRIES": "2"})
    assert SLEEPER.time_limit(config) == 9 and SLEEPER.retry_policy(config).max_retries == 2
    with pytest.raises(ValueError, match="SLEEPER_JOB_TIMEOUT must be at least 1"):
        load_config("/tmp", {"SLEEPER_JOB_TIMEOUT": "0"})
    with pytest.raises(ValueError, match="declared twice"):
        register(JobKind(name="sleeper", function="elsewhere.f", queue="high", timeout=1))
    # A declared budget of job starts counts unless JOB_RATE_LIMITS names the kind. (Registered
    # for this check only: the registry is the process's, and other tests count its budgets.)
    register(JobKind(name="limited_sleeper", function=SLEEPER.function, queue="default", timeout=45,
                     rate_limit="600/minute"))
    try:
        declared = configured_limits({})["job.limited_sleeper"]
        assert (declared.amount, declared.seconds) == (600, 60)
        overridden = configured_limits({"JOB_RATE_LIMITS": "limited_sleeper=5/second"})["job.limited_sleeper"]
        assert (overridden.amount, overridden.seconds) == (5, 1)
    finally:
        JOB_KINDS.pop("limited_sleeper")
    with pytest.raises(ValueError, match="limits notation"):
        register(JobKind(name="badly_limited", function="x.f", queue="high", timeout=1, rate_limit="often"))
    # The API documents list it, with its description.
    assert openapi_document.__wrapped__()["x-job-kinds"]["sleeper"] == SLEEPER.description


def test_a_kind_declared_in_one_file_runs_through_the_whole_protocol(kind_app, redis, start_worker):
    client = api_client(kind_app)
    worker_env = {"JOB_KIND_MODULES": __name__, "RECONCILE_GRACE": "0"}

    # Launched with no worker: queued, in RQ's queue and in /api/queues; canceled while queued.
    queued = _launch(kind_app, 1, 0.1)
    assert client.get(f"/api/jobs/{queued}").get_json()["status"] == "queued"
    default = next(q for q in client.get("/api/queues").get_json()["queues"] if q["name"] == "default")
    assert default["counts"]["queued"] == 1
    assert client.post(f"/api/jobs/{queued}/cancel").get_json()["status"] == "canceled"

    # Retried: queued again; a worker that knows the kind (JOB_KIND_MODULES) runs it to the end.
    assert client.post(f"/api/jobs/{queued}/retry").get_json()["status"] == "queued"
    running = _launch(kind_app, 40, 0.25)
    start_worker(**worker_env)
    finished = wait_for(lambda: (j := row(kind_app, queued)).status == "finished" and j, 60, "the retried run")
    assert finished.result == {"slept": 0.1} and finished.progress == 100
    assert finished.attempts == 1  # attempts counts runs: canceled while queued, it had never started

    # Progress of a running one is visible; a cancel stops it.
    wait_for(lambda: (j := row(kind_app, running)).status == "started" and j.progress > 0, 60, "progress")
    shown = client.get(f"/api/jobs/{running}").get_json()
    assert shown["stage"] == "sleeping" and 0 < shown["progress"] < 100 and shown["kind"] == "sleeper"
    assert client.post(f"/api/jobs/{running}/cancel").get_json()["status"] == "stopped"
    wait_for(lambda: row(kind_app, running).status == "stopped", 30, "the running job to stop")

    # The dashboard shows its jobs; the metrics count them by kind.
    dashboard = browser_client(kind_app)  # the dashboard signs in by session, as a person does
    for path in (f"/rq/0/view/job/{queued}", f"/rq/0/data/job/{queued}.json"):
        assert dashboard.get(path).status_code == 200, path
    assert dashboard.get(f"/rq/0/data/job/{queued}.json").get_json()["description"].startswith("sleeper(")
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'kind="sleeper"' in metrics

    # Redis loses everything (FLUSHALL) while one waits: reconcile enqueues it again from its row.
    start_worker.stop_all()
    lost = _launch(kind_app, 1, 0.1)
    redis.flushall()
    with kind_app.app_context():
        result = reconcile_jobs(kind_app.config | {"RECONCILE_GRACE": 0}, redis)
    assert lost in result.restored, result
    start_worker(**worker_env)
    done = wait_for(lambda: (j := row(kind_app, lost)).status == "finished" and j, 60, "the restored run")
    assert done.result == {"slept": 0.1}
