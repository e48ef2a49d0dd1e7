"""What a proxy does to headers: drop hop-by-hop fields, add X-Forwarded-* and Via.

Shared by the load balancer and the CDN PoPs (both are reverse proxies). RFC 9110 section 7.6:
``Connection``, ``Keep-Alive``, ``Proxy-*``, ``TE``, ``Trailer``, ``Transfer-Encoding``,
``Upgrade`` and every field named in ``Connection`` apply to one hop and are never forwarded;
``Host`` and ``Content-Length`` are left for aiohttp to set for the next hop. Hand-written (a
dozen lines) because aiohttp has no proxy helper.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Also dropped from requests: aiohttp sets Host and Content-Length for the next hop itself.
_REQUEST_DROP = HOP_BY_HOP | {"host", "content-length"}
# Dropped from responses: aiohttp frames the body itself (Content-Length or chunked).
_RESPONSE_DROP = HOP_BY_HOP | {"content-length"}


def _connection_named(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> frozenset[str]:
    values = headers.getall("Connection", ())
    if not values:
        return frozenset()
    return frozenset(t.strip().lower() for v in values for t in v.split(",") if t.strip())


def _filtered(
    headers: CIMultiDictProxy[str] | CIMultiDict[str], drop: frozenset[str]
) -> CIMultiDict[str]:
    named = _connection_named(headers)
    if named:
        drop = drop | named
    out: CIMultiDict[str] = CIMultiDict()
    for key, value in headers.items():
        lower = key.lower()
        if lower not in drop and not lower.startswith("proxy-"):
            out.add(key, value)
    return out


def upstream_request_headers(
    request: web.BaseRequest, *, via: str, drop: Iterable[str] = ()
) -> CIMultiDict[str]:
    """Headers to send upstream for ``request``: end-to-end fields plus forwarding fields.

    ``X-Forwarded-For`` gets the client's address appended; ``X-Forwarded-Proto`` and
    ``X-Forwarded-Host`` are kept when an earlier proxy (a CDN PoP) set them, else filled in.
    """
    extra = frozenset(d.lower() for d in drop)
    out = _filtered(request.headers, _REQUEST_DROP | extra if extra else _REQUEST_DROP)
    peer = request.remote or "unknown"
    prior = out.get("X-Forwarded-For")
    out["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    if "X-Forwarded-Proto" not in out:
        out["X-Forwarded-Proto"] = request.scheme
    if "X-Forwarded-Host" not in out and request.host:
        out["X-Forwarded-Host"] = request.host
    prior_via = out.get("Via")
    version = f"{request.version.major}.{request.version.minor}"
    out["Via"] = f"{prior_via}, {version} {via}" if prior_via else f"{version} {via}"
    return out


def downstream_response_headers(
    headers: CIMultiDictProxy[str] | CIMultiDict[str], *, via: str
) -> CIMultiDict[str]:
    """Headers to send back to the client for an upstream response."""
    out = _filtered(headers, _RESPONSE_DROP)
    prior_via = out.get("Via")
    out["Via"] = f"{prior_via}, 1.1 {via}" if prior_via else f"1.1 {via}"
    return out
