"""rq-dashboard at ``/rq``: the operator's live view of RQ's queues, registries, jobs and workers.

rq-dashboard 0.9 (its blueprint, embedded; see the README's "Known traps") is wired in here:

* **Admins only, at the app level.** The blueprint has no authentication, so :func:`init_app`
  puts :func:`_guard` first among the blueprint's ``before_request`` functions *of this app*
  (never ``add_basic_auth``, never the module-level blueprint, which a second ``create_app``
  would trip over). The app-wide authentication hook (:mod:`webapp.edge.auth`) runs before it: a
  signed-out browser is sent to ``/signin``; a signed-in principal who is not an admin gets
  ``403 admin_required``. As on every HTML page, only the session signs in (a bearer token is for
  ``/api``).
* **Every route classified; actions are POSTs from this site with the page's CSRF token.**
  :data:`PAGES` and :data:`READS` only read; :data:`ACTIONS` change RQ's records (requeue one or
  all failed jobs, delete a job, empty a queue or registry, compact a queue). rq-dashboard 0.9
  routes ``/rq/requeue/<queue>`` for GET as well, so a link on another site, followed by a
  signed-in admin (``SameSite=Lax`` cookies travel with top-level GETs), requeued every failed
  job. Now an action asked with any method but POST is ``405 method_not_allowed`` (JSON,
  ``Allow: POST``; :func:`_refuse_other_methods` gives the same answer where Werkzeug's routing
  refuses the method), and a POST is checked by :func:`_guard` itself — ``Origin`` of this site
  (``403 cross_origin_refused``), the page's CSRF token (``403 csrf_failed``) — besides the
  app-wide hook, which checks the same for every POST. The dashboard's buttons send jQuery
  ``$.post`` requests, which carry the token: the overridden ``templates/rq_dashboard/base.html``
  hands it to ``$.ajaxSetup``. A route that no list names (an upgrade's) answers 404 and is
  logged; ``tests/edge/test_dashboard.py`` fails until it is classified.
* **Values shown as text.** rq-dashboard 0.9's job page writes the job's description, result,
  metadata and exception string into the page with underscore's raw ``<%= %>``; an exception can
  carry a name from an uploaded file (a zip part's name in an error sentence), i.e. HTML a
  non-admin chose. Docket's copy of that page (``templates/rq_dashboard/job.html``) uses the
  escaping ``<%- %>`` throughout; the JSON keeps the values as RQ holds them (``application/json``,
  ``nosniff``). The job lists already escape them.
* **Its buttons go through Docket's job protocol.** rq-dashboard's requeue, delete, empty and
  requeue-all change RQ's records behind the rows' back (an emptied queue's rows stayed
  ``queued`` and reconcile ran them anyway). :mod:`webapp.edge.dashboard_actions` replaces those
  views for this app: requeue is Docket's retry, delete and empty are Docket's cancel (or stop)
  for each job, or drop only RQ's record of a job that already ended; each answer carries a
  ``message`` the overridden base template shows. "Compact" is rq-dashboard's (it only drops ids
  of jobs RQ no longer has).
* **Errors as sentences.** Under ``/rq`` Redis down is ``503 queue_unavailable`` (as under
  ``/api``), a requeue that Docket's retry refuses (finished, queued …) ``409
  job_not_requeueable``, an action on a job neither RQ nor Docket has ``404 job_not_found``: JSON
  for the data and actions, Docket's error page for a page a browser opens (:func:`_error`),
  never a 500.
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
from redis.exceptions import RedisError
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job as RQJob
from rq_dashboard import web as dashboard_web
from werkzeug.exceptions import MethodNotAllowed

from webapp.edge import dashboard_actions
from webapp.edge.auth import csrf, require_admin, same_origin
from webapp.edge.json_errors import error_response
from webapp.core.service_errors import ServiceError

URL_PREFIX = "/rq"
BLUEPRINT = rq_dashboard.blueprint.name  # "rq_dashboard"
# The dashboard's inline script gets a nonce; underscore's _.template compiles with new Function
# ('unsafe-eval'); its markup and Bootstrap use inline styles.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self' 'nonce-{nonce}' 'unsafe-eval'; "
                           "style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
                           "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'")

# Every route of rq-dashboard 0.9's blueprint, by what it does to RQ (the keys are its endpoint names).
# tests/edge/test_dashboard.py fails when the blueprint has a route that none of the three lists names, so
# that an upgrade cannot slip in an action a cross-site link could trigger; until it is classified,
# such a route answers 404 (:func:`_guard`).
PAGES = {  # HTML pages a person navigates to: they render a template (RQ's queues, workers or a job), read only
    "queues_overview": "the queues: /rq/, /rq/<n>/, /rq/<n>/view, /rq/<n>/view/queues",
    "workers_overview": "the workers: /rq/<n>/view/workers",
    "jobs_overview": "a queue's or registry's jobs: /rq/<n>/view/jobs[/<queue>/<registry>/<per page>/<order>/<page>]",
    "job_view": "one job: /rq/<n>/view/job/<id> (a 404 for a job RQ no longer has)",
}
READS = {  # JSON and files the pages fetch: they only read
    "list_queues": "every queue's counts: /rq/<n>/data/queues.json",
    "list_workers": "every worker: /rq/<n>/data/workers.json",
    "list_jobs": "a page of a queue's or registry's jobs: /rq/<n>/data/jobs/….json",
    "job_info": "one job: /rq/<n>/data/job/<id>.json (Docket's view, :func:`job_info`)",
    "favicon": "/rq/favicon.ico",
    "static": "its CSS and JavaScript: /rq/static/…",
}
ACTIONS = {  # they change jobs: POST only, from this site, with the page's CSRF token; Docket's views
    # (webapp/edge/dashboard_actions.py) go through the job protocol, so the rows and RQ agree
    "requeue_all": "retries every failed job of a queue (Docket's retry): /rq/requeue/<queue>, which "
                   "rq-dashboard 0.9 also routes for GET, so a link from another site could requeue them all",
    "requeue_job_view": "retries one job (Docket's retry): /rq/job/<id>/requeue",
    "delete_job_view": "cancels a waiting job, stops a running one (Docket's cancel), or deletes RQ's record "
                       "of one that ended: /rq/job/<id>/delete",
    "empty_queue": "that delete for every job of a queue or registry: /rq/queue/<queue>/<registry>/empty",
    "compact_queue": "drops the ids of vanished jobs from a queue's list: /rq/queue/<queue>/compact",
}
REDIS_DOWN = "The job queue (Redis) is unavailable, so the dashboard can neither read nor change it; try again shortly."


def dashboard_redis_url(redis_url: str, tls_verify: bool = True) -> str:
    """The Redis URL for rq-dashboard: ``redis_url``, plus ``ssl_cert_reqs=none`` for a
    ``rediss://`` URL when ``tls_verify`` is off (as :func:`webapp.core.queues.make_redis` does with a
    keyword, which the dashboard's own client factory does not take)."""
    if tls_verify or not redis_url.startswith("rediss://"):
        return redis_url
    parts = urlsplit(redis_url)
    query = [(key, value) for key, value in parse_qsl(parts.query) if key != "ssl_cert_reqs"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("ssl_cert_reqs", "none")])))


def _guard():
    """The blueprint's first ``before_request`` (this app): admins only; a route that no list of
    this module classifies never runs; an action (:data:`ACTIONS`) answers POST only and checks the
    request's origin and CSRF token itself, whatever the app-wide hook did; a dashboard instance
    number other than 0 (Docket has one Redis) is a 404, not rq-dashboard's 500.

    Returns:
        ``None`` to go on to the view, or the JSON refusal: ``405 method_not_allowed`` (``Allow:
        POST``) for an action asked with another method, ``403 cross_origin_refused`` for an
        action whose ``Origin`` is another site.

    Raises:
        ServiceError: 403 ``admin_required`` (401 without a principal, which the app-wide hook has
            already turned into a redirect to ``/signin``).
        CSRFError: an action without the page's CSRF token (``403 csrf_failed``, :mod:`webapp.edge.auth`).
        NotFound: 404 for an unclassified route, or an instance number past the configured Redis URLs.
    """
    require_admin()
    endpoint = _endpoint()
    if endpoint in ACTIONS:
        if request.method != "POST":
            return _method_not_allowed()
        origin = request.headers.get("Origin")
        if origin and not same_origin(origin):
            return _error(403, "cross_origin_refused", "Requests that change something must come from this site.")
        csrf.protect()
    elif endpoint not in PAGES and endpoint not in READS:
        current_app.logger.error("rq-dashboard route %s (%s) is not classified in webapp/edge/dashboard.py: refused",
                                 request.endpoint, request.path)
        abort(404)
    instance = (request.view_args or {}).get("instance_number")
    if instance is not None and instance >= len(current_app.config["RQ_DASHBOARD_REDIS_URL"]):
        abort(404)
    g.dashboard_csp_nonce = secrets.token_urlsafe(16)
    return None


def _refuse_other_methods():
    """An app-wide ``before_request``: a request under ``/rq`` whose URL is a dashboard route that
    does not take its method (a GET of an action that takes only POST) gets the same JSON 405 as
    :func:`_guard` gives, instead of Werkzeug's HTML page. No read route takes POST (tested), so a
    route that does is an action: ``Allow: POST``."""
    exc = request.routing_exception
    if not isinstance(exc, MethodNotAllowed) or not request.path.startswith(f"{URL_PREFIX}/"):
        return None
    allowed = exc.valid_methods or []
    return _method_not_allowed(["POST"] if "POST" in allowed else sorted(allowed))


def _endpoint() -> str:
    """The current request's rq-dashboard endpoint name (``requeue_all``), ``""`` outside it."""
    endpoint = request.endpoint or ""
    return endpoint.removeprefix(f"{BLUEPRINT}.") if endpoint.startswith(f"{BLUEPRINT}.") else ""


def _method_not_allowed(allowed=("POST",)):
    response = error_response(405, "method_not_allowed",
                              "This dashboard address changes RQ's jobs, so it answers only a POST from the "
                              "dashboard's own buttons; nothing was changed." if list(allowed) == ["POST"] else
                              "This method is not allowed here.")
    response.headers["Allow"] = ", ".join(allowed)
    return response


def _error(status: int, code: str, message: str):
    """An error answer of the dashboard: JSON (Docket's shape) for its data and actions, which its
    script calls; on a page, what :mod:`webapp.edge.json_errors` answers an :class:`ServiceError` with (Docket's
    error page for a browser)."""
    if _endpoint() in PAGES:
        return current_app.handle_user_exception(ServiceError(status, code, message))
    return error_response(status, code, message)


def _redis_unavailable(exc: RedisError):
    """Redis down under ``/rq``: ``503 queue_unavailable`` (as ``/api`` answers it), not a 500."""
    current_app.logger.error("dashboard: Redis is unavailable on %s %s: %s", request.method, request.path, exc)
    return _error(503, "queue_unavailable", REDIS_DOWN)


def _job_not_found(exc: NoSuchJobError):
    """A job RQ no longer has, on an action or in the JSON (RQ raises it from ``Job.fetch``): 404."""
    job_id = (request.view_args or {}).get("job_id")
    what = f"job {job_id}" if job_id else "one of the queue's jobs"
    return _error(404, "job_not_found", f"RQ has no {what}: it expired, was deleted or never existed.")


def _job_not_requeueable(exc: InvalidJobOperation):
    """RQ's own requeue refused a job that is not Docket's (no row, :mod:`webapp.edge.dashboard_actions`)
    because it is not in RQ's failed registry: 409 with its status, not a 500. (A job of Docket's
    that its retry refuses is answered there with the retry's sentence.)"""
    job_id = (request.view_args or {}).get("job_id")
    if not job_id:
        return _error(409, "job_not_requeueable", "A failed job of this queue was requeued or deleted meanwhile; "
                                                  "reload the page to see what is left.")
    try:
        status = RQJob.fetch(job_id, connection=current_app.redis_conn).get_status().value
    except (NoSuchJobError, RedisError):
        status = "no longer failed"
    return _error(409, "job_not_requeueable", f"Job {job_id} is not one of Docket's jobs, and RQ requeues only a "
                                              f"failed job; it is {status}. Nothing was changed.")


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


def _deletes_if_enabled(view, name: str):
    """Keep rq-dashboard's ``RQ_DASHBOARD_DISABLE_DELETE`` for delete and empty (its pages then
    hide those buttons), answered as a sentence: ``403 dashboard_delete_disabled``."""
    if name not in ("delete_job_view", "empty_queue"):
        return view

    def wrapped(*args, **kwargs):
        if current_app.config.get("RQ_DASHBOARD_DISABLE_DELETE"):
            return _error(403, "dashboard_delete_disabled", "Deleting jobs from the dashboard is turned off "
                                                            "(RQ_DASHBOARD_DISABLE_DELETE); nothing was changed.")
        return view(*args, **kwargs)
    wrapped.__name__ = wrapped.__qualname__ = name
    wrapped.__doc__ = view.__doc__
    return wrapped


def init_app(app: Flask) -> None:
    """Mount rq-dashboard at ``/rq`` on ``app``, admins only, on the app's Redis (module docstring).

    Raises:
        RuntimeError: from rq-dashboard, when there is no Redis URL.
    """
    from webapp.core.queues import QUEUE_NAMES

    app.config["RQ_DASHBOARD_REDIS_URL"] = dashboard_redis_url(app.config["REDIS_URL"],
                                                               app.config.get("REDIS_TLS_VERIFY", True))
    # Module-level in rq-dashboard: every app of the process shares it (Docket's are all the same).
    dashboard_web.config.serializer = app.extensions["rq"].queues[QUEUE_NAMES[0]].serializer
    app.register_blueprint(rq_dashboard.blueprint, url_prefix=URL_PREFIX)
    dashboard_web.setup_rq_connection(app)
    # Before rq-dashboard's own hook (which opens a Redis client for the instance in the URL).
    app.before_request_funcs.setdefault(BLUEPRINT, []).insert(0, _guard)
    app.before_request(_refuse_other_methods)
    # The blueprint's own error handlers (registered on this app: the blueprint object is shared).
    handlers = app.error_handler_spec[BLUEPRINT][None]
    handlers[RedisError] = _redis_unavailable
    handlers[NoSuchJobError] = _job_not_found
    handlers[InvalidJobOperation] = _job_not_requeueable
    app.after_request_funcs.setdefault(BLUEPRINT, []).append(_content_security_policy)
    app.view_functions[f"{BLUEPRINT}.job_info"] = dashboard_web.jsonify(job_info)
    views = app.view_functions
    # The buttons go through Docket's job protocol (cancel, stop, retry), not behind its back.
    for name in ("delete_job_view", "requeue_job_view", "requeue_all", "empty_queue"):
        views[f"{BLUEPRINT}.{name}"] = _deletes_if_enabled(getattr(dashboard_actions, name), name)
    views[f"{BLUEPRINT}.job_view"] = _not_found_for_missing_jobs(views[f"{BLUEPRINT}.job_view"])
    views[f"{BLUEPRINT}.compact_queue"] = _compact_skips_empty_queues(views[f"{BLUEPRINT}.compact_queue"])
