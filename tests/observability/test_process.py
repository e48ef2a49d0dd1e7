"""Real processes: graceful shutdown and drain, span files at exit, a trace across two processes."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from observability.spans import SpanKind, load_spans
from tests.support.processes import Proc, Spawner

MODULE = "tests.observability.app_under_test"
TIMEOUT = aiohttp.ClientTimeout(total=20)
ECHO = "testbed.echo.v1.EchoService"


async def in_flight(session: aiohttp.ClientSession, proc: Proc) -> float:
    async with session.get(proc.url + "/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith("http_server_requests_in_flight "):
            return float(line.split()[1])
    raise AssertionError("no in-flight gauge on /metrics")


async def until_in_flight(
    session: aiohttp.ClientSession, proc: Proc, request: asyncio.Task[Any]
) -> None:
    """Wait until ``request`` is being handled (in flight: it and the scrape itself)."""
    deadline = time.monotonic() + 20
    while await in_flight(session, proc) < 2:
        assert not request.done(), "the request ended before shutdown began"
        assert time.monotonic() < deadline, "the request never reached the server"


async def wait_exit(proc: Proc, within: float = 20.0) -> int:
    assert proc.popen is not None
    deadline = time.monotonic() + within
    while True:
        code = proc.popen.poll()
        if code is not None:
            return code
        assert time.monotonic() < deadline, f"{proc.name} did not exit:\n{proc.log_tail()}"
        await asyncio.sleep(0.05)


def log_lines(proc: Proc) -> list[dict[str, Any]]:
    lines = []
    for raw in proc.log_path.read_text().splitlines():
        if raw.startswith("{"):
            lines.append(json.loads(raw))
    return lines


async def test_sigterm_fails_readiness_then_drains_in_flight_requests(
    spawner: Spawner, tmp_path: Path
) -> None:
    proc = spawner.start(MODULE, env={"TESTBED_DRAIN_SECONDS": "15"})
    await proc.wait_ready()
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        slow = asyncio.create_task(session.get(proc.url + "/slow?seconds=1.5"))
        await until_in_flight(session, proc, slow)
        proc.signal(signal.SIGTERM)

        saw_draining = False
        while not slow.done():
            try:
                async with session.get(proc.url + "/readyz") as resp:
                    if resp.status == 503 and (await resp.json())["status"] == "draining":
                        saw_draining = True
                        break
            except aiohttp.ClientError:
                break
        assert saw_draining, "readiness did not fail while a request was in flight"

        resp = await slow
        assert resp.status == 200
        assert await resp.json() == {"slept": 1.5}
    assert await wait_exit(proc) == 0

    events = [line["event"] for line in log_lines(proc)]
    assert events.index("shutdown_started") < events.index("drained")
    assert events[-1] == "shutdown_complete"
    names = [s.name for s in load_spans(tmp_path / "run")]
    assert "GET /slow" in names  # spans flushed at exit


async def test_drain_is_bounded(spawner: Spawner) -> None:
    proc = spawner.start(MODULE, env={"TESTBED_DRAIN_SECONDS": "0.5"})
    await proc.wait_ready()
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        stuck = asyncio.create_task(session.get(proc.url + "/slow?seconds=30"))
        await until_in_flight(session, proc, stuck)
        proc.signal(signal.SIGTERM)
        assert await wait_exit(proc) == 0
        with pytest.raises(aiohttp.ClientError):
            await stuck


async def test_errors_and_logs_of_a_real_process(spawner: Spawner) -> None:
    proc = spawner.start(MODULE)
    await proc.wait_ready()
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.get(proc.url + "/boom", headers={"traceparent": traceparent}) as resp,
    ):
        assert resp.status == 500
        assert await resp.json() == {
            "code": "internal",
            "message": "internal error",
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        }
    proc.stop()
    lines = [
        line
        for line in log_lines(proc)
        if line.get("trace_id") == "4bf92f3577b34da6a3ce929d0e0e4736"
    ]
    events = [line["event"] for line in lines]
    assert events == ["unhandled_exception", "request"]
    assert "RuntimeError: the handler failed on purpose" in lines[0]["exception"]
    assert lines[1]["status"] == 500


async def test_a_call_across_two_processes_is_one_trace(spawner: Spawner, tmp_path: Path) -> None:
    back = spawner.start("tests.support.echo", name="echo-back")
    front = spawner.start(
        "tests.support.echo",
        name="front-1",
        env={"TESTBED_SERVICE": "front", "TESTBED_UPSTREAMS": f"echo={back.address}"},
    )
    await asyncio.gather(back.wait_ready(), front.wait_ready())
    trace_id = "5bf92f3577b34da6a3ce929d0e0e4736"
    caller_span = "10f067aa0ba902b7"
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        async with session.post(
            f"{front.url}/{ECHO}/Chain",
            json={"method": "Echo", "text": "hi"},
            headers={"traceparent": f"00-{trace_id}-{caller_span}-01"},
        ) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["downstream"]["text"] == "hi"
        async with session.get(back.url + "/metrics") as resp:
            back_metrics = await resp.text()
        async with session.get(front.url + "/metrics") as resp:
            front_metrics = await resp.text()
    assert front.stop() == 0  # flushes spans
    assert back.stop() == 0

    served = [
        line
        for line in back_metrics.splitlines()
        if line.startswith("http_server_requests_total{")
        and f'route="/{ECHO}/Echo"' in line
        and 'code="200"' in line
    ]
    assert served, back_metrics
    assert float(served[0].split()[-1]) == 1.0
    assert f'route="/{ECHO}/Chain"' in front_metrics
    assert 'upstream="echo"' in front_metrics  # the mesh's client-side metrics

    spans = [s for s in load_spans(tmp_path / "run") if s.trace_id == trace_id]
    (front_server,) = [s for s in spans if s.service == "front" and s.kind is SpanKind.SERVER]
    (client,) = [s for s in spans if s.kind is SpanKind.CLIENT]
    (back_server,) = [s for s in spans if s.service == "echo" and s.kind is SpanKind.SERVER]
    assert front_server.name == f"POST /{ECHO}/Chain"
    assert front_server.parent_span_id == caller_span
    assert client.service == "front"
    assert client.parent_span_id == front_server.span_id
    assert back_server.name.endswith(f"/{ECHO}/Echo")
    assert back_server.parent_span_id == client.span_id
    assert back_server.instance_id == "echo-back"
    assert back_server.attributes["http.response.status_code"] == 200

    back_lines = [line for line in log_lines(back) if line.get("trace_id") == trace_id]
    (request_line,) = [line for line in back_lines if line["event"] == "request"]
    assert request_line["route"] == f"/{ECHO}/Echo"
    assert request_line["span_id"] == back_server.span_id
    front_lines = [line for line in log_lines(front) if line.get("trace_id") == trace_id]
    assert any(line["event"] == "request" for line in front_lines)
