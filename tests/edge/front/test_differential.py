"""The wire front refuses what aiohttp and HAProxy refuse: a differential corpus and a fuzzer.

Every case of ``corpus.CORPUS`` goes over a raw socket to the wire lane as a CDN PoP and the
balancer run it, to the gateway, to aiohttp's server and to HAProxy (``targets``). The wire
lane must answer in the class (closed, held, 4xx, or the same status) of aiohttp's or
HAProxy's answer; no edge target (PoP, balancer, gateway) answers a 5xx, every error it
answers with a body is problem+json with a trace id, a slow body is cut within the request
timeout without reaching the upstream whole, and its connections are back to none and its
CPU time bounded afterwards. The fuzzer sends generated heads to the two wire targets with
the same invariants. ``-s`` prints the table.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.edge.front.corpus import CORPUS, Case
from tests.edge.front.targets import (
    EDGE,
    LIMITS,
    TARGETS,
    WIRE,
    Outcome,
    Servers,
    exchange,
    servers,
)

pytestmark = [
    pytest.mark.slow,  # HAProxy and five servers; ~80 s
    pytest.mark.skipif(
        shutil.which("haproxy") is None,
        reason="haproxy is missing: `apt-get install -y haproxy` (scripts/setup.sh installs it)",
    ),
]

CPU_PER_CASE = 2.0  # seconds of the servers' CPU one case may cost (a loaded machine's bound)
# A slow request is cut within the request timeout, the front's 1 s reaper tick, and a margin
# for a loaded machine.
DROP_WITHIN = LIMITS.request_timeout + 1.0 + 3.0
TRACE_ID = re.compile(r"[0-9a-f]{32}")
SLOW_PATHS = {
    "/slow-trickle": "none",
    "/slow-half": "none",
    "/slow-chunked": "not whole",
    "/slow-large": "not whole",
}
"""What the upstream may see of each slow-body case: nothing (a body of known, small length
is waited for before the handler runs), or a request never whole (a chunked or large body is
streamed as it comes, and cut)."""


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    with servers(tmp_path_factory.mktemp("differential")) as s:
        yield s


def run_case(edge: Servers, pool: ThreadPoolExecutor, case: Case) -> dict[str, Outcome]:
    """The case sent to the four targets at once."""
    futures = {name: pool.submit(exchange, edge.ports[name], case) for name in TARGETS}
    return {name: f.result() for name, f in futures.items()}


def shape_problems(name: str, outcome: Outcome) -> list[str]:
    """An edge target's own error answers with a body that are not problem+json with a
    trace id."""
    found = []
    for answer in outcome.answers:
        if answer.status < 400 or not answer.body or answer.relayed:
            continue  # the backend's own answers, relayed, are not the edge's
        trace_id = None
        if answer.content_type == "application/problem+json":
            with contextlib.suppress(ValueError):
                trace_id = json.loads(answer.body).get("trace_id")
        if not isinstance(trace_id, str) or TRACE_ID.fullmatch(trace_id) is None:
            found.append(
                f"{name} answered {answer.status} as {answer.content_type!r}: "
                f"{answer.body[:120]!r} (not problem+json with a trace id)"
            )
    return found


def disagreements(case: Case, outcomes: dict[str, Outcome]) -> list[str]:
    references = {outcomes["aiohttp"].klass, outcomes["haproxy"].klass, *case.also}
    found = []
    for name in EDGE:
        outcome = outcomes[name]
        found += [f"{case.name}: {problem}" for problem in shape_problems(name, outcome)]
        if case.closes and not (outcome.closed and outcome.elapsed <= DROP_WITHIN):
            found.append(
                f"{case.name}: {name} held the connection ({outcome}, closed={outcome.closed},"
                f" {outcome.elapsed:.1f} s; at most {DROP_WITHIN:g} s)"
            )
        if any(s >= 500 for s in outcome.statuses):
            found.append(f"{case.name}: {name} answered {outcome} (a 5xx)")
        elif name not in WIRE:
            continue  # the gateway routes none of the corpus's paths: held to the above only
        elif outcome.klass not in references:
            seen = ", ".join(f"{n} {outcomes[n]}" for n in TARGETS)
            found.append(f"{case.name}: {name} is neither aiohttp's nor HAProxy's class ({seen})")
    return found


def test_the_corpus_is_large_and_named_once() -> None:
    assert len(CORPUS) >= 60
    assert len({case.name for case in CORPUS}) == len(CORPUS)


def test_the_wire_lane_answers_as_aiohttp_or_haproxy(edge: Servers) -> None:
    problems: list[str] = []
    rows = [f"| {'input':<58} | {' | '.join(f'{n:<9}' for n in TARGETS)} |"]
    seen_before = len(edge.seen)
    with ThreadPoolExecutor(len(TARGETS)) as pool:
        for case in CORPUS:
            cpu = edge.cpu_seconds()
            outcomes = run_case(edge, pool, case)
            spent = edge.cpu_seconds() - cpu
            problems += disagreements(case, outcomes)
            if spent > CPU_PER_CASE:
                problems.append(f"{case.name}: the servers spent {spent:.2f} s of CPU")
            cells = " | ".join(f"{outcomes[n]!s:<9}" for n in TARGETS)
            rows.append(f"| {case.group + ': ' + case.name:<58.58} | {cells} |")
    print("\n".join(rows))
    for path, whole in edge.seen[seen_before:]:
        allowed = SLOW_PATHS.get(path)
        if allowed == "none" or (allowed == "not whole" and whole):
            problems.append(f"{path}: the upstream got the request (whole: {whole})")
    assert edge.settled() == {name: 0 for name in EDGE}, "connections left open"
    assert problems == [], "\n".join(problems)


# -- the fuzzer ----------------------------------------------------------------------------------

TOKENS = st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS", b"CONNECT", b"get", b""])
TARGET = st.sampled_from(
    [b"/x", b"/x?a=1", b"*", b"http://h/x", b"//", b"/x#f", b"x", b"/%zz", b"/\x00", b""]
)
VERSION = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 ", b"http/1.1", b""])
NAMES = st.sampled_from(
    [
        b"Host",
        b"Content-Length",
        b"Transfer-Encoding",
        b"Expect",
        b"Upgrade",
        b"Connection",
        b"X-a",
        b"Host ",
        b"",
    ]
)
VALUES = st.sampled_from(
    [b"h", b"0", b"3", b"-1", b"chunked", b" chunked", b"100-continue", b"close", b"a\x00b"]
)
SEPARATORS = st.sampled_from([b"\r\n", b"\n", b"\r", b"\r\n "])
FIELDS = st.lists(
    st.tuples(NAMES | st.binary(max_size=6), VALUES | st.binary(max_size=12)), max_size=6
)


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    """A request head built from the pieces parsers disagree on, and some random bytes."""
    sep = draw(SEPARATORS)
    line = draw(TOKENS | st.binary(max_size=4)) + b" " + draw(TARGET) + b" " + draw(VERSION)
    fields = b"".join(n + b": " + v + sep for n, v in draw(FIELDS))
    return line + sep + fields + sep + draw(st.binary(max_size=8))


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=heads())
def test_no_head_gets_a_5xx_or_leaves_a_connection(edge: Servers, data: bytes) -> None:
    case = Case("fuzz", "generated", (data,), answers=1, wait=0.3)
    cpu = edge.cpu_seconds()
    for name in WIRE:
        outcome = exchange(edge.ports[name], case)
        assert not any(s >= 500 for s in outcome.statuses), (name, data, outcome)
        assert shape_problems(name, outcome) == [], data
    assert edge.cpu_seconds() - cpu < CPU_PER_CASE
    assert edge.settled(within=3.0) == {name: 0 for name in EDGE}, data


def test_the_servers_still_answer_after_all_that(edge: Servers) -> None:
    edge.warm()  # raises unless every target answers 200 again
    assert edge.settled() == {name: 0 for name in EDGE}
