"""webapp.core.egress: a URL a user gives is parsed by the parser the connection is made from, resolved
once, every address checked (IPv4 embedded in IPv6 included), and the request goes to an address
that was checked. Real sockets to local servers; the resolver is stubbed only for test names."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from dataclasses import dataclass, field

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from webapp.core import egress

PUBLIC = "93.184.216.34"  # a public address; never connected to by these tests


@dataclass
class Receiver:
    """A local HTTP server on 127.0.0.1 that records each request's Host header and path."""

    port: int = 0
    seen: list[tuple[str, str, str]] = field(default_factory=list)

    def wsgi_app(self, environ, start_response):
        request = Request(environ)
        self.seen.append((request.method, request.headers.get("Host", ""), request.full_path.rstrip("?")))
        return Response("ok", status=200)(environ, start_response)


def serve(receiver: Receiver, ssl_context=None):
    server = make_server("127.0.0.1", 0, receiver.wsgi_app, threaded=True, ssl_context=ssl_context)
    receiver.port = server.server_port
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture
def receiver():
    state = Receiver()
    server, thread = serve(state)
    yield state
    server.shutdown()
    thread.join(10)
    server.server_close()


@pytest.fixture
def dns(monkeypatch):
    """A resolver stub for names under ``.example.test``: ``dns["name"] = [answer, answer, …]``
    gives each lookup the next answer (the last one repeats); ``dns.lookups`` counts them. Every
    other name goes to the real resolver."""
    real = socket.getaddrinfo

    class Stub(dict):
        lookups: dict[str, int] = {}

    stub = Stub()
    stub.lookups = {}

    def getaddrinfo(host, port, *args, **kwargs):
        if isinstance(host, str) and host.endswith(".example.test"):
            answers = stub.get(host)
            if answers is None:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            count = stub.lookups.get(host, 0)
            stub.lookups[host] = count + 1
            answer = answers[min(count, len(answers) - 1)]
            return [(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP,
                     "", (address, port or 0)) for address in answer]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return stub


def refused(url: str, allow_private: bool = False) -> str:
    with pytest.raises(egress.DestinationRefused) as caught:
        egress.resolve(url, allow_private)
    return str(caught.value)


def test_the_backslash_bypass_is_refused_before_any_connection(receiver):
    # urlsplit takes the host after "@" (public), urllib3 ends it at the backslash (loopback).
    url = f"http://127.0.0.1:{receiver.port}\\@{PUBLIC}/internal/admin"
    for allow_private in (False, True):
        assert "backslash" in refused(url, allow_private)
        assert "backslash" in refused(f"http://127.0.0.1:{receiver.port}/a\\b", allow_private)
    assert receiver.seen == []


@pytest.mark.parametrize("url", ["http://user:pass@example.com/", "http://user@example.com/", "http://@example.com/",
                                 f"http://{PUBLIC}@127.0.0.1/", "https://a:b@127.0.0.1:8443/x"])
def test_userinfo_is_refused_whatever_the_host(url):
    for allow_private in (False, True):
        assert "user name or password" in refused(url, allow_private)


@pytest.mark.parametrize("url", ["ftp://example.com/", "file:///etc/passwd", "//example.com/", "http:///path",
                                 "gopher://127.0.0.1:6379/_FLUSHALL", "http://[fe80::1%25eth0]/",
                                 "http://" + "a" * 2000 + ".com/", "http://exa mple.com/"])
def test_urls_that_are_not_plain_http_are_refused(url):
    assert refused(url, allow_private=True)


@pytest.mark.parametrize("host, inner", [
    ("[::1]", None), ("[::]", None), ("[fd00::1]", None), ("[fe80::1]", None), ("[ff02::1]", None),
    ("[::127.0.0.1]", "127.0.0.1"),            # IPv4-compatible
    ("[::a00:1]", "10.0.0.1"),
    ("[::ffff:127.0.0.1]", "127.0.0.1"),       # IPv4-mapped
    ("[::ffff:a9fe:a9fe]", "169.254.169.254"),
    ("[2002:7f00:1::]", "127.0.0.1"),          # 6to4
    ("[2002:a9fe:a9fe::1]", "169.254.169.254"),
    ("[2002:c0a8:1::]", "192.168.0.1"),
    ("[64:ff9b::a9fe:a9fe]", "169.254.169.254"),  # NAT64, well-known prefix
    ("[64:ff9b::7f00:1]", "127.0.0.1"),
    ("[64:ff9b::a00:1]", "10.0.0.1"),
    ("[64:ff9b:1::a9fe:a9fe]", None),           # NAT64 local-use prefix: never public
    ("[2001:0:4136:e378:8000:63bf:3fff:fdd2]", None),  # Teredo
])
def test_every_ipv6_form_of_a_private_address_is_refused(host, inner):
    message = refused(f"http://{host}:8080/hook")
    assert "not a public address" in message
    if inner:
        assert f"carries {inner}" in message


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1", "2130706433", "0x7f.0.0.1", "0177.0.0.1", "0.0.0.0", "10.1.2.3",
                                  "100.64.0.1", "169.254.169.254", "172.16.0.1", "192.168.1.1", "224.0.0.1",
                                  "255.255.255.255", "localhost"])
def test_every_ipv4_spelling_of_a_private_address_is_refused(host):
    assert "not a public address" in refused(f"http://{host}/hook")


def test_embedded_addresses_are_unwrapped_and_public_ones_pass():
    ip = ipaddress.ip_address
    assert egress.embedded_ipv4(ip("2002:5db8:d822::")) == ip(PUBLIC)
    assert egress.embedded_ipv4(ip("64:ff9b::5db8:d822")) == ip(PUBLIC)
    assert egress.embedded_ipv4(ip("::ffff:5db8:d822")) == ip(PUBLIC)
    assert egress.embedded_ipv4(ip("2606:4700::1111")) is None
    assert egress.refusal(ip("2002:5db8:d822::")) is None
    assert egress.refusal(ip("64:ff9b::5db8:d822")) is None
    assert egress.refusal(ip(PUBLIC)) is None and egress.refusal(ip("2606:4700::1111")) is None


def test_a_name_that_resolves_to_loopback_is_refused(dns):
    dns["hooks.example.test"] = [["127.0.0.1"]]
    assert "resolves to 127.0.0.1, which is not a public address" in refused("https://hooks.example.test/x")
    # Every address counts: a public one does not hide a private one beside it.
    dns["mixed.example.test"] = [[PUBLIC, "10.0.0.7"]]
    assert "10.0.0.7" in refused("http://mixed.example.test/")
    dns["mapped.example.test"] = [[PUBLIC, "::ffff:169.254.169.254"]]
    assert "169.254.169.254" in refused("http://mapped.example.test/")
    assert "could not be resolved" in refused("http://missing.example.test/")


def test_a_dns_answer_that_changes_after_the_check_is_never_used(dns, receiver):
    # First answer: public (checked, accepted); any later answer: loopback. One lookup only.
    dns["rebind.example.test"] = [[PUBLIC], ["127.0.0.1"]]
    destination = egress.resolve("http://rebind.example.test/hook")
    assert destination.addresses == (ipaddress.ip_address(PUBLIC),)
    assert dns.lookups["rebind.example.test"] == 1
    # The connection goes to the checked answer, not to a second lookup's: here the checked
    # answer is the local receiver, a second lookup would give 127.0.0.2, where nothing listens.
    dns["switch.example.test"] = [["127.0.0.1"], ["127.0.0.2"]]
    destination = egress.resolve(f"http://switch.example.test:{receiver.port}/hook?x=1", allow_private=True)
    response = egress.request(destination, "POST", body=b"{}", headers={"Content-Type": "application/json"})
    assert response.status == 200 and response.data == b"ok"
    assert dns.lookups["switch.example.test"] == 1
    # The URL's host stays the Host header; the path and query are kept.
    assert receiver.seen == [("POST", f"switch.example.test:{receiver.port}", "/hook?x=1")]


def test_every_checked_address_is_tried_in_order(dns, receiver):
    from webapp.local.embedded_redis import free_port

    closed = free_port()
    dns["two.example.test"] = [["127.0.0.2", "127.0.0.1"]]
    destination = egress.resolve(f"http://two.example.test:{receiver.port}/", allow_private=True)
    assert egress.request(destination, "GET").status == 200
    with pytest.raises(egress.RequestFailed, match="connection failed"):
        egress.request(egress.resolve(f"http://127.0.0.1:{closed}/", allow_private=True), "GET", timeout=2)


def test_https_verifies_the_urls_host_while_connecting_to_the_checked_address(dns, tmp_path):
    ca_pem, context = _tls_server_context(tmp_path, "hooks.example.test")
    state = Receiver()
    server, thread = serve(state, ssl_context=context)
    try:
        dns["hooks.example.test"] = [["127.0.0.1"]]
        dns["other.example.test"] = [["127.0.0.1"]]
        destination = egress.resolve(f"https://hooks.example.test:{state.port}/in", allow_private=True)
        assert egress.request(destination, "POST", body=b"x", ca_certs=ca_pem).status == 200
        assert state.seen == [("POST", f"hooks.example.test:{state.port}", "/in")]
        # The same server under another name: the certificate does not match it.
        other = egress.resolve(f"https://other.example.test:{state.port}/in", allow_private=True)
        with pytest.raises(egress.RequestFailed, match="SSLError"):
            egress.request(other, "POST", body=b"x", ca_certs=ca_pem)
        # Without the test CA, the system's trust store refuses the certificate.
        with pytest.raises(egress.RequestFailed, match="SSLError"):
            egress.request(destination, "POST", body=b"x")
        assert len(state.seen) == 1
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def _tls_server_context(tmp_path, hostname: str):
    """A CA (its PEM file's path) and a server SSL context with a certificate for ``hostname``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Docket test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_pem = tmp_path / "ca.pem"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert = tmp_path / "server.pem"
    cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert)
    return str(ca_pem), context
