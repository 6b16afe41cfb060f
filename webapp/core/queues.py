"""RQ as a Flask extension: the Redis connection and the ``high`` and ``default`` queues.

Modelled on pallets-eco/flask-rq: the extension registers itself in ``app.extensions["rq"]``,
queues come from config, and workers run jobs inside the application context (see
``jobs/worker/cli.py``). The Redis client connects lazily, on its first command.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from flask import Flask, current_app
from redis import Redis
from redis.driver_info import DriverInfo
from redis.exceptions import RedisError
from rq import Queue
from rq.exceptions import InvalidJobOperation
from rq.job import Job as RQJob

from webapp.core.fair_queue import FairQueue

QUEUE_NAMES = ("high", "default")  # workers listen in this order: high first


def make_redis(url: str, tls_verify: bool = True) -> Redis:
    """Return a lazily-connecting Redis client for ``url`` (``redis://``, ``rediss://``, ``unix://``).

    ``tls_verify=False`` accepts the self-signed certificates of managed ``rediss://`` services.
    """
    kwargs: dict[str, Any] = {
        "health_check_interval": 30,
        "socket_connect_timeout": 5,
        "driver_info": _driver_info(),
    }
    if url.startswith("rediss://") and not tls_verify:
        kwargs["ssl_cert_reqs"] = ssl.CERT_NONE
    return Redis.from_url(url, **kwargs)


@lru_cache(maxsize=1)
def _driver_info() -> DriverInfo:
    """The client name and version redis-py sends with ``CLIENT SETINFO``, computed once per process.

    Without it redis-py reads its own package metadata from disk for every new connection
    (≈4 ms, measured): costly for every process forked from a worker, which opens its own.
    """
    return DriverInfo()


@dataclass
class RQState:
    """What the extension keeps per application."""

    connection: Redis
    queues: dict[str, Queue]


class RQ:
    """Register Redis and RQ queues on a Flask app; find them again through ``current_app``."""

    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Create the app's Redis client and queues from ``REDIS_URL`` (no connection is made):
        :class:`~webapp.core.fair_queue.FairQueue` (round-robin across owners) unless
        ``FAIR_SHARE`` is off, then RQ's plain ``Queue`` (first in, first out)."""
        connection = make_redis(app.config["REDIS_URL"], app.config.get("REDIS_TLS_VERIFY", True))
        queue_class = FairQueue if app.config.get("FAIR_SHARE", True) else Queue
        queues = {name: queue_class(name, connection=connection) for name in QUEUE_NAMES}
        app.extensions["rq"] = RQState(connection=connection, queues=queues)

    @staticmethod
    def _state() -> RQState:
        return current_app.extensions["rq"]

    @property
    def connection(self) -> Redis:
        """The current app's Redis client."""
        return self._state().connection

    def get_queue(self, name: str = "default") -> Queue:
        """The current app's queue called ``name`` (``high`` or ``default``). Raises ``KeyError``."""
        return self._state().queues[name]

    def live_state(self, job_id: str, with_meta: bool = False) -> tuple[str | None, dict[str, Any]]:
        """What RQ says now about job ``job_id``: its status word and, if ``with_meta``, its meta.

        Returns ``(None, {})`` when RQ no longer has the job (expired or lost) or Redis cannot be
        reached. Reads only those fields (``HGET``) through RQ's own accessors: ``Job.fetch``
        reads and deserialises the whole job, its arguments and result included.
        """
        rq_job = RQJob(job_id, connection=self.connection)
        try:
            status = rq_job.get_status(refresh=True).value
            return status, (rq_job.get_meta(refresh=True) if with_meta else {})
        except (InvalidJobOperation, RedisError):
            return None, {}


rq = RQ()
