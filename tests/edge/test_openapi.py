"""The OpenAPI document stays true, and the web server's own errors are JSON.

* the document (``GET /api/openapi.json``, :mod:`webapp.edge.openapi`) is valid OpenAPI 3.1 and its
  paths and methods are exactly the app's routes under ``/api`` plus ``/healthz`` and ``/readyz``;
* schemathesis runs against the real web process — the Procfile's ``web`` line, gunicorn — for a
  bounded time and finds no 5xx, no undocumented status, content type or header, and no body
  that breaks its schema;
* gunicorn's own errors (:mod:`webapp.edge.server`) are in the JSON error shape: a 10,000-character
  search in the URL gets ``414 uri_too_long``, and the same search goes through as a POST.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema_rs
import requests
import schemathesis
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from tests.conftest import make_token
from webapp.edge.openapi import openapi_document

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
HEALTH_PATHS = {"/healthz", "/readyz"}
# schemathesis's time budget for the whole run, in seconds (fuzzing repeats until it is spent).
SCHEMATHESIS_SECONDS = int(os.environ.get("DOCKET_SCHEMATHESIS_SECONDS", "60"))
# The checks of the run: no 5xx, every answer as the document says (status, type, headers, body),
# and 405 with an Allow header for a method the document does not list.
SCHEMATHESIS_CHECKS = os.environ.get("DOCKET_SCHEMATHESIS_CHECKS", "not_a_server_error,status_code_conformance,"
                                     "content_type_conformance,response_headers_conformance,response_schema_conformance,"
                                     "unsupported_method")
# The run's seed (its output prints it as "Seed: …"): set it to replay a failed run's cases.
SCHEMATHESIS_SEED = os.environ.get("DOCKET_SCHEMATHESIS_SEED", "")


def documented_operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    """``{(METHOD, path)}`` of every operation in ``document``."""
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item
            if method in HTTP_METHODS}


def routed_operations(app) -> set[tuple[str, str]]:
    """``{(METHOD, path)}`` of the app's routes under ``/api`` and the health probes, in OpenAPI's
    spelling (``<job_id>`` → ``{job_id}``); Flask's automatic HEAD and OPTIONS left out."""
    found = set()
    for rule in app.url_map.iter_rules():
        if not (rule.rule.startswith("/api/") or rule.rule == "/api" or rule.rule in HEALTH_PATHS):
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        found |= {(method, path) for method in rule.methods - {"HEAD", "OPTIONS"}}
    return found


def test_the_document_describes_every_api_route_and_nothing_else(app):
    documented, routed = documented_operations(openapi_document()), routed_operations(app)
    assert routed - documented == set(), "routes missing from webapp/openapi.json"
    assert documented - routed == set(), "operations in webapp/openapi.json that no route serves"


def test_the_document_is_valid_openapi_3_1():
    document = openapi_document()
    assert document["openapi"].startswith("3.1.")
    errors = [f"{'/'.join(map(str, error.instance_path))}: {error.message}"
              for error in OPENAPI_31_VALIDATOR.iter_errors(document)]
    assert errors == []
    # The official OpenAPI 3.1 schema leaves the schemas themselves unchecked: each must be valid
    # JSON Schema 2020-12 (OpenAPI 3.1's dialect) too.
    for name, schema in document["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid({"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}), name
    # schemathesis loads it and resolves every operation (a dangling $ref fails here).
    schema = schemathesis.openapi.from_dict(document)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == len(documented_operations(document))


def test_every_api_operation_needs_a_bearer_token_and_documents_its_errors_in_one_shape():
    document = openapi_document()
    assert document["security"] == [{"bearerAuth": []}]
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        **document["components"]["securitySchemes"]["bearerAuth"], "type": "http", "scheme": "bearer"}
    responses = document["components"]["responses"]
    error_ref = {"$ref": "#/components/schemas/Error"}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            open_to_all = path == "/api/openapi.json" or path in HEALTH_PATHS
            assert ("security" in operation and operation["security"] == []) == open_to_all, (method, path)
            statuses = operation["responses"]
            if not open_to_all:
                assert "401" in statuses, (method, path)
            if method != "get":
                assert "403" in statuses, (method, path)  # cross_origin_refused, csrf_failed
            for status, answer in statuses.items():
                answer = responses[answer["$ref"].rsplit("/", 1)[1]] if "$ref" in answer else answer
                if int(status) >= 400 and path not in HEALTH_PATHS:
                    assert answer["content"]["application/json"]["schema"] == error_ref, (method, path, status)


def test_the_document_is_served_to_everyone(app):
    response = app.test_client().get("/api/openapi.json")
    assert response.status_code == 200
    assert response.get_json() == openapi_document()


def test_a_method_not_allowed_names_the_allowed_ones(client):
    """Found by schemathesis: the JSON 405 dropped Werkzeug's ``Allow`` header (RFC 9110 requires it)."""
    response = client.put("/api/documents")
    assert response.status_code == 405
    assert response.get_json()["error"]["code"] == "method_not_allowed"
    assert {"GET", "POST"} <= {method.strip() for method in response.headers["Allow"].split(",")}


def test_an_over_long_url_gets_json_414_from_the_web_server(app, web):
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {make_token(app, admin=False)}"
    response = session.get(f"{web}/api/search", params={"q": "termination notice " * 500}, timeout=30)
    assert response.status_code == 414
    assert response.headers["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == "uri_too_long"
    assert "POST /api/search" in error["message"]

    # The same search as a POST goes through, up to 2,000 characters; longer is the app's 400.
    response = session.post(f"{web}/api/search", json={"q": ("termination notice " * 200)[:2000], "k": 3}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json() == {"results": []}
    response = session.post(f"{web}/api/search", json={"q": "n" * 2001}, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "query_too_long"


def test_headers_too_large_and_malformed_http_get_json_too(web):
    response = requests.get(f"{web}/api/jobs", headers={f"X-Filler-{n}": "x" for n in range(120)}, timeout=30)
    assert response.status_code == 431
    assert response.json()["error"]["code"] == "request_header_fields_too_large"

    import socket

    host, port = web.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"GET /api/jobs HTTP/9.9\r\nHost: x\r\n\r\n")
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"Content-Type: application/json" in head
    assert b'"code": "bad_request"' in body


def test_schemathesis_finds_no_server_error_and_no_answer_off_the_document(app, web, start_worker, tmp_path: Path):
    """A bounded schemathesis run (``DOCKET_SCHEMATHESIS_SECONDS``, default 60) as an admin, with
    a real worker running the jobs it starts (so finished jobs, documents and report downloads are
    answered too); its output names each failure with a curl command that reproduces it."""
    start_worker()
    token = make_token(app, owner="fuzzer", admin=True)
    command = [str(Path(sys.executable).parent / "schemathesis"), "run", f"{web}/api/openapi.json",
               "--header", f"Authorization: Bearer {token}",
               "--checks", SCHEMATHESIS_CHECKS,
               "--max-time", str(SCHEMATHESIS_SECONDS), "--workers", "1", "--request-timeout", "30",
               "--generation-database", "none", "--suppress-health-check", "all",
               "--report", "junit", "--report-dir", str(tmp_path / "schemathesis"),
               "--no-color"] + (["--seed", SCHEMATHESIS_SEED] if SCHEMATHESIS_SEED else [])
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True,
                            timeout=SCHEMATHESIS_SECONDS + 240)
    output = result.stdout + result.stderr
    print(output)  # pytest shows it with -s or on failure
    assert result.returncode == 0, f"{shlex.join(command[:3])} … failed:\n{output[-12000:]}"
