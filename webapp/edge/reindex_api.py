"""``/api/admin/reindex`` (admins only): where the documents stand against the current settings,
and the ``reindex`` job that processes the stale ones again (:mod:`webapp.core.indexing`).

``GET /api/admin/reindex``::

    {"recipe": {"extractor_version": 2, "chunk_size": 1500, "chunk_overlap": 150,
                "embedder": "wordllama:l2_supercat-256", "ocr": "auto", "pdf_tables": "off"},
     "digest": "9f2c…" (hex SHA-256 of the recipe), "space": "wordllama:l2_supercat-256",
     "documents": {"current": 120, "stale": 30, "stale_in_flight": 4, "without_chunks": 2},
     "spaces": [{"space": "hashing-v1:2048", "documents": 30, "chunks": 410, "current": false}, …],
     "last_job": null | {…the job as GET /api/jobs/<id> shows it…,
                         "counts": {"selected", "launched", "skipped", "finished", "failed"} | null}}

The recipe and counts are the web process's configuration's; the reindex job compares with the
worker's (run both with the same settings).

``POST /api/admin/reindex`` (no body) launches the ``reindex`` job: ``202 {"job_id", "status",
"status_url", "launched": true}``. One at a time: while one is waiting or running the answer is
``200`` with that job and ``"launched": false`` (nothing launched; asking again is harmless, as
a button pressed twice). Cancel it with ``POST /api/jobs/<id>/cancel``: it launches nothing more;
the document jobs it launched go on.

Errors: ``401`` without a principal, ``403 admin_required`` for one who is not an admin, ``503
queue_unavailable`` when Redis cannot be reached.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, url_for
from redis.exceptions import LockError, RedisError

from webapp.core.indexing import index_status, last_reindex, launch_reindex
from webapp.core.models import Job
from webapp.core.protocol.launch import QueueUnavailable
from webapp.core.queues import rq
from webapp.core.service_errors import ServiceError
from webapp.edge.auth import require_admin
from webapp.edge.job_json import job_to_dict

bp = Blueprint("reindex_api", __name__, url_prefix="/api/admin")

REDIS_DOWN = "The job queue (Redis) is unavailable, so no reindex job was launched; try again shortly."
COUNTS = ("selected", "launched", "skipped", "finished", "failed")


@bp.after_request
def no_store(response):
    """Counts change by the second: never cached (as :mod:`webapp.edge.api`)."""
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def reindex_job_to_dict(job: Job) -> dict[str, Any]:
    """A reindex job as the API shows it, with its ``counts``: live from RQ's meta while it
    runs, from its result once it finished; ``None`` before it counted anything."""
    shown = job_to_dict(job)
    counts = None
    if job.status == "started":
        counts = rq.live_state(job.id, with_meta=True)[1].get("reindex")
    elif isinstance(job.result, dict) and "selected" in job.result:
        counts = {name: job.result.get(name) for name in COUNTS}
    return {**shown, "status_url": url_for("api.get_job", job_id=job.id), "counts": counts}


@bp.get("/reindex")
def get_reindex():
    """The current recipe and digest, documents stale and current, per vector space, and the
    last reindex job (module docstring).

    Raises:
        ServiceError: 403 ``admin_required`` (401 without a principal).
    """
    require_admin()
    status = index_status(current_app.config)
    last = last_reindex()
    return jsonify({**status, "last_job": None if last is None else reindex_job_to_dict(last)})


@bp.post("/reindex")
def post_reindex():
    """Launch the reindex job: 202 with it; 200 with the one waiting or running (nothing launched).

    Raises:
        ServiceError: 403 ``admin_required`` (401 without a principal); 503 ``queue_unavailable``
            when Redis cannot be reached or refused the job.
    """
    require_admin()
    try:
        job, launched = launch_reindex()
    except QueueUnavailable as exc:
        raise ServiceError(503, "queue_unavailable", str(exc)) from exc
    except (RedisError, LockError) as exc:
        current_app.logger.error("reindex: Redis is unavailable: %s", exc)
        raise ServiceError(503, "queue_unavailable", REDIS_DOWN) from exc
    answer = {"job_id": job.id, "status": job.status, "status_url": url_for("api.get_job", job_id=job.id),
              "launched": launched}
    return jsonify(answer), 202 if launched else 200
