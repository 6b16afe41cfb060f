"""Structured logs (:mod:`webapp.core.logs`): one JSON line per request from the real web process, one
per job stage from a real worker, and the upload's request id carried from one to the other."""

from __future__ import annotations

import json
import logging
import uuid

import requests

from tests.conftest import CORPUS, make_token, row, wait_for
from webapp.core import logs

DOCUMENT_STAGES = ["extract", "chunk", "embed", "store"]


def post_file(web: str, token: str, name: str, request_id: str) -> requests.Response:
    with open(CORPUS / name, "rb") as fh:
        return requests.post(f"{web}/api/documents", files=[("file", (name, fh))], timeout=60,
                             headers={"Authorization": f"Bearer {token}", "X-Request-ID": request_id})


def json_lines(text: str) -> list[dict]:
    """Every non-empty line of ``text``, parsed; fails on a line that is not one JSON object."""
    parsed = []
    for line in text.splitlines():
        if line.strip():
            try:
                parsed.append(json.loads(line))
            except json.JSONDecodeError:
                raise AssertionError(f"not a JSON line: {line!r}") from None
    return parsed


def test_the_request_id_travels_from_the_upload_into_the_jobs_log_lines(app, web, tmp_path, start_worker):
    token = make_token(app, "logger", admin=False)
    request_id = f"docket-test.{uuid.uuid4().hex}_1"
    accepted = post_file(web, token, "minimal-document.pdf", request_id)
    assert accepted.status_code == 202, accepted.text
    assert accepted.headers["X-Request-ID"] == request_id
    document = accepted.json()["documents"][0]
    # An id that is no plausible id (a space, a quote) is replaced by a new UUID4, sent back.
    replaced = post_file(web, token, "aes128-r4-user-password.pdf", 'not "an" id')
    assert replaced.status_code == 202, replaced.text
    new_id = replaced.headers["X-Request-ID"]
    assert uuid.UUID(new_id).version == 4
    failing = replaced.json()["documents"][0]
    too_long = requests.get(f"{web}/api/jobs", headers={"Authorization": f"Bearer {token}", "X-Request-ID": "a" * 201},
                            timeout=30)
    assert too_long.status_code == 200 and uuid.UUID(too_long.headers["X-Request-ID"]).version == 4

    report_request_id = f"report-{uuid.uuid4().hex}"
    report = requests.post(f"{web}/api/reports", json={"type": "activity", "params": {}}, timeout=30,
                           headers={"Authorization": f"Bearer {token}", "X-Request-ID": report_request_id})
    assert report.status_code == 202, report.text
    report_job = report.json()["job_id"]

    worker = start_worker(WORKER_CONCURRENCY="1", HIGH_QUEUE_WORKERS="0")
    wait_for(lambda: row(app, document["job_id"]).status == "finished" and row(app, report_job).status == "finished"
             and row(app, failing["job_id"]).status == "failed", 120, "the three jobs to end")
    worker.terminate()
    assert worker.wait(30) == 0

    # The worker's output: every line is one JSON object (RQ's own lines too).
    worker_lines = json_lines((tmp_path / "worker-0.log").read_text())
    for line in worker_lines:
        assert {"time", "level", "logger", "message", "pid"} <= set(line), line

    job_lines = [line for line in worker_lines if line.get("job_id") == document["job_id"]]
    assert any(line["logger"].startswith("rq.") for line in job_lines), "RQ's lines carry the job's ids too"
    for line in job_lines:
        assert line["request_id"] == request_id and line["document_id"] == document["id"], line
        assert line["kind"] == "document", line
    stages = [line for line in job_lines if line["logger"] == "docket.stages"]
    assert [line["stage"] for line in stages] == DOCUMENT_STAGES, stages
    for line in stages:
        assert line["outcome"] == "ok" and isinstance(line["duration_ms"], (int, float)) and line["duration_ms"] >= 0

    failed_lines = [line for line in worker_lines if line.get("job_id") == failing["job_id"]]
    assert failed_lines and all(line["request_id"] == new_id for line in failed_lines), failed_lines
    failed_stages = [line for line in failed_lines if line["logger"] == "docket.stages"]
    assert [(line["stage"], line["outcome"]) for line in failed_stages] == [("extract", "failed")], failed_stages
    assert any(f"job {failing['job_id']} failed (password_required)" in line["message"] for line in failed_lines)

    report_lines = [line for line in worker_lines if line.get("job_id") == report_job]
    assert report_lines and all(line["request_id"] == report_request_id and line["kind"] == "report"
                                for line in report_lines), report_lines
    assert [(line["stage"], line["outcome"]) for line in report_lines if line["logger"] == "docket.stages"] == \
        [("gather", "ok"), ("render", "ok"), ("store", "ok")]

    # The web process: one request line per request, with its id, status and duration.
    request_lines = [line for line in json_lines("\n".join(
        text for text in (tmp_path / "web.log").read_text().splitlines() if text.startswith("{")))
        if line["logger"] == "webapp.requests"]
    uploads = [line for line in request_lines if line["request_id"] == request_id]
    assert len(uploads) == 1, request_lines
    upload = uploads[0]
    assert (upload["method"], upload["path"], upload["status"]) == ("POST", "/api/documents", 202)
    assert upload["remote_addr"] == "127.0.0.1" and upload["duration_ms"] > 0 and upload["level"] == "INFO"
    assert [line["status"] for line in request_lines if line["request_id"] == new_id] == [202]
    assert [line["path"] for line in request_lines if line["request_id"] == too_long.headers["X-Request-ID"]] \
        == ["/api/jobs"]


def test_text_format_shows_the_same_fields_for_a_person():
    record = logging.LogRecord("docket.stages", logging.INFO, __file__, 1, "stage %s ok", ("embed",), None)
    with logs.log_context(job_id="j1", request_id="r1", kind="document"):
        logs.ContextFilter().filter(record)
    line = logs.TextFormatter().format(record)
    assert line.endswith("INFO docket.stages: stage embed ok request_id=r1 job_id=j1 kind=document"), line
    assert json.loads(logs.json_formatter().format(record))["job_id"] == "j1"


def test_request_ids_are_validated():
    assert logs.valid_request_id("abc-DEF_1.2") == "abc-DEF_1.2"
    assert logs.valid_request_id("x" * 200) == "x" * 200
    for bad in ("x" * 201, "", None, "a b", "a\nb", "ä"):
        assert uuid.UUID(logs.valid_request_id(bad)).version == 4


def test_the_request_line_names_the_client_behind_a_trusted_proxy(config, capsys):
    """Behind Heroku's router (TRUSTED_PROXY_COUNT=1) the line's remote_addr is the client's, from
    X-Forwarded-For as ProxyFix reads it, and the router's X-Request-ID is kept."""
    from webapp import create_app

    app = create_app({**config, "TRUSTED_PROXY_COUNT": 1})
    capsys.readouterr()
    answer = app.test_client().get("/healthz", headers={"X-Forwarded-For": "203.0.113.7",
                                                        "X-Request-ID": "f81d4fae-7dec-11d0-a765-00a0c91e6bf6"})
    assert answer.headers["X-Request-ID"] == "f81d4fae-7dec-11d0-a765-00a0c91e6bf6"
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    request_lines = [line for line in lines if line["logger"] == "webapp.requests"]
    assert len(request_lines) == 1, lines
    assert request_lines[0]["remote_addr"] == "203.0.113.7"
    assert request_lines[0]["request_id"] == "f81d4fae-7dec-11d0-a765-00a0c91e6bf6"
    assert (request_lines[0]["path"], request_lines[0]["status"]) == ("/healthz", 200)
