"""The HTML pages: upload, live job progress and search (``/``), reports (``/reports``) and
periodic jobs (``/schedules``).

The pages are static shells; their scripts (``static/common.js`` plus one per page) talk to the
JSON API. No inline script or style, so a Content-Security-Policy without ``'unsafe-inline'``
fits them.
"""

from __future__ import annotations

from flask import Blueprint, current_app, render_template

from webapp.edge.auth import current_principal
from webapp.core.embeddings import embedder_name
from webapp.core.schedules.table import MIN_INTERVAL, SCHEDULABLE_JOBS

bp = Blueprint("views", __name__)


@bp.get("/")
def index():
    config = current_app.config
    return render_template(
        "index.html",
        page="documents",
        max_upload_mb=config["MAX_CONTENT_LENGTH"] // (1024 * 1024),
        embedding_model=embedder_name(config),
    )


@bp.get("/reports")
def reports():
    return render_template("reports.html", page="reports")


@bp.get("/schedules")
def schedules():
    """The schedules page; its job choices are the allow-list of ``POST /api/schedules`` (without
    the maintenance jobs for a principal who is not an admin)."""
    admin = current_principal().admin
    return render_template("schedules.html", page="schedules",
                           jobs=[job for job in SCHEDULABLE_JOBS.values() if admin or not job.admin_only],
                           min_interval=MIN_INTERVAL)


@bp.get("/queues")
def queues():
    """The queues page (admins only): each queue's counts, oldest wait, workers and rates from
    ``GET /api/queues``, refreshed by ``static/queues.js``; links to ``/rq`` and ``/schedules``.

    Raises:
        ServiceError: 403 ``admin_required`` for a principal who is not an admin.
    """
    from webapp.edge.auth import require_admin

    require_admin()
    return render_template("queues.html", page="queues")
