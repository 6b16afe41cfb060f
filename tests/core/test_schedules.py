"""Periodic jobs: ``flask schedule sync`` (idempotent, UTC cron whatever ``TZ`` says, no crontab
FutureWarning), the real scheduler process (a scheduled run is an ordinary job that a real worker
finishes; entries written again after Redis lost them), the schedules API and the schedules page.

Real Redis (the session's private server), real ``flask`` subprocesses; deadlines polled.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from bs4 import BeautifulSoup
from rq.job import Job as RQJob, JobStatus
from rq.registry import FinishedJobRegistry

from tests.conftest import api_client, browser_client, ROOT, ServiceProcesses, process_env, row, wait_for
from webapp import create_app
from webapp.core.db import connection
from webapp.core.models import Report, Schedule
from webapp.core.schedules.table import (ENTRY_PREFIX, MIN_INTERVAL, SYNCED_KEY, next_cron_time, put_schedule_entry,
                                         sync_schedules)

SCHEDULED = "rq:scheduler:scheduled_jobs"  # rq-scheduler's sorted set (hard-coded "rq:" prefix)
BUILTIN_IDS = ["reconcile", "retention", "orphans", "daily-activity-report"]
QUIET = {"RECONCILE_INTERVAL": "3600"}  # keep the built-in reconcile out of the way of the test's own runs


# ---------- helpers ----------

def schedule_cli(config: dict[str, Any], *args: str, **env: str) -> subprocess.CompletedProcess:
    """Run ``flask --app wsgi schedule <args>`` to completion; fail the test on a non-zero exit."""
    result = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "schedule", *args],
                            cwd=ROOT, env=process_env(config, **env), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def entries(redis) -> dict[str, float]:
    """rq-scheduler's entries: member → score (Unix time of the next run)."""
    return {member.decode(): score for member, score in redis.zrange(SCHEDULED, 0, -1, withscores=True)}


def stored_entry_jobs(redis) -> list[bytes]:
    return sorted(redis.scan_iter(f"rq:job:{ENTRY_PREFIX}*"))


def utc(score: float) -> datetime:
    return datetime.fromtimestamp(score, timezone.utc)


def next_utc(hour: int, minute: int, after: datetime) -> datetime:
    """The first hour:minute UTC strictly after ``after`` (aware)."""
    candidate = after.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return candidate if candidate > after else candidate + timedelta(days=1)


def schedule_row(app, schedule_id: str) -> Schedule | None:
    with app.app_context(), connection():
        return Schedule.get_or_none(Schedule.id == schedule_id)


def sync_in_process(app) -> None:
    with app.app_context():
        sync_schedules()


@pytest.fixture
def start_scheduler(config: dict[str, Any], tmp_path: Path):
    """conftest's scheduler processes, here also required to end cleanly (status 0) on SIGTERM."""
    processes = ServiceProcesses(config, tmp_path, "scheduler", ["schedule", "run"], {"SCHEDULER_INTERVAL": "1"})
    yield processes
    problems = [problem for problem in processes.stop_all().values() if problem]
    assert not problems, problems[0]


# ---------- schedule sync ----------

def test_sync_twice_changes_nothing_and_follows_the_code(app, config, redis):
    first = schedule_cli(config, "sync")
    assert "added 4" in first.stdout, first.stdout
    after_first = entries(redis)
    assert sorted(after_first) == sorted(ENTRY_PREFIX + i for i in BUILTIN_IDS)
    assert redis.exists(SYNCED_KEY)

    second = schedule_cli(config, "sync")
    assert "added 0, updated 0, removed 0, unchanged 4" in second.stdout, second.stdout
    assert entries(redis) == after_first  # same entries, same next run times
    assert len(stored_entry_jobs(redis)) == 4  # one stored job per entry, none duplicated

    # A built-in changed in the code (here through its setting) is replaced, not added again.
    changed = schedule_cli(config, "sync", RECONCILE_INTERVAL="120")
    assert "updated: reconcile" in changed.stdout, changed.stdout
    assert sorted(entries(redis)) == sorted(after_first)
    assert schedule_row(app, "reconcile").interval == 120

    # A built-in the code no longer declares disappears, row and entry; a paused one stays paused.
    with app.app_context(), connection():
        gone = Schedule.create(id="removed-from-code", job="orphans", cron="0 5 * * *", builtin=True)
        put_schedule_entry(gone)
        Schedule.update(paused=True).where(Schedule.id == "retention").execute()
    assert ENTRY_PREFIX + "removed-from-code" in entries(redis)
    result = schedule_cli(config, "sync", RECONCILE_INTERVAL="120")
    assert "removed: removed-from-code" in result.stdout and "removed: retention" in result.stdout, result.stdout
    assert schedule_row(app, "removed-from-code") is None
    assert ENTRY_PREFIX + "removed-from-code" not in entries(redis)
    assert ENTRY_PREFIX + "retention" not in entries(redis) and schedule_row(app, "retention").paused
    assert len(stored_entry_jobs(redis)) == 3

    again = schedule_cli(config, "sync", RECONCILE_INTERVAL="120")
    assert "added 0, updated 0, removed 0, unchanged 3" in again.stdout, again.stdout
    assert schedule_row(app, "retention").paused and ENTRY_PREFIX + "retention" not in entries(redis)


@pytest.mark.parametrize("tz", ["Asia/Tokyo", "America/New_York"])
def test_cron_is_utc_under_a_non_utc_time_zone_and_crontab_does_not_warn(app, config, redis, tz):
    before = datetime.now(timezone.utc)
    # Any crontab FutureWarning becomes an exception, and the command fails.
    result = schedule_cli(config, "sync", TZ=tz, PYTHONWARNINGS="error::FutureWarning")
    after = datetime.now(timezone.utc)
    assert "FutureWarning" not in result.stderr
    scores = entries(redis)
    for entry, (hour, minute) in {"daily-activity-report": (2, 0), "retention": (3, 30), "orphans": (4, 0)}.items():
        expected = {next_utc(hour, minute, before), next_utc(hour, minute, after)}
        assert utc(scores[ENTRY_PREFIX + entry]) in expected, (tz, entry, utc(scores[ENTRY_PREFIX + entry]))


def test_next_cron_time_computes_in_utc_without_a_future_warning():
    from rq_scheduler.utils import get_next_scheduled_time

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        get_next_scheduled_time("0 2 * * *")  # rq-scheduler's own computation: the control
    assert any(issubclass(w.category, FutureWarning) for w in caught), "the capture would miss the warning"

    after = datetime(2025, 3, 9, 1, 30, tzinfo=timezone(timedelta(hours=9)))  # 2025-03-08 16:30 UTC
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = next_cron_time("0 2 * * *", after)
        naive = next_cron_time("30 3 * * *", datetime(2025, 3, 8, 3, 30))  # naive means UTC; strictly after
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], [str(w.message) for w in caught]
    assert found == datetime(2025, 3, 9, 2, 0)
    assert naive == datetime(2025, 3, 9, 3, 30)


# ---------- the scheduler process ----------

def test_a_scheduled_report_runs_end_to_end_through_the_scheduler_and_a_worker(app, client, redis, start_scheduler,
                                                                              start_worker, tmp_path):
    # A schedule whose job left the allow-list (a row older than the code) fails every second; the
    # scheduler logs it and keeps running the others.
    with app.app_context(), connection():
        Schedule.create(id="retired", job="retired_job", interval=1)
    start_worker()
    scheduler = start_scheduler(**QUIET)
    wait_for(lambda: redis.exists(SYNCED_KEY), 60, "the scheduler's first sync")
    created = client.post("/api/schedules", json={"job": "activity_report", "interval": MIN_INTERVAL,
                                                  "params": {"hours": 2}})
    assert created.status_code == 201, created.get_json()
    schedule = created.get_json()
    first_run = datetime.fromisoformat(schedule["next_run_at"])
    assert timedelta(0) < first_run - datetime.now(timezone.utc) <= timedelta(seconds=MIN_INTERVAL + 1)

    def finished_run():
        body = client.get(schedule["url"]).get_json()
        last = body["last_job"]
        return body if last and last["status"] == "finished" else None

    body = wait_for(finished_run, 120, "a run of the schedule to finish", interval=0.25)
    job = row(app, body["last_job"]["id"])
    assert job.kind == "report" and job.queue == "high" and job.status == "finished"
    assert body["last_job"]["url"] == f"/api/jobs/{job.id}" and body["last_run_at"]
    with app.app_context(), connection():
        report = Report.get(Report.job_id == job.id)
    assert report.type == "activity" and set(report.files) >= {"html", "json"}
    since, until = (datetime.fromisoformat(report.params[k]) for k in ("since", "until"))
    assert until - since == timedelta(hours=2)  # the schedule's params reached the job
    # The entry moved on to the next run, and is still the only one.
    assert utc(entries(redis)[ENTRY_PREFIX + schedule["id"]]) > datetime.fromisoformat(body["last_run_at"])
    # The run started in the scheduler process through the job protocol: rq-scheduler's entry is only
    # the timetable and was never pushed into a queue for a worker to run (its stock enqueue_job would).
    entry = RQJob.fetch(ENTRY_PREFIX + schedule["id"], connection=redis)
    assert entry.get_status() == JobStatus.SCHEDULED and entry.enqueued_at is None
    assert ENTRY_PREFIX + schedule["id"] not in FinishedJobRegistry("high", connection=redis).get_job_ids()
    assert scheduler.poll() is None
    scheduler_log = tmp_path / "scheduler-0.log"
    assert "schedule retired: could not start its retired_job job" in scheduler_log.read_text()


def test_the_scheduler_writes_the_entries_again_after_redis_lost_them(app, client, config, redis, start_scheduler):
    schedule_cli(config, "sync", **QUIET)
    added = client.post("/api/schedules", json={"job": "orphans", "cron": "15 1 * * *"}).get_json()
    paused = client.post("/api/schedules", json={"job": "retention", "interval": 3600}).get_json()
    assert client.post(f"/api/schedules/{paused['id']}/pause").status_code == 200
    wanted = sorted([ENTRY_PREFIX + i for i in BUILTIN_IDS] + [ENTRY_PREFIX + added["id"]])
    assert sorted(entries(redis)) == wanted
    cron_scores = {e: s for e, s in entries(redis).items() if e != ENTRY_PREFIX + "reconcile"}

    redis.flushall()  # Redis lost everything before the scheduler started...
    start_scheduler(**QUIET)
    wait_for(lambda: sorted(entries(redis)) == wanted and redis.exists(SYNCED_KEY), 60,
             "the scheduler to write the entries at start")

    redis.flushall()  # ...and again while it runs: the missing marker key makes it write them again
    wait_for(lambda: sorted(entries(redis)) == wanted and redis.exists(SYNCED_KEY), 60,
             "the running scheduler to write the entries again")
    assert {e: s for e, s in entries(redis).items() if e in cron_scores} == cron_scores  # same cron times
    assert ENTRY_PREFIX + paused["id"] not in entries(redis)  # still paused


# ---------- the API ----------

def test_list_create_pause_resume_and_delete(app, client, redis):
    sync_in_process(app)
    listed = client.get("/api/schedules")
    assert listed.status_code == 200 and listed.headers["Cache-Control"] == "no-store"
    schedules = listed.get_json()["schedules"]
    assert [s["id"] for s in schedules] == BUILTIN_IDS
    daily = schedules[3]
    assert daily["job"] == "activity_report" and daily["cron"] == "0 2 * * *" and daily["builtin"]
    assert daily["description"] and daily["last_job"] is None and daily["last_run_at"] is None
    assert daily["next_run_at"].endswith("+00:00")
    assert datetime.fromisoformat(daily["next_run_at"]) == next_utc(2, 0, datetime.now(timezone.utc))

    by_cron = client.post("/api/schedules", json={"job": "activity_report", "cron": "0  6 * * 1",
                                                  "params": {"hours": 168}})
    assert by_cron.status_code == 201, by_cron.get_json()
    assert by_cron.headers["Location"] == by_cron.get_json()["url"]
    by_cron = by_cron.get_json()
    assert by_cron["cron"] == "0 6 * * 1" and by_cron["interval"] is None and not by_cron["builtin"]
    assert by_cron["params"] == {"hours": 168} and by_cron["paused"] is False
    assert datetime.fromisoformat(by_cron["next_run_at"]).weekday() == 0  # a Monday, 06:00 UTC
    by_interval = client.post("/api/schedules", json={"job": "retention", "interval": 600,
                                                      "params": {"max_age_days": 7}}).get_json()
    assert by_interval["interval"] == 600 and by_interval["cron"] is None
    next_run = datetime.fromisoformat(by_interval["next_run_at"])
    assert timedelta(seconds=590) < next_run - datetime.now(timezone.utc) <= timedelta(seconds=600)
    listed = [s["id"] for s in client.get("/api/schedules").get_json()["schedules"]]
    assert listed == BUILTIN_IDS + [by_cron["id"], by_interval["id"]]  # built-in first, then oldest first
    assert sorted(entries(redis)) == sorted(ENTRY_PREFIX + i for i in listed)

    # Pause and resume: the entry goes and comes back; works for built-in and added ones.
    for schedule_id in ("daily-activity-report", by_interval["id"]):
        paused = client.post(f"/api/schedules/{schedule_id}/pause")
        assert paused.status_code == 200 and paused.get_json()["paused"] is True
        assert paused.get_json()["next_run_at"] is None
        assert ENTRY_PREFIX + schedule_id not in entries(redis) and schedule_row(app, schedule_id).paused
        assert client.post(f"/api/schedules/{schedule_id}/pause").status_code == 200  # again: no change
        resumed = client.post(f"/api/schedules/{schedule_id}/resume")
        assert resumed.status_code == 200 and resumed.get_json()["paused"] is False
        assert resumed.get_json()["next_run_at"] and ENTRY_PREFIX + schedule_id in entries(redis)
        assert not schedule_row(app, schedule_id).paused
    # Resuming a schedule that runs keeps its next run time.
    score = entries(redis)[ENTRY_PREFIX + by_interval["id"]]
    assert client.post(f"/api/schedules/{by_interval['id']}/resume").status_code == 200
    assert entries(redis)[ENTRY_PREFIX + by_interval["id"]] == score

    # Delete: an added one goes (row and entry); a built-in one is refused; unknown ids are 404.
    refused = client.delete("/api/schedules/daily-activity-report")
    assert refused.status_code == 409
    assert refused.get_json()["error"] == {
        "code": "builtin_schedule", "message": "Built-in schedules can be paused and resumed, not deleted."}
    assert schedule_row(app, "daily-activity-report") is not None
    deleted = client.delete(f"/api/schedules/{by_cron['id']}")
    assert deleted.status_code == 204 and deleted.data == b""
    assert schedule_row(app, by_cron["id"]) is None and ENTRY_PREFIX + by_cron["id"] not in entries(redis)
    assert not redis.exists(f"rq:job:{ENTRY_PREFIX}{by_cron['id']}")
    for method, path in (("delete", by_cron["id"]), ("get", by_cron["id"]), ("post", "nope/pause"),
                         ("post", "nope/resume")):
        missing = getattr(client, method)(f"/api/schedules/{path}")
        assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "schedule_not_found"


@pytest.mark.parametrize("body, words", [
    ({"job": "make_coffee", "cron": "0 2 * * *"}, "'job' must be one of"),
    ({"job": ["activity_report"], "cron": "0 2 * * *"}, "'job' must be one of"),
    ({"cron": "0 2 * * *"}, "'job' must be one of"),
    ({"job": "reconcile", "cron": "0 2 * * *", "interval": 60}, "exactly one of"),
    ({"job": "reconcile"}, "exactly one of"),
    ({"job": "reconcile", "cron": "0 25 * * *"}, "not a valid cron expression"),
    ({"job": "reconcile", "cron": "every day"}, "five fields"),
    ({"job": "reconcile", "cron": "0 0 30 2 *"}, "not a valid cron expression"),  # February 30th never comes
    ({"job": "reconcile", "interval": 5}, "'interval' must be"),
    ({"job": "reconcile", "interval": "60"}, "'interval' must be"),
    ({"job": "reconcile", "interval": True}, "'interval' must be"),
    ({"job": "activity_report", "interval": 60, "params": [1]}, "'params' must be a JSON object"),
    ({"job": "activity_report", "interval": 60, "params": {"days": 1}}, "Unknown parameter(s) days"),
    ({"job": "activity_report", "interval": 60, "params": {"hours": "24"}}, "'hours' must be a whole number"),
    ({"job": "activity_report", "interval": 60, "params": {"hours": 0}}, "'hours' must be from 1"),
    ({"job": "retention", "interval": 60, "params": {"max_age_days": 0}}, "at least 1"),
    ({"job": "reconcile", "interval": 60, "every": 2}, "Unknown field(s) every"),
])
def test_invalid_schedules_are_400_with_a_sentence(app, client, redis, body, words):
    response = client.post("/api/schedules", json=body)
    assert response.status_code == 400, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "invalid_schedule" and words in error["message"], error
    with app.app_context(), connection():
        assert Schedule.select().count() == 0
    assert entries(redis) == {}


@pytest.mark.parametrize("data, content_type", [
    ("not json", "application/json"),
    ('{"job": "reconcile", "interval": 60', "application/json"),
    ('["reconcile"]', "application/json"),
    ("job=reconcile&interval=60", "application/x-www-form-urlencoded"),
    ("", None),
])
def test_a_body_that_is_not_a_json_object_is_400_json(client, data, content_type):
    response = client.post("/api/schedules", data=data, content_type=content_type)
    assert response.status_code == 400 and response.is_json
    assert response.get_json()["error"]["code"] == "invalid_json"


def test_redis_down_is_503_json_and_leaves_no_row_claiming_to_be_scheduled(app, client, config, unused_redis_url):
    sync_in_process(app)
    kept = client.post("/api/schedules", json={"job": "orphans", "cron": "0 1 * * *"}).get_json()
    down = api_client(create_app(dict(config, REDIS_URL=unused_redis_url)))  # same database, no Redis

    refused = down.post("/api/schedules", json={"job": "activity_report", "interval": 600})
    assert refused.status_code == 503 and refused.get_json()["error"]["code"] == "queue_unavailable"
    with app.app_context(), connection():
        assert Schedule.select().where(Schedule.builtin == False).count() == 1  # noqa: E712  only `kept`

    listed = down.get("/api/schedules")  # still answers, without next run times
    assert listed.status_code == 200
    assert [s["next_run_at"] for s in listed.get_json()["schedules"]] == [None] * 5

    # Pausing needs only the row (the scheduler never starts a paused schedule); resuming needs Redis.
    paused = down.post(f"/api/schedules/{kept['id']}/pause")
    assert paused.status_code == 200 and paused.get_json()["paused"] is True
    refused = down.post(f"/api/schedules/{kept['id']}/resume")
    assert refused.status_code == 503 and refused.get_json()["error"]["code"] == "queue_unavailable"
    assert schedule_row(app, kept["id"]).paused  # not claiming to run without an entry
    assert client.post(f"/api/schedules/{kept['id']}/resume").get_json()["paused"] is False  # Redis is back

    # Deleting needs only the row too: an entry whose row is gone never starts a job.
    assert down.delete(f"/api/schedules/{kept['id']}").status_code == 204
    assert schedule_row(app, kept["id"]) is None


# ---------- the page ----------

def test_the_schedules_page_is_linked_and_uses_script_files_only(app):
    client = browser_client(app)
    response = client.get("/schedules")
    assert response.status_code == 200 and response.mimetype == "text/html"
    page = BeautifulSoup(response.get_data(as_text=True), "html.parser")
    nav = page.find("nav", class_="site-nav")
    current = nav.find("a", attrs={"aria-current": "page"})
    assert current["href"] == "/schedules" and current.get_text(strip=True) == "Schedules"
    assert BeautifulSoup(client.get("/").get_data(as_text=True), "html.parser").find("a", href="/schedules")
    scripts = [s["src"] for s in page.find_all("script")]
    assert all(not s.get_text(strip=True) for s in page.find_all("script")) and scripts
    assert any(src.endswith("/schedules.js") for src in scripts)
    for src in scripts:
        assert client.get(src).status_code == 200
    for tag in page.find_all(True):
        assert not [a for a in tag.attrs if a.lower().startswith("on")], tag.name
    options = [o["value"] for o in page.find("select", id="schedule-job").find_all("option")]
    assert options == ["reconcile", "retention", "orphans", "activity_report", "sync_source"]
    for control in page.find_all(["input", "select", "textarea"]):
        if control.get("type") != "hidden":
            assert page.find("label", attrs={"for": control["id"]}), control


def test_a_run_is_skipped_while_the_previous_one_still_waits_in_its_queue(app, redis):
    """No worker: the first due run of reconcile waits in `high`; the next firing adds no second
    row. Once Redis lost the waiting one (FLUSHALL), a firing launches again — otherwise the
    reconcile that restores lost jobs could never run again."""
    from webapp.core.schedules.table import fire

    sync_in_process(app)
    with app.app_context():
        first = fire("reconcile")
        assert first is not None and RQJob.exists(first.id, connection=redis)
        assert fire("reconcile") is None
        redis.flushall()
        again = fire("reconcile")
    assert again is not None and again.id != first.id
    assert schedule_row(app, "reconcile").last_job_id == again.id
