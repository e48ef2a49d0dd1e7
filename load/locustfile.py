"""Shoppers of the testbed's shop, as Locust users: one class per region, each through its PoP.

A shopper's day: open the storefront and the product list (cacheable, served by the PoP),
look at a product (the gateway aggregates catalog, availability and recommendations), now and
then check out (``POST /api/checkout`` with an ``Idempotency-Key``) and look the order up.
Regions are weighted (``us`` 5, ``eu`` 3, ``sa`` 2) and each region's users go through their
own PoP (``--tb-pops sa=http://...,us=...,eu=...``).

Two modes share the journeys:

* closed loop (default): ``Shopper*`` users, each doing one journey after another with a think
  time; the shape (``--tb-shape``) scales the number of users.
* open loop (``--tb-rate R``): ``Arrivals*`` users start journeys at a fixed rate (R per second
  in total, scaled by the shape) without waiting for the previous one, so a slow system keeps
  receiving the load asked of it. Journeys that find every slot busy are counted as failures
  (``name=arrival-dropped``) rather than quietly skipped.

Run through ``testbed load`` (or ``python -m locust -f load/locustfile.py --headless ...``).
On quitting, the exit code is set from the SLO gate (``--tb-max-error-ratio``,
``--tb-max-p99-ms``).
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable
from typing import Any, ClassVar

import gevent  # type: ignore[import-untyped]
import locust.stats
from gevent.pool import Pool  # type: ignore[import-untyped]
from locust import LoadTestShape, events, task
from locust.contrib.fasthttp import FastHttpUser
from locust.env import Environment
from locust.runners import WorkerRunner

from load.shapes import SHAPES, ShapeName, level

# Write the stats history every second (Locust's default flush is every 5 s) so the chaos
# runner's live view and safeguards lag the load by at most about two seconds.
locust.stats.CSV_STATS_FLUSH_INTERVAL_SEC = 1

REQUEST_TIMEOUT_S = 10.0
"""A request that takes longer fails, so a hung system shows up as errors, not silence."""
MAX_IN_FLIGHT_PER_USER = 50
BUSINESS_OUTCOMES = ("stock", "declined")
"""A checkout that fails for one of these reasons is the shop working, not an error."""
PRODUCT_COUNT = 100


def _options(parser: Any) -> None:
    group = parser.add_argument_group("testbed shoppers")
    group.add_argument("--tb-pops", default="", help="region=url,... of the CDN PoPs")
    group.add_argument("--tb-api-key", default="demo-key", help="X-API-Key for /api/")
    group.add_argument("--tb-users", type=int, default=10, help="peak users (or slots)")
    group.add_argument("--tb-spawn-rate", type=float, default=20.0)
    group.add_argument("--tb-rate", type=float, default=0.0, help="open loop: journeys/s")
    group.add_argument("--tb-shape", default="steady", choices=list(SHAPES))
    group.add_argument("--tb-duration", type=float, default=60.0, help="seconds")
    group.add_argument("--tb-checkout-weight", type=int, default=2)
    group.add_argument("--tb-max-error-ratio", type=float, default=-1.0)
    group.add_argument("--tb-max-p99-ms", type=float, default=-1.0)
    group.add_argument("--tb-seed", type=int, default=0)


def _pops(raw: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in raw.split(","):
        region, sep, url = part.strip().partition("=")
        if sep and region and url:
            out[region.strip()] = url.strip().rstrip("/")
    return out


class _Shopper(FastHttpUser):
    """The journeys every shopper makes; subclasses set the region (and so the PoP)."""

    abstract = True
    region: ClassVar[str] = ""
    network_timeout = REQUEST_TIMEOUT_S
    connection_timeout = REQUEST_TIMEOUT_S
    host = "http://127.0.0.1"  # replaced by the region's PoP in __init__

    def __init__(self, environment: Environment) -> None:
        opts = environment.parsed_options
        pops = _pops(getattr(opts, "tb_pops", "") if opts else "")
        host = pops.get(self.region) or (next(iter(pops.values()), None) if pops else None)
        self.host = host or environment.host or self.host
        super().__init__(environment)
        self.api_key = getattr(opts, "tb_api_key", "demo-key") if opts else "demo-key"
        self.checkout_weight = getattr(opts, "tb_checkout_weight", 2) if opts else 2
        self.rng = random.Random()
        self.product_ids: list[str] = []
        self.orders: list[str] = []

    @property
    def api_headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key, "Accept": "application/json"}

    # -- journeys ------------------------------------------------------------------------------
    def browse(self) -> None:
        """The storefront page and the product list: cacheable, mostly served by the PoP."""
        with self.client.get("/", name="storefront", catch_response=True) as resp:
            if resp.status_code != 200 or "<html" not in (resp.text or "").lower():
                resp.failure(f"storefront: status {resp.status_code}, not an HTML page")
        with self.client.get(
            "/api/products?page_size=50",
            name="products",
            headers=self.api_headers,
            catch_response=True,
        ) as resp:
            items = _json_items(resp.text) if resp.status_code == 200 else None
            if items is None:
                resp.failure(f"products: status {resp.status_code}, no item list")
            elif items:
                self.product_ids = [str(i["id"]) for i in items if "id" in i]

    def product(self) -> None:
        """One product page, aggregated by the gateway (degraded parts are fine, not errors)."""
        pid = self._pick_product()
        with self.client.get(
            f"/api/products/{pid}",
            name="product",
            headers=self.api_headers,
            catch_response=True,
        ) as resp:
            body = _json(resp.text) if resp.status_code == 200 else None
            if not isinstance(body, dict) or body.get("product", {}).get("id") != pid:
                resp.failure(f"product: status {resp.status_code}, not product {pid}")

    def checkout(self) -> None:
        """Place an order with an Idempotency-Key (retried once with the same key on error)."""
        key = str(uuid.uuid4())
        items = [{"product_id": self._pick_product(), "quantity": self.rng.randint(1, 2)}]
        headers = {**self.api_headers, "Idempotency-Key": key}
        with self.client.post(
            "/api/checkout",
            name="checkout",
            json={"items": items},
            headers=headers,
            catch_response=True,
        ) as resp:
            body = _json(resp.text) if resp.status_code == 200 else None
            if not isinstance(body, dict) or not body.get("id"):
                resp.failure(f"checkout: status {resp.status_code}: {(resp.text or '')[:120]}")
                return
            status = body.get("status")
            reason = str(body.get("reason") or "")
            if status == "failed" and not any(w in reason for w in BUSINESS_OUTCOMES):
                resp.failure(f"checkout: order failed: {body.get('reason')}")
                return
            if status not in ("confirmed", "pending", "failed"):
                resp.failure(f"checkout: unexpected order status {status!r}")
                return
            self.orders = [*self.orders[-9:], str(body["id"])]
        if self.orders:
            self.order_status()

    def order_status(self) -> None:
        oid = self.rng.choice(self.orders)
        with self.client.get(
            f"/api/orders/{oid}", name="order", headers=self.api_headers, catch_response=True
        ) as resp:
            body = _json(resp.text) if resp.status_code == 200 else None
            if not isinstance(body, dict) or body.get("id") != oid:
                resp.failure(f"order: status {resp.status_code}, not order {oid}")

    def journey(self) -> None:
        """One visit, weighted like real traffic: mostly browsing, sometimes buying."""
        roll = self.rng.randrange(10 + self.checkout_weight)
        if roll < 4:
            self.browse()
        elif roll < 10:
            self.product()
        else:
            self.checkout()

    def _pick_product(self) -> str:
        if self.product_ids:
            return self.rng.choice(self.product_ids)
        return f"p-{self.rng.randint(1, PRODUCT_COUNT):03d}"


def _json(text: str | None) -> Any:
    try:
        return json.loads(text or "")
    except ValueError:
        return None


def _json_items(text: str | None) -> list[dict[str, Any]] | None:
    body = _json(text)
    if isinstance(body, dict) and isinstance(body.get("items"), list):
        return [i for i in body["items"] if isinstance(i, dict)]
    return None


# ---- closed loop: users with think time --------------------------------------------------------
class _ClosedShopper(_Shopper):
    abstract = True

    def wait_time(self) -> float:
        return self.rng.uniform(0.5, 1.5)

    @task(4)
    def browse_task(self) -> None:
        self.browse()

    @task(6)
    def product_task(self) -> None:
        self.product()

    @task(2)
    def checkout_task(self) -> None:
        if self.checkout_weight > 0:
            self.checkout()
        else:
            self.product()


class ShopperUS(_ClosedShopper):
    region = "us"
    weight = 5


class ShopperEU(_ClosedShopper):
    region = "eu"
    weight = 3


class ShopperSA(_ClosedShopper):
    region = "sa"
    weight = 2


# ---- open loop: a constant arrival rate ---------------------------------------------------------
class _Arrivals(_Shopper):
    """Starts journeys on a fixed schedule; each user carries its share of the total rate."""

    abstract = True

    def wait_time(self) -> float:
        return 0.0

    @task
    def arrivals(self) -> None:
        opts = self.environment.parsed_options
        total_rate = float(getattr(opts, "tb_rate", 0.0) or 0.0)
        shape: ShapeName = getattr(opts, "tb_shape", "steady")
        duration = float(getattr(opts, "tb_duration", 60.0))
        pool = Pool(MAX_IN_FLIGHT_PER_USER)
        elapsed = _run_clock(self.environment)
        next_at = time.monotonic()
        while True:
            lvl = level(shape, elapsed(), duration)
            users = _slots(self.environment)
            if lvl is None or total_rate <= 0:
                gevent.sleep(0.5)
                if lvl is None:
                    pool.join(timeout=REQUEST_TIMEOUT_S)
                    return
                continue
            interval = users / (total_rate * lvl)
            next_at += interval
            if pool.full():
                self.environment.events.request.fire(
                    request_type="ARRIVAL",
                    name="arrival-dropped",
                    response_time=0,
                    response_length=0,
                    exception=RuntimeError("every slot busy"),
                    context={},
                )
            else:
                pool.spawn(self.journey)
            delay = next_at - time.monotonic()
            if delay > 0:
                gevent.sleep(delay)
            elif delay < -5 * interval:
                next_at = time.monotonic()  # far behind (a stall): do not burst to catch up


def _slots(environment: Environment) -> int:
    """How many arrival users share the total rate.

    One process: the users running now (so the rate is right while they spawn). A worker of a
    distributed run sees only its own users, so it divides by the run's total (``--tb-users``,
    which the open-loop shape keeps constant), and all workers together start ``rate``
    journeys a second, as one process would.
    """
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        opts = environment.parsed_options
        return max(1, int(getattr(opts, "tb_users", 1) or 1))
    return max(1, runner.user_count if runner else 1)


def _run_clock(environment: Environment) -> Callable[[], float]:
    """Seconds since the run started (the shape's clock, so users and shape agree; a worker,
    where the shape does not run, counts from its first journey)."""
    shape = environment.shape_class
    if isinstance(shape, LoadTestShape) and not isinstance(environment.runner, WorkerRunner):
        return lambda: time.perf_counter() - float(shape.start_time)
    started = time.monotonic()
    return lambda: time.monotonic() - started


class ArrivalsUS(_Arrivals):
    region = "us"
    weight = 5


class ArrivalsEU(_Arrivals):
    region = "eu"
    weight = 3


class ArrivalsSA(_Arrivals):
    region = "sa"
    weight = 2


# ---- the shape and the SLO gate ----------------------------------------------------------------
class ShopperShape(LoadTestShape):
    """Closed loop: users follow the shape; open loop: all slots start, the rate follows it."""

    def tick(self) -> tuple[int, float] | None:
        assert self.runner is not None
        opts = self.runner.environment.parsed_options
        users = int(getattr(opts, "tb_users", 10))
        spawn_rate = float(getattr(opts, "tb_spawn_rate", 20.0))
        shape: ShapeName = getattr(opts, "tb_shape", "steady")
        duration = float(getattr(opts, "tb_duration", 60.0))
        lvl = level(shape, time.perf_counter() - float(self.start_time), duration)
        if lvl is None:
            return None
        if float(getattr(opts, "tb_rate", 0.0) or 0.0) > 0:
            return users, spawn_rate
        return max(1, round(users * lvl)), spawn_rate


def _slo_gate(environment: Environment, **_: Any) -> None:
    """Exit non-zero when the run missed its SLO (error ratio, p99), else 0.

    In a distributed run the master's statistics are the whole run's; a worker's are only what
    it has not yet reported, so the gate is the master's alone."""
    if isinstance(environment.runner, WorkerRunner):
        return
    opts = environment.parsed_options
    total = environment.stats.total
    max_ratio = float(getattr(opts, "tb_max_error_ratio", -1.0))
    max_p99 = float(getattr(opts, "tb_max_p99_ms", -1.0))
    missed = []
    if total.num_requests == 0:
        missed.append("no request completed")
    if max_ratio >= 0 and total.fail_ratio > max_ratio:
        missed.append(f"error ratio {total.fail_ratio:.4f} > {max_ratio}")
    p99 = total.get_response_time_percentile(0.99) or 0
    if max_p99 >= 0 and p99 > max_p99:
        missed.append(f"p99 {p99:.0f} ms > {max_p99:.0f} ms")
    if missed:
        print("SLO gate missed: " + "; ".join(missed), flush=True)
        environment.process_exit_code = 1
    else:
        environment.process_exit_code = 0


events.init_command_line_parser.add_listener(_options)  # type: ignore[no-untyped-call]
events.quitting.add_listener(_slo_gate)  # type: ignore[no-untyped-call]
