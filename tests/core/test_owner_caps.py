"""Per-owner caps (webapp/core/owner_caps.py) against the session's private redis-server; the
end-to-end tests with workers and two owners' tokens are in tests/edge/test_fair_share.py."""

from __future__ import annotations

import time

import pytest

from tests.conftest import wait_for
from webapp.core.owner_caps import OwnerBusy, release_running_slot, refresh_running_slot, take_running_slot

CAP_2 = {"OWNER_MAX_RUNNING": 2, "OWNER_BUSY_RETRY": 3}


def test_no_cap_and_system_jobs_take_no_slot(redis):
    assert take_running_slot(redis, {"OWNER_MAX_RUNNING": 0}, "alice", "j1", 10) is False
    assert take_running_slot(redis, CAP_2, None, "j1", 10) is False
    assert redis.keys("docket:owner:*") == []


def test_the_cap_holds_per_owner_and_a_second_delivery_keeps_its_slot(redis):
    assert take_running_slot(redis, CAP_2, "alice", "a1", 10)
    assert take_running_slot(redis, CAP_2, "alice", "a2", 10)
    assert take_running_slot(redis, CAP_2, "alice", "a1", 10)  # the same job again: its own slot
    with pytest.raises(OwnerBusy) as busy:
        take_running_slot(redis, CAP_2, "alice", "a3", 10)
    assert busy.value.retry_after == 3 and busy.value.code == "rate_limited"
    assert busy.value.message == "waiting for one of alice's 2 running jobs to end (OWNER_MAX_RUNNING=2)"
    assert take_running_slot(redis, CAP_2, "bob", "b1", 10)  # another owner's slots are their own
    release_running_slot(redis, "alice", "a1")
    assert take_running_slot(redis, CAP_2, "alice", "a3", 10)


def test_a_slot_nobody_refreshes_expires_and_a_refreshed_one_does_not(redis):
    """A killed worker stops beating: its slot frees itself; a live one's beat keeps it."""
    cap_1 = {"OWNER_MAX_RUNNING": 1}
    assert take_running_slot(redis, cap_1, "alice", "dead", 1.0)
    with pytest.raises(OwnerBusy, match="waiting for alice's running job to end"):
        take_running_slot(redis, cap_1, "alice", "next", 1.0)
    started = time.monotonic()

    def taken():
        try:
            return take_running_slot(redis, cap_1, "alice", "next", 1.0)
        except OwnerBusy:
            return False

    wait_for(taken, 5, "the dead job's slot to expire")
    assert time.monotonic() - started < 3
    # "next" holds it now; its beats keep it past its first second.
    for _ in range(3):
        time.sleep(0.5)  # the beat's own interval, not a wait for a condition
        with redis.pipeline() as pipe:
            refresh_running_slot(pipe, "alice", "next", 1.0)
            pipe.execute()
    with pytest.raises(OwnerBusy):
        take_running_slot(redis, cap_1, "alice", "third", 1.0)


def test_retry_after_follows_the_owners_recent_document_times(app):
    """Retry-After ≈ the documents over the cap × the owner's average document time ÷ its running
    jobs, between 1 and 600 s; 30 s with no history."""
    from datetime import timedelta

    from webapp.core.db import connection
    from webapp.core.models import Job, utcnow
    from webapp.core.owner_caps import _seconds_to_run
    from webapp.core.protocol.launch import new_job

    with app.app_context(), connection():
        assert _seconds_to_run("alice", 5) == 30
        now = utcnow()
        for seconds in (3, 4, 5):  # finished document jobs: 4 s on average
            job = new_job("document", {}, owner="alice")
            job.status, job.started_at, job.ended_at = "finished", now - timedelta(seconds=seconds), now
            job.save(force_insert=True)
        assert _seconds_to_run("alice", 5) == 20  # 5 × 4 s, nothing running
        running = new_job("document", {}, owner="alice")
        running.status, running.started_at = "started", now
        running.save(force_insert=True)
        assert _seconds_to_run("alice", 5) == 20  # … over 1 running job
        assert _seconds_to_run("alice", 1000) == 600
        assert Job.select().where(Job.owner == "bob").count() == 0 and _seconds_to_run("bob", 1) == 30
