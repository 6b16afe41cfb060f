"""``GET /api/queues`` (admins only): the statistics of every queue, for operators and the
``/queues`` page.

The answer (:func:`webapp.core.queue_stats.queue_statistics` computes it)::

    {"queues": [{"name": "high",
                 "counts": {"queued": 0, "started": 0, "scheduled": 0, "deferred": 0,
                            "failed": 0, "finished": 0, "canceled": 0},
                 "oldest_queued_age_seconds": 12.5 | null,
                 "workers": 1,
                 "jobs_per_minute": {"last_5_minutes": 0.4, "last_60_minutes": 0.1},
                 "waiting": {"delayed": 0, "for_batch": 0},
                 "owners": [{"owner": "team-a", "queued": 298, "started": 2},
                            {"owner": "team-b", "queued": 1, "started": 0}]},
                {"name": "default", …}],
     "generated_at": "2025-01-02T03:04:05.678901+00:00"}

Errors: ``401`` without a principal, ``403 admin_required`` for a principal who is not an admin,
``503 queue_unavailable`` when Redis cannot be reached (``503 database_unavailable`` for the
database, from :mod:`webapp.edge.json_errors`).
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from redis.exceptions import RedisError

from webapp.edge.auth import require_admin
from webapp.core.service_errors import ServiceError
from webapp.core.queue_stats import queue_statistics

bp = Blueprint("queues_api", __name__, url_prefix="/api")

REDIS_DOWN = "The job queue (Redis) is unavailable, so its statistics cannot be read; try again shortly."


@bp.after_request
def no_store(response):
    """Statistics change by the second: never cached (as :mod:`webapp.edge.api`)."""
    response.headers.setdefault("Cache-Control", "no-store")
    return response


@bp.get("/queues")
def list_queues():
    """Every queue's counts, oldest queued age, workers and jobs per minute (module docstring).

    Raises:
        ServiceError: 403 ``admin_required`` (401 without a principal); 503 ``queue_unavailable``
            when Redis cannot be reached.
    """
    require_admin()
    try:
        statistics = queue_statistics()
    except RedisError as exc:
        current_app.logger.error("queue statistics: Redis is unavailable: %s", exc)
        raise ServiceError(503, "queue_unavailable", REDIS_DOWN) from exc
    return jsonify(statistics)
