"""Fair share between owners, the queue's half: round-robin order inside each RQ queue.

**Why not one RQ queue per owner.** RQ's ``round_robin`` dequeue strategy rotates over the
queues a worker was *started* with: a new owner's queue would need every worker restarted,
rotating ``high`` with ``default`` breaks "``high`` first", and each owner queue brings its own
started/scheduled/failed registries, which RQ's scheduler only watches for the queues its worker
listened on at start (an owner's automatic retries would never run). So Docket keeps its two RQ
queues, its registries, its dashboard and its recovery exactly as they are, and changes only
*where in the queue a job is put*.

**Where a job is put** (:class:`FairQueue`, one Lua script, atomic in Redis): each job pushed
gets a tag, the round it belongs to: ``max(round of the job at the head of the queue, the
owner's previous tag + 1)``, and is inserted after the jobs of earlier rounds (start-time fair
queueing, Goyal et al. 1996, with every job the same size). Inside a round, the jobs of owners
who had nothing waiting come first (in arrival order), then the others' (in arrival order). An
owner who uploads 300 files gets rounds 0…299; another owner's single file, uploaded later, gets
the round at the head of the queue, ahead of the flooding owner's job of that round: it waits
for the jobs already running (and for other owners' single files that came just before it) —
not for the backlog. Workers are unchanged: RQ's ``BLPOP`` takes the head, ``high``
before ``default``. When the queue is empty the rounds start again (history does not count
against anyone).

What keeps RQ's own push (the end of the queue, no tag): a job RQ's scheduler enqueues when its
retry delay or a rate-limit wait is over, and RQ's requeue of a failed job; a job a stopping
worker hands back, or reconcile restores at the front, goes to the front as before. The tags live
in ``docket:fair:<queue>:tags`` (job id → round and arrival), ``docket:fair:<queue>:last`` (owner →
last round) and ``docket:fair:<queue>:seq``; a Redis wipe loses them with the queue itself, and
recovery's pushes (reconcile enqueues the lost rows again) tag them again.

The per-owner caps are :mod:`webapp.core.owner_caps`.

System jobs (no owner: maintenance, re-index) are one owner among the others for the order and
are never capped.
"""

from __future__ import annotations

import threading
from typing import Any, Iterable, Mapping

from rq import Queue

KEY_PREFIX = "docket:fair"
SYSTEM_OWNER = "-"  # the owner name of jobs without one, in the tags (an owner name is never "-")
#: Jobs at the head of a queue looked at for the current round (untagged ones, pushed by RQ's
#: scheduler or handed back, are skipped).
HEAD_SCAN = 16
#: Later jobs tried as the insertion point before giving up and pushing at the end (a pivot may
#: have left the queue: a worker took it, or it was canceled).
PIVOT_TRIES = 32

#: A job's score in the tags set is ``round × ROUND_SPAN + arrival``, ``arrival`` counting every
#: fair push since the queue was last empty, plus ``ROUND_SPAN / 2`` for an owner who already has
#: a job in the queue: scores are unique, and inside a round the jobs of owners who had nothing
#: waiting come first, each part in push order; the set's order is the queue's order (a plain
#: round number would tie, and Redis orders ties by member, not by arrival). Exact in a double
#: up to 9 × 10⁶ rounds and 5 × 10⁸ pushes between two moments the queue is empty.
ROUND_SPAN = 1_000_000_000

# KEYS: queue list, tags (zset job id → score), last (hash owner → last round), seq (counter)
# ARGV: job id, owner, HEAD_SCAN, PIVOT_TRIES, ROUND_SPAN.  Returns the job's round.
FAIR_PUSH = """
local queue, tags, last, seq = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local job_id, owner, span = ARGV[1], ARGV[2], tonumber(ARGV[5])
local function int(n) return string.format('%d', n) end
if redis.call('LLEN', queue) == 0 then
  redis.call('DEL', tags, last, seq)
end
local round = nil
for _, id in ipairs(redis.call('LRANGE', queue, 0, tonumber(ARGV[3]) - 1)) do
  local score = redis.call('ZSCORE', tags, id)
  if score then
    round = math.floor(tonumber(score) / span)
    redis.call('ZREMRANGEBYSCORE', tags, '-inf', '(' .. score)
    break
  end
end
if round == nil then
  local top = redis.call('ZREVRANGE', tags, 0, 0, 'WITHSCORES')
  if top[2] then round = math.floor(tonumber(top[2]) / span) else round = 0 end
end
local previous = redis.call('HGET', last, owner)
local tag = round
local fresh = true
if previous then
  previous = tonumber(previous)
  if previous + 1 > tag then tag = previous + 1 end
  fresh = previous < round
end
redis.call('HSET', last, owner, int(tag))
local arrival = redis.call('INCR', seq)
if not fresh then arrival = arrival + span / 2 end
local score = int(tag * span + arrival)
redis.call('ZADD', tags, score, job_id)
for _, pivot in ipairs(redis.call('ZRANGEBYSCORE', tags, '(' .. score, '+inf', 'LIMIT', 0, tonumber(ARGV[4]))) do
  if redis.call('LINSERT', queue, 'BEFORE', pivot, job_id) > 0 then return tag end
  redis.call('ZREM', tags, pivot)
end
redis.call('RPUSH', queue, job_id)
return tag
"""


def tags_key(queue_name: str) -> str:
    """The sorted set of queued job ids → score (round and arrival, :data:`ROUND_SPAN`), of queue
    ``queue_name``."""
    return f"{KEY_PREFIX}:{queue_name}:tags"


def seq_key(queue_name: str) -> str:
    """The counter of fair pushes into queue ``queue_name`` since it was last empty."""
    return f"{KEY_PREFIX}:{queue_name}:seq"


def last_key(queue_name: str) -> str:
    """The hash owner → the round of that owner's last job pushed, of queue ``queue_name``."""
    return f"{KEY_PREFIX}:{queue_name}:last"


class FairQueue(Queue):
    """An RQ queue that puts each job an owner's turn deserves instead of at the end (module
    docstring). Workers dequeue from it as from any RQ queue; only the push differs.

    Jobs enqueued through :meth:`enqueue_many` with ``owners`` are placed fairly; any other push
    (RQ's scheduler, a requeue, at the front) is RQ's own.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The owners of the jobs being enqueued now, per thread: one queue object serves every
        # thread of a web process.
        self._enqueuing = threading.local()
        self._fair_push = self.connection.register_script(FAIR_PUSH)

    def enqueue_many(self, job_datas: Iterable[Any], pipeline: Any = None, group_id: str | None = None,
                     owners: Mapping[str, str | None] | None = None) -> list[Any]:
        """RQ's ``enqueue_many``; ``owners`` maps job ids to their owner (``None``: the system's),
        and those jobs are placed fairly. Raises as RQ's."""
        self._enqueuing.owners = owners or {}
        try:
            return super().enqueue_many(job_datas, pipeline=pipeline, group_id=group_id)
        finally:
            self._enqueuing.owners = {}

    def push_job_id(self, job_id: str, pipeline: Any = None, at_front: bool = False) -> None:
        """Push ``job_id``: fairly when its owner was given to :meth:`enqueue_many`, else as RQ does."""
        owners = getattr(self._enqueuing, "owners", {})
        if at_front or job_id not in owners:
            super().push_job_id(job_id, pipeline=pipeline, at_front=at_front)
            return
        owner = owners[job_id] or SYSTEM_OWNER
        keys = [self.key, tags_key(self.name), last_key(self.name), seq_key(self.name)]
        args = [job_id, owner, HEAD_SCAN, PIVOT_TRIES, ROUND_SPAN]
        if pipeline is None:
            self._fair_push(keys=keys, args=args, client=self.connection)
        else:
            # EVAL, not redis-py's script object, inside a pipeline: that one asks Redis SCRIPT EXISTS
            # before every pipeline it is in (one more round trip per upload, ≈ 8 % of the web
            # process's samples in the corpus run), while EVAL costs Redis a SHA-1 of the script's
            # 1.5 kB and may not fail inside the MULTI (EVALSHA would, after a SCRIPT FLUSH or restart).
            pipeline.eval(FAIR_PUSH, len(keys), *keys, *args)
