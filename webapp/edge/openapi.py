"""The API's contract: the OpenAPI 3.1 document at ``GET /api/openapi.json`` (open to everyone).

The document is a maintained file beside this module, ``webapp/openapi.json``, served as it is.
Why a file and not generated: Docket's views validate by hand and answer with dicts (no
marshmallow or pydantic models that apispec or a similar library could read), so a generator
would only move the same hand-written schemas into docstrings or Python; a plain JSON file is
what every OpenAPI tool reads and diffs cleanly. It is JSON rather than YAML because PyYAML is no
runtime dependency. Two tests keep it true (``tests/edge/test_openapi.py``): its paths and methods
match the app's routes in both directions, and a schemathesis run against the real gunicorn
process finds no server error, undocumented status or body that breaks its schema.

Editing it: every route under ``/api`` (and ``/healthz``, ``/readyz``) has an operation listing
every status it can answer, errors as ``#/components/schemas/Error``; ``bearerAuth`` is required
by default (``security: []`` marks the open ones).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from flask import Blueprint, jsonify

DOCUMENT_PATH = Path(__file__).with_name("openapi.json")

bp = Blueprint("openapi", __name__, url_prefix="/api")


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    """The OpenAPI document, read from :data:`DOCUMENT_PATH` once per process (it ships with the code)."""
    with open(DOCUMENT_PATH, encoding="utf-8") as fh:
        return json.load(fh)


@bp.get("/openapi.json")
def spec():
    """The OpenAPI 3.1 document of the JSON API (no authentication: it describes a public contract)."""
    return jsonify(openapi_document())
