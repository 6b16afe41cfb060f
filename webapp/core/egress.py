"""Requests to URLs that users give (webhook ``callback_url``, URL fetches, web and sitemap sources):
SSRF-safe by construction.

A URL from a user must never make the server call its own network (loopback, the private
networks, the cloud metadata service at 169.254.169.254). A check that parses the URL with one
parser while the HTTP client parses it with another can be walked around
(``http://127.0.0.1:5099\\@93.184.216.34/`` is a public host to :func:`urllib.parse.urlsplit` and
127.0.0.1 to urllib3), and a check that resolves the name while the client resolves it again can
be walked around by a DNS server that answers differently the second time (DNS rebinding). So
this module does all of it in one place, in this order:

1. **Parse** with urllib3's parser (:func:`urllib3.util.parse_url`, the parser the connection is
   made from) and refuse what has no business in a callback: a scheme other than ``http``/
   ``https``, no host, userinfo (``user:pass@``), a backslash anywhere, an IPv6 zone id, a URL
   over :data:`MAX_URL_LENGTH` characters.
2. **Resolve once** (:func:`socket.getaddrinfo`; an IP literal, in any form the C library
   accepts, resolves to itself).
3. **Check every address** the name resolves to, and every IPv4 address embedded in an IPv6 one
   (IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible ``::a.b.c.d``, 6to4 ``2002::/16``, NAT64
   ``64:ff9b::/96``): each must be public (:attr:`ipaddress.IPv4Address.is_global`) and not
   multicast. One address that is not refuses the URL, so a name cannot hide a private address
   behind a public one.
4. **Connect to a checked address** (urllib3's connection pool opened on the IP itself, with the
   URL's host as ``Host`` header, TLS SNI and certificate name): no second lookup happens.
   :func:`request` follows no redirect; :func:`fetch` follows up to :data:`MAX_REDIRECTS`, each
   ``Location`` going through steps 1–4 again.

What it does not guarantee: anything about the receiver once the connection is made (a public
host may forward what it gets), and nothing about networks that public addresses reach from
this machine but not from elsewhere; a deployment that needs that closes it at the network
(an egress firewall or proxy). Environment proxies (``HTTP(S)_PROXY``) are not used.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import urljoin

import certifi
import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error, LocationParseError
from urllib3.util import Timeout, parse_url

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 2000
SCHEMES = ("http", "https")
_DEFAULT_PORTS = {"http": 80, "https": 443}
# RFC 6052 well-known NAT64 prefix: the last 32 bits are the IPv4 address a NAT64 gateway reaches.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# RFC 8215 local-use NAT64 prefixes: "not globally reachable"; the embedding depends on the
# operator's prefix length, so the whole block is refused.
_NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")
# RFC 4291 2.5.5.1 IPv4-compatible addresses (deprecated, still routed by some stacks): ::a.b.c.d.
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


class DestinationRefused(ValueError):
    """A URL Docket does not send a request to; the message is a sentence fragment saying why
    (e.g. ``"its host 'localhost' resolves to 127.0.0.1, which is not a public address"``).

    ``transient`` is true when asking again later may succeed (the resolver did not answer).
    """

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class RequestFailed(Exception):
    """The request was sent to a checked address and got no HTTP answer: connection refused or
    reset, a timeout, a TLS failure. The message names the cause; ``timed_out`` is true when the
    connection or an answer did not come within its time limit."""

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


def _timed_out(exc: Exception | None) -> bool:
    """urllib3 ran out of time (connect or read); not a refused connection, which urllib3 2 also
    derives from ``ConnectTimeoutError``."""
    return (isinstance(exc, urllib3.exceptions.TimeoutError)
            and not isinstance(exc, urllib3.exceptions.NewConnectionError))


@dataclass(frozen=True)
class Destination:
    """A URL that passed every check, and the addresses its request may go to.

    Attributes:
        url: the URL as given (stripped of surrounding whitespace).
        scheme: ``"http"`` or ``"https"``.
        host: the host as urllib3 parsed it (IDNA-encoded; an IPv6 literal without brackets).
        port: the port the request goes to (80/443 when the URL gives none).
        target: the request target: path and query (``"/"`` when the URL has no path).
        addresses: every address the host resolved to, each checked, in the resolver's order.
    """

    url: str
    scheme: str
    host: str
    port: int
    target: str
    addresses: tuple[IPAddress, ...]

    @property
    def host_header(self) -> str:
        """The ``Host`` header: the host, with the port when it is not the scheme's default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def parse(url: str):
    """Parse ``url`` with urllib3's parser and refuse what a callback URL must not carry.

    Returns:
        urllib3's :class:`~urllib3.util.Url` (scheme lower-cased, host IDNA-encoded).

    Raises:
        DestinationRefused: not an absolute ``http(s)`` URL, longer than :data:`MAX_URL_LENGTH`
            characters, with userinfo, a backslash, an IPv6 zone id or a character no URL holds.
    """
    if len(url) > MAX_URL_LENGTH:
        raise DestinationRefused(f"it is longer than {MAX_URL_LENGTH} characters")
    if "\\" in url:
        # WHATWG parsers read "\" as "/", RFC 3986 parsers as data: two hosts for one URL.
        raise DestinationRefused("it contains a backslash, which URL parsers disagree about")
    try:
        parts = parse_url(url)
    except LocationParseError as exc:
        raise DestinationRefused(f"it is not a valid URL ({exc})") from None
    if parts.scheme not in SCHEMES or not parts.host:
        raise DestinationRefused("it must be an absolute http:// or https:// URL")
    authority = re.split(r"[/?#]", url.partition("://")[2], maxsplit=1)[0]
    if parts.auth is not None or "@" in authority:  # urllib3 drops an empty one ("http://@host/")
        raise DestinationRefused("it contains a user name or password (user:pass@host), which is not allowed")
    if "%" in parts.host:
        raise DestinationRefused("it names an IPv6 zone (%), which is not allowed")
    return parts


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries, if any: IPv4-mapped (``::ffff:a.b.c.d``),
    IPv4-compatible (``::a.b.c.d``), 6to4 (``2002:aabb:ccdd::``) or NAT64 (``64:ff9b::a.b.c.d``);
    ``None`` for an IPv4 address or an IPv6 address that embeds none."""
    if address.version == 4:
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):  # not :: or ::1
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refusal(address: IPAddress) -> str | None:
    """Why a request must not go to ``address``, or ``None`` when it may (a public unicast
    address whose embedded IPv4 address, if any, is public too).

    Returns:
        e.g. ``"127.0.0.1, which is not a public address"``, or
        ``"2002:7f00:1::, which carries 127.0.0.1, not a public address"``.
    """
    inner = embedded_ipv4(address)
    if inner is not None and (not inner.is_global or inner.is_multicast):
        return f"{address}, which carries {inner}, not a public address"
    if not address.is_global or address.is_multicast or address in _NAT64_LOCAL_USE:
        return f"{address}, which is not a public address"
    return None


def always_refused(address: IPAddress) -> bool:
    """An address refused even where private networks are allowed: link-local (169.254.0.0/16,
    fe80::/10 — where cloud metadata services answer, e.g. 169.254.169.254, and no intranet
    document lives) and multicast, also when embedded in an IPv6 address."""
    return any(candidate is not None and (candidate.is_link_local or candidate.is_multicast)
               for candidate in (address, embedded_ipv4(address)))


def resolve(url: str, allow_private: bool = False) -> Destination:
    """Parse ``url``, resolve its host once and check every address (module docstring).

    Args:
        url: the URL a user gave.
        allow_private: accept addresses that are not public (an operator's setting for
            receivers on the local network, ``WEBHOOK_ALLOW_PRIVATE`` and
            ``FETCH_ALLOW_PRIVATE_NETWORKS``) except link-local and multicast ones
            (:func:`always_refused`); parsing and resolving stay as strict, and the request
            still goes to a resolved address.

    Returns:
        A :class:`Destination` to pass to :func:`request`.

    Raises:
        DestinationRefused: the URL is refused by :func:`parse`; its host does not resolve
            (``transient`` when the resolver failed temporarily); or one of its addresses is
            not public (:func:`refusal`).
    """
    url = url.strip()
    parts = parse(url)
    host = parts.host.strip("[]")
    port = parts.port or _DEFAULT_PORTS[parts.scheme]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise DestinationRefused(f"its host {host!r} could not be resolved ({exc.strerror})",
                                 transient=exc.errno == socket.EAI_AGAIN) from None
    except (UnicodeError, ValueError) as exc:
        raise DestinationRefused(f"its host {host!r} could not be resolved ({exc})") from None
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        if address in addresses:
            continue
        reason = refusal(address)
        if reason and (not allow_private or always_refused(address)):
            raise DestinationRefused(f"its host {host!r} resolves to {reason}")
        addresses.append(address)
    if not addresses:
        raise DestinationRefused(f"its host {host!r} could not be resolved (no address)")
    return Destination(url=url, scheme=parts.scheme, host=host, port=port, target=parts.request_uri,
                       addresses=tuple(addresses))


def request(destination: Destination, method: str, body: bytes | None = None,
            headers: Mapping[str, str] | None = None, timeout: float | Timeout = 10.0,
            preload_content: bool = True, ca_certs: str | None = None) -> urllib3.BaseHTTPResponse:
    """Send one request to ``destination``'s checked addresses, in order, until one connects.

    Args:
        destination: from :func:`resolve` (never a second lookup: the connection is opened to
            one of ``destination.addresses``).
        method: ``"POST"``, ``"GET"``, …
        body: the request body, or ``None``.
        headers: extra headers; ``Host`` is always the URL's host.
        timeout: seconds for the connection and again for each read, or urllib3's
            :class:`~urllib3.util.Timeout` with the two apart.
        preload_content: ``False`` to stream the body (the caller reads and closes it).
        ca_certs: path of the CA bundle that https certificates must chain to (default:
            certifi's, the Mozilla trust store that ``requests`` uses).

    Returns:
        urllib3's response, whatever its status; redirects are not followed.

    Raises:
        RequestFailed: no address accepted the connection, the answer did not come within
            ``timeout``, the TLS handshake or certificate check failed, or the connection broke.
    """
    sent_headers = {**(headers or {}), "Host": destination.host_header}
    error: Exception | None = None
    for address in destination.addresses:
        pool = _pool(destination, str(address), timeout, ca_certs)
        try:
            return pool.urlopen(method, destination.target, body=body, headers=sent_headers, redirect=False,
                                retries=False, assert_same_host=False, preload_content=preload_content,
                                release_conn=preload_content)
        except urllib3.exceptions.NewConnectionError as exc:
            error = exc  # refused or unreachable: the next checked address, if any
        except Urllib3Error as exc:
            raise RequestFailed(_describe(exc), timed_out=_timed_out(exc)) from exc
        finally:
            if preload_content:
                pool.close()
    raise RequestFailed(_describe(error)) from error


def _pool(destination: Destination, address: str, timeout: float | Timeout,
          ca_certs: str | None) -> urllib3.HTTPConnectionPool:
    """A one-connection pool opened on ``address``, speaking to ``destination.host``."""
    limits = timeout if isinstance(timeout, Timeout) else Timeout(connect=timeout, read=timeout)
    if destination.scheme == "https":
        return urllib3.HTTPSConnectionPool(address, destination.port, timeout=limits, maxsize=1, retries=False,
                                           server_hostname=destination.host, assert_hostname=destination.host,
                                           cert_reqs="CERT_REQUIRED", ca_certs=ca_certs or certifi.where())
    return urllib3.HTTPConnectionPool(address, destination.port, timeout=limits, maxsize=1, retries=False)


def _describe(exc: Exception | None) -> str:
    """A short cause for :class:`RequestFailed`: the exception's class and, for a failed
    connection, the operating system's reason."""
    if exc is None:
        return "no address to connect to"
    reason = getattr(exc, "reason", None) or exc.__cause__ or exc.__context__
    name = type(exc).__name__
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return f"{name}: connection failed"
    if isinstance(exc, urllib3.exceptions.TimeoutError):
        return f"{name}: no answer in time"
    return f"{name}: {reason}" if reason else name


# --- fetching a URL's content (URL fetches, web and sitemap sources) ------------------------------

MAX_REDIRECTS = 5  # redirects a fetch follows, each checked like the first URL
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Answers worth asking again for (RFC 9110: 408 Request Timeout, 429 Too Many Requests, 5xx).
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
READ_BLOCK = 64 * 1024  # bytes decoded per read of a fetched body


class FetchTooLarge(Exception):
    """The answer's body is larger than the fetch's ``max_bytes`` (declared or counted).

    Attributes:
        limit: the limit in bytes.
        declared: the ``Content-Length`` when it announced too much, else ``None``.
    """

    def __init__(self, limit: int, declared: int | None = None) -> None:
        super().__init__(f"it is larger than the {limit:,}-byte limit" +
                         (f" (Content-Length: {declared:,})" if declared is not None else ""))
        self.limit, self.declared = limit, declared


class FetchStatusError(Exception):
    """The server answered with an HTTP status that is not a success (nor a redirect followed).

    Attributes:
        status: the HTTP status code.
        transient: the status says asking later may succeed (:data:`TRANSIENT_STATUSES`).
    """

    def __init__(self, status: int, reason: str, url: str) -> None:
        super().__init__(f"the server answered HTTP {status} {reason}".rstrip() + f" for {url}")
        self.status, self.transient = status, status in TRANSIENT_STATUSES


class TooManyRedirects(Exception):
    """More than :data:`MAX_REDIRECTS` redirects, or a redirect without a usable ``Location``."""


@dataclass(frozen=True)
class Fetched:
    """One fetched answer.

    Attributes:
        url: the URL whose answer this is (the last one after redirects).
        status: 200 (or another 2xx), or 304 when a conditional fetch found the version unchanged
            (``body`` is then empty).
        headers: the answer's headers, names lower-cased.
        body: the body's bytes, decoded from any ``Content-Encoding`` (at most ``max_bytes``).
        redirects: the URLs redirected through, in order (empty when none).
    """

    url: str
    status: int
    headers: Mapping[str, str]
    body: bytes
    redirects: tuple[str, ...] = ()

    @property
    def etag(self) -> str | None:
        """The ``ETag`` header, verbatim (quotes and ``W/`` kept), or ``None``."""
        return self.headers.get("etag") or None

    @property
    def last_modified(self) -> str | None:
        """The ``Last-Modified`` header, verbatim (an HTTP date), or ``None``."""
        return self.headers.get("last-modified") or None

    @property
    def not_modified(self) -> bool:
        """A conditional fetch's answer: the server's version is the one asked about (HTTP 304)."""
        return self.status == 304


def fetch(url: str, *, max_bytes: int, allow_private: bool = False, connect_timeout: float = 10.0,
          read_timeout: float = 30.0, headers: Mapping[str, str] | None = None,
          max_redirects: int = MAX_REDIRECTS, ca_certs: str | None = None) -> Fetched:
    """GET ``url`` safely: every URL on the way (the first and each redirect's ``Location``) is
    parsed, resolved once and checked by :func:`resolve`, and its request goes to a checked address
    (:func:`request`); the body is read in blocks and refused past ``max_bytes``.

    Args:
        url: the URL a user gave.
        max_bytes: most bytes of the (decoded) body; more is :class:`FetchTooLarge`, with nothing
            more read. A ``Content-Length`` above it is refused before the body is read.
        allow_private: accept addresses that are not public (``FETCH_ALLOW_PRIVATE_NETWORKS``).
        connect_timeout: seconds to open each connection.
        read_timeout: seconds each read may wait for data (not the whole transfer).
        headers: extra request headers, e.g. ``If-None-Match`` / ``If-Modified-Since`` for a
            conditional fetch (a 304 answer is returned, not raised).
        max_redirects: redirects followed (``301, 302, 303, 307, 308``); more is an error.
        ca_certs: the CA bundle for https (default: certifi's).

    Returns:
        A :class:`Fetched` for the first answer that is not a redirect: a 2xx or 304.

    Raises:
        DestinationRefused: a URL on the way is refused (``transient`` when the resolver failed).
        RequestFailed: no connection, no answer within the timeouts, a TLS failure, a broken transfer.
        FetchStatusError: any other status (4xx, 5xx; ``transient`` for 408, 425, 429 and 5xx ones
            that say "later").
        TooManyRedirects: more than ``max_redirects`` redirects, or one without a ``Location``.
        FetchTooLarge: the body is larger than ``max_bytes``.
    """
    sent = {"Accept": "*/*", "Accept-Encoding": "gzip, deflate", **(headers or {})}
    timeout = Timeout(connect=connect_timeout, read=read_timeout)
    redirects: list[str] = []
    current = url.strip()
    while True:
        destination = resolve(current, allow_private)
        response = request(destination, "GET", headers=sent, timeout=timeout, preload_content=False,
                           ca_certs=ca_certs)
        try:
            if response.status in REDIRECT_STATUSES:
                location = response.headers.get("location")
                if not location:
                    raise TooManyRedirects(f"{current} answered HTTP {response.status} without a Location")
                if len(redirects) >= max_redirects:
                    raise TooManyRedirects(f"more than {max_redirects} redirects (the last one to {location})")
                redirects.append(current)
                current = urljoin(current, location)
                continue
            if response.status == 304 or 200 <= response.status < 300:
                answer_headers = {name.lower(): value for name, value in response.headers.items()}
                body = b"" if response.status == 304 else _read_body(response, max_bytes)
                return Fetched(url=current, status=response.status, headers=answer_headers, body=body,
                               redirects=tuple(redirects))
            raise FetchStatusError(response.status, response.reason or "", current)
        finally:
            response.close()  # closes its connection too (its one-connection pool is then unused)
            response.release_conn()


def _read_body(response: urllib3.BaseHTTPResponse, max_bytes: int) -> bytes:
    """The decoded body, read in :data:`READ_BLOCK` pieces and refused past ``max_bytes``."""
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes \
            and not response.headers.get("content-encoding"):
        raise FetchTooLarge(max_bytes, int(declared))
    parts: list[bytes] = []
    size = 0
    try:
        while True:
            # urllib3 2: read(amt) returns at most amt *decoded* bytes, so a compressed bomb is
            # counted as it unpacks, never unpacked whole first.
            block = response.read(READ_BLOCK, decode_content=True)
            if not block:
                break
            size += len(block)
            if size > max_bytes:
                raise FetchTooLarge(max_bytes)
            parts.append(block)
    except Urllib3Error as exc:
        raise RequestFailed(_describe(exc), timed_out=_timed_out(exc)) from exc
    return b"".join(parts)
