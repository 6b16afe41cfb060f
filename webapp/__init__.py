"""Docket's web app: ``create_app`` builds a configured Flask application.

Configuration comes from the environment (see :mod:`webapp.core.config`); ``test_config`` overrides
it in tests. Nothing connects to Redis or the database here: clients connect on first use.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from flask import Flask


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Create the Flask app.

    Args:
        test_config: settings that replace the environment's (tests pass paths and URLs here).

    Returns:
        The app, with the database, RQ extension, blueprints and CLI commands registered (the job
        path's ``rq`` commands are added by ``wsgi.py``: the web app never imports ``jobs``).
    """
    app = Flask(__name__, instance_path=os.environ.get("DOCKET_INSTANCE_PATH") or None)
    from webapp.core import moved_modules

    moved_modules.install()  # jobs enqueued by the previous release name their functions' old paths
    from webapp.core.config import load_config

    app.config.update(load_config(app.instance_path))
    if test_config:
        app.config.update(test_config)
    from webapp.core.protocol.kinds import load_kind_modules

    load_kind_modules(app.config["JOB_KIND_MODULES"])  # kinds declared outside the core (JOB_KIND_MODULES)
    app.config["WEBHOOK_SECRET"] = app.config.get("WEBHOOK_SECRET") or app.config["SECRET_KEY"]
    os.makedirs(app.instance_path, exist_ok=True)
    if app.config["TRUSTED_PROXY_COUNT"]:
        from werkzeug.middleware.proxy_fix import ProxyFix

        # Flask's documented way behind a proxy: scheme, host and client address from its headers.
        hops = app.config["TRUSTED_PROXY_COUNT"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops)
    from webapp.core import logs, metrics

    logs.configure_logging(app.config["LOG_LEVEL"], app.config["LOG_FORMAT"])  # before app.logger is first used
    metrics.init_app(app)  # PROMETHEUS_MULTIPROC_DIR, before anything imports prometheus_client

    from webapp.edge import auth, request_checks
    from webapp.edge import json_errors
    from webapp.core.db import db
    from webapp.core.queues import rq

    db.init_app(app)
    rq.init_app(app)
    json_errors.init_app(app)
    logs.init_app(app)  # request id and one log line per request; its hooks run before auth's
    auth.init_app(app)  # refuses the default SECRET_KEY outside debug and tests
    request_checks.init_app(app)  # after auth's hook: no NUL, unpaired surrogate or too-deep JSON reaches a view

    from webapp.core.workflows import chords, page_parts
    from webapp.core import webhooks

    webhooks.init_app(app)  # a job with a callback_url that ends launches its delivery
    chords.init_app(app)  # a batch whose last document job ended releases its callback (report)
    page_parts.init_app(app)  # a big PDF's parts: the join once all finished, a failure or cancel follows
    from webapp.core import sources

    sources.init_app(app)  # a source item is synced once its document job finished (issue 23)

    from webapp.edge import api, dashboard, health, queues_api, schedules_api, views

    app.register_blueprint(api.bp)
    from webapp.edge import sse

    app.register_blueprint(sse.bp)  # GET /api/jobs/<id>/events, /api/batches/<id>/events (SSE)
    app.register_blueprint(schedules_api.bp)
    from webapp.edge import sources_api

    app.register_blueprint(sources_api.bp)  # /api/sources (issue 23)
    app.register_blueprint(queues_api.bp)
    from webapp.edge import reindex_api

    app.register_blueprint(reindex_api.bp)  # /api/admin/reindex, admins only
    from webapp.edge import prometheus

    app.register_blueprint(prometheus.bp)  # GET /metrics (Prometheus), admins only
    dashboard.init_app(app)  # rq-dashboard at /rq, admins only
    app.register_blueprint(health.bp)
    app.register_blueprint(views.bp)
    from webapp.edge import openapi

    app.register_blueprint(openapi.bp)  # GET /api/openapi.json, the API's contract

    from webapp.cli.ingest import ingest_command
    from webapp.cli.run import dev_command

    app.cli.add_command(ingest_command)
    app.cli.add_command(dev_command)
    from webapp.cli.schedule import schedule_cli

    app.cli.add_command(schedule_cli)
    from webapp.cli.tokens import tokens_cli

    app.cli.add_command(tokens_cli)
    from webapp.cli.documents import documents_cli

    app.cli.add_command(documents_cli)  # documents reprocess, documents reindex
    return app
