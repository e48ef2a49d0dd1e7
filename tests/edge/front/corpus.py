"""The differential corpus: raw requests a hostile or broken client sends, as data.

Each ``Case`` is the bytes sent (in pieces, ``gap`` seconds apart), how many answers to wait
for, and how long. ``test_differential`` sends every case to the wire lane as the balancer and
a CDN PoP run it, to aiohttp's server and to HAProxy, and compares the class of what each
answered (``Outcome.klass``).
"""

from __future__ import annotations

from dataclasses import dataclass

BIG = 65_536  # the size of the backend's /big answer


@dataclass(frozen=True)
class Case:
    """``send``: the pieces sent, ``gap`` seconds apart. ``answers``: stop reading once this
    many answers have come; ``wait``: or after this long. ``read``: False for a client that
    does not read for ``wait`` seconds (then whether the server cut the connection counts).
    ``also``: classes the wire lane may answer besides aiohttp's and HAProxy's, where RFC 9110
    or 9112 asks more than either does, or the front cuts a slow client neither cuts; ``why``
    says which. ``until_answered``: stop sending once the server answers or closes (as a
    client would). ``closes``: the edge must close the connection within the request timeout
    (and a margin): read until it does."""

    group: str
    name: str
    send: tuple[bytes, ...]
    answers: int = 1
    wait: float = 1.5
    gap: float = 0.0
    read: bool = True
    also: tuple[str, ...] = ()
    why: str = ""
    until_answered: bool = False
    closes: bool = False


def head(*lines: str | bytes, body: bytes = b"", end: bytes = b"\r\n") -> bytes:
    """A request: ``lines`` (the request line, then fields) joined by ``end``, a blank line,
    ``body``."""
    raw = [line.encode("latin-1") if isinstance(line, str) else line for line in lines]
    return end.join(raw) + end + end + body


def get(target: str = "/x", *fields: str | bytes, version: str = "HTTP/1.1") -> bytes:
    return head(f"GET {target} {version}", "Host: edge.test", *fields)


def post(*fields: str | bytes, body: bytes) -> bytes:
    return head("POST /x HTTP/1.1", "Host: edge.test", *fields, body=body)


def one(group: str, name: str, data: bytes, **kw: object) -> Case:
    return Case(group, name, (data,), **kw)  # type: ignore[arg-type]


INVALID_HOST = "RFC 9112 3.2: a Host field with an invalid value is answered 400"
USERINFO = "RFC 9110 4.2.4: userinfo in an http(s) URI from an untrusted source is an error"
SLOW_POST = "a body the front reads whole must come within the request timeout (slow POST)"
SLOW_BODY = (
    "the whole request, head and body, must come within the request timeout (HAProxy's"
    " `timeout http-request` covers the head only without `option http-buffer-request`)"
)


H = "Host: edge.test"

CORPUS: tuple[Case, ...] = (
    # -- smuggling: framing that two parsers could read differently
    one(
        "smuggling",
        "CL and TE: chunked",
        post("Content-Length: 6", "Transfer-Encoding: chunked", body=b"0\r\n\r\nG"),
    ),
    one(
        "smuggling",
        "TE: chunked and CL",
        post("Transfer-Encoding: chunked", "Content-Length: 3", body=b"0\r\n\r\n"),
    ),
    one(
        "smuggling",
        "two equal Content-Length",
        post("Content-Length: 3", "Content-Length: 3", body=b"abc"),
    ),
    one(
        "smuggling",
        "two different Content-Length",
        post("Content-Length: 3", "Content-Length: 4", body=b"abcd"),
    ),
    one("smuggling", "Content-Length list 3, 3", post("Content-Length: 3, 3", body=b"abc")),
    one("smuggling", "Content-Length -1", post("Content-Length: -1", body=b"abc")),
    one("smuggling", "Content-Length +3", post("Content-Length: +3", body=b"abc")),
    one("smuggling", "Content-Length 0x3", post("Content-Length: 0x3", body=b"abc")),
    one("smuggling", "Content-Length '3 3'", post("Content-Length: 3 3", body=b"abc")),
    one(
        "smuggling",
        "Content-Length 2^64",
        post("Content-Length: 18446744073709551616", body=b"abc"),
    ),
    one("smuggling", "TE: identity", post("Transfer-Encoding: identity", body=b"")),
    one("smuggling", "TE: xchunked", post("Transfer-Encoding: xchunked", body=b"0\r\n\r\n")),
    one(
        "smuggling",
        "TE: chunked, gzip (chunked not last)",
        post("Transfer-Encoding: chunked, gzip", body=b"0\r\n\r\n"),
    ),
    one(
        "smuggling",
        "TE twice",
        post("Transfer-Encoding: chunked", "Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
    ),
    one(
        "smuggling",
        "TE with space before colon",
        post("Transfer-Encoding : chunked", body=b"0\r\n\r\n"),
    ),
    one(
        "smuggling",
        "TE value after vertical tab",
        post(b"Transfer-Encoding:\x0bchunked", body=b"0\r\n\r\n"),
    ),
    one(
        "smuggling",
        "TE: chunked in HTTP/1.0",
        head("POST /x HTTP/1.0", H, "Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
    ),
    one(
        "smuggling",
        "chunk size not hex",
        post("Transfer-Encoding: chunked", body=b"zz\r\nabc\r\n0\r\n\r\n"),
    ),
    one(
        "smuggling",
        "chunk size overflows",
        post("Transfer-Encoding: chunked", body=b"fffffffffffffffff1\r\nabc\r\n0\r\n\r\n"),
    ),
    one(
        "smuggling",
        "chunk size line with bare LF",
        post("Transfer-Encoding: chunked", body=b"3\nabc\r\n0\r\n\r\n"),
    ),
    # -- line folding, line ends
    one("line ends", "obs-fold continuation line", get("/x", "X-a: 1", " 2")),
    one("line ends", "obs-fold in Host", head("GET /x HTTP/1.1", "Host: edge", " .test")),
    one("line ends", "bare LF everywhere", head("GET /x HTTP/1.1", H, end=b"\n")),
    one(
        "line ends",
        "bare LF after one field",
        b"GET /x HTTP/1.1\r\nHost: edge.test\nX-a: 1\r\n\r\n",
    ),
    one("line ends", "bare CR in a value", get("/x", b"X-a: a\rb")),
    one("line ends", "bare LF after the request line", b"GET /x HTTP/1.1\nHost: edge.test\r\n\r\n"),
    # -- NUL and control bytes
    one("control bytes", "NUL in a value", get("/x", b"X-a: a\x00b")),
    one("control bytes", "NUL in the target", get("/x\x00y")),
    one("control bytes", "SOH in a field name", get("/x", b"X\x01a: 1")),
    one("control bytes", "DEL in a value", get("/x", b"X-a: a\x7fb")),
    one("control bytes", "space in a field name", get("/x", "X a: 1")),
    one("control bytes", "empty field name", get("/x", ": v")),
    one("control bytes", "UTF-8 in a value (obs-text)", get("/x", "X-a: caf\xc3\xa9")),
    one("control bytes", "tab in a value", get("/x", "X-a: a\tb")),
    one(
        "control bytes",
        "TLS ClientHello",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
    ),
    # -- limits
    one("limits", "target of 8,000 bytes", get("/" + "a" * 8000)),
    one("limits", "target of 9,000 bytes", get("/" + "a" * 9000)),
    one("limits", "value of 8,000 bytes", get("/x", "X-a: " + "v" * 8000)),
    one("limits", "value of 9,000 bytes", get("/x", "X-a: " + "v" * 9000)),
    one("limits", "name of 9,000 bytes", get("/x", "X" * 9000 + ": 1")),
    one("limits", "90 fields", get("/x", *(f"X-f{i}: {i}" for i in range(90)))),
    one("limits", "200 fields", get("/x", *(f"X-f{i}: {i}" for i in range(200)))),
    one(
        "limits",
        "head of 21 KB in 3 fields",
        get("/x", *(f"X-{i}: " + "v" * 7000 for i in range(3))),
    ),
    one(
        "limits",
        "1,500 fields and a 64 KB body to come",
        post(*(f"X-f{i}: {i}" for i in range(1500)), "Content-Length: 65536", body=b"b" * 10),
    ),
    # -- Host
    one("Host", "no Host (HTTP/1.1)", head("GET /x HTTP/1.1")),
    one("Host", "two Host fields", get("/x", "Host: other.test")),
    one("Host", "two equal Host fields", get("/x", H)),
    one("Host", "empty Host", head("GET /x HTTP/1.1", "Host:")),
    one(
        "Host",
        "Host with a space",
        head("GET /x HTTP/1.1", "Host: a b"),
        also=("4xx",),
        why=INVALID_HOST,
    ),
    one(
        "Host",
        "Host with user info",
        head("GET /x HTTP/1.1", "Host: u@edge.test"),
        also=("4xx",),
        why=INVALID_HOST,
    ),
    one("Host", "Host with port", head("GET /x HTTP/1.1", "Host: edge.test:80")),
    one("Host", "Host as IPv6 literal", head("GET /x HTTP/1.1", "Host: [::1]:80")),
    one("Host", "no Host (HTTP/1.0)", head("GET /x HTTP/1.0")),
    # -- request-target forms
    one("target", "absolute-form, same Host", get("http://edge.test/x")),
    one("target", "absolute-form, other Host", get("http://evil.example/x")),
    one("target", "absolute-form https", get("https://edge.test/x?q=1")),
    one(
        "target",
        "absolute-form, no path",
        get("http://edge.test"),
        also=("200",),
        why="RFC 9110 4.2.3: an empty path is /",
    ),
    one(
        "target",
        "absolute-form with user info",
        get("http://u@edge.test/x"),
        also=("4xx",),
        why=USERINFO,
    ),
    one("target", "absolute-form, no authority", get("http:///x")),
    one("target", "asterisk-form OPTIONS *", head("OPTIONS * HTTP/1.1", H)),
    one("target", "asterisk-form GET *", get("*")),
    one("target", "authority-form CONNECT", head("CONNECT edge.test:443 HTTP/1.1", H)),
    one("target", "authority-form GET", get("edge.test:80")),
    one("target", "fragment", get("/x#frag")),
    one("target", "only a fragment", get("#frag")),
    one("target", "no leading slash", get("x")),
    one("target", "double slash", get("//x")),
    one("target", "bad percent-encoding", get("/%zz")),
    one("target", "dot segments", get("/../../etc/passwd")),
    one(
        "target",
        "absolute-form after a hand-off to aiohttp",
        get("/x", "Connection: keep-alive", version="HTTP/1.0") + get("http://evil.example/x"),
        answers=2,
    ),
    one(
        "target",
        "fragment after a hand-off to aiohttp",
        get("/x", "Connection: keep-alive", version="HTTP/1.0") + get("/x#frag"),
        answers=2,
    ),
    # -- methods
    one("methods", "unknown method", head("FOO /x HTTP/1.1", H)),
    one("methods", "lower-case method", head("get /x HTTP/1.1", H)),
    one("methods", "TRACE", head("TRACE /x HTTP/1.1", H)),
    one("methods", "DELETE", head("DELETE /x HTTP/1.1", H)),
    one("methods", "HEAD", head("HEAD /x HTTP/1.1", H)),
    # -- pipelining
    one("pipelining", "three GETs", get("/x") + get("/y") + get("/z"), answers=3),
    one(
        "pipelining",
        "a POST with body, then a GET",
        post("Content-Length: 3", body=b"abc") + get("/y"),
        answers=2,
    ),
    one(
        "pipelining",
        "a GET, then a bad request",
        get("/x") + b"GET /y HTTP/1.1\r\nHost: a\r\nX a: 1\r\n\r\n",
        answers=2,
    ),
    one("pipelining", "a GET, then no Host", get("/x") + head("GET /y HTTP/1.1"), answers=2),
    # -- Expect
    Case(
        "Expect",
        "100-continue, body after the 100",
        (post("Expect: 100-continue", "Content-Length: 3", body=b""), b"abc"),
        answers=2,
        gap=0.3,
    ),
    one(
        "Expect",
        "100-continue, body at once",
        post("Expect: 100-continue", "Content-Length: 3", body=b"abc"),
        answers=2,
    ),
    one("Expect", "unknown expectation", post("Expect: teapot", "Content-Length: 3", body=b"abc")),
    # -- versions
    one("versions", "HTTP/1.0", get("/x", version="HTTP/1.0")),
    one(
        "versions",
        "HTTP/1.0 keep-alive, twice",
        get("/x", "Connection: keep-alive", version="HTTP/1.0") * 2,
        answers=2,
    ),
    one("versions", "HTTP/0.9", b"GET /x\r\n"),
    one("versions", "HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    one("versions", "HTTP/1.2", get("/x", version="HTTP/1.2")),
    one("versions", "HTTP/3.0", get("/x", version="HTTP/3.0")),
    one("versions", "lower-case http/1.1", get("/x", version="http/1.1")),
    # -- Upgrade
    one(
        "Upgrade",
        "websocket",
        get(
            "/x",
            "Connection: Upgrade",
            "Upgrade: websocket",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        ),
    ),
    one(
        "Upgrade",
        "h2c",
        get(
            "/x",
            "Connection: Upgrade, HTTP2-Settings",
            "Upgrade: h2c",
            "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
        ),
    ),
    # -- slow clients
    one(
        "slow clients",
        "slowloris: a partial head, then silence",
        b"GET /x HTTP/1.1\r\nHost: edge.test\r\nX-a: ",
        wait=4.0,
    ),
    Case(
        "slow clients",
        "slowloris: a byte every 0.3 s",
        tuple(bytes([b]) for b in get("/x")[:14]),
        wait=4.0,
        gap=0.3,
    ),
    one(
        "slow clients",
        "a body that never comes",
        post("Content-Length: 10", body=b"ab"),
        wait=4.0,
        also=("4xx",),
        why=SLOW_POST,
    ),
    one(
        "slow clients",
        "a partial head after a hand-off to aiohttp (HTTP/1.0 keep-alive)",
        get("/x", "Connection: keep-alive", version="HTTP/1.0") + b"GET /y HTTP/1.1\r\nX-a: ",
        answers=2,
        wait=5.0,
    ),
    # -- slow bodies: each on a path of its own, so what reached the upstream is known
    Case(
        "slow bodies",
        "a body trickling in, a byte every 0.3 s (Content-Length 20)",
        (head("POST /slow-trickle HTTP/1.1", H, "Content-Length: 20"), *(b"b",) * 20),
        gap=0.3,
        wait=5.5,
        also=("4xx",),
        why=SLOW_BODY,
        until_answered=True,
        closes=True,
    ),
    one(
        "slow bodies",
        "a body stopped half way (Content-Length 64)",
        head("POST /slow-half HTTP/1.1", H, "Content-Length: 64", body=b"b" * 32),
        wait=5.5,
        also=("4xx",),
        why=SLOW_BODY,
        closes=True,
    ),
    one(
        "slow bodies",
        "a chunked body stopped half way",
        head("POST /slow-chunked HTTP/1.1", H, "Transfer-Encoding: chunked", body=b"10\r\nbbbb"),
        wait=5.5,
        also=("4xx",),
        why=SLOW_BODY,
        closes=True,
    ),
    one(
        "slow bodies",
        "a large body stopped half way (Content-Length 1 MB)",
        head("POST /slow-large HTTP/1.1", H, "Content-Length: 1000000", body=b"b" * 200_000),
        wait=5.5,
        also=("4xx",),
        why=SLOW_BODY,
        closes=True,
    ),
    one(
        "slow clients",
        "slow reader: 100 pipelined GETs of 64 KB, never read",
        get("/big") * 100,
        wait=5.0,
        read=False,
        closes=True,
    ),
    one(
        "slow clients",
        "slow reader after a hand-off to aiohttp: 100 HTTP/1.0 GETs of 64 KB, never read",
        get("/big", "Connection: keep-alive", version="HTTP/1.0") * 100,
        wait=5.0,
        read=False,
        closes=True,
    ),
)
