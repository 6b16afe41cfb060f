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

from webapp.core.protocol.kinds import JOB_KINDS

DOCUMENT_PATH = Path(__file__).with_name("openapi.json")

bp = Blueprint("openapi", __name__, url_prefix="/api")


KIND_DESCRIPTION = "The job's kind: one of the kinds in x-job-kinds (the list is filled in from the declarations when served)."


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    """The OpenAPI document, read from :data:`DOCUMENT_PATH` once per process (it ships with the
    code), with the job kinds filled in from their declarations
    (:data:`webapp.core.protocol.kinds.JOB_KINDS`): ``x-job-kinds`` maps each name to its
    description, and each ``kind`` field's description lists the names."""
    with open(DOCUMENT_PATH, encoding="utf-8") as fh:
        document = json.load(fh)
    kinds = {name: kind.description for name, kind in JOB_KINDS.items()}
    document["x-job-kinds"] = kinds
    listed = f"The job's kind: {', '.join(kinds)} (x-job-kinds describes each)."
    _replace_description(document, KIND_DESCRIPTION, listed)
    return document


def _replace_description(node: Any, old: str, new: str) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "description" and value == old:
                node[key] = new
            else:
                _replace_description(value, old, new)
    elif isinstance(node, list):
        for value in node:
            _replace_description(value, old, new)


@bp.get("/openapi.json")
def spec():
    """The OpenAPI 3.1 document of the JSON API (no authentication: it describes a public contract)."""
    return jsonify(openapi_document())
