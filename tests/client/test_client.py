"""``docket``, the command-line client (``client/``), against a live server.

Each test runs the installed ``docket`` command as a subprocess, configured only by
``DOCKET_URL`` and ``DOCKET_TOKEN`` (its environment holds nothing of the server's settings),
against the Procfile's real web process; the jobs run in real RQ worker processes. Error tests
use real answers: a wrong token, an unknown job, a web process whose Redis is down (503), the
OpenAI budget used up (429), a port where nothing listens.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.conftest import (CORPUS, TEST_TOKEN_ENV, current_test_token, free_port, make_token, procfile_web)

DOCKET = Path(sys.executable).parent / "docket"  # the console script pip installed (requirements-test.txt)
CLIENT_DEADLINE = 240  # seconds a command may run; only against a hang, never asserted as a speed
WORKER_ENV = {"WORKER_CONCURRENCY": "1", "HIGH_QUEUE_WORKERS": "0"}  # one process: the machine is shared

# A phrase no corpus document holds, so search finds exactly the generated file.
PHRASE = "The quokka ledger QX7741 settles every invoice on the third Thursday."


def docket(base_url: str | None, token: str | None, *args: str, **env: str) -> subprocess.CompletedProcess:
    """Run ``docket ARGS`` with only ``DOCKET_URL``/``DOCKET_TOKEN`` (when given), a wide
    terminal width and what any program needs (``PATH``, ``HOME``, a UTF-8 locale)."""
    environment = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8",
                   "COLUMNS": "400", TEST_TOKEN_ENV: current_test_token() or "", **env}
    if base_url is not None:
        environment["DOCKET_URL"] = base_url
    if token is not None:
        environment["DOCKET_TOKEN"] = token
    return subprocess.run([str(DOCKET), *args], env=environment, capture_output=True, text=True,
                          timeout=CLIENT_DEADLINE, cwd="/")


def describe(result: subprocess.CompletedProcess) -> str:
    return f"\n--- exit status {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"


def assert_one_sentence(result: subprocess.CompletedProcess, exit_status: int, *words: str) -> str:
    """The command failed with ``exit_status`` and one line on stderr, ``Error: <sentence>``,
    holding each of ``words``; no traceback. Returns the sentence."""
    assert result.returncode == exit_status, describe(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), describe(result)
    assert "Traceback" not in result.stderr + result.stdout
    for word in words:
        assert word in lines[0], describe(result)
    return lines[0]


@pytest.fixture
def config(config):
    return {**config, "FETCH_ALLOW_PRIVATE_NETWORKS": True}


@pytest.fixture
def token(app) -> str:
    return make_token(app, "tester")


@pytest.fixture
def notes(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text(f"Accounts payable\n\n{PHRASE}\n\nLate invoices carry no interest.\n", encoding="utf-8")
    return path


# --- upload, follow, status, search ---------------------------------------------------------------------

def test_upload_wait_follows_every_job_to_its_chunks_then_status_and_search_find_them(
        web, token, notes, start_worker):
    start_worker(**WORKER_ENV)
    result = docket(web, token, "--json", "upload", str(notes), str(CORPUS / "war-and-peace-ch1.txt"), "--wait")
    assert result.returncode == 0, describe(result)
    answer = json.loads(result.stdout)
    assert answer["batch_id"] and not answer["refused"]
    assert [d["filename"] for d in answer["documents"]] == ["notes.txt", "war-and-peace-ch1.txt"]
    jobs = {job["id"]: job for job in answer["jobs"]}
    for document in answer["documents"]:
        job = jobs[document["job_id"]]
        assert job["status"] == "finished" and job["result"]["chunks"] >= 1, job

    notes_document = answer["documents"][0]
    shown = docket(web, token, "status", notes_document["job_id"])
    assert shown.returncode == 0, describe(shown)
    assert "finished" in shown.stdout and notes_document["job_id"] in shown.stdout

    found = docket(web, token, "search", "quokka ledger QX7741", "-k", "3")
    assert found.returncode == 0, describe(found)
    first = found.stdout.splitlines()[0]
    assert first.startswith("1. ") and "notes.txt" in first, found.stdout
    assert "QX7741 settles every invoice" in found.stdout

    narrowed = docket(web, token, "--json", "search", "invoice", "--mode", "text", "--document", notes_document["id"])
    assert narrowed.returncode == 0, describe(narrowed)
    results = json.loads(narrowed.stdout)["results"]
    assert results and {r["document_id"] for r in results} == {notes_document["id"]}


def test_upload_lists_a_refused_file_with_its_reason_and_exits_1(web, token, notes, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    result = docket(web, token, "upload", str(notes), str(empty))
    assert result.returncode == 1, describe(result)
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") >= 4}
    assert "queued" in rows["notes.txt"], result.stdout
    assert "refused: " in rows["empty.txt"] and "empty" in rows["empty.txt"].split("refused: ")[1], result.stdout


def test_an_upload_of_only_an_unsupported_file_is_the_servers_415_as_a_sentence(web, token, tmp_path):
    binary = tmp_path / "blob.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    result = docket(web, token, "upload", str(binary))
    assert_one_sentence(result, 3, "The server does not accept this type of file", "blob.bin")


# --- cancel and retry -----------------------------------------------------------------------------------

def test_cancel_of_a_delayed_job_then_retry_runs_it_at_once(web, token, notes, start_worker):
    result = docket(web, token, "--json", "upload", str(notes), "--delay", "3600")
    assert result.returncode == 0, describe(result)
    job_id = json.loads(result.stdout)["documents"][0]["job_id"]
    status = json.loads(docket(web, token, "--json", "status", job_id).stdout)
    assert status["status"] == "scheduled" and status["run_at"], status

    canceled = docket(web, token, "cancel", job_id)
    assert canceled.returncode == 0, describe(canceled)
    assert canceled.stdout.strip() == f"Job {job_id} canceled before it ran."
    assert json.loads(docket(web, token, "--json", "status", job_id).stdout)["status"] == "canceled"
    again = docket(web, token, "cancel", job_id)  # it ended: the server's 409, as its sentence
    assert_one_sentence(again, 3, "already ended (canceled)")

    start_worker(**WORKER_ENV)
    retried = docket(web, token, "--json", "retry", job_id, "--wait")
    assert retried.returncode == 0, describe(retried)
    job = json.loads(retried.stdout)
    assert job["status"] == "finished" and job["result"]["chunks"] >= 1, job


def test_a_failed_job_exits_1_with_its_reason_and_retry_runs_it_again(web, token, start_worker):
    start_worker(**WORKER_ENV)
    locked = str(CORPUS / "libreoffice-writer-password.pdf")  # no password given: fails, not retried
    result = docket(web, token, "upload", locked, "--wait")
    assert result.returncode == 1, describe(result)
    summary = [line for line in result.stdout.splitlines() if "libreoffice-writer-password.pdf" in line][-1]
    assert "failed" in summary and "password" in summary, result.stdout

    # Again, for its job id (a copy that failed is no duplicate: this is a new document and job).
    job_id = json.loads(docket(web, token, "--json", "upload", locked).stdout)["documents"][0]["job_id"]
    first = json.loads(docket(web, token, "--json", "status", job_id, "--wait").stdout)
    assert first["status"] == "failed" and first["error_code"] == "password_required", first
    retried = docket(web, token, "--json", "retry", job_id, "--wait")
    assert retried.returncode == 1, describe(retried)  # it ran again, and failed again for the same reason
    job = json.loads(retried.stdout)
    assert job["status"] == "failed" and job["error_code"] == "password_required"
    assert job["attempts"] > first["attempts"], (first, job)


# --- errors as sentences ---------------------------------------------------------------------------------

def test_a_wrong_or_missing_token_and_an_unknown_job_are_one_sentence_each(web, token):
    wrong = docket(web, "not-a-token", "status", "0123")
    assert_one_sentence(wrong, 3, "The server refused the token: set DOCKET_TOKEN to a valid API token")
    missing = docket(web, None, "search", "anything")
    assert_one_sentence(missing, 3, "No token was sent: set DOCKET_TOKEN")
    unknown = docket(web, token, "status", "no-such-job")
    assert_one_sentence(unknown, 3, "No job no-such-job on this server", "There is no job with id no-such-job.")
    canceled = docket(web, token, "cancel", "no-such-job")
    assert_one_sentence(canceled, 3, "No job no-such-job on this server")


def test_a_port_where_nothing_listens_is_could_not_reach(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    result = docket(url, "any", "status", "0123")
    assert_one_sentence(result, 4, f"Could not reach Docket at {url}: is it running?", "connection refused")
    bad = docket("127.0.0.1:5000", "any", "status", "0123")
    assert_one_sentence(bad, 2, "DOCKET_URL must be the server's http:// or https:// address")


def test_a_server_whose_redis_is_down_is_a_503_sentence(app, config, token, notes, tmp_path, unused_redis_url):
    with procfile_web({**config, "REDIS_URL": unused_redis_url}, tmp_path / "web-no-redis.log") as base:
        result = docket(base, token, "upload", str(notes))
    assert_one_sentence(result, 4, "Docket is unavailable right now (HTTP 503): try again shortly",
                        "the server said:")


def test_a_used_up_openai_budget_is_a_429_sentence_with_its_retry_after(config, tmp_path, openai_server):
    """The search of a server embedding with the OpenAI API (the tests' local server) whose
    budget is one request a minute: the second search is the server's real 429."""
    from tests.local_services import API_KEY
    from webapp import create_app
    from webapp.core.db import connection, create_tables
    from webapp.core.embeddings import embedder_name
    from webapp.core.models import Chunk, Document

    openai_config = {**config, "EMBEDDER": "openai", "OPENAI_API_KEY": API_KEY, "OPENAI_BASE_URL": openai_server.url}
    app = create_app(openai_config)
    with app.app_context():
        create_tables()
        with connection():  # one chunk in the OpenAI space, so that a query is embedded
            document = Document.create(filename="a.txt", content_type="text/plain", size_bytes=1, sha256="0" * 64,
                                       storage_key="documents/aa/a", owner="tester")
            Chunk.create(document=document, ordinal=0, text="termination notice", dimensions=64,
                         embedding_model=embedder_name(app.config), embedding=bytes(4 * 64))
    token = make_token(app, "tester")
    with procfile_web(openai_config, tmp_path / "web-openai.log", OPENAI_REQUESTS_PER_MINUTE="1",
                      RATE_LIMIT_MAX_WAIT="0") as base:
        first = docket(base, token, "search", "termination")
        assert first.returncode == 0 and "a.txt" in first.stdout, describe(first)
        second = docket(base, token, "search", "termination")
    sentence = assert_one_sentence(second, 4, "The server is rate limiting this request: try again in ")
    seconds = int(sentence.split("try again in ")[1].split(" seconds")[0])
    assert 1 <= seconds <= 61, sentence


# --- URL fetch -------------------------------------------------------------------------------------


def test_fetch_wait_downloads_a_page_and_search_finds_it(config, web, token, start_worker):
    """``FETCH_ALLOW_PRIVATE_NETWORKS`` (this module's config) lets the web process and the worker reach
    the test's loopback site."""
    from werkzeug.wrappers import Response

    from tests.conftest import serve_wsgi

    page = f"<html><body><nav>Home | Shop</nav><main><h1>Ledger</h1><p>{PHRASE}</p></main></body></html>"
    with serve_wsgi(Response(page, content_type="text/html")) as site:
        start_worker(**WORKER_ENV)
        result = docket(web, token, "fetch", "--wait", f"{site}/books/ledger.html")
    assert result.returncode == 0, describe(result)
    assert "ledger.html" in result.stdout and "finished" in result.stdout, describe(result)
    found = docket(web, token, "search", "quokka ledger QX7741")
    assert found.returncode == 0 and "ledger.html" in found.stdout, describe(found)


def test_fetch_of_a_refused_address_is_one_sentence(web, token):
    result = docket(web, token, "fetch", "http://169.254.169.254/latest/meta-data/")
    assert_one_sentence(result, 3, "cannot be fetched", "not a public address")


def test_sources_add_list_show_delete(web, token):
    """(The module's FETCH_ALLOW_PRIVATE_NETWORKS lets the server accept loopback URLs.)"""
    urls = ["http://127.0.0.1:9/handbook/a.html", "http://127.0.0.1:9/handbook/b.html"]
    added = docket(web, token, "--json", "sources", "add", "--kind", "web", "--name", "handbook", *urls)
    assert added.returncode == 0, describe(added)
    source = json.loads(added.stdout)
    assert source["id"] and source["kind"] == "web"
    assert source["urls"] == urls

    listed = docket(web, token, "sources", "list")
    assert listed.returncode == 0, describe(listed)
    row = [line for line in listed.stdout.splitlines() if source["id"] in line]
    assert row and "web" in row[0] and "handbook" in row[0], listed.stdout

    shown = docket(web, token, "sources", "show", source["id"])
    assert shown.returncode == 0 and source["id"] in shown.stdout, describe(shown)

    deleted = docket(web, token, "sources", "delete", source["id"])
    assert deleted.returncode == 0, describe(deleted)
    assert deleted.stdout.strip() == f"Source {source['id']} deleted."
    gone = docket(web, token, "sources", "show", source["id"])
    assert_one_sentence(gone, 3, f"No source {source['id']} on this server")


def test_sources_sync_wait_ingests_a_web_source_and_show_has_its_counts(web, token, start_worker):
    from werkzeug.wrappers import Response

    from tests.conftest import serve_wsgi

    page = f"<html><body><main><h1>Payables</h1><p>{PHRASE}</p></main></body></html>"
    with serve_wsgi(Response(page, content_type="text/html", headers={"ETag": '"v1"'})) as site:
        start_worker(**WORKER_ENV)
        added = docket(web, token, "--json", "sources", "add", f"{site}/payables.html")
        source = json.loads(added.stdout)
        synced = docket(web, token, "sources", "sync", "--wait", source["id"])
        assert synced.returncode == 0, describe(synced)
        # The sync ended once its document jobs were launched; wait for the page's own job.
        found = None
        for _ in range(120):
            found = docket(web, token, "search", "quokka ledger QX7741")
            if "payables.html" in found.stdout:
                break
            import time
            time.sleep(1)
        assert "payables.html" in found.stdout, describe(found)
    shown = docket(web, token, "--json", "sources", "show", source["id"])
    syncs = json.loads(shown.stdout)["syncs"]
    assert syncs[0]["counts"]["ingested"] == 1 and syncs[0]["status"] == "finished", syncs


def test_sources_add_of_an_s3_prefix_infers_its_kind_and_schedule(web, token):
    added = docket(web, token, "--json", "sources", "add", "s3://docket-test-bucket/inbox/", "--schedule", "0 * * * *")
    assert added.returncode == 0, describe(added)
    source = json.loads(added.stdout)
    assert source["kind"] == "s3" and source["url"] == "s3://docket-test-bucket/inbox/"
    assert source["schedule"]["cron"] == "0 * * * *"
    listed = docket(web, token, "sources", "list")
    assert "0 * * * *" in listed.stdout, describe(listed)
    assert docket(web, token, "sources", "delete", source["id"]).returncode == 0


# --- the package: installable on its own, importing nothing of the server --------------------------------

def _requirement_names(distribution: str) -> list[str]:
    """The distributions that installed ``distribution`` requires, normalised (``Requires-Dist``
    lines; those of an extra left out, other markers counted: allowing one more is harmless)."""
    from importlib import metadata

    names = []
    for raw in metadata.distribution(distribution).requires or []:
        if "extra ==" not in raw.partition(";")[2]:
            names.append(re.match(r"[A-Za-z0-9._-]+", raw).group(0).lower().replace("_", "-"))
    return names


def _distribution_closure(name: str) -> set[str]:
    """The names (normalised) of distribution ``name`` and every distribution it requires,
    transitively, as installed."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(_requirement_names(current))
    return seen


def test_the_package_declares_click_requests_and_rich_and_the_docket_command():
    from importlib import metadata

    assert sorted(_requirement_names("docket-client")) == ["click", "requests", "requests-toolbelt", "rich"]
    distribution = metadata.distribution("docket-client")
    scripts = {point.name: point.value for point in distribution.entry_points if point.group == "console_scripts"}
    assert scripts == {"docket": "docket_client.cli:run"}


def test_the_client_loads_only_modules_of_its_declared_dependencies(tmp_path):
    """Every module ``docket_client.cli`` loads is the standard library's or belongs to a
    distribution in docket-client's dependency closure: none of webapp, jobs, flask, rq, redis,
    peewee … (run from an empty folder, where the server's packages cannot be found by accident)."""
    from importlib import metadata

    # Modules read from a file: not __main__, nor the file-less ones compiled extensions register
    # (charset_normalizer's Cython runtime).
    script = ("import json, sys; import docket_client.cli; "
              "print(json.dumps(sorted({name.split('.')[0] for name, module in list(sys.modules.items()) "
              "if getattr(module, '__file__', None)} - set(sys.stdlib_module_names))))")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env={"PATH": os.environ.get("PATH", ""), TEST_TOKEN_ENV: current_test_token() or ""})
    assert result.returncode == 0, result.stderr
    # setuptools' hook in every venv's site, and the finder pip's editable install of the client adds
    loaded = {name for name in json.loads(result.stdout)
              if name != "_distutils_hack" and not name.startswith("__editable___docket_client")}
    allowed = _distribution_closure("docket-client")
    owners = metadata.packages_distributions()
    foreign = {module: owners.get(module) for module in loaded
               if not {d.lower().replace("_", "-") for d in owners.get(module, [])} & allowed}
    assert foreign == {}, f"modules of undeclared distributions: {foreign} (allowed: {sorted(allowed)})"
    assert "docket_client" in loaded and not loaded & {"webapp", "jobs", "flask", "rq", "redis", "peewee"}
