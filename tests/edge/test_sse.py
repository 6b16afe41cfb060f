"""Live progress as Server-Sent Events, against the Procfile's web process and real workers.

* publishing: the state machine publishes each change on Redis pub/sub (job and batch channels),
  and a publish that fails leaves the change standing;
* ``/api/jobs/<id>/events``: started → progress → finished as the job runs, then ``end``; an
  already-terminal job gets one event and the stream ends;
* ``/api/batches/<id>/events``: ends once every job of the upload is terminal;
* capacity: 200 open streams on one web process while ``GET /api/jobs/<id>`` answers 200
  within 2 s each (the issue's "stays fast"), then all 200 get the terminal event;
* resources: the database connection is not held while streaming (PostgreSQL's own count of
  connections), and Redis's pub/sub connections are released when clients go away;
* auth: 401 without a token, 404 for another owner's job, the UI's session cookie accepted.
"""

from __future__ import annotations

import io
import json
import resource
import socket
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
from redis import Redis

from tests.conftest import api_client, csrf_token_of, long_text, make_token, post_text, procfile_web, row, wait_for
from tests.local_services import slow_worker_env
from webapp import create_app
from webapp.core.protocol import states as job_states
from webapp.core.db import connection, create_tables
from webapp.core.protocol.events import batch_channel, job_channel
from webapp.core.models import Job

STREAMS = 200  # the number of open streams
FAST = 2.0  # seconds: each GET /api/jobs/<id> during the streams (a generous bound, per the issue)
HEARTBEAT = "1"  # EVENTS_HEARTBEAT of the tests' web process: gone clients are noticed within ~1 s


class EventStream:
    """A client of one event stream over a raw socket (what an ``EventSource`` reads):
    :meth:`events` yields ``(event, data)`` until the server ends the stream."""

    def __init__(self, base: str, path: str, headers: dict[str, str] | None = None, timeout: float = 60) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Accept: text/event-stream", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.file = self.sock.makefile("rb")
        status_line = self.file.readline().decode()
        self.status = int(status_line.split()[1])
        self.headers: dict[str, str] = {}
        while (line := self.file.readline().decode().rstrip("\r\n")):
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self.comments = 0

    def _body_lines(self) -> Iterator[str]:
        """The body's lines, undoing HTTP/1.1 chunked transfer encoding."""
        buffer = b""
        chunked = self.headers.get("transfer-encoding") == "chunked"
        while True:
            if chunked:
                size = int(self.file.readline().split(b";")[0], 16)
                if size == 0:
                    return
                data = self.file.read(size)
                self.file.readline()
            else:
                data = self.file.read1(65536)
                if not data:
                    return
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                yield line.decode().rstrip("\r")

    def events(self) -> Iterator[tuple[str, dict[str, Any]]]:
        event, data = "message", []
        for line in self._body_lines():
            if line == "":
                if data:
                    yield event, json.loads("\n".join(data))
                event, data = "message", []
            elif line.startswith(":"):
                self.comments += 1
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())

    def json_error(self) -> dict[str, Any]:
        return json.loads(self.file.read().decode() or "{}") if self.headers.get("transfer-encoding") != "chunked" \
            else json.loads("".join(self._body_lines()))

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def events_web(app, config, tmp_path: Path) -> Iterator[str]:
    """The Procfile's web line (one gunicorn worker, as the shared ``web`` fixture), with a 1 s keep-alive."""
    with procfile_web(config, tmp_path / "web.log", EVENTS_HEARTBEAT=HEARTBEAT) as base:
        yield base


@pytest.fixture
def nofile():
    """Enough file descriptors for a few hundred sockets in this process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _job_row(app, **fields) -> str:
    with app.app_context(), connection():
        return Job.create(kind="document", queue="default", owner="tester", **fields).id


# --- publishing (in-process, real Redis and database) ---

def test_every_change_is_published_on_the_job_and_batch_channels(app, redis):
    job_id = _job_row(app, status="queued", batch_id="b-1")
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(job_channel(job_id), batch_channel("b-1"))
    wait_for(lambda: pubsub.get_message(timeout=0.1) is None and len(pubsub.channels) == 2, 5, "the subscription")
    with app.app_context(), connection():
        assert job_states.mark_started(job_id)
        assert job_states.record_progress(job_id, "embed", 40)
        assert job_states.mark_failed(job_id, "the document is damaged", "damaged")
        assert not job_states.record_progress(job_id, "embed", 50)  # not started any more: nothing published

    received: list[tuple[str, dict]] = []
    wait_for(lambda: (lambda m: received.append((m["channel"].decode(), json.loads(m["data"]))) if m else None)(
        pubsub.get_message(timeout=0.2)) or len(received) >= 6, 10, "six messages")
    time.sleep(0.3)
    assert pubsub.get_message(timeout=0.2) is None  # the refused progress write published nothing
    by_channel = {job_channel(job_id): [], batch_channel("b-1"): []}
    for channel, event in received:
        by_channel[channel].append(event)
    assert by_channel[job_channel(job_id)] == by_channel[batch_channel("b-1")]
    started, progress, failed = by_channel[job_channel(job_id)]
    assert (started["status"], started["progress"], started["kind"]) == ("started", 0, "document")
    assert (progress["status"], progress["stage"], progress["progress"]) == ("started", "embed", 40)
    assert (failed["status"], failed["error_code"], failed["error"], failed["terminal"]) == \
        ("failed", "damaged", "the document is damaged", True)
    assert started["updated_at"] <= progress["updated_at"] <= failed["updated_at"]
    assert failed["updated_at"] == row(app, job_id).updated_at.isoformat() + "+00:00"
    pubsub.close()


def test_a_failed_publish_never_fails_or_undoes_the_change(config, unused_redis_url, caplog):
    app = create_app({**config, "REDIS_URL": unused_redis_url})  # nothing listens there
    with app.app_context():
        create_tables()
    job_id = _job_row(app, status="queued")
    with app.app_context(), connection():
        assert job_states.mark_started(job_id)
        assert job_states.record_progress(job_id, "extract", 10)
        assert job_states.record_progress(job_id, "extract", 20)
    assert (row(app, job_id).status, row(app, job_id).progress) == ("started", 20)
    warnings = [r for r in caplog.records if r.name == "webapp.core.protocol.events" and r.levelname == "WARNING"]
    assert len(warnings) == 1 and "not published" in warnings[0].getMessage()  # logged once, not per change


# --- the streams, through the Procfile's web process ---

def test_a_job_stream_delivers_started_progress_finished_then_ends(app, openai_client, openai_server, events_web,
                                                                   start_worker):
    token = make_token(app)  # the owner "tester", not an admin
    document = post_text(openai_client, long_text(12)).get_json()["documents"][0]  # queued: no worker yet
    stream = EventStream(events_web, f"/api/jobs/{document['job_id']}/events", bearer(token))
    assert stream.status == 200 and stream.headers["content-type"].startswith("text/event-stream")
    events = stream.events()
    first = next(events)
    assert first[0] == "job" and first[1]["status"] == "queued" and first[1]["id"] == document["job_id"]
    start_worker(**slow_worker_env(openai_server, delay=0.4))
    rest = list(events)  # until the server ends the stream
    stream.close()
    names = [name for name, _ in rest]
    assert names[-1] == "end" and names.count("end") == 1
    jobs = [data for name, data in rest if name == "job"]
    statuses = [job["status"] for job in jobs]
    assert statuses[0] == "started" and statuses[-1] == "finished"
    assert set(statuses[1:-1]) == {"started"}, statuses
    progress = [job["progress"] for job in jobs[1:-1] if job["progress"]]
    assert progress, "no progress event between started and finished"
    assert progress == sorted(progress) and jobs[-1]["progress"] == 100
    assert [job["updated_at"] for job in jobs] == sorted(job["updated_at"] for job in jobs)
    assert stream.comments >= 1  # the keep-alive came while the job ran

    # A stream opened on a terminal job: its state, end, closed.
    again = EventStream(events_web, f"/api/jobs/{document['job_id']}/events", bearer(token))
    assert [(name, data.get("status")) for name, data in again.events()] == [("job", "finished"), ("end", None)]
    again.close()


def test_a_batch_stream_ends_when_every_job_of_the_upload_is_terminal(app, client, events_web, start_worker):
    token = make_token(app)
    answer = client.post("/api/documents", content_type="multipart/form-data", data={"file": [
        (_bytes_io(b"A first note about contracts and their notice."), "one.txt"),
        (_bytes_io(b"A second note about invoices and payment terms."), "two.txt"),
        (_bytes_io(b"%PDF-1.4 this is not really a PDF"), "broken.pdf")]}).get_json()
    batch_id = answer["batch_id"] if "batch_id" in answer else answer["documents"][0]["batch_id"]
    stream = EventStream(events_web, f"/api/batches/{batch_id}/events", bearer(token))
    assert stream.status == 200
    events = stream.events()
    name, first = next(events)
    assert name == "batch" and not first["finished"] and len(first["jobs"]) == len(answer["documents"])
    start_worker()
    rest = list(events)
    stream.close()
    assert rest[-1][0] == "end" and rest[-2][0] == "batch"
    last = rest[-2][1]
    assert last["finished"] and last["progress"] == 100 and all(job["terminal"] for job in last["jobs"])
    with app.app_context(), connection():
        rows = list(Job.select().where(Job.batch_id == batch_id))
    assert {job.id: job.status for job in rows} == {job["id"]: job["status"] for job in last["jobs"]}
    seen = {data["id"] for name, data in rest if name == "job" and data["terminal"]}
    assert seen == {job.id for job in rows}  # every job's terminal change was relayed

    again = EventStream(events_web, f"/api/batches/{batch_id}/events", bearer(token))
    assert [name for name, _ in again.events()] == ["batch", "end"]
    again.close()


def test_200_open_streams_leave_the_status_endpoint_fast_and_all_get_the_end(app, client, events_web, start_worker,
                                                                             redis, nofile):
    token = make_token(app)
    document = upload_text(client, "The 200 streams' document: a short note.")
    job_url = f"{events_web}/api/jobs/{document['job_id']}"
    opened, results = threading.Barrier(STREAMS + 1, timeout=120), [None] * STREAMS

    def listen(index: int) -> None:
        stream = EventStream(events_web, f"/api/jobs/{document['job_id']}/events", bearer(token), timeout=120)
        try:
            if stream.status != 200:
                results[index] = (stream.status, stream.json_error())
                opened.abort()
                return
            events = stream.events()
            first = next(events)
            opened.wait()
            results[index] = [first, *events]
        finally:
            stream.close()

    threads = [threading.Thread(target=listen, args=(index,), daemon=True) for index in range(STREAMS)]
    for thread in threads:
        thread.start()
    try:
        opened.wait()  # every stream got its first event and is open
    except threading.BrokenBarrierError:
        pytest.fail(f"a stream was refused: {[r for r in results if isinstance(r, tuple)][:3]}")
    assert _pubsub_clients(redis) == 1  # one subscription for the web process, not one per stream

    session = requests.Session()
    session.headers.update(bearer(token))
    slowest = 0.0
    for _ in range(30):
        started = time.monotonic()
        response = session.get(job_url, timeout=30)
        slowest = max(slowest, time.monotonic() - started)
        assert response.status_code == 200 and response.json()["status"] == "queued"
    assert slowest < FAST, f"GET /api/jobs/<id> took {slowest:.2f} s with {STREAMS} open streams"

    start_worker()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads), "a stream did not end"
    for events in results:
        assert events is not None
        assert events[0] == ("job", events[0][1]) and events[0][1]["status"] == "queued"
        assert events[-1][0] == "end" and events[-2][1]["status"] == "finished", events


def test_clients_that_go_away_release_their_stream(app, client, config, tmp_path, redis):
    """A web process of 24 threads: 20 streams whose clients go away, then 20 more — which only
    get served if the first 20 were released (their threads and their listeners)."""
    token = make_token(app)
    document = upload_text(client, "Nobody processes this one: no worker runs.")
    path = f"/api/jobs/{document['job_id']}/events"
    with procfile_web(config, tmp_path / "web.log", EVENTS_HEARTBEAT=HEARTBEAT, WEB_THREADS="24") as base:
        for round_ in range(2):
            streams = [EventStream(base, path, bearer(token), timeout=30) for _ in range(20)]
            for stream in streams:
                assert next(stream.events())[1]["status"] == "queued", round_
            assert _pubsub_clients(redis) == 1  # the process's one subscription, whatever the streams
            for stream in streams:  # the clients go away; the job never ends (their next keep-alive finds them gone)
                stream.close()
        assert requests.get(f"{base}/api/jobs/{document['job_id']}", headers=bearer(token), timeout=10).ok


def test_a_web_worker_shutting_down_ends_its_streams(app, client, config, tmp_path):
    """SIGTERM (a deploy): the streams end at once, without ``end``, so their clients reconnect
    elsewhere — not after the keep-alive (60 s here) or gunicorn's graceful timeout (30 s)."""
    import psutil

    token = make_token(app)
    document = upload_text(client, "A deploy happens while this one waits.")
    with procfile_web(config, tmp_path / "web.log", EVENTS_HEARTBEAT="60") as base:
        stream = EventStream(base, f"/api/jobs/{document['job_id']}/events", bearer(token), timeout=25)
        events = stream.events()
        assert next(events)[1]["status"] == "queued"
        port = base.rsplit(":", 1)[1]
        worker = next(child for process in psutil.process_iter(["cmdline"])
                      if "gunicorn" in " ".join(process.info["cmdline"] or []) and f":{port}" in
                      " ".join(process.info["cmdline"] or []) for child in process.children())
        worker.terminate()  # gunicorn's worker: SIGTERM, its graceful shutdown
        rest = list(events)  # a socket timeout (25 s) here fails the test
        stream.close()
    assert [name for name, _ in rest] == []  # no "end": the client reconnects


def test_streams_need_a_token_or_session_and_hide_other_owners_jobs(app, client, events_web):
    document = upload_text(client, "Tester's note, no worker.")  # the owner "tester"
    paths = (f"/api/jobs/{document['job_id']}/events", f"/api/batches/{document['batch_id']}/events")
    for path in paths:
        anonymous = EventStream(events_web, path)
        assert anonymous.status == 401 and anonymous.json_error()["error"]["code"] == "authentication_required"
        anonymous.close()
        other = EventStream(events_web, path, bearer(make_token(app, "mallory")))
        assert other.status == 404 and other.json_error()["error"]["code"].endswith("_not_found")
        other.close()
        missing = EventStream(events_web, path.replace(document["job_id"], "nope").replace(
            document["batch_id"], "nope"), bearer(make_token(app)))
        assert missing.status == 404
        missing.close()
    # The UI's session cookie (an EventSource sends no Authorization header).
    session = requests.Session()
    page = session.get(f"{events_web}/signin")
    signed = session.post(f"{events_web}/signin", data={"token": make_token(app), "next": "/",
                                                        "csrf_token": csrf_token_of(page.text)}, allow_redirects=False)
    assert signed.status_code == 302
    cookie = "; ".join(f"{c.name}={c.value}" for c in session.cookies)
    stream = EventStream(events_web, paths[0], {"Cookie": cookie})
    assert stream.status == 200 and next(stream.events())[1]["status"] == "queued"
    stream.close()


def test_streams_do_not_hold_a_database_connection(config, postgres_url, tmp_path, nofile):
    """On PostgreSQL, 50 streams opened one after another while the job waits: if each stream kept
    its request's connection, the server would count ≥ 50 of the web process; it counts a few."""
    import psycopg2

    config = {**config, "DATABASE_URL": postgres_url}
    app = create_app(config)
    with app.app_context():
        create_tables()
    client = api_client(app)
    document = upload_text(client, "A note on PostgreSQL; no worker runs.")
    token = make_token(app)
    database = postgres_url.rsplit("/", 1)[1]
    with procfile_web(config, tmp_path / "web.log", EVENTS_HEARTBEAT=HEARTBEAT) as base, \
            closing(psycopg2.connect(postgres_url.replace("postgres://", "postgresql://", 1))) as admin:
        admin.autocommit = True

        def connections() -> int:
            with admin.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                               (database,))
                return cursor.fetchone()[0]

        before = connections()
        streams = []
        for _ in range(50):
            stream = EventStream(base, f"/api/jobs/{document['job_id']}/events", bearer(token))
            assert next(stream.events())[1]["status"] == "queued"
            streams.append(stream)
        during = connections()
        # A status request still finds a connection.
        assert requests.get(f"{base}/api/jobs/{document['job_id']}", headers=bearer(token)).status_code == 200
        for stream in streams:
            stream.close()
    assert during - before < 10, f"{during - before} more database connections with 50 open streams"


# --- helpers ---

def _bytes_io(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)


def upload_text(client, text: str) -> dict[str, Any]:
    return post_text(client, text.encode(), "note.txt").get_json()["documents"][0]


def _pubsub_clients(redis: Redis) -> int:
    """Docket's event listeners (PSUBSCRIBE) connected to ``redis``; RQ workers' command
    channels (SUBSCRIBE) of another test's worker still shutting down are not counted."""
    return sum(1 for client in redis.client_list(_type="pubsub") if int(client.get("psub", 0)))

