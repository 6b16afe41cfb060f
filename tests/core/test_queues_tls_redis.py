"""A managed ``rediss://`` Redis with a self-signed certificate (as Heroku's): the web process and a
real worker use it with ``REDIS_TLS_VERIFY=false``, and refuse it with verification on. The test
starts its own TLS-enabled ``redis-server`` (Debian's is built with TLS) on a free port."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess

import pytest
from redis import Redis

from tests.conftest import api_client, post_text, row, wait_for
from webapp import create_app
from webapp.local.embedded_redis import free_port


def self_signed(folder) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM files in ``folder``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "docket-test-redis")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "redis.crt", folder / "redis.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


@pytest.fixture
def tls_redis_url(tmp_path):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server on PATH (the TLS test needs one built with TLS)")
    cert, key = self_signed(tmp_path)
    port = free_port()
    process = subprocess.Popen([binary, "--port", "0", "--tls-port", str(port), "--tls-cert-file", cert,
                                "--tls-key-file", key, "--tls-ca-cert-file", cert, "--tls-auth-clients", "no",
                                "--save", "", "--appendonly", "no", "--bind", "127.0.0.1", "--dir", str(tmp_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"rediss://127.0.0.1:{port}/0"

    def answers():
        if process.poll() is not None:
            pytest.skip(f"redis-server refused TLS options: {process.stdout.read().decode()[-500:]}")
        try:
            return Redis.from_url(url, ssl_cert_reqs="none", socket_connect_timeout=1).ping()
        except Exception:
            return False

    wait_for(answers, 20, "the TLS redis-server")
    yield url
    process.terminate()
    process.wait(10)


def test_a_self_signed_rediss_url_works_with_verification_off_and_is_refused_with_it_on(
        config, tls_redis_url, run_worker):
    app = create_app({**config, "REDIS_URL": tls_redis_url, "REDIS_TLS_VERIFY": False})
    with app.app_context():
        from webapp.core.db import create_tables

        create_tables()
    client = api_client(app)
    assert client.get("/readyz").status_code == 200
    document = post_text(client, b"Notes sent through a TLS Redis.", name="tls.txt").get_json()["documents"][0]
    run_worker(REDIS_URL=tls_redis_url, REDIS_TLS_VERIFY="false")
    assert row(app, document["job_id"]).status == "finished"
    assert client.get("/api/queues").get_json()["queues"][0]["name"]  # the dashboard's figures too

    strict = create_app({**config, "REDIS_URL": tls_redis_url, "REDIS_TLS_VERIFY": True})
    ready = strict.test_client().get("/readyz")
    assert ready.status_code == 503 and "certificate" in ready.get_json()["checks"]["redis"].lower()
