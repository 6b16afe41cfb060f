"""``GET /metrics`` (admins only): Prometheus's text format, for a scraper.

Authenticated like the API (:mod:`webapp.edge.auth`): ``Authorization: Bearer <admin token>`` — what a
Prometheus scrape config sends with ``authorization: {credentials: …}`` — or an admin's signed-in
session. ``401`` without either, ``403 admin_required`` for a token that is not an admin's: the
queue and job counts are the whole service's, every owner's.

What it contains: :mod:`webapp.core.metrics` (counters and histograms summed over every process of
this machine, gauges read from Redis and the Job table at scrape time). Never cached.
"""

from __future__ import annotations

from flask import Blueprint, current_app

from webapp.edge.auth import require_admin
from webapp.core.db import connection
from webapp.core.metrics import render
from webapp.core.queues import rq

bp = Blueprint("metrics_api", __name__)


@bp.get("/metrics")
def metrics():
    """The scrape: ``200`` with ``text/plain; version=…`` (Prometheus's exposition format).

    A source that cannot be read (Redis, the database) is left out and reported by
    ``docket_scrape_source_up{source=…} 0``: the scrape still answers.

    Raises:
        ServiceError: 403 ``admin_required`` (401 without a principal).
    """
    require_admin()
    body, content_type = render(rq.connection, connection)
    response = current_app.response_class(body, mimetype=None, content_type=content_type)
    response.headers["Cache-Control"] = "no-store"
    return response
