"""rq-dashboard at ``/rq``: the operator's live view of RQ's queues, registries, jobs and workers.

rq-dashboard 0.9 (its blueprint, embedded; see the README's "Known traps") is wired in here:

* **Admins only, at the app level.** The blueprint has no authentication and its
  ``/rq/requeue/<queue>`` is a GET, so :func:`init_app` puts :func:`_require_admin` first among
  the blueprint's ``before_request`` functions *of this app* (never ``add_basic_auth``, never
  the module-level blueprint, which a second ``create_app`` would trip over). The app-wide
  authentication hook (:mod:`webapp.auth`) runs before it: a signed-out browser is sent to
  ``/signin``; a signed-in principal who is not an admin gets ``403 admin_required``. As on
  every HTML page, only the session signs in (a bearer token is for ``/api``), and its POSTs
  (delete, requeue, empty, compact) need the page's CSRF token, which the overridden
  ``templates/rq_dashboard/base.html`` hands to jQuery.
* **Configured from Docket's.** ``RQ_DASHBOARD_REDIS_URL`` is the app's ``REDIS_URL`` (with
  ``ssl_cert_reqs=none`` when ``REDIS_TLS_VERIFY`` is off); ``setup_rq_connection`` is called
  here; the serializer is the one Docket's queues use (RQ's default pickle serializer). The
  dashboard keeps its serializer in a module-level global, shared by every app of the process.
* **A Content-Security-Policy of its own.** The dashboard's pages run an inline script (given a
  per-response nonce), compile underscore templates (``'unsafe-eval'``) and use inline styles;
  the policy allows that on ``/rq`` only, everything else from this site, and keeps
  ``frame-ancestors 'none'``.
* **Its job detail works for jobs with dependencies.** rq-dashboard 0.9's ``job.json`` calls
  ``.decode`` on RQ 3's ``str`` dependency ids and answers 500 for any job created with
  ``depends_on``; :func:`job_info` replaces that view for this app. A job RQ no longer has is a
  404 instead of a 500, and "Compact" on an empty queue does nothing instead of a 500.
* **Links to Docket.** rq-dashboard knows nothing of rq-scheduler's schedules; the overridden
  base template links to ``/schedules``, ``/queues`` and Docket's pages.
"""

from __future__ import annotations

import json
import secrets
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import rq_dashboard
from flask import Flask, abort, current_app, g, request
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from rq_dashboard import web as dashboard_web

from webapp.auth import require_admin

URL_PREFIX = "/rq"
BLUEPRINT = rq_dashboard.blueprint.name  # "rq_dashboard"
# The dashboard's inline script gets a nonce; underscore's _.template compiles with new Function
# ('unsafe-eval'); its markup and Bootstrap use inline styles.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self' 'nonce-{nonce}' 'unsafe-eval'; "
                           "style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
                           "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'")


def dashboard_redis_url(redis_url: str, tls_verify: bool = True) -> str:
    """The Redis URL for rq-dashboard: ``redis_url``, plus ``ssl_cert_reqs=none`` for a
    ``rediss://`` URL when ``tls_verify`` is off (as :func:`webapp.queues.make_redis` does with a
    keyword, which the dashboard's own client factory does not take)."""
    if tls_verify or not redis_url.startswith("rediss://"):
        return redis_url
    parts = urlsplit(redis_url)
    query = [(key, value) for key, value in parse_qsl(parts.query) if key != "ssl_cert_reqs"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("ssl_cert_reqs", "none")])))


def _require_admin():
    """The blueprint's first ``before_request`` (this app): admins only; a dashboard instance
    number other than 0 (Docket has one Redis) is a 404, not rq-dashboard's 500.

    Raises:
        ApiError: 403 ``admin_required`` (401 without a principal, which the app-wide hook has
            already turned into a redirect to ``/signin``).
        NotFound: 404 for an instance number past the configured Redis URLs.
    """
    require_admin()
    instance = (request.view_args or {}).get("instance_number")
    if instance is not None and instance >= len(current_app.config["RQ_DASHBOARD_REDIS_URL"]):
        abort(404)
    g.dashboard_csp_nonce = secrets.token_urlsafe(16)


def _content_security_policy(response):
    """The blueprint's ``after_request``: the dashboard's own policy (the app-wide one, set
    afterwards with ``setdefault``, would block its inline script)."""
    nonce = g.get("dashboard_csp_nonce") or secrets.token_urlsafe(16)
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY.format(nonce=nonce)
    return response


def job_info(instance_number: int, job_id: str):
    """``/rq/<n>/data/job/<id>.json``: rq-dashboard's job detail, with dependency ids read as
    RQ 3 gives them (``str``). Same fields as rq-dashboard 0.9's view.

    Raises:
        NotFound: 404 when RQ has no job ``job_id`` (expired, deleted or never there).
    """
    serializer = dashboard_web.config.serializer
    connection_ = current_app.redis_conn
    try:
        job = RQJob.fetch(job_id, serializer=serializer, connection=connection_)
    except NoSuchJobError:
        abort(404)
    latest_result = job.latest_result()
    json_encoder = current_app.config.get("RQ_DASHBOARD_JSON_ENCODER", json.JSONEncoder)
    result = dict(
        id=job.id,
        created_at=dashboard_web.serialize_date(job.created_at),
        enqueued_at=dashboard_web.serialize_date(job.enqueued_at),
        started_at=dashboard_web.serialize_date(job.started_at),
        ended_at=dashboard_web.serialize_date(job.ended_at),
        origin=job.origin,
        status=job.get_status(),
        result=job.return_value(),
        exc_info=latest_result.exc_string if latest_result else None,
        description=dashboard_web.format_job_description(job),
        metadata=json.dumps(job.get_meta(), cls=json_encoder),
    )
    dependency_ids = [(i.decode() if isinstance(i, bytes) else i).split(":")[-1].strip() for i in job.dependency_ids]
    if dependency_ids:
        result["depends_on"] = dependency_ids
        result["depends_on_status"] = [
            "active" if RQJob.exists(dep_id, connection=connection_) else "expired" for dep_id in dependency_ids]
    return result


def _not_found_for_missing_jobs(view):
    """Wrap a dashboard view so that a job RQ no longer has is a 404, not a 500."""
    def wrapped(*args, **kwargs):
        try:
            return view(*args, **kwargs)
        except NoSuchJobError:
            abort(404)
    wrapped.__name__ = wrapped.__qualname__ = view.__name__
    wrapped.__doc__ = view.__doc__
    return wrapped


def _compact_skips_empty_queues(view):
    """Wrap rq-dashboard's "Compact" so that an empty queue is a no-op: RQ's ``Queue.compact``
    renames the queue's key, and Redis refuses to rename a key that does not exist (500)."""
    def wrapped(queue_name: str):
        from rq import Queue

        if not Queue(queue_name, connection=current_app.redis_conn).count:
            return {"status": "OK"}, {"Cache-Control": "no-store"}
        return view(queue_name)
    wrapped.__name__ = wrapped.__qualname__ = view.__name__
    return wrapped


def init_app(app: Flask) -> None:
    """Mount rq-dashboard at ``/rq`` on ``app``, admins only, on the app's Redis (module docstring).

    Raises:
        RuntimeError: from rq-dashboard, when there is no Redis URL.
    """
    from webapp.queues import QUEUE_NAMES

    app.config["RQ_DASHBOARD_REDIS_URL"] = dashboard_redis_url(app.config["REDIS_URL"],
                                                               app.config.get("REDIS_TLS_VERIFY", True))
    # Module-level in rq-dashboard: every app of the process shares it (Docket's are all the same).
    dashboard_web.config.serializer = app.extensions["rq"].queues[QUEUE_NAMES[0]].serializer
    app.register_blueprint(rq_dashboard.blueprint, url_prefix=URL_PREFIX)
    dashboard_web.setup_rq_connection(app)
    # Before rq-dashboard's own hook (which opens a Redis client for the instance in the URL).
    app.before_request_funcs.setdefault(BLUEPRINT, []).insert(0, _require_admin)
    app.after_request_funcs.setdefault(BLUEPRINT, []).append(_content_security_policy)
    app.view_functions[f"{BLUEPRINT}.job_info"] = dashboard_web.jsonify(job_info)
    views = app.view_functions
    views[f"{BLUEPRINT}.job_view"] = _not_found_for_missing_jobs(views[f"{BLUEPRINT}.job_view"])
    views[f"{BLUEPRINT}.compact_queue"] = _compact_skips_empty_queues(views[f"{BLUEPRINT}.compact_queue"])
