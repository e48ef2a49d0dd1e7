"""The storefront in a real headless Chromium: it lists the products, places an order through
the public API and shows the order and its status, against the real gateway and services."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.edge.support_gateway import (
    DEMO_KEY,
    Browser,
    find_chromium,
    start_stack,
)
from tests.support.processes import Spawner

CHROMIUM = find_chromium()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"
    ),
]


async def test_storefront_places_an_order_in_a_browser(spawner: Spawner, tmp_path: Path) -> None:
    assert CHROMIUM is not None
    stack = await start_stack(spawner, gateway_env={"GATEWAY_API_KEYS": f"{DEMO_KEY}:200:400"})
    async with Browser(CHROMIUM, tmp_path / "chromium-profile") as browser:
        await browser.navigate(stack.gateway.url + "/")
        count = await browser.wait_for("document.querySelectorAll('li.product').length")
        assert count >= 1
        # The fingerprinted stylesheet and the generated images really loaded.
        assert await browser.evaluate("getComputedStyle(document.body).backgroundColor") == (
            "rgb(246, 247, 251)"
        )
        await browser.wait_for(
            "[...document.querySelectorAll('li.product img')].every(i => i.complete)"
            " && document.querySelector('li.product img').naturalWidth === 200"
        )
        product_id = await browser.evaluate(
            "document.querySelector('li.product').dataset.productId"
        )

        # A user picks 2 of the first product and places the order.
        await browser.evaluate(
            """(() => {
                const input = document.querySelector('input.quantity');
                input.value = '2';
                input.dispatchEvent(new Event('input', {bubbles: true}));
                document.querySelector('#place-order').click();
            })()"""
        )
        status = await browser.wait_for(
            "(() => { const o = document.querySelector('#order');"
            " return !o.hidden && ['confirmed', 'failed'].includes(o.dataset.status)"
            " ? o.dataset.status : null; })()",
            within=30,
        )
        order_id = await browser.evaluate("document.querySelector('#order-id').textContent")
        shown_status = await browser.evaluate("document.querySelector('#order-status').textContent")
        error = await browser.evaluate("document.querySelector('#checkout-message').textContent")
        assert error == ""
        assert status == "confirmed"
        assert shown_status == "confirmed"
        assert order_id

    # The page showed what the API says about that order.
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
        http.get(
            f"{stack.gateway.url}/api/orders/{order_id}", headers={"X-API-Key": DEMO_KEY}
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
        order = await resp.json()
    assert order["status"] == "confirmed"
    assert order["items"] == [
        {
            "product_id": product_id,
            "quantity": 2,
            "unit_price_cents": order["items"][0]["unit_price_cents"],
        }
    ]
