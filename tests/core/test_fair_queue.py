"""The order inside a queue (webapp/core/fair_queue.py), against the session's private redis-server.

Jobs are launched through the job protocol (rows committed, then enqueued) by several owners and
the test reads RQ's own list: that list is what workers ``BLPOP`` from, so its order is the order
the jobs start in. The end-to-end test with workers and two owners' tokens is
tests/edge/test_fair_share.py.
"""

from __future__ import annotations

import pytest
from rq import Queue

from webapp import create_app
from webapp.core.db import connection, create_tables
from webapp.core.fair_queue import FairQueue, tags_key
from webapp.core.models import Job
from webapp.core.protocol.launch import enqueue_jobs, new_job
from webapp.core.queues import rq


def launch_for(app, owner: str | None, count: int, kind: str = "retention") -> list[str]:
    """Commit ``count`` rows of ``owner`` and enqueue them in one call (as one upload of
    ``count`` files does); return their ids. ``retention`` takes no parameters, is never run here."""
    with app.app_context(), connection():
        jobs = [new_job(kind, {}, owner=owner) for _ in range(count)]
        for job in jobs:
            job.save(force_insert=True)
        enqueue_jobs(jobs)
        return [job.id for job in jobs]


def queued_ids(app, name: str = "high") -> list[str]:
    with app.app_context():
        return rq.get_queue(name).get_job_ids()


def owners_in_order(app, name: str = "high") -> list[str]:
    ids = queued_ids(app, name)
    with app.app_context(), connection():
        owner_of = {job.id: job.owner for job in Job.select().where(Job.id.in_(ids))}
    return [owner_of[job_id] or "-" for job_id in ids]


def test_the_app_queues_are_fair_unless_fair_share_is_off(config):
    assert all(isinstance(queue, FairQueue) for queue in create_app(config).extensions["rq"].queues.values())
    plain = create_app({**config, "FAIR_SHARE": False}).extensions["rq"].queues
    assert all(type(queue) is Queue for queue in plain.values())


def test_a_later_owners_job_waits_for_one_turn_not_for_the_backlog(app):
    """A's 6, then B's 3, then C's 2, each in one call: the queue takes one of each owner per round."""
    launch_for(app, "a", 6)
    launch_for(app, "b", 3)
    launch_for(app, "c", 2)
    assert owners_in_order(app) == ["a", "b", "c", "a", "b", "c", "a", "b", "a", "a", "a"]


def test_each_owners_own_jobs_keep_their_order(app):
    a = launch_for(app, "a", 4)
    b = launch_for(app, "b", 2)
    later_a = launch_for(app, "a", 2)
    order = queued_ids(app)
    assert [job_id for job_id in order if job_id in a + later_a] == a + later_a
    assert [job_id for job_id in order if job_id in b] == b


def test_a_worker_taking_jobs_moves_the_round_on(app, redis):
    """After the head jobs were taken (LPOP, as a worker's BLPOP), a new owner's job joins the
    round now at the head, ahead of A's job of that round: it waits only for the running jobs.
    B's second job is in the next round, after A's job of that round."""
    a = launch_for(app, "a", 5)
    for _ in range(3):  # a worker took a0, a1, a2
        redis.lpop("rq:queue:high")
    b = launch_for(app, "b", 2)
    assert queued_ids(app) == [b[0], a[3], a[4], b[1]]


def test_jobs_that_left_the_queue_in_the_middle_do_not_break_the_order(app, redis):
    """A canceled job is removed from RQ's list (LREM) but keeps its tag: the next push skips
    it as an insertion point and forgets it. A's remaining job keeps its round (3), so B's two
    jobs (rounds 0 and 1) come before it."""
    a = launch_for(app, "a", 4)
    redis.lrem("rq:queue:high", 0, a[1])
    redis.lrem("rq:queue:high", 0, a[2])
    b = launch_for(app, "b", 2)
    assert queued_ids(app) == [a[0], b[0], b[1], a[3]]
    assert redis.zscore(tags_key("high"), a[1]) is None


def test_a_job_put_back_at_the_front_stays_first(app, redis):
    """A job a stopping worker hands back (or reconcile restores) goes to the front, untagged."""
    a = launch_for(app, "a", 3)
    with app.app_context():
        rq.get_queue("high").push_job_id("handed-back", at_front=True)
    b = launch_for(app, "b", 1)
    assert queued_ids(app) == ["handed-back", a[0], b[0], a[1], a[2]]


def test_an_emptied_queue_starts_the_rounds_again(app, redis):
    """History does not count against an owner once nobody waits: after A's 5 jobs ran, A's
    next job is as early as B's."""
    launch_for(app, "a", 5)
    redis.delete("rq:queue:high")  # every job taken
    a = launch_for(app, "a", 2)
    b = launch_for(app, "b", 2)
    assert queued_ids(app) == [a[0], b[0], a[1], b[1]]


def test_the_system_is_one_owner_among_the_others_and_queues_are_apart(app):
    launch_for(app, "a", 3)
    launch_for(app, None, 2)
    launch_for(app, "a", 2, kind="document")  # default queue: its own rounds
    assert owners_in_order(app) == ["a", "-", "a", "-", "a"]
    assert owners_in_order(app, "default") == ["a", "a"]


def test_with_fair_share_off_the_queue_is_first_in_first_out(config):
    app = create_app({**config, "FAIR_SHARE": False})
    with app.app_context():
        create_tables()
    a = launch_for(app, "a", 3)
    b = launch_for(app, "b", 1)
    assert queued_ids(app) == a + b


@pytest.mark.parametrize("owners", [3, 20])
def test_many_owners_interleave_round_by_round(app, owners):
    """Every owner launches 4 jobs one after the other: each round holds one job of each owner."""
    for owner in range(owners):
        launch_for(app, f"owner-{owner:02d}", 4)
    order = owners_in_order(app)
    assert len(order) == owners * 4
    for round_ in range(4):
        assert sorted(order[round_ * owners:(round_ + 1) * owners]) == [f"owner-{o:02d}" for o in range(owners)]


def test_after_redis_was_emptied_reconcile_restores_the_jobs_in_fair_order(app, redis):
    """FLUSHALL loses the queue and its rounds; reconcile enqueues the rows again, in the order
    they were accepted, and the owners' rounds are dealt out again."""
    from jobs.reconcile_job import reconcile_jobs

    a = launch_for(app, "a", 5, kind="document")
    b = launch_for(app, "b", 2, kind="document")
    redis.flushall()
    with app.app_context():
        result = reconcile_jobs(app.config | {"RECONCILE_GRACE": 0}, redis)
    assert sorted(result.restored) == sorted(a + b)
    assert queued_ids(app, "default") == [a[0], b[0], a[1], b[1], a[2], a[3], a[4]]


def test_a_thread_enqueuing_meanwhile_does_not_take_another_threads_owners(app, redis):
    """One queue object serves every thread of a web process (gunicorn runs 256 per process).
    Thread 2 enqueues its jobs entirely while thread 1 is inside its ``enqueue_many`` (while RQ
    reads thread 1's job data): thread 1's jobs must still get their rounds (with the owners kept
    on the queue object, thread 2's end forgot them and thread 1's jobs went to RQ's plain push)."""
    import threading

    with app.app_context():
        queue = rq.get_queue("high")

    def data(job_id):
        return Queue.prepare_data("tests.jobs_for_tests.describe_process", job_id=job_id)

    def thread_2():
        queue.enqueue_many([data("t2-a"), data("t2-b")], owners={"t2-a": "bob", "t2-b": "bob"})

    def thread_1_data():
        other = threading.Thread(target=thread_2)
        other.start()
        other.join()
        yield data("t1-a")
        yield data("t1-b")

    queue.enqueue_many(thread_1_data(), owners={"t1-a": "alice", "t1-b": "alice"})
    assert {job_id: redis.zscore(tags_key("high"), job_id) is not None
            for job_id in ("t1-a", "t1-b", "t2-a", "t2-b")} == dict.fromkeys(("t1-a", "t1-b", "t2-a", "t2-b"), True)
    assert queued_ids(app) == ["t2-a", "t1-a", "t2-b", "t1-b"]
