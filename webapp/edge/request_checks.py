"""Checks every request gets before its view runs, whatever the route: no character a database
cannot store.

PostgreSQL's text types cannot hold a NUL character (U+0000): psycopg2 refuses such a value with
``ValueError`` before the query is sent, so a NUL that reached a query (a job id in the path, a
``kind`` filter, a document id in a report request) was a 500 on PostgreSQL and a silent miss on
SQLite. No field of Docket's API means anything with a NUL in it, so the edge refuses it once,
here, the same way on both databases:

- in the path (an id): 404, since no row can have that id, as for any other unknown id;
- in a query parameter, a JSON body (keys included) or a form field: 400 ``invalid_characters``.

A JSON body nested deeper than Python's parser goes (``RecursionError``) is a 400 ``invalid_json``
here, before any view reads it. A JSON body can also spell an unpaired surrogate (``"\\ud800"`` with no partner): Python keeps it
as a code point no UTF-8 encoder accepts, so it failed on both databases alike; the same 400
refuses it. (Query strings and form fields cannot carry one: Werkzeug decodes them as UTF-8 with
replacement characters.)

A view whose free text it reads only as words (the search query ``q``: its words are looked
up, its control characters never reach a query) names that field with :func:`free_text`, and
the field is left to it; the field's name is still checked, and every other field too.

File names of uploads are not checked: :func:`webapp.core.documents.clean_filename` drops control
characters from them, and file contents are bytes, never a query value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from flask import Flask, current_app, request

from webapp.core.service_errors import ServiceError

NUL = "\x00"
# A NUL, or a surrogate code point (json.loads joins a valid pair into one character, so any left is unpaired).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _strings(value: Any) -> Iterator[str]:
    """Every string inside a parsed JSON value, object keys included."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def free_text(*names: str):
    """Decorate a view whose fields ``names`` hold free text the view itself makes safe (see the
    module docstring): :func:`check_request` leaves their values to it."""
    def mark(view):
        view.free_text_fields = frozenset(names)
        return view
    return mark


def _multidict_strings(multidict, free: frozenset[str]) -> Iterator[str]:
    """Every key and every value (all of a repeated key's, not only the first) of a MultiDict,
    except the values of ``free`` keys."""
    for key, value in multidict.items(multi=True):
        yield key
        if key not in free:
            yield value


def _has_nul(strings: Iterable[str | None]) -> bool:
    # A form value can be None (the schemathesis fuzz found one: a 500 on upload), never a NUL then.
    return any(isinstance(s, str) and NUL in s for s in strings)


def _has_unstorable(strings: Iterable[str]) -> bool:
    return any(_UNSTORABLE.search(s) for s in strings)


def _refuse(where: str, surrogates: bool = False) -> ServiceError:
    what = "a NUL character (U+0000) or an unpaired surrogate escape (\\ud800–\\udfff)" if surrogates \
        else "a NUL character (U+0000)"
    return ServiceError(400, "invalid_characters",
                    f"The request's {where} contains {what}, which no field of the API accepts; "
                    "remove it and send the request again.")


def check_request() -> None:
    """The ``before_request`` hook (see the module docstring).

    Raises:
        ServiceError: 404 ``not_found`` for a NUL in the path; 400 ``invalid_characters`` (with where
            it was) for one in a query parameter or a form field, or for a NUL or an unpaired
            surrogate in the JSON body; 400 ``invalid_json`` for a JSON body nested too deeply
            for Python's parser (it raised ``RecursionError``, a 500, in every view that reads one).
            The values of the view's :func:`free_text` fields are not checked.
    """
    if request.view_args and _has_nul(v for v in request.view_args.values() if isinstance(v, str)):
        raise ServiceError(404, "not_found", "There is nothing at this address.")
    free = getattr(current_app.view_functions.get(request.endpoint), "free_text_fields", frozenset())
    if _has_nul(_multidict_strings(request.args, free)):
        raise _refuse("query string")
    if request.is_json:
        try:
            body = request.get_json(silent=True)  # cached: the view reads the same parse
        except RecursionError:  # json.loads gives up at ~1,000 levels of nesting ("[[[[…")
            raise ServiceError(400, "invalid_json", "The JSON body is nested too deeply to read; no field of the API "
                                                "nests more than a few levels.") from None
        if isinstance(body, dict) and free:
            body = {key: (None if key in free else value) for key, value in body.items()}
        if body is not None and _has_unstorable(_strings(body)):
            raise _refuse("JSON body", surrogates=True)
    elif request.mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        if _has_nul(_multidict_strings(request.form, free)):
            raise _refuse("form")


def init_app(app: Flask) -> None:
    """Register :func:`check_request` to run after authentication (an anonymous request
    gets its 401 first) and before every view."""
    app.before_request(check_request)
