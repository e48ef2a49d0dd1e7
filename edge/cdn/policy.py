"""RFC 9111 rules for a shared cache: parse Cache-Control, decide storability, freshness and reuse.

Pure functions over header mappings and times (seconds, ``time.time()`` scale) so every directive
is unit-tested without a network. Hand-written because no maintained Python library implements
the *shared*-cache rules we need on top of aiohttp (``s-maxage`` winning, ``private``, the
``Authorization`` rule of section 3.5, ``stale-while-revalidate``/``stale-if-error`` from
RFC 5861); the parsing follows RFC 9110 section 5.6 (lists, tokens, quoted strings).

Choices where the RFC leaves room (each conservative):

- Qualified ``no-cache="field"`` is treated like unqualified ``no-cache`` (revalidate every time).
- Qualified ``private="field"`` responses are stored with the named fields removed.
- A duplicated or malformed ``max-age``/``s-maxage`` makes the response stale (section 4.2.1).
- Heuristic freshness (section 4.2.2) is 10% of the time since ``Last-Modified``, capped.
- ``must-revalidate``, ``proxy-revalidate`` and ``s-maxage`` forbid serving stale content, also
  under ``stale-while-revalidate``/``stale-if-error`` (section 4.2.4: a cache MUST NOT generate a
  stale response when an in-protocol directive prohibits it). Origins wanting stale serving at
  the edge send ``max-age`` with ``stale-*`` and no ``s-maxage``.
"""

from __future__ import annotations

import email.utils
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

CACHEABLE_METHODS = frozenset({"GET", "HEAD"})
# RFC 9110 section 15.1: status codes that are heuristically cacheable.
HEURISTIC_STATUSES = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
# Statuses this cache stores at all (206 needs range support, 304 has no body).
STORABLE_STATUSES = HEURISTIC_STATUSES | frozenset({302, 303, 307, 400, 403})
HEURISTIC_FRACTION = 0.1
HEURISTIC_CAP_SECONDS = 86_400.0
# Fields a 304 must not overwrite on the stored response (RFC 9111 section 3.2).
NOT_UPDATED_BY_304 = frozenset({"content-length", "content-encoding", "transfer-encoding"})


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        out: list[str] = []
        escaped = False
        for ch in value[1:-1]:
            if escaped:
                out.append(ch)
                escaped = False
            elif ch == "\\":
                escaped = True
            else:
                out.append(ch)
        return "".join(out)
    return value


def split_list(value: str) -> list[str]:
    """Split an RFC 9110 list on commas that are not inside a quoted string."""
    items: list[str] = []
    buf: list[str] = []
    quoted = escaped = False
    for ch in value:
        if escaped:
            buf.append(ch)
            escaped = False
        elif ch == "\\" and quoted:
            buf.append(ch)
            escaped = True
        elif ch == '"':
            buf.append(ch)
            quoted = not quoted
        elif ch == "," and not quoted:
            item = "".join(buf).strip()
            if item:
                items.append(item)
            buf = []
        else:
            buf.append(ch)
    item = "".join(buf).strip()
    if item:
        items.append(item)
    return items


def _delta_seconds(raw: str | None) -> int | None:
    """A delta-seconds value; ``None`` when missing or malformed."""
    if raw is None:
        return None
    raw = _unquote(raw)
    if not raw.isdigit():
        return None
    return min(int(raw), 2**31)


def _field_names(raw: str | None) -> frozenset[str]:
    if raw is None:
        return frozenset()
    return frozenset(n.strip().lower() for n in _unquote(raw).split(",") if n.strip())


@dataclass(frozen=True, slots=True)
class CacheControl:
    """The parsed directives of one Cache-Control field (request or response)."""

    max_age: int | None = None
    s_maxage: int | None = None
    max_stale: int | None = None  # request: -1 means "any staleness"
    min_fresh: int | None = None
    no_store: bool = False
    no_cache: bool = False
    private: bool = False
    private_fields: frozenset[str] = frozenset()
    public: bool = False
    must_revalidate: bool = False
    proxy_revalidate: bool = False
    only_if_cached: bool = False
    stale_while_revalidate: int | None = None
    stale_if_error: int | None = None
    invalid_lifetime: bool = False  # duplicate or malformed max-age / s-maxage
    extensions: frozenset[str] = field(default_factory=frozenset)

    @property
    def forbids_stale(self) -> bool:
        """Directives that forbid a shared cache from serving this response once stale."""
        return self.must_revalidate or self.proxy_revalidate or self.s_maxage is not None


EMPTY_CACHE_CONTROL = CacheControl()


def parse_cache_control(values: str | Iterable[str] | None) -> CacheControl:
    """Parse one or more Cache-Control field values (names are case-insensitive)."""
    if values is None:
        return EMPTY_CACHE_CONTROL
    if isinstance(values, str):
        values = (values,)
    seen: dict[str, list[str | None]] = {}
    for value in values:
        for item in split_list(value):
            name, eq, arg = item.partition("=")
            seen.setdefault(name.strip().lower(), []).append(arg.strip() if eq else None)
    if not seen:
        return EMPTY_CACHE_CONTROL

    def first(name: str) -> str | None:
        args = seen.get(name)
        return args[0] if args else None

    invalid = False

    def lifetime(name: str) -> int | None:
        nonlocal invalid
        args = seen.get(name)
        if not args:
            return None
        parsed = _delta_seconds(args[0])
        if len(args) > 1 or parsed is None:
            invalid = True
            return 0
        return parsed

    max_age = lifetime("max-age")
    s_maxage = lifetime("s-maxage")
    max_stale: int | None = None
    if "max-stale" in seen:
        raw = first("max-stale")
        max_stale = -1 if raw is None else _delta_seconds(raw)
    known = {
        "max-age",
        "s-maxage",
        "max-stale",
        "min-fresh",
        "no-store",
        "no-cache",
        "private",
        "public",
        "must-revalidate",
        "proxy-revalidate",
        "only-if-cached",
        "stale-while-revalidate",
        "stale-if-error",
    }
    private_arg = first("private")
    return CacheControl(
        max_age=max_age,
        s_maxage=s_maxage,
        max_stale=max_stale,
        min_fresh=_delta_seconds(first("min-fresh")),
        no_store="no-store" in seen,
        no_cache="no-cache" in seen,
        private="private" in seen and private_arg is None,
        private_fields=_field_names(private_arg),
        public="public" in seen,
        must_revalidate="must-revalidate" in seen,
        proxy_revalidate="proxy-revalidate" in seen,
        only_if_cached="only-if-cached" in seen,
        stale_while_revalidate=_delta_seconds(first("stale-while-revalidate")),
        stale_if_error=_delta_seconds(first("stale-if-error")),
        invalid_lifetime=invalid,
        extensions=frozenset(seen) - known,
    )


def parse_http_date(value: str | None) -> float | None:
    """An HTTP-date as a POSIX timestamp; ``None`` when missing or invalid."""
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.timestamp()


def format_http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def vary_fields(headers: Mapping[str, str]) -> tuple[str, ...] | None:
    """Lower-cased, sorted field names of Vary; ``None`` for ``Vary: *`` (never matches)."""
    raw = headers.get("Vary")
    if raw is None:
        return ()
    names = sorted({n.strip().lower() for n in raw.split(",") if n.strip()})
    if "*" in names:
        return None
    return tuple(names)


def normalize_field(value: str | None) -> str:
    """Normalise a request field value for Vary matching (RFC 9111 section 4.1)."""
    if value is None:
        return "\x00"  # absent differs from empty
    return ",".join(part.strip() for part in value.split(","))


def is_storable(
    *,
    method: str,
    status: int,
    request_cc: CacheControl,
    request_has_authorization: bool,
    response_cc: CacheControl,
    response_headers: Mapping[str, str],
) -> bool:
    """RFC 9111 section 3 (with 3.5 for Authorization), for a shared cache."""
    if method != "GET" or status not in STORABLE_STATUSES:
        return False
    if request_cc.no_store or response_cc.no_store or response_cc.private:
        return False
    if vary_fields(response_headers) is None:
        return False
    if request_has_authorization and not (
        response_cc.public or response_cc.must_revalidate or response_cc.s_maxage is not None
    ):
        return False
    return (
        response_cc.public
        or response_cc.max_age is not None
        or response_cc.s_maxage is not None
        or "Expires" in response_headers
        or status in HEURISTIC_STATUSES
    )


def freshness_lifetime(
    response_cc: CacheControl, response_headers: Mapping[str, str], *, status: int = 200
) -> float:
    """Seconds a response stays fresh in a shared cache (section 4.2.1)."""
    if response_cc.invalid_lifetime:
        return 0.0
    if response_cc.s_maxage is not None:
        return float(response_cc.s_maxage)
    if response_cc.max_age is not None:
        return float(response_cc.max_age)
    if "Expires" in response_headers:
        expires = parse_http_date(response_headers.get("Expires"))
        date = parse_http_date(response_headers.get("Date"))
        if expires is None or date is None:
            return 0.0  # invalid Expires means already expired
        return max(0.0, expires - date)
    last_modified = parse_http_date(response_headers.get("Last-Modified"))
    date = parse_http_date(response_headers.get("Date"))
    if status in HEURISTIC_STATUSES and last_modified is not None and date is not None:
        return min(HEURISTIC_CAP_SECONDS, max(0.0, (date - last_modified) * HEURISTIC_FRACTION))
    return 0.0


def corrected_initial_age(
    response_headers: Mapping[str, str], *, request_time: float, response_time: float
) -> float:
    """``corrected_initial_age`` of section 4.2.3, fixed when the response is stored."""
    date = parse_http_date(response_headers.get("Date"))
    apparent_age = max(0.0, response_time - date) if date is not None else 0.0
    age_value = _delta_seconds(response_headers.get("Age")) or 0
    response_delay = max(0.0, response_time - request_time)
    return max(apparent_age, age_value + response_delay)


class Reuse(enum.Enum):
    """What the cache may do with a stored response for one request."""

    FRESH = "fresh"  # serve as is (HIT)
    STALE_WHILE_REVALIDATE = "swr"  # serve stale now, refresh in the background
    REVALIDATE = "revalidate"  # send a conditional request first


def reuse(
    *,
    age: float,
    lifetime: float,
    response_cc: CacheControl,
    request_cc: CacheControl,
) -> Reuse:
    """Decide how a stored response (``age`` seconds old) may answer a request (section 4)."""
    if response_cc.no_cache or request_cc.no_cache:
        return Reuse.REVALIDATE
    if request_cc.max_age is not None and age > request_cc.max_age:
        return Reuse.REVALIDATE
    fresh_left = lifetime - age
    if request_cc.min_fresh is not None and fresh_left < request_cc.min_fresh:
        return Reuse.REVALIDATE
    if fresh_left > 0:
        return Reuse.FRESH
    staleness = -fresh_left
    if response_cc.forbids_stale:
        return Reuse.REVALIDATE
    if request_cc.max_stale is not None and (
        request_cc.max_stale < 0 or staleness <= request_cc.max_stale
    ):
        return Reuse.FRESH
    swr = response_cc.stale_while_revalidate
    if swr is not None and staleness <= swr:
        return Reuse.STALE_WHILE_REVALIDATE
    return Reuse.REVALIDATE


def may_serve_stale_on_error(
    *, age: float, lifetime: float, response_cc: CacheControl, request_cc: CacheControl
) -> bool:
    """``stale-if-error`` (RFC 5861 section 4), from the response or the request."""
    if response_cc.forbids_stale or response_cc.no_cache:
        return False
    staleness = age - lifetime
    window = request_cc.stale_if_error
    if window is None:
        window = response_cc.stale_if_error
    return window is not None and staleness <= window


def request_cache_control(headers: Mapping[str, str], values: Iterable[str]) -> CacheControl:
    """Request directives; ``Pragma: no-cache`` counts only without Cache-Control (5.4)."""
    vals = list(values)
    if vals:
        return parse_cache_control(vals)
    if "no-cache" in headers.get("Pragma", "").lower():
        return CacheControl(no_cache=True)
    return EMPTY_CACHE_CONTROL


def _etags(value: str) -> list[str]:
    return [t.strip() for t in split_list(value)]


def _weak(tag: str) -> str:
    return tag[2:] if tag.startswith("W/") else tag


def not_modified(request_headers: Mapping[str, str], response_headers: Mapping[str, str]) -> bool:
    """Whether a client's conditional GET is satisfied by the stored response (RFC 9110 13.2.2)."""
    inm = request_headers.get("If-None-Match")
    if inm is not None:
        etag = response_headers.get("ETag")
        if etag is None:
            return False
        tags = _etags(inm)
        return "*" in tags or any(_weak(t) == _weak(etag) for t in tags)
    ims = parse_http_date(request_headers.get("If-Modified-Since"))
    if ims is None:
        return False
    last_modified = parse_http_date(response_headers.get("Last-Modified"))
    return last_modified is not None and last_modified <= ims
