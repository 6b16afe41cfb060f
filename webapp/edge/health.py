"""Liveness and readiness probes for the platform's router and for humans."""

from __future__ import annotations

from flask import Blueprint, jsonify
from redis.exceptions import RedisError

from webapp.core.db import connection
from webapp.core.queues import rq

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """The process is alive (checks nothing else)."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    """Redis answers PING and the database answers a query; else 503 naming what is down."""
    checks: dict[str, str] = {}
    try:
        rq.connection.ping()
        checks["redis"] = "ok"
    except RedisError as exc:
        checks["redis"] = f"down: {exc}"
    try:
        with connection() as database:
            database.execute_sql("SELECT 1").fetchone()
        checks["database"] = "ok"
    except Exception as exc:  # drivers raise their own error classes
        checks["database"] = f"down: {type(exc).__name__}: {exc}"
    down = [name for name, state in checks.items() if state != "ok"]
    if down:
        body = {
            "status": "unavailable",
            "checks": checks,
            "error": {"code": "not_ready", "message": f"Not ready: {' and '.join(down)} unavailable."},
        }
        return jsonify(body), 503
    return jsonify({"status": "ok", "checks": checks})
