"""What a user looks at after `testbed up`, under load, in a real headless Chromium: the trace UI
(Zipkin Lens) showing a checkout with every hop, and the dashboards view, every panel of the one
dashboard definition answering with data (the firing-alerts panel may be empty: nothing fires on
a healthy stack).

``TESTBED_SCREENSHOTS=<folder>`` saves both pages as PNG (the README's pictures come from it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from management.dashboards import console_expr, panels
from management.stack import Stack, down, up
from management.trace_ui import find_zipkin, lens_url
from mesh.errors import ConfigError
from tests.edge.support_gateway import Browser, find_chromium

CHROMIUM = find_chromium()
CHECKOUT_HOPS = {"cdn", "balancer", "gateway", "orders", "catalog", "inventory", "payments"}
API_KEY = {"X-API-Key": "demo-key", "Accept": "application/json"}


def _zipkin_missing() -> str | None:
    try:
        find_zipkin()
    except ConfigError as exc:
        return str(exc)
    return None


pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(420),
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make setup)"),
    pytest.mark.skipif(_zipkin_missing() is not None, reason=f"{_zipkin_missing()}"),
]


async def _shop(stack: Stack, stop: asyncio.Event, checkouts: list[str]) -> None:
    """Users in every region: the storefront, products, a product, a checkout, in turn."""
    pops = [i.url for i in stack.plan.instances if i.kind == "cdn"]
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for pop in itertools.cycle(pops):
            if stop.is_set():
                return
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                async with http.get(pop + "/") as resp:
                    await resp.read()
                async with http.get(pop + "/api/products?page_size=5", headers=API_KEY) as resp:
                    products = (await resp.json())["items"]
                pid = products[len(checkouts) % len(products)]["id"]
                async with http.get(f"{pop}/api/products/{pid}", headers=API_KEY) as resp:
                    await resp.read()
                async with http.post(
                    pop + "/api/checkout",
                    json={"items": [{"product_id": pid, "quantity": 1}]},
                    headers={**API_KEY, "Idempotency-Key": str(uuid.uuid4())},
                ) as resp:
                    if resp.status == 200:
                        checkouts.append((await resp.json())["id"])
            await asyncio.sleep(0.05)


async def _series(http: aiohttp.ClientSession, prometheus: str, expr: str) -> list[Any]:
    async with http.get(prometheus + "/api/v1/query", params={"query": expr}) as resp:
        body = await resp.json()
    assert body["status"] == "success", (expr, body)
    result: list[Any] = body["data"]["result"]
    return result


async def _complete_checkout_trace(http: aiohttp.ClientSession, zipkin: str) -> str | None:
    """The id of a checkout trace in Zipkin with a span from every hop, if there is one yet."""
    params = {"serviceName": "gateway", "spanName": "post /api/checkout", "limit": "20"}
    async with http.get(zipkin + "/api/v2/traces", params=params) as resp:
        traces = await resp.json()
    for trace in traces:
        if {s["localEndpoint"]["serviceName"] for s in trace} >= CHECKOUT_HOPS:
            return str(trace[0]["traceId"])
    return None


async def _until(check: Any, what: str, within: float) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within:.0f} s (last: {value!r})")
        await asyncio.sleep(1.0)


async def _screenshot(browser: Browser, name: str, *, height: int = 860) -> None:
    """The top ``height`` pixels of the page, at 70% (small enough for the README)."""
    folder = os.environ.get("TESTBED_SCREENSHOTS")
    if not folder:
        return
    clip = {"x": 0, "y": 0, "width": 1280, "height": height, "scale": 0.7}
    shot = await browser.send("Page.captureScreenshot", format="png", clip=clip)
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))


async def test_trace_ui_and_dashboards_under_load(tmp_path: Path, base_port: int) -> None:
    assert CHROMIUM is not None
    run_dir = tmp_path / "run"
    stack = await up(run_dir=run_dir, base_port=base_port, jaeger=False, trace_ui=True, within=240)
    stop = asyncio.Event()
    checkouts: list[str] = []
    shopping = asyncio.create_task(_shop(stack, stop, checkouts))
    try:
        assert stack.trace_ui_url is not None
        rows = dict(stack.where())
        assert rows["trace UI"] == stack.trace_ui_url + "/zipkin/"
        assert rows["dashboards"] == stack.dashboards_url
        assert await stack.wait_trace_ui(within=180), "Zipkin did not start"
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            # -- a checkout's trace reaches Zipkin with every hop (the shipper follows the files)
            trace_id = await _until(
                lambda: _complete_checkout_trace(http, stack.trace_ui_url or ""),
                f"a checkout trace with spans of {sorted(CHECKOUT_HOPS)} in Zipkin",
                within=90,
            )
            async with http.get(f"{stack.trace_ui_url}/api/v2/trace/{trace_id}") as resp:
                started = min(span["timestamp"] for span in await resp.json()) / 1e6

            # -- every panel's queries return series under load (alerts: none need fire)
            async def empty_panels() -> list[str]:
                missing = []
                for panel in panels():
                    for query in panel.queries:
                        found = await _series(http, stack.prometheus_url, console_expr(query.expr))
                        if not found and not panel.may_be_empty:
                            missing.append(f"{panel.title}: {console_expr(query.expr)}")
                return missing

            async def all_answer() -> bool:
                return not await empty_panels()

            with contextlib.suppress(AssertionError):
                await _until(all_answer, "every panel answering", within=90)
            assert await empty_panels() == []
        assert checkouts, "no checkout succeeded"

        async with Browser(CHROMIUM, tmp_path / "chromium-profile") as browser:
            await browser.send(
                "Emulation.setDeviceMetricsOverride",
                width=1280,
                height=1400,
                deviceScaleFactor=1,
                mobile=False,
            )
            # -- the dashboards view: every panel, its live graph drawn, its table filled
            if os.environ.get("TESTBED_SCREENSHOTS"):
                await asyncio.sleep(60)  # a picture with a minute of history on its graphs
            # (the last 90 s: the stack is young; the fragment is the console's own)
            window = quote(json.dumps({"duration": 90, "endTime": 0}, separators=(",", ":")))
            await browser.navigate(f"{stack.dashboards_url}#pctc{window}")
            titles = await browser.wait_for(
                "document.readyState === 'complete'"
                " && [...document.querySelectorAll('section.panel')].map(s => s.dataset.title)",
                within=60,
            )
            assert titles == [p.title for p in panels()]
            undrawn = (
                "[...document.querySelectorAll('section.panel')]"
                ".filter(p => p.querySelector('.graph svg path') === null)"
                ".map(p => p.dataset.title)"
            )
            deadline = time.monotonic() + 120
            while not set(missing := await browser.evaluate(undrawn)) <= {"Firing alerts"}:
                assert time.monotonic() < deadline, f"graphs not drawn: {missing}"
                await asyncio.sleep(0.5)
            text = await browser.evaluate("document.body.innerText")
            for hop in ("gateway", "orders", "payments", "cdn"):
                assert hop in text
            assert "Request rate" in text
            assert "Cache hit ratio per region" in text
            rate_rows = await browser.evaluate(
                "document.querySelector('section.panel[data-title=\"Request rate\"] table.now')"
                ".innerText"
            )
            assert "gateway" in rate_rows
            assert "/s" in rate_rows
            assert "no series now" not in rate_rows
            await _screenshot(browser, "dashboards.png", height=1400)

            # -- the trace UI on that checkout: Lens draws a span of every hop
            await browser.navigate(f"{stack.trace_ui_url}/zipkin/traces/{trace_id}")
            shown = await browser.wait_for(
                "(() => { const t = document.body.innerText.toLowerCase();"
                f" const hops = {sorted(CHECKOUT_HOPS)!r};"
                " return hops.every(h => t.includes(h)) ? t : null; })()",
                within=60,
            )
            assert "post /api/checkout" in shown
            assert "testbed.payments.v1.paymentservice/charge" in shown
            await _screenshot(browser, "trace-ui.png")

            # -- the search a chaos report links to: a window's traces of one service (here
            # the window of the checkout above, so the answer is known to be there)
            await browser.navigate(
                lens_url(stack.trace_ui_url, start=started - 1, end=started + 5, service="payments")
            )
            listed = await browser.wait_for(
                "(() => { const t = document.body.innerText;"
                " return t.includes('serviceName') && t.includes('payments')"
                " && t.includes('cdn: post /{tail}'); })()",
                within=60,
            )
            assert listed  # the filter is set and checkouts (rooted at a PoP) are listed
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(shopping, 15)
        await asyncio.to_thread(down, run_dir)
