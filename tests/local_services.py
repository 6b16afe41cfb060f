"""Local stand-ins for the outside services Docket talks to, served over real HTTP by the test
process (:func:`tests.conftest.serve_wsgi`): an OpenAI-compatible embeddings server, an
OpenAI-compatible chat server. Registered as a pytest plugin by ``tests/conftest.py``, so their
fixtures (``openai_server``, ``openai_app``, ``openai_client``, ``chat_server``) serve every test
module. They record every request in memory, also those that come from worker processes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from werkzeug.wrappers import Request, Response

from tests.conftest import serve_wsgi
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
    one worker process on both queues, one input per request to the (now slow) ``server``."""
    server.delay = delay
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
