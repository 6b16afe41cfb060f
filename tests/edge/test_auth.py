"""Owners, tokens, sign-in, CSRF, cross-origin refusal and security headers — against the real web
process (gunicorn, as the Procfile runs it) and a real worker, over HTTP.

Every rule of the README's "Security model" has a test here; ``test_every_route_with_an_id_is_covered``
fails when a route is added under ``/api`` that the cross-owner test does not try.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import requests

from tests.conftest import (ROOT, csrf_token_of, make_token, process_env, upload, wait_for)
from webapp.core.db import connection
from webapp.core.models import ApiToken, Document

OPEN_PATHS = ("/healthz", "/readyz", "/signin")


def bearer(token: str) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    return session


def signed_in(base: str, token: str) -> requests.Session:
    """A browser-like session: signs in through the form (with its CSRF token) and keeps the cookie."""
    session = requests.Session()
    page = session.get(f"{base}/signin")
    response = session.post(f"{base}/signin", data={"token": token, "csrf_token": csrf_token_of(page.text), "next": "/"},
                            allow_redirects=False)
    assert response.status_code == 302 and response.headers["Location"] == "/"
    session.csrf_token = csrf_token_of(session.get(f"{base}/").text)
    return session


def upload_text(session: requests.Session, base: str, text: str = "Alice's contract: termination needs notice.",
                **headers: str) -> requests.Response:
    return session.post(f"{base}/api/documents", files={"file": ("notes.txt", text.encode())}, headers=headers,
                        data={"reprocess": "true"})


@pytest.fixture
def alice_world(app, web, start_worker):
    """Alice's document (finished), batch, report (finished) and schedule; tokens of alice, bob, an admin."""
    start_worker()
    tokens = {"alice": make_token(app, "alice"), "bob": make_token(app, "bob"),
              "admin": make_token(app, "ops", admin=True)}
    alice = bearer(tokens["alice"])
    uploaded = upload_text(alice, web).json()["documents"][0]
    wait_for(lambda: alice.get(f"{web}/api/jobs/{uploaded['job_id']}").json()["status"] == "finished", 60,
             "alice's document")
    report = alice.post(f"{web}/api/reports", json={"type": "documents",
                                                    "params": {"document_ids": [uploaded["id"]]}}).json()
    wait_for(lambda: alice.get(f"{web}/api/reports/{report['id']}").json()["status"] == "finished", 90,
             "alice's report")
    schedule = alice.post(f"{web}/api/schedules", json={"job": "activity_report", "cron": "0 5 * * *"})
    assert schedule.status_code == 201, schedule.text
    source = alice.post(f"{web}/api/sources", json={"kind": "s3", "url": "s3://alice-contracts/2026/"})
    assert source.status_code == 201, source.text
    return {"tokens": tokens, "document": uploaded, "report": report, "schedule": schedule.json(),
            "source": source.json()}


def id_routes(world) -> list[tuple[str, str]]:
    """Every /api route that names a row, with alice's ids filled in."""
    document, report, schedule, source = world["document"], world["report"], world["schedule"], world["source"]
    return [
        ("GET", f"/api/sources/{source['id']}"),
        ("POST", f"/api/sources/{source['id']}/sync"),
        ("DELETE", f"/api/sources/{source['id']}"),
        ("GET", f"/api/batches/{document['batch_id']}"),
        ("GET", f"/api/batches/{document['batch_id']}/events"),
        ("GET", f"/api/jobs/{document['job_id']}/events"),
        ("GET", f"/api/documents/{document['id']}"),
        ("GET", f"/api/documents/{document['id']}/chunks"),
        ("DELETE", f"/api/documents/{document['id']}"),
        ("GET", f"/api/jobs/{document['job_id']}"),
        ("POST", f"/api/jobs/{document['job_id']}/cancel"),
        ("POST", f"/api/jobs/{document['job_id']}/retry"),
        ("GET", f"/api/reports/{report['id']}"),
        ("GET", f"/api/reports/{report['id']}/download?format=csv"),
        ("GET", f"/api/schedules/{schedule['id']}"),
        ("DELETE", f"/api/schedules/{schedule['id']}"),
        ("POST", f"/api/schedules/{schedule['id']}/pause"),
        ("POST", f"/api/schedules/{schedule['id']}/resume"),
    ]


def test_every_route_with_an_id_is_covered(app):
    tried = {("GET", "/api/batches/<batch_id>"), ("GET", "/api/documents/<document_id>"),
             ("GET", "/api/documents/<document_id>/chunks"),
             ("GET", "/api/batches/<batch_id>/events"), ("GET", "/api/jobs/<job_id>/events"),
             ("DELETE", "/api/documents/<document_id>"), ("GET", "/api/jobs/<job_id>"),
             ("POST", "/api/jobs/<job_id>/cancel"), ("POST", "/api/jobs/<job_id>/retry"),
             ("GET", "/api/reports/<report_id>"), ("GET", "/api/reports/<report_id>/download"),
             ("GET", "/api/schedules/<schedule_id>"), ("DELETE", "/api/schedules/<schedule_id>"),
             ("POST", "/api/schedules/<schedule_id>/pause"), ("POST", "/api/schedules/<schedule_id>/resume"),
             ("GET", "/api/sources/<source_id>"), ("POST", "/api/sources/<source_id>/sync"),
             ("DELETE", "/api/sources/<source_id>")}
    routes = {(method, rule.rule) for rule in app.url_map.iter_rules()
              if rule.rule.startswith("/api/") and rule.arguments
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert routes == tried, "a route under /api names a row: add it to id_routes and to this set"


def test_another_owner_gets_404_on_every_route_and_sees_nothing_in_lists(web, alice_world):
    bob = bearer(alice_world["tokens"]["bob"])
    for method, path in id_routes(alice_world):
        response = bob.request(method, f"{web}{path}")
        assert response.status_code == 404, (method, path, response.status_code, response.text)
        assert response.json()["error"]["code"].endswith("_not_found"), (method, path)
    for path, key in (("/api/documents", "documents"), ("/api/jobs", "jobs"), ("/api/reports", "reports"),
                      ("/api/schedules", "schedules"), ("/api/sources", "sources")):
        assert bob.get(f"{web}{path}").json()[key] == [], path
    assert bob.get(f"{web}/api/search", params={"q": "termination notice"}).json()["results"] == []
    assert bob.post(f"{web}/api/search", json={"q": "termination notice"}).json()["results"] == []
    # Searching within alice's document or batch: the same 404 as for ids that do not exist.
    for params in ({"document_id": alice_world["document"]["id"]}, {"batch_id": alice_world["document"]["batch_id"]}):
        response = bob.get(f"{web}/api/search", params={"q": "termination notice", **params})
        assert response.status_code == 404 and response.json()["error"]["code"].endswith("_not_found"), params
    # A documents report of alice's document is refused like a missing one.
    refused = bob.post(f"{web}/api/reports", json={"type": "documents",
                                                   "params": {"document_ids": [alice_world["document"]["id"]]}})
    assert refused.status_code == 400 and "No document with id" in refused.json()["error"]["message"]
    # Bob uploading the same bytes gets a document of his own, not a pointer to alice's.
    mine = bob.post(f"{web}/api/documents", files={"file": ("notes.txt",
                                                            b"Alice's contract: termination needs notice.")}).json()
    assert mine["documents"][0]["duplicate"] is False and mine["documents"][0]["id"] != alice_world["document"]["id"]
    # Alice still has everything.
    alice = bearer(alice_world["tokens"]["alice"])
    assert alice.get(f"{web}/api/documents/{alice_world['document']['id']}").status_code == 200
    assert [r["document_id"] for r in alice.get(f"{web}/api/search", params={"q": "termination"}).json()["results"]] \
        == [alice_world["document"]["id"]]


def test_an_owner_sees_own_rows_and_an_admin_sees_everything(web, alice_world):
    alice, admin = bearer(alice_world["tokens"]["alice"]), bearer(alice_world["tokens"]["admin"])
    for method, path in id_routes(alice_world):
        if method == "GET":
            assert alice.get(f"{web}{path}").status_code == 200, path
            assert admin.get(f"{web}{path}").status_code == 200, path
    kinds = {job["kind"] for job in alice.get(f"{web}/api/jobs").json()["jobs"]}
    assert kinds == {"document", "report"}
    assert {s["id"] for s in alice.get(f"{web}/api/schedules").json()["schedules"]} == {alice_world["schedule"]["id"]}
    assert alice_world["schedule"]["id"] in {s["id"] for s in admin.get(f"{web}/api/schedules").json()["schedules"]}
    assert [s["id"] for s in alice.get(f"{web}/api/sources").json()["sources"]] == [alice_world["source"]["id"]]
    assert alice_world["source"]["id"] in {s["id"] for s in admin.get(f"{web}/api/sources").json()["sources"]}
    # The report alice asked for covers her documents only (params record whose).
    assert alice.get(f"{web}/api/reports/{alice_world['report']['id']}").json()["params"]["owner"] == "alice"
    # Maintenance jobs are the system's: not for alice to schedule.
    refused = alice.post(f"{web}/api/schedules", json={"job": "retention", "cron": "0 1 * * *"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "admin_required"
    # An admin can act on alice's rows.
    assert admin.post(f"{web}/api/schedules/{alice_world['schedule']['id']}/pause").json()["paused"] is True


def test_without_a_token_every_api_route_is_401_json_and_pages_send_to_signin(app, web):
    anonymous = requests.Session()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api") or rule.endpoint in ("openapi.spec", "static"):
            continue
        path = re.sub(r"<[^>]+>", "x", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            response = anonymous.request(method, f"{web}{path}")
            assert response.status_code == 401, (method, path, response.status_code)
            assert response.json()["error"]["code"] == "authentication_required", (method, path)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    for path in ("/", "/reports", "/schedules"):
        response = anonymous.get(f"{web}{path}", allow_redirects=False)
        assert response.status_code == 302 and response.headers["Location"].startswith("/signin?next=")
    for path in OPEN_PATHS:
        assert anonymous.get(f"{web}{path}").status_code == 200, path
    assert anonymous.get(f"{web}/healthz").json() == {"status": "ok"}  # nothing else revealed
    ready = anonymous.get(f"{web}/readyz").json()
    assert set(ready) == {"status", "checks"} and set(ready["checks"]) == {"redis", "database"}


def test_a_wrong_or_revoked_token_is_401(app, web):
    token = make_token(app, "carol")
    carol = bearer(token)
    assert carol.get(f"{web}/api/documents").status_code == 200
    for header in ("Bearer dkt_not-a-real-token", "Basic Y2Fyb2w6cGFzcw==", f"Bearer {token}x"):
        response = requests.get(f"{web}/api/documents", headers={"Authorization": header})
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_token", header
    revoked = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "tokens", "revoke", token[:8]],
                             cwd=ROOT, env=process_env(app.config), capture_output=True, text=True)
    assert revoked.returncode == 0, revoked.stderr
    response = carol.get(f"{web}/api/documents")
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_token"


def test_tokens_are_stored_hashed_and_managed_by_the_cli(app, config):
    env = process_env(config)
    created = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "tokens", "create", "dana", "--admin",
                              "--name", "laptop"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert created.returncode == 0, created.stderr
    token = created.stdout.splitlines()[0]
    assert token.startswith("dkt_") and len(token) > 40 and "not shown again" in created.stderr
    with app.app_context(), connection():
        row = ApiToken.get(ApiToken.owner == "dana")
        assert row.admin and row.name == "laptop" and token not in str(row.__data__)  # only the hash
    listed = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "tokens", "list"], cwd=ROOT, env=env,
                            capture_output=True, text=True).stdout
    assert "dana" in listed and token not in listed and token[:8] in listed
    bad = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "tokens", "create", "no spaces"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "owner must be" in bad.stderr


def test_the_ui_signs_in_into_a_hardened_session_cookie(app, web):
    token = make_token(app, "erin")
    session = requests.Session()
    page = session.get(f"{web}/signin")
    refused = session.post(f"{web}/signin", data={"token": "dkt_wrong", "csrf_token": csrf_token_of(page.text)})
    assert refused.status_code == 401 and "not valid" in refused.text
    response = session.post(f"{web}/signin", data={"token": token, "csrf_token": csrf_token_of(page.text),
                                                   "next": "//evil.example/"}, allow_redirects=False)
    assert response.status_code == 302 and response.headers["Location"] == "/"  # no open redirect
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie  # SESSION_COOKIE_SECURE=false
    assert session.get(f"{web}/api/documents").status_code == 200  # the JSON API with the session
    home = session.get(f"{web}/")
    assert home.status_code == 200 and "erin" in home.text
    signout = session.post(f"{web}/signout", data={"csrf_token": csrf_token_of(home.text)}, allow_redirects=False)
    assert signout.status_code == 302
    assert session.get(f"{web}/api/documents").status_code == 401


def test_the_session_cookie_is_secure_by_default(app, config):
    from webapp import create_app

    secure = create_app({**config, "SESSION_COOKIE_SECURE": True})
    token = make_token(secure, "frank")
    client = secure.test_client()
    page = client.get("/signin").get_data(as_text=True)
    response = client.post("/signin", data={"token": token, "csrf_token": csrf_token_of(page)})
    assert "Secure" in response.headers["Set-Cookie"]


def test_state_changes_signed_in_by_cookie_need_the_csrf_token(app, web):
    session = signed_in(web, make_token(app, "gina"))
    without = upload_text(session, web)
    assert without.status_code == 403 and without.json()["error"]["code"] == "csrf_failed"
    forged = upload_text(session, web, **{"X-CSRFToken": "forged"})
    assert forged.status_code == 403 and forged.json()["error"]["code"] == "csrf_failed"
    with_token = upload_text(session, web, **{"X-CSRFToken": session.csrf_token})
    assert with_token.status_code == 202
    # Reading needs no CSRF token; a bearer token needs none either (browsers never send one on their own).
    assert session.get(f"{web}/api/documents").status_code == 200
    assert upload_text(bearer(make_token(app, "gina")), web).status_code == 202
    with app.app_context(), connection():
        assert Document.select().where(Document.owner == "gina").count() == 2


def test_a_cross_origin_post_is_refused(app, web):
    session = signed_in(web, make_token(app, "hank"))
    evil = {"Origin": "http://evil.example", "X-CSRFToken": session.csrf_token}
    response = upload_text(session, web, **evil)
    assert response.status_code == 403 and response.json()["error"]["code"] == "cross_origin_refused"
    assert bearer(make_token(app, "hank")).post(f"{web}/api/reports", json={"type": "activity"},
                                                headers={"Origin": "http://evil.example"}).status_code == 403
    signout = session.post(f"{web}/signout", headers={"Origin": "http://evil.example"}, allow_redirects=False)
    assert signout.status_code == 403
    same = upload_text(session, web, **{"Origin": web, "X-CSRFToken": session.csrf_token})
    assert same.status_code == 202
    with app.app_context(), connection():
        assert Document.select().where(Document.owner == "hank").count() == 1


def test_html_pages_carry_the_security_headers(app, web):
    session = signed_in(web, make_token(app, "ivy"))
    for path in ("/", "/reports", "/schedules", "/signin"):
        headers = session.get(f"{web}{path}").headers
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp, path
        assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff", path
    assert session.get(f"{web}/api/documents").headers["X-Content-Type-Options"] == "nosniff"


def test_the_app_refuses_to_start_with_the_default_secret_key(app, config):
    env = process_env(config)
    env.pop("SECRET_KEY")
    refused = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "tokens", "list"], cwd=ROOT, env=env,
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "SECRET_KEY is not set" in refused.stderr
    debug = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "--debug", "tokens", "list"], cwd=ROOT,
                           env=env, capture_output=True, text=True)
    assert debug.returncode == 0, debug.stderr


def test_a_pdf_password_never_rests_in_plain_text(app, client, redis, run_worker):
    password = "openpassword"
    document = upload(client, "libreoffice-writer-password.pdf", password=password).get_json()["documents"][0]
    with app.app_context(), connection():
        stored = Document.get_by_id(document["id"]).password
    assert stored and password not in stored
    for key in redis.keys("*"):  # nor in the job's arguments or anywhere else in Redis
        if redis.type(key) == b"hash":
            assert not any(password.encode() in value for value in redis.hgetall(key).values()), key
    run_worker()
    assert client.get(f"/api/jobs/{document['job_id']}").get_json()["status"] == "finished"
    with app.app_context(), connection():
        assert Document.get_by_id(document["id"]).password is None  # gone once the job is terminal


def test_a_password_encrypted_under_an_old_key_is_read_after_a_rotation(app, client, config, run_worker):
    document = upload(client, "libreoffice-writer-password.pdf", password="openpassword").get_json()["documents"][0]
    run_worker(SECRET_KEY="a-new-key", SECRET_KEY_FALLBACKS=config["SECRET_KEY"])
    assert client.get(f"/api/jobs/{document['job_id']}").get_json()["status"] == "finished"
    other = upload(client, "aes128-r4-user-password.pdf", password="asdfzxcv").get_json()["documents"][0]
    run_worker(SECRET_KEY="a-new-key")  # the old key forgotten: a clear failure, not a crash
    job = client.get(f"/api/jobs/{other['job_id']}").get_json()
    assert (job["status"], job["error_code"]) == ("failed", "password_unreadable")
    assert "SECRET_KEY" in job["error"]


def test_the_run_commands_secret_key_file_is_made_once_private_and_read_by_every_process(config, tmp_path,
                                                                                         monkeypatch):
    from webapp.core.config import ensure_instance_secret_key

    instance = tmp_path / "instance"
    monkeypatch.delenv("SECRET_KEY", raising=False)
    ensure_instance_secret_key(instance)
    key_file = instance / "secret_key"
    key = key_file.read_text().strip()
    assert len(key) >= 64 and (key_file.stat().st_mode & 0o777) == 0o600
    ensure_instance_secret_key(instance)
    assert key_file.read_text().strip() == key  # kept: sessions and stored passwords stay valid
    env = process_env(config, DOCKET_INSTANCE_PATH=str(instance))
    env.pop("SECRET_KEY")
    started = subprocess.run([sys.executable, "-c", "from webapp import create_app; "
                              "print(create_app().config['SECRET_KEY'])"], cwd=ROOT, env=env,
                             capture_output=True, text=True)
    assert started.returncode == 0 and started.stdout.strip() == key, started.stderr


def test_behind_a_trusted_proxy_the_https_origin_is_this_site(app, config):
    from webapp import create_app

    token = make_token(app, "jill")
    headers = {"Origin": "https://docket.example", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "docket.example",
               "Authorization": f"Bearer {token}"}
    direct = create_app(config).test_client()
    assert direct.post("/api/reports", json={"type": "activity"}, headers=headers).status_code == 403
    behind = create_app({**config, "TRUSTED_PROXY_COUNT": 1}).test_client()
    answer = behind.post("/api/reports", json={"type": "activity"}, headers=headers)
    assert answer.status_code != 403, answer.get_json()  # 202, or 503 without a worker's Redis: not refused
    spoofed = {**headers, "X-Forwarded-Host": "evil.example"}
    assert behind.post("/api/reports", json={"type": "activity"}, headers=spoofed).status_code == 403
