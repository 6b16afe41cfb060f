"""Who is asking, and what they may see: authentication, CSRF and security headers at the edge.

The rules (the README's "Security model"):

* ``/api/*`` needs ``Authorization: Bearer <token>`` (:mod:`webapp.core.tokens`) or the UI's signed-in
  session; without either it answers ``401 authentication_required``, with a revoked or unknown
  token ``401 invalid_token``. The HTML pages and ``/rq`` send a signed-out browser to ``/signin``.
* ``/metrics`` (Prometheus) is authenticated like ``/api/*`` (a scraper sends a bearer token) and
  answers admins only (:mod:`webapp.edge.prometheus`).
* Open to everyone: ``/healthz``, ``/readyz`` (they reveal nothing but "ok"/"down"), ``/signin``,
  the static files and ``/api/openapi.json``.
* Every row has an owner; a principal sees its own rows and an admin sees all. Another owner's row
  is answered exactly like a missing one (``404``), so ids cannot be probed.
* A state-changing request (POST, PUT, PATCH, DELETE) from another origin (its ``Origin`` header
  is not this site's) is refused with ``403 cross_origin_refused``; one that is signed in by the
  session cookie must also carry the page's CSRF token (Flask-WTF's ``CSRFProtect``, header
  ``X-CSRFToken`` or form field ``csrf_token``), else ``403 csrf_failed``. Bearer-token requests
  need none: browsers never attach that header on their own.
* HTML answers carry a Content-Security-Policy without inline script, ``X-Frame-Options: DENY``
  and ``frame-ancestors 'none'``; every answer ``X-Content-Type-Options: nosniff``.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import (Blueprint, Flask, current_app, flash, g, redirect, render_template, request, session,
                   url_for)
from flask_wtf.csrf import CSRFError, CSRFProtect

from webapp.edge.json_errors import error_response, get_or_404
from webapp.core.service_errors import ServiceError
from webapp.core.models import Job
from webapp.core.tokens import Principal, authenticate, principal_for

csrf = CSRFProtect()
bp = Blueprint("auth", __name__)

# Endpoints anyone may call (the OpenAPI document describes a public contract).
OPEN_ENDPOINTS = frozenset({"health.healthz", "health.readyz", "static", "auth.signin", "openapi.spec"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
                           "frame-ancestors 'none'")


def current_principal() -> Principal:
    """The principal of the current request (set by the authentication hook).

    Raises:
        ServiceError: 401 ``authentication_required`` when the request has none (an open endpoint).
    """
    principal = g.get("principal")
    if principal is None:
        raise ServiceError(401, "authentication_required", "Sign in or send 'Authorization: Bearer <token>'.")
    return principal


def current_owner() -> str:
    """The owner new rows of the current request belong to."""
    return current_principal().owner


def can_see(owner: str | None) -> bool:
    """Whether the current principal may see a row of ``owner`` (see :meth:`Principal.can_see`)."""
    return current_principal().can_see(owner)


def owned(query, model):
    """``query`` limited to the current principal's rows of ``model`` (every row for an admin)."""
    principal = current_principal()
    return query if principal.admin else query.where(model.owner == principal.owner)


def owner_filter() -> str | None:
    """The owner to filter by for the current principal: ``None`` (no filter) for an admin."""
    principal = current_principal()
    return None if principal.admin else principal.owner


def require_admin() -> Principal:
    """The current principal if it is an admin.

    Raises:
        ServiceError: 403 ``admin_required`` for another principal (401 without one).
    """
    principal = current_principal()
    if not principal.admin:
        raise ServiceError(403, "admin_required", "This needs an admin token.")
    return principal


def _is_api() -> bool:
    # /metrics is for a scraper, not a browser: a bearer token, and 401 instead of the sign-in page.
    return request.path == "/api" or request.path.startswith("/api/") or request.path == "/metrics"


def same_origin(origin: str) -> bool:
    """Whether ``origin`` (an ``Origin`` header's value, ``scheme://host[:port]``) is this site's, as
    the current request reached it."""
    mine, theirs = urlsplit(request.host_url), urlsplit(origin)
    return (theirs.scheme, theirs.netloc) == (mine.scheme, mine.netloc)


def _bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        return None
    if scheme.lower() != "bearer" or not token.strip():
        raise ServiceError(401, "invalid_token", "Send the token as 'Authorization: Bearer <token>'.")
    return token.strip()


def _authenticate_request():
    """The ``before_request`` hook: cross-origin check, principal, CSRF; see the module docstring."""
    g.principal = None
    origin = request.headers.get("Origin")
    if request.method not in SAFE_METHODS and origin and not same_origin(origin):
        return _refuse(403, "cross_origin_refused", "Requests that change something must come from this site.")
    if request.endpoint in OPEN_ENDPOINTS:
        if request.endpoint == "auth.signin" and request.method == "POST":
            csrf.protect()
        return None
    token = _bearer_token() if _is_api() else None
    if token is not None:
        g.principal = authenticate(token)
        if g.principal is None:
            raise ServiceError(401, "invalid_token", "This token is not valid: it is unknown or was revoked.")
        return None
    token_id = session.get("token_id")
    if token_id:
        g.principal = principal_for(token_id)
        if g.principal is None:  # revoked since the sign-in
            session.pop("token_id", None)
    if g.principal is None:
        if _is_api():
            raise ServiceError(401, "authentication_required",
                           "Sign in or send 'Authorization: Bearer <token>' (create one with "
                           "'flask --app wsgi tokens create NAME').")
        if request.endpoint is None:
            return None  # a 404 page reveals nothing
        return redirect(url_for("auth.signin", next=request.full_path.rstrip("?")))
    if request.method not in SAFE_METHODS:
        csrf.protect()
    return None


def _refuse(status: int, code: str, message: str):
    if _is_api():
        return error_response(status, code, message)
    return current_app.response_class(message, status=status, mimetype="text/plain")


def _security_headers(response):
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if response.mimetype == "text/html":
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
    if "WWW-Authenticate" not in response.headers and response.status_code == 401 and _is_api():
        response.headers["WWW-Authenticate"] = 'Bearer realm="docket"'
    return response


def _safe_next(target: str | None) -> str:
    """A local path to go to after signing in; anything else (another host, ``//evil``) → ``/``."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return url_for("views.index")
    return target


@bp.route("/signin", methods=["GET", "POST"])
def signin():
    """The sign-in page: paste a token (or follow the run command's link, whose ``#token=…``
    fragment the page's script submits — a fragment never reaches server logs)."""
    error = None
    if request.method == "POST":
        principal = authenticate((request.form.get("token") or "").strip())
        if principal is not None:
            session.clear()  # a new session on sign-in: no fixation of a planted one
            session["token_id"] = principal.token_id
            return redirect(_safe_next(request.form.get("next")))
        error = "This token is not valid: it is unknown or was revoked."
    return render_template("signin.html", page="signin", error=error,
                           next=_safe_next(request.values.get("next"))), 401 if error else 200


@bp.post("/signout")
def signout():
    """Forget the session's sign-in; back to the sign-in page."""
    session.clear()
    flash("Signed out.")
    return redirect(url_for("auth.signin"))


def init_app(app: Flask) -> None:
    """Register CSRF protection, the authentication hook, the sign-in pages and the headers.

    Raises:
        RuntimeError: outside debug and tests, ``SECRET_KEY`` is the public default (sessions
            could be forged and stored PDF passwords decrypted by anyone).
    """
    from webapp.core.config import DEFAULT_SECRET_KEY

    if app.config["SECRET_KEY"] == DEFAULT_SECRET_KEY and not (app.debug or app.testing):
        raise RuntimeError("SECRET_KEY is not set: refusing to start with the public default key. Set SECRET_KEY "
                           "to a long random value (e.g. python -c 'import secrets; print(secrets.token_urlsafe(48))'); "
                           "the local run command (bin/run) makes one for you.")
    csrf.init_app(app)
    app.before_request(_authenticate_request)
    app.after_request(_security_headers)
    app.register_blueprint(bp)

    @app.errorhandler(CSRFError)
    def handle_csrf_error(exc: CSRFError):
        return _refuse(403, "csrf_failed", f"The request was refused: {exc.description} Reload the page and try again.")

    @app.context_processor
    def principal_in_templates():
        return {"principal": g.get("principal")}


def get_visible_or_404(model, row_id: str, noun: str):
    """The row of ``model`` with primary key ``row_id`` if the current principal may see it.

    Raises:
        ServiceError: 404 ``<noun>_not_found`` when there is no such row *or* it is another owner's
            (the same answer, so another owner's ids cannot be confirmed).
    """
    row = get_or_404(model, row_id, noun)
    if not can_see(row.owner):
        raise ServiceError(404, f"{noun}_not_found", f"There is no {noun} with id {row_id}.")
    return row


def visible_job(job_id: str):
    """The Job row ``job_id`` if the current principal may see it.

    Raises:
        ServiceError: 404 ``job_not_found`` when there is none or it is another owner's.
    """
    job = Job.find(job_id)
    if job is None or not can_see(job.owner):
        raise ServiceError(404, "job_not_found", f"There is no job with id {job_id}.")
    return job
