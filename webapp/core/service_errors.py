"""A request the service refuses, wherever it is made: the edge answers it as JSON, the command
line prints it, a job turns it into its own failure.

:class:`ServiceError` carries an HTTP status as its category (400 invalid input, 404 not found,
409 conflict, 413/415 too large or unsupported, 429 over a limit, 503 a dependency away), a
snake_case ``code`` and a human sentence, so the services of the core (accepting documents,
search) say what went wrong once, and :mod:`webapp.edge.json_errors` answers it as
``{"error": {"code", "message"}}`` with that status.
"""

from __future__ import annotations


class ServiceError(Exception):
    """A refusal: HTTP ``status`` (its category), snake_case ``code``, a human ``message`` and extra
    response ``headers`` (e.g. ``Retry-After`` on a 429)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
