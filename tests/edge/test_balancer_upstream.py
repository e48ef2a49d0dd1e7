"""The balancer's own HTTP/1.1 client, through the proxy, against scripted raw-socket upstreams.

Every scenario runs twice: on asyncio's loop and on uvloop's (the one the processes use), whose
transports differ. Each is an ``async`` function run by the ``run`` fixture, as pytest-asyncio
offers no per-module loop choice that is not deprecated.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import aiohttp
import pytest
import uvloop

from edge.balancer.upstream import UpstreamClient, UpstreamReset
from tests.edge.support_proxy import (
    Answer,
    Exchange,
    Upstream,
    http,
    ok,
    proxy_client,
    raw_upstreams,
    read_body,
)

Scenario = Coroutine[Any, Any, None]
Run = Callable[[Scenario], None]
MIB = 1024 * 1024


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Run:
    if request.param == "uvloop":
        return uvloop.run
    return asyncio.run


def _close(answer_bytes: bytes) -> Answer:
    """Write ``answer_bytes``, then close the connection."""

    async def answer(ex: Exchange) -> bool:
        ex.writer.write(answer_bytes)
        await ex.writer.drain()
        return False

    return answer


# -- framing of answers ----------------------------------------------------------------------


def test_content_length_answer_relayed_whole(run: Run) -> None:
    async def scenario() -> None:
        answer = ok(b"hello", [("X-Test", "1"), ("Keep-Alive", "timeout=5"), ("Via", "1.1 gw")])
        async with raw_upstreams(answer) as [up], proxy_client([up.address]) as (client, _):
            async with client.get("/a?b=1") as resp:
                assert resp.status == 200
                assert await resp.read() == b"hello"
                assert resp.headers["X-Test"] == "1"
                assert "Keep-Alive" not in resp.headers
                assert resp.headers["Via"] == "1.1 gw, 1.1 lb-test"
            [seen] = up.proxied()
            assert (seen.method, seen.target) == ("GET", "/a?b=1")
            assert seen.header("Host") == up.address
            assert seen.header("Via") == "1.1 lb-test"
            assert seen.header("X-Forwarded-For") == "127.0.0.1"

    run(scenario())


def test_large_content_length_answer_streamed(run: Run) -> None:
    body = bytes(range(256)) * 1200  # 300 KiB, above buffer_bytes

    async def scenario() -> None:
        async with raw_upstreams(ok(body)) as [up], proxy_client([up.address]) as (client, _):
            async with client.get("/big") as resp:
                assert resp.status == 200
                assert resp.content_length == len(body)
                assert await resp.read() == body
            async with client.get("/big") as resp:  # the connection was reusable after it
                assert await resp.read() == body
            assert up.connections == 1

    run(scenario())


def test_chunked_answer_streamed_as_it_comes(run: Run) -> None:
    async def scenario() -> None:
        go_on = asyncio.Event()

        async def answer(ex: Exchange) -> bool:
            ex.writer.write(http(200, headers=[("Transfer-Encoding", "chunked")], length=False))
            ex.writer.write(b"5\r\nfirst\r\n")
            await ex.writer.drain()
            await go_on.wait()
            ex.writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
            await ex.writer.drain()
            return True

        async with raw_upstreams(answer) as [up], proxy_client([up.address]) as (client, _):
            async with client.get("/chunks") as resp:
                assert resp.status == 200
                # The first chunk arrives while the upstream still holds back the rest.
                assert await asyncio.wait_for(resp.content.readexactly(5), 5) == b"first"
                go_on.set()
                assert await resp.read() == b"second"
            go_on.clear()
            async with client.get("/chunks") as resp:  # reused: the chunked framing ended
                assert await resp.content.readexactly(5) == b"first"
                go_on.set()
                assert await resp.read() == b"second"
            assert up.connections == 1

    run(scenario())


def test_close_delimited_answer_ends_with_the_connection(run: Run) -> None:
    async def scenario() -> None:
        answer = _close(http(200, b"until the end", length=False))
        async with raw_upstreams(answer) as [up], proxy_client([up.address]) as (client, _):
            for _ in range(2):
                async with client.get("/") as resp:
                    assert resp.status == 200
                    assert await resp.read() == b"until the end"
            assert up.connections == 2

    run(scenario())


def test_head_204_304_have_no_body(run: Run) -> None:
    async def scenario() -> None:
        async def answer(ex: Exchange) -> bool:
            target = ex.request.target
            if target == "/head":
                # A HEAD answer announces the length of the GET body but carries none.
                ex.writer.write(http(200, headers=[("Content-Length", "1234")], length=False))
            elif target == "/204":
                ex.writer.write(http(204, reason="No Content", length=False))
            else:
                ex.writer.write(http(304, headers=[("ETag", '"v1"')], reason="Not Modified"))
            await ex.writer.drain()
            return True

        async with raw_upstreams(answer) as [up], proxy_client([up.address]) as (client, _):
            async with client.head("/head") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Length"] == "1234"
                assert await resp.read() == b""
            async with client.get("/204") as resp:
                assert resp.status == 204
                assert await resp.read() == b""
            async with client.get("/304") as resp:
                assert resp.status == 304
                assert resp.headers["ETag"] == '"v1"'
            async with client.get("/204") as resp:
                assert resp.status == 204
            # HEAD ends its connection (its framing cannot be trusted); 204/304 do not.
            assert up.connections == 2
            assert [r.conn for r in up.proxied()] == [1, 2, 2, 2]

    run(scenario())


def test_interim_answers_are_skipped(run: Run) -> None:
    async def scenario() -> None:
        async def answer(ex: Exchange) -> bool:
            ex.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            ex.writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
            ex.writer.write(http(201, b"made", reason="Created"))
            await ex.writer.drain()
            return True

        async with (
            raw_upstreams(answer) as [up],
            proxy_client([up.address]) as (client, _),
            client.post("/things", data=b"x") as resp,
        ):
            assert resp.status == 201
            assert await resp.read() == b"made"
            assert "Link" not in resp.headers

    run(scenario())


# -- keep-alive ------------------------------------------------------------------------------


def test_keep_alive_reuses_one_connection(run: Run) -> None:
    async def scenario() -> None:
        async with raw_upstreams(ok()) as [up], proxy_client([up.address]) as (client, proxy):
            for i in range(20):
                async with client.post("/x", data=b"p" * i) as resp:
                    assert resp.status == 200
            assert up.connections == 1
            assert [len(r.body) for r in up.proxied()] == list(range(20))
            assert proxy.client.idle_count() == 1

    run(scenario())


def test_upstream_connection_close_is_honoured(run: Run) -> None:
    async def scenario() -> None:
        closing = ok(b"bye", [("Connection", "close")])
        http10 = _close(http(200, b"old", version="1.0"))
        async with (
            raw_upstreams(closing, http10) as ups,
            proxy_client([u.address for u in ups]) as (client, proxy),
        ):
            for _ in range(6):
                async with client.get("/") as resp:
                    assert resp.status == 200
                    assert await resp.read() in (b"bye", b"old")
            assert [u.connections for u in ups] == [3, 3]  # none reused
            assert proxy.client.idle_count() == 0

    run(scenario())


def test_idle_connection_closed_by_upstream_is_not_reused(run: Run) -> None:
    async def scenario() -> None:
        async def answer(ex: Exchange) -> bool:
            ex.writer.write(http(200, b"ok"))
            await ex.writer.drain()
            await asyncio.sleep(0.05)
            return False  # closes the idle connection, as an upstream's keep-alive timeout does

        async with raw_upstreams(answer) as [up], proxy_client([up.address]) as (client, proxy):
            for _ in range(3):
                async with client.get("/") as resp:
                    assert resp.status == 200
                await asyncio.sleep(0.2)
                assert proxy.client.idle_count() == 0  # connection_lost took it out
            assert up.connections == 3

    run(scenario())


def _race(first: Answer) -> Answer:
    """The keep-alive race: the first connection's second request finds it closing (the
    upstream closes without answering a byte); every other request gets ``first``."""

    async def answer(ex: Exchange) -> bool:
        if ex.request.conn == 1 and ex.nth == 2:
            return False
        return await first(ex)

    return answer


def test_keep_alive_race_retried_once_on_a_fresh_connection(run: Run) -> None:
    async def scenario() -> None:
        async with raw_upstreams(_race(ok())) as [up], proxy_client([up.address]) as (client, _):
            for _ in range(3):
                async with client.get("/") as resp:
                    assert resp.status == 200
            # GET 1 and 2 on connection 1 (2 unanswered), 2 again and 3 on connection 2.
            assert [r.conn for r in up.proxied()] == [1, 1, 2, 2]

    run(scenario())


def test_keep_alive_race_not_retried_for_post(run: Run) -> None:
    async def scenario() -> None:
        async with raw_upstreams(_race(ok())) as [up], proxy_client([up.address]) as (client, _):
            async with client.post("/order", data=b"1") as resp:
                assert resp.status == 200
            async with client.post("/order", data=b"2") as resp:
                # It may have been acted on before the close: not sent twice.
                assert resp.status == 502
                assert (await resp.json())["type"] == "urn:testbed:problem:unavailable"
            assert [r.body for r in up.proxied()] == [b"1", b"2"]

    run(scenario())


def test_keep_alive_race_retried_for_a_keyed_post(run: Run) -> None:
    """A draining instance closing the connection a checkout is on costs no checkout."""

    async def scenario() -> None:
        async with raw_upstreams(_race(ok())) as [up], proxy_client([up.address]) as (client, _):
            key = {"Idempotency-Key": "k-1"}
            async with client.post("/order", data=b"1", headers=key) as resp:
                assert resp.status == 200
            async with client.post("/order", data=b"2", headers=key) as resp:
                # The service answers a repeat of a key with the first outcome: sent again.
                assert resp.status == 200
            assert [r.body for r in up.proxied()] == [b"1", b"2", b"2"]

    run(scenario())


def test_reset_before_the_answer_retried_elsewhere_for_a_keyed_post(run: Run) -> None:
    async def scenario() -> None:
        broken = _close(b"HTTP/1.1 200 OK\r\nContent-Le")
        async with (
            raw_upstreams(broken, ok(b"fine")) as [bad, good],
            proxy_client([bad.address, good.address], health_interval=30) as (client, _),
        ):
            for n in range(2):  # round robin: one of the two lands on the broken one first
                headers = {"Idempotency-Key": f"k-{n}"}
                async with client.post("/", data=b"x", headers=headers) as resp:
                    assert resp.status == 200
                    assert await resp.read() == b"fine"
            posts = [r for r in bad.proxied() if r.method == "POST"]
            assert len(posts) == 1  # the broken one saw one of them, the good one both

    run(scenario())


def test_unsent_request_on_a_closing_connection_is_marked_unsent(run: Run) -> None:
    async def scenario() -> None:
        async with raw_upstreams(ok()) as [up]:
            client = UpstreamClient(connect_timeout=1, read_timeout=5, total_timeout=10)
            host = client.host(up.address)
            first = await host.acquire()
            await first.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", None, False)
            host.release(first)
            conn = host.take_idle()
            assert conn is first
            assert conn.transport is not None
            conn.transport.close()  # closing now; connection_lost not yet run
            with pytest.raises(UpstreamReset) as failed:
                await conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", None, False)
            assert failed.value.unsent
            assert failed.value.stale
            host.release(conn)
            await client.close()
            assert len(up.received) == 1

    run(scenario())


# -- failures --------------------------------------------------------------------------------


def test_reset_mid_headers_retried_only_when_safe(run: Run) -> None:
    async def scenario() -> None:
        broken = _close(b"HTTP/1.1 200 OK\r\nContent-Le")
        async with (
            raw_upstreams(broken, ok(b"fine")) as [bad, good],
            proxy_client([bad.address, good.address], health_interval=30) as (client, _),
        ):
            async with client.get("/") as resp:  # round robin: the broken one first
                assert resp.status == 200
                assert await resp.read() == b"fine"
            async with client.post("/", data=b"once") as resp:
                if resp.status != 200:  # it went to the broken one: not repeated
                    assert resp.status == 502
                    assert resp.content_type == "application/problem+json"
            posts = [r for u in (bad, good) for r in u.proxied() if r.method == "POST"]
            assert len(posts) == 1
        async with (
            raw_upstreams(broken) as [bad],
            proxy_client([bad.address]) as (client, _),
            client.get("/") as resp,
        ):
            assert resp.status == 502
            assert (await resp.json())["type"] == "urn:testbed:problem:unavailable"

    run(scenario())


def test_garbage_answer_is_502(run: Run) -> None:
    async def scenario() -> None:
        async with (
            raw_upstreams(_close(b"SMTP ready\r\n\r\n")) as [up],
            proxy_client([up.address]) as (client, proxy),
        ):
            async with client.post("/", data=b"x") as resp:
                assert resp.status == 502
            stats = proxy.metrics.instance(f"gateway@{up.address}")
            assert stats.codes == {"bad_response": 1}

    run(scenario())


def test_silent_upstream_is_504_and_not_retried(run: Run) -> None:
    async def scenario() -> None:
        async def silent(ex: Exchange) -> bool:
            await asyncio.sleep(10)
            return False

        async with (
            raw_upstreams(silent, silent) as ups,
            proxy_client([u.address for u in ups], read_timeout=0.2) as (client, _),
        ):
            started = time.monotonic()
            async with client.get("/") as resp:
                assert resp.status == 504
                assert (await resp.json())["type"] == "urn:testbed:problem:deadline-exceeded"
            assert time.monotonic() - started < 3
            assert sum(len(u.proxied()) for u in ups) == 1

    run(scenario())


def test_stall_mid_body_closes_the_client_connection(run: Run) -> None:
    async def scenario() -> None:
        async def stall(ex: Exchange) -> bool:
            ex.writer.write(http(200, headers=[("Content-Length", str(MIB))], length=False))
            ex.writer.write(b"a" * 100_000)
            await ex.writer.drain()
            await asyncio.sleep(10)
            return False

        async with (
            raw_upstreams(stall) as [up],
            proxy_client([up.address], read_timeout=0.3) as (client, _),
            client.get("/") as resp,
        ):
            assert resp.status == 200  # the answer had started: only a cut is left
            with pytest.raises(aiohttp.ClientPayloadError):
                await asyncio.wait_for(resp.read(), 5)

    run(scenario())


def test_connections_per_instance_are_bounded(run: Run) -> None:
    async def scenario() -> None:
        async def slow(ex: Exchange) -> bool:
            await asyncio.sleep(0.6 if ex.request.target == "/slow" else 0)
            ex.writer.write(http(200, b"done"))
            await ex.writer.drain()
            return True

        async with (
            raw_upstreams(slow) as [up],
            proxy_client([up.address], pool_per_host=1, connect_timeout=0.2) as (client, _),
        ):
            first = asyncio.ensure_future(client.get("/slow"))
            await asyncio.sleep(0.1)
            async with client.get("/fast") as resp:  # the one connection is busy
                assert resp.status == 503
            async with await first as resp:
                assert resp.status == 200
            async with client.get("/fast") as resp:
                assert resp.status == 200
            assert up.connections == 1

    run(scenario())


def test_waiter_gets_the_connection_freed_in_time(run: Run) -> None:
    async def scenario() -> None:
        async def slowish(ex: Exchange) -> bool:
            await asyncio.sleep(0.1)
            ex.writer.write(http(200, b"done"))
            await ex.writer.drain()
            return True

        async with (
            raw_upstreams(slowish) as [up],
            proxy_client([up.address], pool_per_host=2, connect_timeout=2) as (client, _),
        ):

            async def get() -> int:
                async with client.get("/") as resp:
                    return resp.status

            assert await asyncio.gather(*(get() for _ in range(6))) == [200] * 6
            assert up.connections == 2

    run(scenario())


def test_idle_connections_close_after_idle_timeout(run: Run) -> None:
    async def scenario() -> None:
        async with (
            raw_upstreams(ok()) as [up],
            proxy_client([up.address], idle_timeout=0.1) as (client, proxy),
        ):
            async with client.get("/") as resp:
                assert resp.status == 200
            async with asyncio.timeout(3):
                await up.wait_peer_closed()
            assert proxy.client.idle_count() == 0

    run(scenario())


# -- bodies ----------------------------------------------------------------------------------


def test_request_bodies_framed_as_the_client_sent_them(run: Run) -> None:
    async def scenario() -> None:
        large = b"L" * 200_000  # above buffer_bytes: streamed with the client's length

        async def chunks() -> AsyncIterator[bytes]:
            yield b"abc"
            yield b"defg"

        async with raw_upstreams(ok()) as [up], proxy_client([up.address]) as (client, _):
            async with client.post("/small", data=b"12345") as resp:
                assert resp.status == 200
            async with client.put("/large", data=large) as resp:
                assert resp.status == 200
            async with client.post("/chunked", data=chunks()) as resp:
                assert resp.status == 200
            async with client.post("/empty") as resp:
                assert resp.status == 200
            small, big, chunked, empty = up.proxied()
            assert (small.body, small.header("Content-Length")) == (b"12345", "5")
            assert (big.body, big.header("Content-Length")) == (large, "200000")
            assert chunked.header("Transfer-Encoding") == "chunked"
            assert chunked.body == b"abcdefg"
            assert (empty.body, empty.header("Content-Length")) == (b"", "0")
            assert up.connections == 1

    run(scenario())


def test_large_answer_to_a_slow_client_holds_bounded_memory(run: Run) -> None:
    total = 48 * MIB
    chunk = b"z" * (256 * 1024)

    async def scenario() -> None:
        written = 0

        async def flood(ex: Exchange) -> bool:
            nonlocal written
            ex.writer.write(http(200, headers=[("Content-Length", str(total))], length=False))
            while written < total:
                ex.writer.write(chunk)
                await ex.writer.drain()  # waits while the balancer does not read
                written += len(chunk)
            return True

        async with raw_upstreams(flood) as [up], proxy_client([up.address]) as (client, _):
            async with client.get("/huge") as resp:
                assert len(await resp.content.readexactly(1024)) == 1024
                await asyncio.sleep(0.5)  # the client stops reading
                # Socket buffers on both hops hold a few MiB; the balancer holds at most its
                # high-water mark. Without flow control, all 48 MiB would be written by now.
                assert written < 24 * MIB, written
                received = 1024
                while data := await resp.content.read(MIB):
                    received += len(data)
            assert received == total == written

    run(scenario())


def test_large_upload_to_a_slow_upstream_holds_bounded_memory(run: Run) -> None:
    total = 48 * MIB
    chunk = b"u" * (256 * 1024)

    async def scenario() -> None:
        produced = 0
        head_seen = asyncio.Event()
        produced_then = 0

        async def slow_reader(ex: Exchange) -> bool:
            nonlocal produced_then
            head_seen.set()
            await asyncio.sleep(0.5)  # not reading the body yet
            produced_then = produced
            body = await read_body(ex.reader, ex.request)
            ex.writer.write(http(200, str(len(body)).encode()))
            await ex.writer.drain()
            return True

        async def upload() -> AsyncIterator[bytes]:
            nonlocal produced
            while produced < total:
                produced += len(chunk)
                yield chunk

        async with (
            raw_upstreams(slow_reader, bodies=False) as [up],
            proxy_client([up.address]) as (client, _),
        ):
            async with client.post("/upload", data=upload()) as resp:
                assert resp.status == 200
                assert await resp.read() == str(total).encode()
            assert head_seen.is_set()
            assert produced_then < 24 * MIB, produced_then

    run(scenario())


def test_client_leaving_mid_answer_closes_the_upstream_connection(run: Run) -> None:
    async def scenario() -> None:
        async def endless(ex: Exchange) -> bool:
            ex.writer.write(http(200, headers=[("Transfer-Encoding", "chunked")], length=False))
            while True:
                ex.writer.write(b"4000\r\n" + b"s" * 0x4000 + b"\r\n")
                await ex.writer.drain()
                await asyncio.sleep(0.01)

        async with raw_upstreams(endless) as [up], proxy_client([up.address]) as (client, proxy):
            resp = await client.get("/stream")
            assert len(await resp.content.readexactly(1000)) == 1000
            resp.close()  # the client goes away mid-answer
            async with asyncio.timeout(5):
                await up.wait_peer_closed()
            assert proxy.client.idle_count() == 0

    run(scenario())


def test_aiohttp_upstream_through_the_client(run: Run) -> None:
    """The same client against a real aiohttp server: keep-alive, echo of a POST body."""

    async def scenario() -> None:
        up = await Upstream("aio").start()
        try:
            async with proxy_client([up.address]) as (client, proxy):
                for i in range(5):
                    async with client.post("/echo", data=b"b" * i) as resp:
                        assert resp.status == 200
                        seen = await resp.json()
                        assert seen["body_length"] == i
                        assert seen["headers"]["Host"] == up.address
                assert proxy.client.idle_count() == 1
        finally:
            await up.stop()

    run(scenario())
