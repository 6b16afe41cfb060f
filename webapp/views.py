"""The HTML pages: upload, live job progress and search (``/``), and reports (``/reports``).

The pages are static shells; their scripts (``static/common.js`` plus one per page) talk to the
JSON API. No inline script or style, so a Content-Security-Policy without ``'unsafe-inline'``
fits them.
"""

from __future__ import annotations

from flask import Blueprint, current_app, render_template

from webapp.embeddings import embedder_name

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
