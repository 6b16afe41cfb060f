"""Rate limits shared by every worker process (webapp/core/workflows/rate_limits.py, jobs/worker/).

Against the session's private redis-server: the budget taken atomically by several processes at
once; two worker commands (``flask --app wsgi rq worker``, two pools) embedding documents with
the real ``openai`` client against a local OpenAI-compatible server that stamps every request's
arrival, whose requests never exceed the shared limit in any window; and a job kind's limit
that reschedules jobs (row ``scheduled``, ``rate_limited``) instead of failing them.

The OpenAI budgets are per minute in production; these tests count them over 2 s
(``OPENAI_RATE_WINDOW``) so that a run takes seconds, not minutes.
"""

from __future__ import annotations

import math
from datetime import timedelta
import multiprocessing
import re
import time
from pathlib import Path

import pytest
from rq.job import Job as RQJob

from tests.conftest import post_text, row, serve_wsgi, wait_for
from tests.local_services import LocalEmbeddingServer, openai_worker_env
from webapp.core.config import load_config
from webapp.core.protocol.job_errors import RateLimited
from webapp.core.workflows.rate_limits import (MAX_ENTRIES, RateLimit, acquire, acquire_all, begin_run, configured_limits,
                                spent_in_run)


def most_in_any_window(times: list[float], window: float) -> int:
    """The most of ``times`` (seconds) that fall in one half-open interval of ``window`` seconds."""
    times = sorted(times)
    most, first = 0, 0
    for last, stamp in enumerate(times):
        while stamp - times[first] >= window:
            first += 1
        most = max(most, last - first + 1)
    return most


# --- the notation and the settings ---------------------------------------------------------------


def test_limits_notation_and_the_settings_are_checked_at_load(tmp_path):
    assert RateLimit.parse("600/minute") == RateLimit(600, 60, "600/minute")
    assert RateLimit.parse("10 per second") == RateLimit(10, 1, "10 per second")
    assert RateLimit.parse("5/2 seconds") == RateLimit(5, 2, "5/2 seconds")
    config = load_config(tmp_path, {"JOB_RATE_LIMITS": "document=600/minute; report=10/minute",
                                    "OPENAI_REQUESTS_PER_MINUTE": "3000", "OPENAI_TOKENS_PER_MINUTE": "1000000"})
    assert configured_limits(config) == {
        # An outside service's budget is counted over its window + SEND_MARGIN (1 s).
        "openai.requests": RateLimit(3000, 61, "OPENAI_REQUESTS_PER_MINUTE=3000"),
        "openai.tokens": RateLimit(1_000_000, 61, "OPENAI_TOKENS_PER_MINUTE=1000000"),
        "job.document": RateLimit(600, 60, "600/minute"),
        "job.report": RateLimit(10, 60, "10/minute"),
    }
    assert config["RATE_LIMIT_MAX_WAIT"] == 5.0 and configured_limits(load_config(tmp_path, {})) == {}
    for env, sentence in [
        ({"JOB_RATE_LIMITS": "documents=600/minute"}, "'documents' is not a job kind"),
        ({"JOB_RATE_LIMITS": "document=lots"}, "'lots' is not a rate limit"),
        ({"JOB_RATE_LIMITS": "document"}, "is not kind=limit"),
        ({"JOB_RATE_LIMITS": "document=1/second;document=2/second"}, "names 'document' twice"),
        ({"OPENAI_TOKENS_PER_MINUTE": "100"}, "at least 8192"),
        ({"OPENAI_RATE_WINDOW": "600"}, "between 1 and 60"),
        ({"RATE_LIMIT_MAX_WAIT": "soon"}, "must be a number"),
    ]:
        with pytest.raises(ValueError, match=re.escape(sentence)):
            load_config(tmp_path, env)


# --- acquire against Redis -----------------------------------------------------------------------


def test_an_unlimited_budget_never_touches_redis(redis_url, redis):
    config = {"REDIS_URL": redis_url, "JOB_RATE_LIMITS": "report=1/minute"}
    for _ in range(100):
        acquire(config, "job.document")
        acquire_all(config, {"openai.requests": 1, "openai.tokens": 5000})
    assert redis.keys("*") == []
    acquire(config, "job.report")
    assert [key.decode() for key in redis.keys("*")] == ["docket:rate:LIMITER/job.report/1/60/second"]


def test_a_used_up_budget_waits_in_place_then_raises_rate_limited_with_the_time_it_frees(redis_url):
    config = {"REDIS_URL": redis_url, "JOB_RATE_LIMITS": "document=2/second", "RATE_LIMIT_MAX_WAIT": 5}
    acquire(config, "job.document")
    acquire(config, "job.document")
    with pytest.raises(RateLimited) as raised:
        acquire(config, "job.document", max_wait=0)
    assert raised.value.name == "job.document" and raised.value.code == "rate_limited"
    assert 0 < raised.value.retry_after <= 1 and "job.document rate limit (2/second)" in raised.value.message
    assert not isinstance(raised.value, Exception)  # no `except Exception` in a job swallows it
    started = time.monotonic()
    acquire(config, "job.document")  # within RATE_LIMIT_MAX_WAIT: one computed sleep, then taken
    assert time.monotonic() - started >= raised.value.retry_after - 0.05
    with pytest.raises(ValueError, match="more than its whole limit"):
        acquire(config, "job.document", cost=3)


def test_requests_and_tokens_are_taken_together_and_a_large_budget_stays_small_in_redis(redis_url, redis):
    config = {"REDIS_URL": redis_url, "OPENAI_REQUESTS_PER_MINUTE": 10, "OPENAI_TOKENS_PER_MINUTE": 1_000_000}
    acquire_all(config, {"openai.requests": 1, "openai.tokens": 700_000})
    # The tokens are not free: neither budget is taken (the requests budget keeps its 9 units).
    with pytest.raises(RateLimited) as raised:
        acquire_all(config, {"openai.requests": 1, "openai.tokens": 400_000}, max_wait=0)
    assert raised.value.name == "openai.tokens"
    for _ in range(9):
        acquire_all(config, {"openai.requests": 1, "openai.tokens": 1000}, max_wait=0)
    with pytest.raises(RateLimited):
        acquire_all(config, {"openai.requests": 1}, max_wait=0)
    # 1,000,000 tokens per minute are counted in units of 100 tokens: ≤ 10,000 list entries.
    tokens_key = "docket:rate:LIMITER/openai.tokens/10000/61/second"  # 60 s + SEND_MARGIN
    assert redis.llen(tokens_key) == 7000 + 9 * 10 <= MAX_ENTRIES


def test_a_run_that_spent_an_outside_services_budget_is_marked_and_a_job_kinds_is_not(redis_url):
    config = {"REDIS_URL": redis_url, "JOB_RATE_LIMITS": "document=5/second", "OPENAI_REQUESTS_PER_MINUTE": 5}
    begin_run()
    acquire(config, "job.document")
    assert not spent_in_run()
    acquire_all(config, {"openai.requests": 1, "openai.tokens": 100})  # tokens unlimited: free
    assert spent_in_run()
    begin_run()
    assert not spent_in_run()


def _hammer(config: dict, name: str, until: float, stamps) -> None:
    taken = []
    while time.time() < until:
        before = time.time()
        try:
            acquire(config, name, max_wait=0)
        except RateLimited:
            continue
        taken.append(before)
    stamps.put(taken)


def test_four_processes_hammering_one_budget_never_take_more_than_its_limit_in_any_window(redis_url):
    """Four processes (forked after this process used the budget: each opens its own connection)
    take units as fast as they can for 2.5 s; every unit taken is stamped just before the call.
    No window of the limit's length holds more than the limit (a per-process limit would allow 4×)."""
    config = {"REDIS_URL": redis_url, "JOB_RATE_LIMITS": "document=20/second"}
    acquire(config, "job.document")  # the parent's storage exists before the fork
    context = multiprocessing.get_context("fork")
    stamps = context.Queue()
    until = time.time() + 2.5
    processes = [context.Process(target=_hammer, args=(config, "job.document", until, stamps)) for _ in range(4)]
    for process in processes:
        process.start()
    taken = [stamp for _ in processes for stamp in stamps.get(timeout=30)]
    for process in processes:
        process.join(30)
        assert process.exitcode == 0
    assert len(taken) >= 40  # the budget was used up again and again (2.5 windows of 20)
    # A stamp precedes its unit's own timestamp by the call's latency: 20 ms of tolerance.
    assert most_in_any_window(taken, 1.0 - 0.02) <= 20


# --- job kinds: rescheduled, not failed ----------------------------------------------------------


def test_a_job_kind_limit_reschedules_jobs_which_then_finish_without_extra_attempts(app, client, redis, start_worker):
    """``document=1/3 seconds`` across a pool of two processes: the second and third document
    wait 0.5 s in place, then go to RQ's scheduler — rows ``scheduled`` with ``rate_limited`` —
    and finish later; no job failed, attempts and RQ's retries are as for one run."""
    documents = [post_text(client, f"Note {n}: the parties agree on notice.".encode(), f"note-{n}.txt")
                 .get_json()["documents"][0] for n in range(3)]
    ids = [document["job_id"] for document in documents]
    start_worker(JOB_RATE_LIMITS="document=1/3 seconds", RATE_LIMIT_MAX_WAIT="0.5", WORKER_CONCURRENCY="2",
                 HIGH_QUEUE_WORKERS="0")
    rate_limited: dict[str, object] = {}

    def all_finished():
        rows = [row(app, job_id) for job_id in ids]
        for job in rows:
            assert job.status not in ("failed", "stopped", "canceled"), (job.status, job.error)
            if job.status == "scheduled":
                rate_limited[job.id] = job
        return all(job.status == "finished" for job in rows) and rows

    rows = wait_for(all_finished, 40, "the three documents to finish")
    assert rate_limited, "no job was rescheduled"
    for job in rate_limited.values():
        assert job.error_code == "rate_limited" and job.retry_at is not None
        # Naive UTC like every timestamp column (RQ's clock is aware): within the limit's window of the start.
        assert job.retry_at.tzinfo is None and abs(job.retry_at - job.updated_at) < timedelta(seconds=10)
        assert job.error.startswith("waiting for the job.document rate limit (1/3 seconds); runs again at ")
    assert [job.attempts for job in rows] == [1, 1, 1]
    assert all(job.error is None and job.error_code is None for job in rows)
    starts = sorted(job.started_at for job in rows)
    assert all((later - earlier).total_seconds() >= 3 - 0.1 for earlier, later in zip(starts, starts[1:]))
    for job_id in ids:
        assert RQJob.fetch(job_id, connection=redis).retries_left == 3  # the kind's retries, untouched


# --- the OpenAI budget across two worker commands ----------------------------------------------


@pytest.fixture
def stamped_openai_server():
    """The local OpenAI-compatible embeddings server, stamping each request's arrival (``arrivals``)."""
    state = LocalEmbeddingServer()
    arrivals: list[float] = []

    def stamped(environ, start_response):
        if environ.get("PATH_INFO", "").endswith("/embeddings"):
            arrivals.append(time.time())
        return state.wsgi_app(environ, start_response)

    with serve_wsgi(stamped) as url:
        state.url = f"{url}/v1"
        state.arrivals = arrivals
        yield state


def test_two_worker_commands_share_one_openai_request_budget(app, client, tmp_path: Path, start_worker,
                                                             stamped_openai_server):
    """Two worker commands (two pools of two processes each, as on two machines) embed six
    documents one chunk per request under ``4 requests per 2 s``. The server sees no 2-second
    window with more than 4 requests, the requests are spread over as many windows as they need,
    jobs were rescheduled while they waited, and every job finished in one attempt."""
    server, limit, window = stamped_openai_server, 4, 2.0
    # The first document needs more requests (≈ 9 chunks) than one window's budget: it finishes
    # because a job that already made requests waits for the budget instead of being rescheduled.
    texts = [f"Contract {n}. ".encode() + b"The parties agree on notice. " * (360 if n == 0 else 120) for n in range(6)]
    documents = [post_text(client, text, f"contract-{n}.txt").get_json()["documents"][0]
                 for n, text in enumerate(texts)]
    env = openai_worker_env(server, EMBEDDER="openai", EMBEDDING_BATCH_SIZE="1",
                            OPENAI_REQUESTS_PER_MINUTE=str(limit), OPENAI_RATE_WINDOW=str(int(window)),
                            RATE_LIMIT_MAX_WAIT="0.5", WORKER_CONCURRENCY="2", HIGH_QUEUE_WORKERS="0")
    start_worker(**env)
    start_worker(**env)

    def all_finished():
        rows = [row(app, document["job_id"]) for document in documents]
        for job in rows:
            assert job.status not in ("failed", "stopped", "canceled"), (job.status, job.error)
        return all(job.status == "finished" for job in rows) and rows

    rows = wait_for(all_finished, 60, "six documents to be embedded")
    assert [job.attempts for job in rows] == [1] * 6
    assert rows[0].result["chunks"] > limit
    assert all(job.result["embedding_model"] == "openai:text-embedding-3-small" for job in rows)
    requests = len(server.arrivals)
    assert requests >= 6 * 2 and all(request.status == 200 for request in server.requests)
    # As the API counts them, by arrival: no window of its length holds more than the limit
    # (the budget is counted over the window + SEND_MARGIN for the request's trip).
    assert most_in_any_window(server.arrivals, window) <= limit
    assert max(server.arrivals) - min(server.arrivals) >= (math.ceil(requests / limit) - 1) * window - 0.1
    logs = [path.read_text() for path in sorted(tmp_path.glob("worker-*.log"))]
    assert len(logs) == 2
    assert any("rescheduled for" in log for log in logs), "no job waited long enough to be rescheduled"
    # Both worker commands ran jobs (each log names jobs it started).
    assert all(any(document["job_id"] in log for document in documents) for log in logs)


def test_outside_a_job_a_used_up_openai_budget_is_a_transient_embedding_error(redis_url, stamped_openai_server):
    """A search query in the web process is no RQ job: nothing can reschedule it, so the embedder
    answers as for a 429 (a transient EmbeddingError: the API answers 502 embedding_unavailable)."""
    from webapp.core.embeddings import EmbeddingError, embedder_from_config

    server = stamped_openai_server
    config = {"EMBEDDER": "openai", "OPENAI_API_KEY": "test-key", "OPENAI_BASE_URL": server.url,
              "EMBEDDING_MODEL": "text-embedding-3-small", "REDIS_URL": redis_url,
              "OPENAI_REQUESTS_PER_MINUTE": 1, "RATE_LIMIT_MAX_WAIT": 0}
    embedder = embedder_from_config(config)
    assert embedder.embed(["termination notice"]).shape == (1, 64)
    with pytest.raises(EmbeddingError, match="rate limit is used up") as raised:
        embedder.embed(["termination notice"])
    assert raised.value.transient and len(server.arrivals) == 1
    assert 0 < raised.value.retry_after <= 61  # 60 s + SEND_MARGIN


def test_the_openai_clients_own_retry_takes_the_budget_too(redis_url, stamped_openai_server):
    """A 500 answered, the ``openai`` client sends the request again: the API counts two
    requests, and so does the budget (httpx's hook before every attempt)."""
    from webapp.core.embeddings import EmbeddingError, embedder_from_config

    server = stamped_openai_server
    server.mode = "fail_once"
    config = {"EMBEDDER": "openai", "OPENAI_API_KEY": "test-key", "OPENAI_BASE_URL": server.url,
              "EMBEDDING_MODEL": "text-embedding-3-small", "REDIS_URL": redis_url, "OPENAI_MAX_RETRIES": 1,
              "OPENAI_REQUESTS_PER_MINUTE": 2, "RATE_LIMIT_MAX_WAIT": 0}
    embedder = embedder_from_config(config)
    assert embedder.embed(["termination notice"]).shape == (1, 64)
    assert [request.status for request in server.requests] == [500, 200]
    with pytest.raises(EmbeddingError, match="rate limit is used up"):  # both units are spent
        embedder.embed(["termination notice"])
    assert len(server.arrivals) == 2


def test_a_search_query_over_the_openai_budget_answers_429_with_retry_after(
        app, config, stamped_openai_server):
    """The web edge turns the used-up budget into 429 rate_limited with Retry-After (seconds),
    not a 502: the service is fine, Docket's own budget is spent."""
    from tests.conftest import api_client

    app.config.update(EMBEDDER="openai", OPENAI_API_KEY="test-key", OPENAI_BASE_URL=stamped_openai_server.url,
                      OPENAI_REQUESTS_PER_MINUTE=1, RATE_LIMIT_MAX_WAIT=0)
    from webapp.core.db import connection
    from webapp.core.embeddings import embedder_name
    from webapp.core.models import Chunk, Document

    with app.app_context(), connection():  # one chunk in the OpenAI space, so a query gets embedded
        document = Document.create(filename="a.txt", content_type="text/plain", size_bytes=1, sha256="0" * 64,
                                   storage_key="documents/aa/a", owner="tester")
        Chunk.create(document=document, ordinal=0, text="termination notice", dimensions=64,
                     embedding_model=embedder_name(app.config), embedding=bytes(4 * 64))
    client = api_client(app)
    assert client.get("/api/search?q=termination").status_code == 200
    answer = client.get("/api/search?q=termination")
    assert answer.status_code == 429, answer.get_json()
    assert answer.get_json()["error"]["code"] == "rate_limited"
    assert 1 <= int(answer.headers["Retry-After"]) <= 61
    assert len(stamped_openai_server.arrivals) == 1
