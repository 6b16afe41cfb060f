"""Rate limits shared by every worker process on every machine: one budget per outside service
and per job kind, kept in Redis.

A budget is a name (``openai.requests``, ``openai.tokens``, ``job.document``) with a limit in
the ``limits`` library's notation (``"3000/minute"``, ``"10 per second"``). Budgets use
``limits``' **moving window** (:class:`limits.strategies.MovingWindowRateLimiter` on its
:class:`~limits.storage.RedisStorage`): each unit taken is a timestamp in one Redis list, and
taking is one Lua script — atomic in Redis, so the limit holds for the sum of all processes on
all machines over *every* window of its length (a fixed window would let 2× through at a
window's edge; Celery's ``rate_limit`` holds per worker process only).

What the budgets are (:func:`configured_limits`, from ``webapp/core/config.py``):

* ``openai.requests`` — ``OPENAI_REQUESTS_PER_MINUTE`` requests per ``OPENAI_RATE_WINDOW`` s,
* ``openai.tokens`` — ``OPENAI_TOKENS_PER_MINUTE`` tokens per ``OPENAI_RATE_WINDOW`` s (as OpenAI
  publishes its limits: requests and tokens per minute per organisation and model),
* ``job.<kind>`` — ``JOB_RATE_LIMITS``, e.g. ``document=600/minute;report=10/minute``: job
  starts of that kind.

A budget without a configured limit is free (no Redis command).

:func:`acquire` takes units of one or more budgets. When they are not free it waits in place
(one computed sleep until the window frees units, from ``limits``' own window statistics, then
tries again) as long as the total wait stays within ``RATE_LIMIT_MAX_WAIT`` seconds; past that
it raises :class:`~webapp.core.protocol.job_errors.RateLimited` with the seconds until the budget frees
units. In a worker (``jobs/worker/``) that exception reschedules the job (row ``scheduled``,
``error_code`` ``rate_limited``), never fails it.

Redis: the app's own (``REDIS_URL``, ``REDIS_TLS_VERIFY``, the same client options as
:func:`webapp.core.queues.make_redis`), keys under ``docket:rate:``. One storage per process, made on
first use and forgotten in a forked child (a connection must not cross a ``fork()``). Nothing
connects at import.

Timestamps are each process's clock (``limits`` takes ``time.time()`` in the client): machines
that share budgets must keep their clocks in sync (NTP), or a window is off by their skew.
"""

from __future__ import annotations

import math
import os
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Mapping

from webapp.core.protocol.job_errors import RateLimited

__all__ = ["RateLimit", "RateLimited", "acquire", "acquire_all", "configured_limits", "largest_cost",
           "parse_job_rate_limits", "begin_run", "spent_in_run", "mark_spent", "KEY_PREFIX", "MAX_ENTRIES"]

KEY_PREFIX = "docket:rate"  # limits adds ":" and its own key: docket:rate:LIMITER/<budget>/…
#: Most Redis list entries one budget keeps. The moving window stores one timestamp per unit, so
#: a large budget (OpenAI's tokens: millions per minute) is counted in units of several tokens,
#: rounded against the caller (cost up, limit down): the limit still holds, and the list stays
#: ≤ 10,000 entries (≈ 0.3 MB) however large the budget, and the script pushing a request's
#: units stays short (Redis runs nothing else meanwhile).
MAX_ENTRIES = 10_000
#: Seconds added to an outside service's window (``OPENAI_RATE_WINDOW``) in Docket's own count.
#: A unit is stamped when the worker takes it; the service counts the request when it arrives,
#: 4–75 ms later on the benchmark's local server (``benchmarks/rate_limit.py``), and with exactly
#: 60 s the API saw 122 requests in one 60 s window of a 120/minute budget. Counting over 61 s
#: holds the limit at the API for any sending delay below a second, for ≈ 1.6 % of throughput.
SEND_MARGIN = 1


@dataclass(frozen=True)
class RateLimit:
    """A limit: at most ``amount`` units per ``seconds`` seconds (a moving window).

    Attributes:
        amount: units per window (≥ 1).
        seconds: the window's length in seconds (≥ 1).
        text: how it was written (for sentences), e.g. ``"600/minute"``.
    """

    amount: int
    seconds: int
    text: str

    @classmethod
    def parse(cls, text: str) -> "RateLimit":
        """A limit from ``limits``' notation: ``"600/minute"``, ``"10 per second"``, ``"5/2 seconds"``.

        Raises:
            ValueError: not that notation (one sentence that quotes ``text``), or an amount below 1.
        """
        from limits import parse

        try:
            item = parse(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a rate limit; write it as N/second, N/minute, N/hour or N/day "
                             "(e.g. 600/minute)") from None
        if item.amount < 1:
            raise ValueError(f"{text!r} is not a rate limit: the amount must be at least 1")
        return cls(amount=int(item.amount), seconds=int(item.get_expiry()), text=text.strip())

    @property
    def unit(self) -> int:
        """Units of the caller's cost per Redis entry: 1 up to :data:`MAX_ENTRIES`, more above."""
        return max(1, math.ceil(self.amount / MAX_ENTRIES))

    @property
    def largest_cost(self) -> int:
        """The most units one take may have: the whole limit, rounded down to whole entries."""
        return self.amount // self.unit * self.unit

    def item(self) -> Any:
        """The ``limits`` item: ``amount // unit`` entries per ``seconds`` s (a per-second item
        with ``seconds`` multiples: its Redis key names amount and window, so a changed limit
        starts a fresh budget)."""
        from limits import RateLimitItemPerSecond

        return RateLimitItemPerSecond(self.amount // self.unit, self.seconds)

    def entries(self, cost: int) -> int:
        """Redis entries ``cost`` units take: ``ceil(cost / unit)``."""
        return math.ceil(cost / self.unit)


def parse_job_rate_limits(text: str | None, kinds: Any) -> dict[str, RateLimit]:
    """``JOB_RATE_LIMITS``: ``kind=limit`` pairs separated by ``;`` (or ``,``), e.g.
    ``document=600/minute;report=10/minute``.

    Args:
        text: the setting; empty or ``None``: no job kind is limited.
        kinds: the known job kinds (:data:`webapp.core.protocol.kinds.JOB_KINDS`).

    Returns:
        ``{kind: RateLimit}``.

    Raises:
        ValueError: a pair without ``=``, an unknown kind, a kind named twice, or a limit not in
            ``limits``' notation (one sentence naming the setting).
    """
    limits_by_kind: dict[str, RateLimit] = {}
    for part in (text or "").replace(",", ";").split(";"):
        if not part.strip():
            continue
        kind, sep, notation = part.partition("=")
        kind = kind.strip()
        if not sep or not kind:
            raise ValueError(f"JOB_RATE_LIMITS: {part.strip()!r} is not kind=limit (e.g. document=600/minute)")
        if kind not in kinds:
            raise ValueError(f"JOB_RATE_LIMITS: {kind!r} is not a job kind; the kinds are {', '.join(sorted(kinds))}")
        if kind in limits_by_kind:
            raise ValueError(f"JOB_RATE_LIMITS names {kind!r} twice")
        try:
            limits_by_kind[kind] = RateLimit.parse(notation)
        except ValueError as exc:
            raise ValueError(f"JOB_RATE_LIMITS for {kind}: {exc}") from None
    return limits_by_kind


def configured_limits(config: Mapping[str, Any]) -> dict[str, RateLimit]:
    """Every budget the configuration limits: ``openai.requests``, ``openai.tokens`` (unless 0)
    and ``job.<kind>`` for each kind in ``JOB_RATE_LIMITS`` (``{kind: RateLimit}`` as
    :func:`webapp.core.config.load_config` leaves it, or the setting's text), else the kind's
    declared ``rate_limit``.

    Raises:
        ValueError: ``JOB_RATE_LIMITS`` given as text that :func:`parse_job_rate_limits` refuses.
    """
    found: dict[str, RateLimit] = {}
    window = int(config.get("OPENAI_RATE_WINDOW") or 60)
    for name, setting in (("openai.requests", "OPENAI_REQUESTS_PER_MINUTE"),
                          ("openai.tokens", "OPENAI_TOKENS_PER_MINUTE")):
        amount = int(config.get(setting) or 0)
        if amount > 0:
            text = f"{setting}={amount}" + (f" per {window} s" if window != 60 else "")
            # Counted over the API's window plus SEND_MARGIN: a unit is stamped when it is taken,
            # the API counts the request when it arrives, up to a moment later.
            found[name] = RateLimit(amount, window + SEND_MARGIN, text)
    from webapp.core.protocol.kinds import JOB_KINDS

    by_kind = config.get("JOB_RATE_LIMITS") or {}
    if isinstance(by_kind, str):  # the setting's text (a config given as a dict, as the tests do)
        by_kind = parse_job_rate_limits(by_kind, JOB_KINDS)
    # A kind's declared budget (JobKind.rate_limit) unless JOB_RATE_LIMITS names the kind.
    by_kind = {**{name: kind.rate_limit for name, kind in JOB_KINDS.items() if kind.rate_limit}, **by_kind}
    for kind, limit in by_kind.items():
        found[f"job.{kind}"] = limit if isinstance(limit, RateLimit) else RateLimit.parse(limit)
    return found


# --- one storage per process ---------------------------------------------------------------------

_limiters: dict[tuple[Any, ...], Any] = {}
_limiters_lock = threading.Lock()


def _forget_limiters_after_fork() -> None:
    """In a forked child (a pool's worker process, a gunicorn worker) the parent's Redis
    connections must not be used: start with none, and a lock nobody holds."""
    global _limiters_lock
    _limiters.clear()
    _limiters_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_limiters_after_fork)


def _limiter(config: Mapping[str, Any]) -> Any:
    """This process's :class:`limits.strategies.MovingWindowRateLimiter` on the app's Redis,
    made on first use (no connection until its first command)."""
    url = config.get("REDIS_URL") or "redis://localhost:6379/0"
    tls_verify = bool(config.get("REDIS_TLS_VERIFY", True))
    key = (os.getpid(), url, tls_verify)
    with _limiters_lock:
        limiter = _limiters.get(key)
        if limiter is None:
            from limits.storage import RedisStorage
            from limits.strategies import MovingWindowRateLimiter

            from webapp.core.queues import make_redis

            # The queues' client options (timeouts, TLS verification, driver info), through its pool.
            pool = make_redis(url, tls_verify).connection_pool
            storage = RedisStorage(url, connection_pool=pool, key_prefix=KEY_PREFIX)
            limiter = _limiters[key] = MovingWindowRateLimiter(storage)
        return limiter


def largest_cost(config: Mapping[str, Any], name: str) -> int | None:
    """The most units of budget ``name`` one :func:`acquire` may take (``None``: not limited);
    a caller splits larger work to fit (the embedder's requests, by tokens)."""
    limit = configured_limits(config).get(name)
    return None if limit is None else limit.largest_cost


# Whether the job run in this thread has taken units of an outside service's budget (not a job
# kind's): rescheduling it then would throw away work already paid for (see spent_in_run).
_spent: ContextVar[bool] = ContextVar("docket_rate_limit_spent", default=False)


def begin_run() -> None:
    """Mark the start of a job run in this thread: nothing of any outside service's budget spent
    yet (the worker calls it before each job, ``jobs/worker/``)."""
    _spent.set(False)


def spent_in_run() -> bool:
    """Whether this thread's job run has taken units of an outside service's budget (an OpenAI
    request) since :func:`begin_run`. A caller then waits longer rather than have the job
    rescheduled, which would throw away those requests' work — and a job that needs more than
    one window's budget would be rescheduled for ever."""
    return _spent.get()


def mark_spent() -> None:
    """Note that this thread's job run has taken units of an outside service's budget: what
    :func:`acquire_all` notes itself, for units taken in other threads on the run's behalf (an
    embedder's concurrent requests, each in a copy of this thread's context)."""
    _spent.set(True)


def _max_wait(config: Mapping[str, Any], max_wait: float | None) -> float:
    return float(config.get("RATE_LIMIT_MAX_WAIT", 5) if max_wait is None else max_wait)


def acquire(config: Mapping[str, Any], name: str, cost: int = 1, max_wait: float | None = None) -> None:
    """Take ``cost`` units of budget ``name``, waiting in place for at most ``max_wait`` seconds.

    Args:
        config: the app's configuration (:func:`configured_limits`; ``REDIS_URL``, ``REDIS_TLS_VERIFY``).
        name: the budget, e.g. ``openai.requests`` or ``job.document``.
        cost: units to take (≥ 0; 0 takes nothing).
        max_wait: seconds this call may wait in all; ``None``: ``RATE_LIMIT_MAX_WAIT`` (5 s).

    Raises:
        RateLimited: the units are not free within ``max_wait``; ``retry_after`` is the seconds
            until the budget frees units (a lower bound when ``cost`` > 1).
        ValueError: ``cost`` is larger than the whole limit (it could never be taken).
        redis.exceptions.RedisError: Redis cannot be reached (as any Redis command of a job).
    """
    acquire_all(config, {name: cost}, max_wait=max_wait)


def acquire_all(config: Mapping[str, Any], costs: Mapping[str, int], max_wait: float | None = None) -> None:
    """Take units of several budgets for one action (an API request: requests *and* tokens):
    all of them, or none while waiting.

    Each round first tests every limited budget (``limits``' ``test``: no units taken), and only
    when all have room takes from each (``hit``, one atomic script per budget). Another process
    may win the room between test and take: then the units already taken in that round stay
    counted (``limits`` cannot give moving-window units back) and the round is repeated — this
    errs only towards using *less* than the limit, never more.

    Args:
        config: see :func:`acquire`.
        costs: ``{budget name: units}``; budgets without a configured limit are free.
        max_wait: see :func:`acquire`.

    Raises:
        RateLimited: see :func:`acquire` (names the first budget that was not free).
        ValueError: a cost is larger than its whole limit, or negative.
    """
    configured = configured_limits(config)
    wanted = [(name, configured[name], cost) for name, cost in costs.items() if cost and name in configured]
    for name, limit, cost in wanted:
        if cost < 0:
            raise ValueError(f"a cost of {cost} units of {name} is negative")
        if cost > limit.largest_cost:
            raise ValueError(f"{cost} units of {name} are more than its whole limit ({limit.text})")
    if not wanted:
        return
    limiter = _limiter(config)
    budget = _max_wait(config, max_wait)
    deadline = time.monotonic() + budget
    while True:
        blocked = _first_blocked(limiter, wanted)
        if blocked is None:
            for name, limit, cost in wanted:
                if not limiter.hit(limit.item(), name, cost=limit.entries(cost)):
                    blocked = (name, limit, _seconds_until_free(limiter, limit, name))
                    break
            else:
                if any(not name.startswith("job.") for name, _, _ in wanted):
                    _spent.set(True)
                return
        name, limit, wait = blocked
        left = deadline - time.monotonic()
        if wait > left:
            raise RateLimited(name, wait, limit.text)
        time.sleep(wait)


def _first_blocked(limiter: Any, wanted: list[tuple[str, RateLimit, int]]) -> tuple[str, RateLimit, float] | None:
    """The first budget without room for its cost, with the seconds until it frees units."""
    for name, limit, cost in wanted:
        if not limiter.test(limit.item(), name, cost=limit.entries(cost)):
            return name, limit, _seconds_until_free(limiter, limit, name)
    return None


def _seconds_until_free(limiter: Any, limit: RateLimit, name: str) -> float:
    """Seconds until the oldest unit in ``name``'s window leaves it (``limits``' window
    statistics: ``reset_time`` is that moment, as a Unix time). At least 10 ms, so a caller that
    tries again never spins."""
    stats = limiter.get_window_stats(limit.item(), name)
    return max(0.01, float(stats.reset_time) - time.time())
