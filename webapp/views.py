"""The HTML page: upload form, live job progress, search (the page talks to the JSON API)."""

from __future__ import annotations

from flask import Blueprint, current_app, render_template

from webapp.embeddings import embedder_name

bp = Blueprint("views", __name__)


@bp.get("/")
def index():
    config = current_app.config
    return render_template(
        "index.html",
        max_upload_mb=config["MAX_CONTENT_LENGTH"] // (1024 * 1024),
        embedding_model=embedder_name(config),
    )
