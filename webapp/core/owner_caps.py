"""Per-owner caps (fair share's second half; the order inside a queue is
:mod:`webapp.core.fair_queue`).

**Caps** (settings, per owner; ``0``: none):

* ``OWNER_MAX_QUEUED`` — documents an owner may have waiting (``queued`` or ``scheduled``
  document and fetch jobs). An upload or URL list that would pass it is refused at the edge with
  ``429 owner_queue_full`` and ``Retry-After`` (:func:`check_queued_cap`).
* ``OWNER_MAX_RUNNING`` — jobs of one owner running at once on all workers. A worker that takes a
  job over the cap gives it back to RQ's scheduler for ``OWNER_BUSY_RETRY`` seconds (row
  ``scheduled``, like a rate limit: never a failure; :func:`take_running_slot`). The slots are a
  Redis sorted set per owner whose entries expire 3 heartbeats after the worker's last beat, so
  a killed worker frees its slot within seconds.

System jobs (no owner: maintenance, re-index) are never capped.
"""

from __future__ import annotations

import math
import time
from typing import Any, Mapping

from peewee import fn
from redis import Redis

from webapp.core.models import Job
from webapp.core.protocol.job_errors import RateLimited
from webapp.core.protocol.kinds import batch_member_kinds
from webapp.core.protocol.states import QUEUED, SCHEDULED, STARTED
from webapp.core.service_errors import ServiceError

KEY_PREFIX = "docket:owner"

# KEYS: the owner's running set (zset job id → expiry, seconds since the epoch)
# ARGV: job id, cap, now, ttl (seconds)
TAKE_SLOT = """
local key, job_id, cap, now, ttl = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
if redis.call('ZSCORE', key, job_id) or redis.call('ZCARD', key) < cap then
  redis.call('ZADD', key, now + ttl, job_id)
  redis.call('EXPIRE', key, math.ceil(ttl) + 1)
  return 1
end
return 0
"""


def running_key(owner: str) -> str:
    """The sorted set of ``owner``'s running job ids → when their slot expires (epoch seconds)."""
    return f"{KEY_PREFIX}:{owner}:running"


# --- caps ----------------------------------------------------------------------------------------

class OwnerBusy(RateLimited):
    """The job's owner already runs ``OWNER_MAX_RUNNING`` jobs: the worker reschedules this one
    (row ``scheduled``, ``error_code`` ``rate_limited``), as for a rate limit."""

    def __init__(self, owner: str, cap: int, retry_after: float) -> None:
        super().__init__(f"owner.{owner}.running", retry_after, f"OWNER_MAX_RUNNING={cap}")
        running = f"{owner}'s running job" if cap == 1 else f"one of {owner}'s {cap} running jobs"
        self.reason = f"{running} to end (OWNER_MAX_RUNNING={cap})"
        self.message = f"waiting for {self.reason}"
        self.args = (self.message,)


def take_running_slot(redis: Redis, config: Mapping[str, Any], owner: str | None, job_id: str,
                      ttl: float) -> bool:
    """Take one of ``owner``'s ``OWNER_MAX_RUNNING`` slots for job ``job_id`` (again, if it holds
    one: a second delivery), for ``ttl`` seconds unless :func:`refresh_running_slot` extends it.

    Args:
        redis: the app's Redis client.
        config: the app's configuration (``OWNER_MAX_RUNNING``, ``OWNER_BUSY_RETRY``).
        owner: the job's owner; ``None`` (a system job) is never capped.
        job_id: the job's id.
        ttl: seconds the slot lasts without a refresh (the worker's heartbeat TTL).

    Returns:
        Whether a slot was taken (``False``: no cap applies, nothing to release).

    Raises:
        OwnerBusy: every slot is taken; retry after ``OWNER_BUSY_RETRY`` seconds.
        redis.exceptions.RedisError: Redis cannot be reached.
    """
    cap = int(config.get("OWNER_MAX_RUNNING") or 0)
    if not cap or owner is None:
        return False
    taken = redis.eval(TAKE_SLOT, 1, running_key(owner), job_id, cap, time.time(), ttl)
    if not taken:
        raise OwnerBusy(owner, cap, float(config.get("OWNER_BUSY_RETRY") or 2))
    return True


def refresh_running_slot(pipeline: Any, owner: str | None, job_id: str, ttl: float) -> None:
    """Extend job ``job_id``'s slot by ``ttl`` seconds from now, if it holds one (a heartbeat;
    queued on ``pipeline``)."""
    if owner is not None:
        pipeline.zadd(running_key(owner), {job_id: time.time() + ttl}, xx=True)
        pipeline.expire(running_key(owner), math.ceil(ttl) + 1)


def release_running_slot(redis: Redis, owner: str | None, job_id: str) -> None:
    """Free job ``job_id``'s slot (its function returned or raised). Raises ``RedisError``."""
    if owner is not None:
        redis.zrem(running_key(owner), job_id)


def waiting_documents(owner: str) -> int:
    """Document and fetch jobs of ``owner`` waiting to run (``queued`` or ``scheduled``). One
    query; raises ``peewee.DatabaseError``."""
    return (Job.select().where(Job.owner == owner, Job.kind.in_(batch_member_kinds()),
                               Job.status.in_((QUEUED, SCHEDULED))).count())


def check_queued_cap(config: Mapping[str, Any], owner: str | None, adding: int) -> None:
    """Refuse ``adding`` more documents of ``owner`` if they would pass ``OWNER_MAX_QUEUED``.

    Checked when a request is accepted, before anything is stored; two requests of one owner at
    the same instant may both pass (the cap is a fairness bound, not an accounting one).

    Raises:
        ServiceError: 429 ``owner_queue_full`` with ``Retry-After`` (seconds: the owner's
            average document job time × the documents over the cap ÷ the running workers,
            between 1 and 600; 30 when nothing has run yet).
        peewee.DatabaseError: the database cannot be reached.
    """
    cap = int(config.get("OWNER_MAX_QUEUED") or 0)
    if not cap or owner is None or adding <= 0:
        return
    waiting = waiting_documents(owner)
    if waiting + adding <= cap:
        return
    over = waiting + adding - cap
    retry_after = _seconds_to_run(owner, over)
    room = max(0, cap - waiting)
    raise ServiceError(
        429, "owner_queue_full",
        f"{owner} already has {waiting} document(s) waiting to be processed and may have at most {cap} "
        f"(OWNER_MAX_QUEUED); {'none' if not room else f'at most {room}'} of these {adding} can be accepted now. "
        f"Try again in about {retry_after} s.",
        headers={"Retry-After": str(retry_after)},
    )


def _seconds_to_run(owner: str, documents: int) -> int:
    """About how long ``documents`` of ``owner``'s waiting documents take to leave the queue:
    their average run time over the owner's last 20 ended document jobs, spread over the
    owner's jobs running now (at least 1). Between 1 and 600 s; 30 with no history."""
    recent = (Job.select(Job.started_at, Job.ended_at)
              .where(Job.owner == owner, Job.kind.in_(batch_member_kinds()), Job.started_at.is_null(False),
                     Job.ended_at.is_null(False))
              .order_by(Job.ended_at.desc()).limit(20))
    durations = [(row.ended_at - row.started_at).total_seconds() for row in recent]
    if not durations:
        return 30
    running = Job.select().where(Job.owner == owner, Job.status == STARTED).count()
    average = sum(durations) / len(durations)
    return int(min(600, max(1, math.ceil(documents * average / max(1, running)))))


def owner_depths() -> dict[str, list[dict[str, Any]]]:
    """Per queue name, each owner's jobs waiting (``queued``) and running (``started``), as the
    rows say (the database is the truth; RQ's list has no owners). One query.

    Returns:
        ``{queue: [{"owner": str | None, "queued": int, "started": int}, …]}``, owners with the
        most queued first.

    Raises:
        peewee.DatabaseError: the database cannot be reached.
    """
    rows = (Job.select(Job.queue, Job.owner, Job.status, fn.COUNT(Job.id).alias("n"))
            .where(Job.status.in_((QUEUED, STARTED)))
            .group_by(Job.queue, Job.owner, Job.status).dicts())
    depths: dict[str, dict[str | None, dict[str, Any]]] = {}
    for row in rows:
        entry = depths.setdefault(row["queue"], {}).setdefault(
            row["owner"], {"owner": row["owner"], "queued": 0, "started": 0})
        entry[row["status"]] = int(row["n"])
    return {queue: sorted(owners.values(), key=lambda e: (-e["queued"], -e["started"], e["owner"] or ""))
            for queue, owners in depths.items()}
