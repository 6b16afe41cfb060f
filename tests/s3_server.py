"""moto's S3 server for tests (``python -m moto.server``): a real S3 API over TCP on a free local
port, reachable by the test process, the web process and real worker processes alike.

Fixtures (import them into a test module to use them): ``s3_endpoint`` (the server, one per
module), ``s3_env`` (boto3's ``AWS_*`` variables for it, set in this process too), ``bucket`` (a
new, empty bucket per test). Used by ``tests/core/test_storage_s3.py`` (S3 storage) and
``tests/jobs/test_sync_job.py`` (S3 sources).
"""

from __future__ import annotations

import subprocess
import sys
import uuid

import boto3
import pytest
import requests

from tests.conftest import AWS_ENV, wait_for
from webapp.local.embedded_redis import free_port

# Not secrets: moto accepts any credentials. They prove the settings travel through boto3's own variables.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing-key-id", "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
               "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory) -> str:
    """moto's S3 server (``python -m moto.server``) on a free local port; stopped after the module."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert process.poll() is None, log_path.read_text()[-3000:]
        try:
            return requests.get(f"{endpoint}/moto-api/", timeout=2).status_code < 500
        except requests.RequestException:
            return False

    try:
        wait_for(up, 60, "moto's S3 server to answer")
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch) -> dict[str, str]:
    """boto3's variables for the local server, set in this process (the app under test) too."""
    env = {"AWS_ENDPOINT_URL": s3_endpoint, **CREDENTIALS}
    for name in AWS_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def bucket(s3_env) -> str:
    """A new, empty bucket for the test."""
    name = f"docket-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name
