"""Errors at the HTTP edge: every error under ``/api`` is JSON with a human sentence.

Shape: ``{"error": {"code": "<snake_case>", "message": "<human sentence>"}}``. No traceback is
ever sent to a client; unexpected exceptions are logged and answered with a 500 in that shape.
"""

from __future__ import annotations

import re

from flask import Flask, current_app, jsonify, render_template, request
from peewee import InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException, InternalServerError

from webapp.core.service_errors import ServiceError


def get_or_404(model, row_id: str, noun: str):
    """The row of ``model`` with primary key ``row_id``.

    Raises:
        ServiceError: 404 ``<noun>_not_found``, "There is no <noun> with id <row_id>."
    """
    row = model.get_or_none(model._meta.primary_key == row_id)
    if row is None:
        raise ServiceError(404, f"{noun}_not_found", f"There is no {noun} with id {row_id}.")
    return row


def error_response(status: int, code: str, message: str):
    """A Flask response with the JSON error shape."""
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    return response


_MESSAGES = {
    400: "The request is not valid.",
    404: "There is nothing at this address.",
    405: "This method is not allowed here.",
    413: "The upload is larger than the server accepts.",
}


def _code_for(exc: HTTPException) -> str:
    return re.sub(r"[^a-z0-9]+", "_", (exc.name or "error").lower()).strip("_")


def _wants_json() -> bool:
    return request.path.startswith("/api") or request.path in ("/healthz", "/readyz")


def _wants_html() -> bool:
    """Whether the client prefers an HTML page to JSON (a browser's navigation does; fetch and
    scripts, which send no ``Accept: text/html``, do not)."""
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"


def _too_large(exc: HTTPException):
    """The 413 that names what was too large: the body (``payload_too_large``, above
    ``MAX_CONTENT_LENGTH``), the files (``too_many_files``), the form's parts
    (``too_many_form_parts``, above ``MAX_FORM_PARTS``) or one text field
    (``form_field_too_large``, above ``MAX_FORM_MEMORY_SIZE``)."""
    from webapp.core.compat.werkzeug_private import exceeded_form_limit

    config = current_app.config
    limit = config.get("MAX_CONTENT_LENGTH")
    form_limit = exceeded_form_limit(exc)
    if form_limit is None or (request.content_length is not None and limit and request.content_length > limit):
        message = (f"The upload is larger than the {limit // (1024 * 1024)} MB limit (MAX_CONTENT_LENGTH)."
                   if limit else _MESSAGES[413])
        return error_response(413, "payload_too_large", message)
    files = config.get("MAX_FILES_PER_UPLOAD")
    if form_limit.limit == "field_size":
        which = f"the field '{form_limit.field}'" if form_limit.field else "one of this form's fields"
        return error_response(413, "form_field_too_large",
                              f"A form field other than a file may hold at most {config['MAX_FORM_MEMORY_SIZE']:,} "
                              f"bytes (MAX_FORM_MEMORY_SIZE); {which} is larger. Nothing was uploaded.")
    if form_limit.files > files:
        return error_response(413, "too_many_files", f"An upload may hold at most {files} files "
                                                     "(MAX_FILES_PER_UPLOAD); this one has more. Send them in several "
                                                     "uploads; nothing was uploaded.")
    return error_response(413, "too_many_form_parts",
                          f"A form may have at most {config['MAX_FORM_PARTS']} parts, files and other fields together "
                          f"(MAX_FORM_PARTS: MAX_FILES_PER_UPLOAD + 10); this one has more, though no more than "
                          f"{files} files. Send fewer fields; nothing was uploaded.")


def init_app(app: Flask) -> None:
    """Register the handlers that turn errors into JSON for API paths."""

    @app.errorhandler(ServiceError)
    def handle_api_error(exc: ServiceError):
        if not _wants_json() and _wants_html():  # a person following a link to a page (e.g. /rq)
            return render_template("error.html", status=exc.status, message=exc.message), exc.status
        response = error_response(exc.status, exc.code, exc.message)
        response.headers.update(exc.headers)
        return response

    @app.errorhandler(HTTPException)
    def handle_http_exception(exc: HTTPException):
        if not _wants_json():
            return exc
        if exc.code == 413:
            return _too_large(exc)
        response = error_response(exc.code or 500, _code_for(exc), _MESSAGES.get(exc.code or 0, exc.description or exc.name))
        # Keep the exception's own headers (405's Allow, which RFC 9110 requires; 416's Content-Range …).
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    # OperationalError: the server refused or dropped the connection; InterfaceError: the
    # connection was already known closed (psycopg2's "connection already closed").
    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    def handle_database_down(exc: OperationalError | InterfaceError):
        app.logger.error("database error on %s %s: %s", request.method, request.path, exc)
        return error_response(503, "database_unavailable", "The database is unavailable; try again shortly.")

    @app.errorhandler(Exception)
    def handle_unexpected(exc: Exception):
        app.logger.exception("unhandled error on %s %s", request.method, request.path)
        if not _wants_json():
            return InternalServerError()
        return error_response(500, "internal_error", "Something went wrong on the server; the error was logged.")
