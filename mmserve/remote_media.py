"""Fetching remote media for /v1 image_url parts: host allow-list, public addresses only,
no redirects, capped size and time."""

from __future__ import annotations

import http.client
import ipaddress
import socket
import time
import urllib.error
import urllib.parse
import urllib.request

from .errors import BadRequest

REMOTE_TIMEOUT_SECONDS = 10.0


class _Refused(OSError):
    """A remote host resolved to an address the server never connects to."""


def is_public_address(address: str) -> bool:
    """False for loopback, private, link-local, multicast, reserved and unspecified addresses."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def _guarded_connection(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None):
    """socket.create_connection that checks every address the host resolves to, and connects
    to a checked one (so a second DNS answer cannot swap in a private address)."""
    host, port = address
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos or not all(is_public_address(info[4][0]) for info in infos):
        raise _Refused(f"host {host} resolves to a non-public address")
    error: OSError | None = None
    for family, kind, proto, _name, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(None if timeout is socket._GLOBAL_DEFAULT_TIMEOUT else timeout)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error or OSError("no address to connect to")


class _HTTPConnection(http.client.HTTPConnection):
    """HTTP connection through the address check."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = _guarded_connection  # http.client sets it per instance


class _HTTPSConnection(http.client.HTTPSConnection):
    """HTTPS connection through the address check (SNI and certificate use the host name)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = _guarded_connection


class _HTTPHandler(urllib.request.HTTPHandler):
    """urllib handler opening _HTTPConnection."""

    def http_open(self, req):
        return self.do_open(_HTTPConnection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    """urllib handler opening _HTTPSConnection."""

    def https_open(self, req):
        return self.do_open(_HTTPSConnection, req)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are not followed."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # a redirect could leave the allow-list: it is an error instead


def _read_capped(response, limit: int, field: str) -> bytes:
    """At most `limit` bytes, within REMOTE_TIMEOUT_SECONDS in all (a slow drip is cut off)."""
    deadline = time.monotonic() + REMOTE_TIMEOUT_SECONDS
    chunks, size = [], 0
    while size < limit:
        if time.monotonic() > deadline:
            raise BadRequest(f"{field}: fetching the media URL took too long", param=field)
        chunk = response.read(min(65536, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def fetch_remote(url: str, field: str, allowed_hosts, max_bytes: int) -> bytes:
    """The bytes at an http(s) URL whose host is allowed; never from a non-public address,
    never through a proxy or a redirect; at most `max_bytes`, with a short timeout."""
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").lower()
    allowed = {h.lower() for h in allowed_hosts}
    if parts.scheme.lower() not in ("http", "https") or not host or host not in allowed:
        raise BadRequest(
            f"{field}: remote media URLs are not accepted from this host; "
            "send the media inline as a base64 data URI",
            param=field,
            code="remote_media_refused",
        )
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), _HTTPHandler(), _HTTPSHandler(), _NoRedirect()
    )
    request = urllib.request.Request(url, headers={"User-Agent": "mmserve"})
    try:
        with opener.open(request, timeout=REMOTE_TIMEOUT_SECONDS) as response:
            data = _read_capped(response, max_bytes + 1, field)
    except urllib.error.HTTPError as exc:
        raise BadRequest(
            f"{field}: fetching the media URL failed with HTTP {exc.code}", param=field
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        if isinstance(getattr(exc, "reason", None), _Refused) or isinstance(exc, _Refused):
            raise BadRequest(
                f"{field}: the media URL points to a private or loopback address",
                param=field,
                code="remote_media_refused",
            ) from None
        raise BadRequest(f"{field}: the media URL could not be fetched", param=field) from None
    if len(data) > max_bytes:
        raise BadRequest(
            f"{field}: the remote media is larger than {max_bytes} bytes",
            param=field,
            code="limit_exceeded",
        )
    return data
