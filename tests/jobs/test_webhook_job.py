"""Webhooks: one signed POST with a job's final state; a receiver that is down or slow never
fails or delays the job, and the outcome is recorded on the job's row."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import pytest
from werkzeug.wrappers import Request, Response

from tests.conftest import row, serve_wsgi, upload, wait_for
from webapp.core import webhooks
from webapp.core.db import connection
from webapp.local.embedded_redis import free_port
from webapp.core.models import Job


@dataclass
class Receiver:
    """A local webhook receiver that records each POST; ``status`` is what it answers."""

    url: str = ""
    status: int = 204
    delay: float = 0.0
    posts: list[tuple[dict, bytes]] = field(default_factory=list)

    def wsgi_app(self, environ, start_response):
        request = Request(environ)
        body = request.get_data()
        self.posts.append((dict(request.headers), body))
        if self.delay:
            time.sleep(self.delay)
        return Response(status=self.status)(environ, start_response)


@pytest.fixture
def receiver():
    state = Receiver()
    with serve_wsgi(state.wsgi_app) as url:
        state.url = f"{url}/hook"
        yield state


def test_the_final_state_is_posted_once_signed_with_hmac_sha256(app, client, receiver, run_worker):
    document = upload(client, "minimal-document.pdf", callback_url=receiver.url).get_json()["documents"][0]
    run_worker()
    assert row(app, document["job_id"]).status == "finished"
    wait_for(lambda: row(app, document["job_id"]).webhook, 30, "the webhook outcome")
    (headers, body), = receiver.posts
    assert webhooks.verify(body, app.config["WEBHOOK_SECRET"], headers[webhooks.SIGNATURE_HEADER])
    assert not webhooks.verify(body + b" ", app.config["WEBHOOK_SECRET"], headers[webhooks.SIGNATURE_HEADER])
    sent = json.loads(body)
    assert sent["event"] == "job.ended" and sent["job"]["id"] == document["job_id"]
    assert sent["job"]["status"] == "finished" and sent["job"]["document_id"] == document["id"]
    outcome = client.get(document["status_url"]).get_json()["webhook"]
    assert outcome["status"] == "delivered" and outcome["http_status"] == 204 and outcome["attempts"] == 1
    # The delivery is a job like any other: its own row went queued → started → finished.
    delivery = client.get("/api/jobs?kind=webhook").get_json()["jobs"][0]
    assert (delivery["status"], delivery["attempts"], delivery["params"]) == (
        "finished", 1, {"job_id": document["job_id"]})
    assert headers[webhooks.DELIVERY_HEADER] == delivery["id"]


def test_a_failed_job_is_reported_too(app, client, receiver, run_worker):
    document = upload(client, "libreoffice-writer-password.pdf", callback_url=receiver.url).get_json()["documents"][0]
    run_worker()
    (_, body), = receiver.posts
    sent = json.loads(body)["job"]
    assert (sent["id"], sent["status"], sent["error_code"]) == (document["job_id"], "failed", "password_required")


def test_a_receiver_that_is_down_never_fails_or_delays_the_job(app, client, start_worker):
    down = f"http://127.0.0.1:{free_port()}/hook"
    document = upload(client, "minimal-document.pdf", callback_url=down).get_json()["documents"][0]
    start_worker(WEBHOOK_JOB_RETRIES="2", RETRY_MAX_DELAY="1")  # the worker launches the deliveries
    wait_for(lambda: row(app, document["job_id"]).status == "finished", 60, "the job to finish")
    outcome = wait_for(lambda: (lambda w: w if w and w["status"] == "failed" else None)(
        row(app, document["job_id"]).webhook), 60, "the deliveries to give up")
    assert outcome["attempts"] == 3 and "did not answer" in outcome["error"]
    assert row(app, document["job_id"]).status == "finished"  # the job's own state is untouched


def test_a_slow_receiver_is_cut_off_by_the_timeout(app, client, receiver, run_worker):
    receiver.delay = 5
    document = upload(client, "minimal-document.pdf", callback_url=receiver.url).get_json()["documents"][0]
    run_worker(WEBHOOK_TIMEOUT="1", WEBHOOK_JOB_RETRIES="0")
    assert row(app, document["job_id"]).status == "finished"
    outcome = row(app, document["job_id"]).webhook
    assert outcome["status"] == "failed" and outcome["attempts"] == 1


def test_a_callback_url_must_be_http(client):
    answer = upload(client, "minimal-document.pdf", callback_url="file:///etc/passwd")
    assert answer.status_code == 400 and answer.get_json()["error"]["code"] == "invalid_callback_url"


def test_a_callback_url_to_a_private_address_is_refused(app, config):
    from tests.conftest import api_client
    from webapp import create_app

    strict = api_client(create_app({**config, "WEBHOOK_ALLOW_PRIVATE": False}))
    for url in ("http://127.0.0.1:9/hook", "http://localhost/hook", "http://10.1.2.3/", "http://192.168.0.1/",
                "http://169.254.169.254/latest/meta-data/", "http://[::1]/", "http://[fd00::1]/", "http://0.0.0.0/",
                "http://no-such-host.invalid/",
                # IPv4 loopback and the metadata address inside IPv6: compatible, mapped, 6to4, NAT64
                "http://[::127.0.0.1]/", "http://[::ffff:127.0.0.1]/", "http://[2002:7f00:1::]/",
                "http://[64:ff9b::a9fe:a9fe]/",
                # urlsplit reads a public host here, urllib3 (the HTTP client's parser) 127.0.0.1
                "http://127.0.0.1:5099\\@93.184.216.34/internal/admin", "http://user:pw@127.0.0.1/"):
        answer = upload(strict, "minimal-document.pdf", callback_url=url, reprocess="true")
        assert answer.status_code == 400, url
        error = answer.get_json()["error"]
        assert error["code"] == "invalid_callback_url" and "callback_url is refused" in error["message"], url
    with app.app_context(), connection():
        assert Job.select().count() == 0


def test_the_backslash_bypass_never_reaches_the_address_urllib3_reads(app, client, receiver, run_worker):
    # A row stored before the check knew this form (or by any other path): the delivery job
    # checks the URL with the HTTP client's own parser and sends nothing, even where private
    # addresses are allowed (the receiver listens on 127.0.0.1 at the port before the "\\").
    document = upload(client, "minimal-document.pdf", callback_url=receiver.url).get_json()["documents"][0]
    port = receiver.url.split(":")[2].split("/")[0]
    bypass = f"http://127.0.0.1:{port}\\@93.184.216.34/internal/admin"
    with app.app_context(), connection():
        Job.update(callback_url=bypass).where(Job.id == document["job_id"]).execute()
    run_worker(WEBHOOK_ALLOW_PRIVATE="true")
    assert row(app, document["job_id"]).status == "finished"
    webhook = wait_for(lambda: row(app, document["job_id"]).webhook, 30, "the webhook outcome")
    assert webhook["status"] == "failed" and "backslash" in webhook["error"] and webhook["http_status"] is None
    with app.app_context(), connection():
        delivery = Job.get(Job.kind == "webhook")
    assert (delivery.status, delivery.error_code, delivery.attempts) == ("failed", "webhook_refused", 1)
    assert receiver.posts == []


def test_a_delivery_is_refused_when_its_host_resolves_to_a_private_address_by_then(app, client, run_worker):
    # Accepted while private addresses were allowed; delivered by a worker that refuses them (as
    # when a public name is re-pointed at an internal address after the upload).
    document = upload(client, "minimal-document.pdf", callback_url="http://127.0.0.1:9/hook").get_json()["documents"][0]
    run_worker(WEBHOOK_ALLOW_PRIVATE="false")
    webhook = client.get(f"/api/jobs/{document['job_id']}").get_json()["webhook"]
    assert webhook["status"] == "failed" and "not a public address" in webhook["error"]
    with app.app_context(), connection():
        delivery = Job.get(Job.kind == "webhook")
    assert (delivery.status, delivery.error_code, delivery.attempts) == ("failed", "webhook_refused", 1)
