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
