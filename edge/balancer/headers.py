"""What a proxy does to headers: drop hop-by-hop fields, add X-Forwarded-* and Via.

Shared by the load balancer and the CDN PoPs (both are reverse proxies). RFC 9110 section 7.6:
``Connection``, ``Keep-Alive``, ``Proxy-*``, ``TE``, ``Trailer``, ``Transfer-Encoding``,
``Upgrade`` and every field named in ``Connection`` apply to one hop and are never forwarded;
``Host`` and ``Content-Length`` are set by whoever frames the next hop. Hand-written (a few
dozen lines) because aiohttp has no proxy helper.

Two forms of the same rules:

- ``upstream_request_headers`` / ``downstream_response_headers`` work on multidicts, for a
  proxy that talks to its upstream through aiohttp's client (the CDN PoP);
- ``RequestHeadWriter`` / ``ResponseHeaderFilter`` work on the raw ``(name, value)`` byte
  pairs the parsers give, for the balancer's own HTTP/1.1 client (``edge.balancer.upstream``)
  and its wire lane (``edge.front.wire``): no multidict is built for the request it
  forwards, and the answer's fields are copied as bytes (or decoded once, for aiohttp).

Both give the same result: ``X-Forwarded-For`` gets the client's address appended to every
earlier value (one comma-separated list, RFC 7239's predecessor convention), ``Via`` gets this
hop appended, ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` are kept when an earlier proxy (a
CDN PoP) set them and filled in otherwise.

At the public entry (a CDN PoP, ``trusted=False`` for a client outside its trusted networks)
nothing the client says about earlier hops is kept: ``X-Forwarded-For`` is the client's
address alone, ``X-Forwarded-Proto``/``-Host`` are this hop's, and ``Forwarded``,
``traceparent`` and ``tracestate`` are dropped (the PoP sends its own trace context).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

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
# Also dropped from requests: the next hop's framing sets Host and Content-Length itself.
_REQUEST_DROP = HOP_BY_HOP | {"host", "content-length"}
# Dropped from an untrusted client's request: what it claims about earlier hops and traces.
_UNTRUSTED_DROP = frozenset(
    {"forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}
    | {"traceparent", "tracestate"}
)
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
    request: web.BaseRequest, *, via: str, drop: Iterable[str] = (), trusted: bool = True
) -> CIMultiDict[str]:
    """Headers to send upstream for ``request``: end-to-end fields plus forwarding fields.

    ``X-Forwarded-For`` gets the client's address appended; ``X-Forwarded-Proto`` and
    ``X-Forwarded-Host`` are kept when an earlier proxy (a CDN PoP) set them, else filled in.
    From a client that is not ``trusted`` they are overwritten instead (and ``Forwarded``,
    ``traceparent``, ``tracestate`` dropped).
    """
    extra = frozenset(d.lower() for d in drop)
    if not trusted:
        extra |= _UNTRUSTED_DROP
    out = _filtered(request.headers, _REQUEST_DROP | extra if extra else _REQUEST_DROP)
    peer = request.remote or "unknown"
    prior = out.getall("X-Forwarded-For", ())
    out["X-Forwarded-For"] = ", ".join((*prior, peer))
    if "X-Forwarded-Proto" not in out:
        out["X-Forwarded-Proto"] = request.scheme
    if "X-Forwarded-Host" not in out and request.host:
        out["X-Forwarded-Host"] = request.host
    version = f"{request.version.major}.{request.version.minor}"
    out["Via"] = ", ".join((*out.getall("Via", ()), f"{version} {via}"))
    return out


def downstream_response_headers(
    headers: CIMultiDictProxy[str] | CIMultiDict[str], *, via: str
) -> CIMultiDict[str]:
    """Headers to send back to the client for an upstream response."""
    out = _filtered(headers, _RESPONSE_DROP)
    out["Via"] = ", ".join((*out.getall("Via", ()), f"1.1 {via}"))
    return out


# -- the same rules on raw byte pairs ---------------------------------------------------------

RawHeaders = Sequence[tuple[bytes, bytes]]

_REQUEST_DROP_B = frozenset(name.encode() for name in _REQUEST_DROP)
_RESPONSE_DROP_B = frozenset(name.encode() for name in _RESPONSE_DROP)
_NAMES_MAX = 512  # field names remembered per direction: far more than real traffic has
_NOTHING: frozenset[bytes] = frozenset()

# How the request loop treats a field, by its name (memoised per spelling of the name).
_KEEP, _DROP, _CONNECTION, _XFF, _VIA, _PROTO, _FHOST, _HOST, _TRACEPARENT, _TRACESTATE = range(10)
_REQUEST_KINDS: dict[bytes, int] = {
    **{name: _DROP for name in _REQUEST_DROP_B},
    b"connection": _CONNECTION,
    b"x-forwarded-for": _XFF,
    b"via": _VIA,
    b"x-forwarded-proto": _PROTO,
    b"x-forwarded-host": _FHOST,
    b"host": _HOST,  # dropped too, but its value is X-Forwarded-Host's default
    b"traceparent": _TRACEPARENT,  # kept unless this hop injects its own
    b"tracestate": _TRACESTATE,
}


def _named_b(values: Iterable[bytes]) -> frozenset[bytes]:
    return frozenset(t.strip().lower() for v in values for t in v.split(b",") if t.strip())


@functools.lru_cache(maxsize=64)
def _extra_named(value: bytes) -> frozenset[bytes]:
    """Fields a ``Connection`` value names beyond those always dropped (clients send
    ``keep-alive`` or ``close``, so a few values repeat: memoised, bounded)."""
    return _named_b((value,)) - _REQUEST_DROP_B


class ProxiedRequest(Protocol):
    """What the head writer reads of a request: aiohttp's, or the wire lane's."""

    @property
    def raw_headers(self) -> RawHeaders: ...
    @property
    def remote(self) -> str | None: ...
    @property
    def secure(self) -> bool: ...
    @property
    def host(self) -> str: ...
    @property
    def version(self) -> tuple[int, int]: ...


class RequestHeadWriter:
    """The header lines a proxy named ``via`` sends upstream, built from the raw request.

    ``lines(request, inject)`` returns ``Name: value\r\n`` lines (bytes) for every end-to-end
    field, then ``X-Forwarded-For``, ``X-Forwarded-Proto``, ``X-Forwarded-Host`` and ``Via``.
    Host, Content-Length and Transfer-Encoding are left to the caller, who frames the next hop.
    ``inject`` (a W3C ``traceparent``, maybe ``tracestate``) replaces incoming fields of the
    same name. How each field name is treated is remembered (bounded), so a request costs one
    dict lookup per field.
    """

    def __init__(self, via: str) -> None:
        self._via = via.encode()
        self._via_by_version: dict[tuple[int, int], bytes] = {}
        self._kinds: dict[bytes, int] = {}

    def _via_token(self, version: tuple[int, int]) -> bytes:
        token = self._via_by_version.get(version)
        if token is None:
            token = b"%d.%d %s" % (version[0], version[1], self._via)
            if len(self._via_by_version) < 8:  # HTTP versions: 1.0, 1.1 in practice
                self._via_by_version[version] = token
        return token

    def _kind(self, name: bytes) -> int:
        lname = name.lower()
        kind = _REQUEST_KINDS.get(lname)
        if kind is None:
            kind = _DROP if lname.startswith(b"proxy-") else _KEEP
        if len(self._kinds) < _NAMES_MAX:
            self._kinds[name] = kind
        return kind

    def lines(
        self,
        request: ProxiedRequest,
        inject: Mapping[str, str] | None = None,
        strip: frozenset[bytes] = _NOTHING,
    ) -> bytes:
        """The lines; fields named in ``strip`` (lowercase) are left out too."""
        head = self._lines(request, strip, inject)
        if head is None:
            # The client named more hop-by-hop fields in Connection: filter again (rare).
            named = _named_b(v for n, v in request.raw_headers if n.lower() == b"connection")
            head = self._lines(request, (named - _REQUEST_DROP_B) | strip, inject)
            assert head is not None
        return head

    def _lines(
        self,
        request: ProxiedRequest,
        skip: frozenset[bytes],
        inject: Mapping[str, str] | None,
    ) -> bytes | None:
        """The lines, or None when a Connection field names fields not in ``skip``."""
        kinds = self._kinds
        out: list[bytes] = []
        append = out.append
        xff: bytes | None = None
        via: bytes | None = None
        proto: bytes | None = None
        fhost: bytes | None = None
        host: bytes | None = None
        for name, value in request.raw_headers:
            kind = kinds.get(name)
            if kind is None:
                kind = self._kind(name)
            if skip and name.lower() in skip:
                continue
            if kind == _KEEP:
                append(name)
                append(b": ")
                append(value)
                append(b"\r\n")
            elif kind == _HOST:
                if host is None:
                    host = value
            elif kind == _XFF:
                xff = value if xff is None else xff + b", " + value
            elif kind == _VIA:
                via = value if via is None else via + b", " + value
            elif kind == _PROTO:
                if proto is None:
                    proto = value
            elif kind == _FHOST:
                if fhost is None:
                    fhost = value
            elif kind == _CONNECTION:
                if not skip.issuperset(_extra_named(value)):
                    return None
            elif kind in (_TRACEPARENT, _TRACESTATE):
                field = "traceparent" if kind == _TRACEPARENT else "tracestate"
                if not inject or field not in inject:
                    append(name)
                    append(b": ")
                    append(value)
                    append(b"\r\n")
        if inject:
            for key, val in inject.items():
                append(b"%s: %s\r\n" % (key.encode(), val.encode()))
        peer = (request.remote or "unknown").encode()
        append(b"X-Forwarded-For: ")
        if xff is not None:
            append(xff)
            append(b", ")
        append(peer)
        append(b"\r\nX-Forwarded-Proto: ")
        append(proto or (b"https" if request.secure else b"http"))
        if fhost is None:
            fhost = host if host is not None else request.host.encode()
        if fhost:
            append(b"\r\nX-Forwarded-Host: ")
            append(fhost)
        append(b"\r\nVia: ")
        if via is not None:
            append(via)
            append(b", ")
        append(self._via_by_version.get(request.version) or self._via_token(request.version))
        append(b"\r\n")
        return b"".join(out)


# How the response loop treats a field it does not keep.
_R_DROP, _R_CONNECTION, _R_VIA = range(3)


class ResponseHeaderFilter:
    """An upstream answer's fields for the client, as a proxy named ``via`` passes them.

    Hop-by-hop fields and Content-Length (the next writer frames the body) are dropped and
    this hop is appended to ``Via``; ``items(raw)`` gives the fields as aiohttp's response
    takes them (values decoded as aiohttp's own parser does: UTF-8, undecodable bytes kept as
    surrogates), ``lines(raw)`` as the bytes a raw writer sends. Names and their treatment are
    remembered (bounded).
    """

    def __init__(self, via: str) -> None:
        self._via = b"1.1 " + via.encode()
        self._kept: dict[bytes, str] = {}  # name as sent -> name to pass on
        self._special: dict[bytes, int] = {}  # name as sent -> _R_*

    def _learn(self, name: bytes) -> str | int:
        lname = name.lower()
        if lname == b"connection":
            special = _R_CONNECTION
        elif lname == b"via":
            special = _R_VIA
        elif lname in _RESPONSE_DROP_B or lname.startswith(b"proxy-"):
            special = _R_DROP
        else:
            kept = name.decode("latin-1")
            if len(self._kept) < _NAMES_MAX:
                self._kept[name] = kept
            return kept
        if len(self._special) < _NAMES_MAX:
            self._special[name] = special
        return special

    def _filter(self, raw: RawHeaders) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """The fields to pass on (as sent) and the ``Via`` value to append."""
        kept_names = self._kept
        out: list[tuple[bytes, bytes]] = []
        append = out.append
        via: list[bytes] | None = None
        named: frozenset[bytes] = _NOTHING
        for pair in raw:
            name = pair[0]
            if name in kept_names:
                append(pair)
                continue
            what = self._special.get(name)
            if what is None:
                learnt = self._learn(name)
                if isinstance(learnt, str):
                    append(pair)
                    continue
                what = learnt
            if what == _R_VIA:
                via = [pair[1]] if via is None else [*via, pair[1]]
            elif what == _R_CONNECTION:
                named = named | _named_b((pair[1],))
        if named:
            out = [(k, v) for k, v in out if k.lower() not in named]
            if b"via" in named:
                via = None
        if via is None:
            return out, self._via
        via.append(self._via)
        return out, b", ".join(via)

    def items(self, raw: RawHeaders) -> list[tuple[str, str]]:
        """The fields as aiohttp takes them: names as sent, values decoded (UTF-8)."""
        kept, via = self._filter(raw)
        names = self._kept
        out = [
            (names.get(k) or k.decode("latin-1"), v.decode("utf-8", "surrogateescape"))
            for k, v in kept
        ]
        out.append(("Via", via.decode("utf-8", "surrogateescape")))
        return out

    def lines(self, raw: RawHeaders) -> bytes:
        """The fields as ``Name: value\r\n`` lines, bytes as sent (for a raw writer).

        Every answer the wire lane relays passes here, so the usual case (no ``Connection``
        field) is one loop appending the kept bytes, with no intermediate pairs and no
        formatting (~0.7 us instead of ~1.5 for six fields); an answer with a ``Connection``
        field takes ``_filter``, which drops the fields it names."""
        kept_names = self._kept
        special = self._special
        out: list[bytes] = []
        append = out.append
        via: list[bytes] | None = None
        for name, value in raw:
            if name not in kept_names:
                what = special.get(name)
                if what is None:
                    learnt = self._learn(name)
                    if isinstance(learnt, int):
                        what = learnt
                if what is not None:
                    if what == _R_VIA:
                        via = [value] if via is None else [*via, value]
                    elif what == _R_CONNECTION:
                        return self._general_lines(raw)
                    continue
            append(name)
            append(b": ")
            append(value)
            append(b"\r\n")
        append(b"Via: ")
        if via is not None:
            append(b", ".join(via))
            append(b", ")
        append(self._via)
        append(b"\r\n")
        return b"".join(out)

    def _general_lines(self, raw: RawHeaders) -> bytes:
        """``lines`` for any answer, the fields named in ``Connection`` dropped too."""
        kept, via = self._filter(raw)
        kept.append((b"Via", via))
        return b"".join([b"%s: %s\r\n" % pair for pair in kept])
