"""Checkout clients for the soak: each places orders through a PoP or the load balancer, retries
with the same ``Idempotency-Key`` and body when it gets no answer (or a 5xx / 429), and re-sends
a share of its answered checkouts on purpose, as a client that never saw the answer would.

Every answer is kept in a ``CheckoutRecord`` (``chaos.soak.checks``): what the client was told
is what the stores are later held to. Choices (products, quantities, which checkouts are
duplicated, backoff jitter) come from a ``random.Random`` seeded per client, so one seed gives
one sequence of requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from chaos.soak.checks import Answer, CheckoutRecord, told

__all__ = ["ClientSettings", "ClientStats", "Clients"]

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True, kw_only=True)
class ClientSettings:
    clients: int = 12
    duplicate_ratio: float = 0.25
    """Share of answered checkouts sent again with the same key and body."""
    request_timeout: float = 12.0
    """One request's deadline (the gateway gives a checkout 8 s)."""
    max_tries: int = 8
    backoff_base: float = 0.2
    backoff_cap: float = 3.0
    products: int = 100
    scarce_every: int = 10
    """Every tenth product is scarce (seeded stock 2-5): a share of orders fails on stock."""
    api_key: str = "demo-key"


@dataclass
class ClientStats:
    requests: int = 0
    retries: int = 0
    duplicates: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    """HTTP status (or ``no answer``) of every request."""

    def summary(self, records: Sequence[CheckoutRecord]) -> dict[str, Any]:
        told_counts = Counter(told(r) or "unanswered" for r in records)
        return {
            "checkouts": len(records),
            "requests": self.requests,
            "retries": self.retries,
            "duplicates": self.duplicates,
            "confirmed": told_counts.get("confirmed", 0),
            "failed": told_counts.get("failed", 0),
            "pending": told_counts.get("pending", 0),
            "unanswered": told_counts.get("unanswered", 0),
            "answers": dict(sorted(self.outcomes.items())),
        }


def _product(index: int) -> str:
    return f"p-{index:03d}"


class Clients:
    """``settings.clients`` concurrent checkout loops over ``entries`` (base URLs)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        entries: Sequence[str],
        settings: ClientSettings,
        *,
        seed: int,
        run_id: str,
    ) -> None:
        if not entries:
            raise ValueError("the soak's clients need at least one entry URL (PoP or balancer)")
        self.session = session
        self.entries = [e.rstrip("/") for e in entries]
        self.settings = settings
        self.seed = seed
        self.run_id = run_id
        """Part of every key, so two soaks with one seed on one stack never share a key."""
        self.records: list[CheckoutRecord] = []
        self.stats = ClientStats()
        self.stop = asyncio.Event()
        """No new checkout once set (retries of the current one go on)."""
        self.give_up = asyncio.Event()
        """No more retries once set either."""

    async def run(self) -> None:
        """Run every client until ``stop`` is set and their last checkout is done."""
        await asyncio.gather(*(self._client(i) for i in range(self.settings.clients)))

    def _items(self, rng: random.Random) -> dict[str, int]:
        s = self.settings
        lines = 1 if rng.random() < 0.7 else 2
        picked = rng.sample(range(1, s.products + 1), k=lines)
        return {_product(i): rng.randint(1, 2) for i in picked}

    async def _client(self, index: int) -> None:
        rng = random.Random(f"{self.seed}:client:{index}")
        entry = index % len(self.entries)
        while not self.stop.is_set():
            record = CheckoutRecord(
                key=f"soak-{self.run_id}-{uuid.UUID(int=rng.getrandbits(128)).hex}",
                client=index,
                items=self._items(rng),
            )
            self.records.append(record)
            entry = await self._until_answered(record, rng, entry)
            if (
                record.answers
                and record.answers[-1].order_id
                and rng.random() < (self.settings.duplicate_ratio)
            ):
                record.duplicated = True
                self.stats.duplicates += 1
                entry = await self._until_answered(record, rng, entry + 1)
            entry += 1

    async def resend(self, records: Sequence[CheckoutRecord]) -> None:
        """Send each record once more (same key and body), a few at a time, retrying as usual."""
        queue: asyncio.Queue[CheckoutRecord] = asyncio.Queue()
        for r in records:
            queue.put_nowait(r)

        async def worker(index: int) -> None:
            rng = random.Random(f"{self.seed}:resend:{index}")
            while True:
                try:
                    record = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                await self._until_answered(record, rng, index)

        await asyncio.gather(*(worker(i) for i in range(self.settings.clients)))

    async def _until_answered(self, record: CheckoutRecord, rng: random.Random, entry: int) -> int:
        """Send until an answer that is not worth retrying; returns the entry used last."""
        s = self.settings
        for attempt in range(s.max_tries):
            if attempt:
                self.stats.retries += 1
                entry += 1  # a client that got no answer tries another way in
                delay = rng.uniform(0, min(s.backoff_cap, s.backoff_base * 2**attempt))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.give_up.wait(), timeout=delay)
                if self.give_up.is_set():
                    return entry
            answer = await self._send(self.entries[entry % len(self.entries)], record)
            record.answers.append(answer)
            if answer.http_status is not None and answer.http_status not in RETRY_STATUSES:
                return entry
        return entry

    async def _send(self, base: str, record: CheckoutRecord) -> Answer:
        s = self.settings
        self.stats.requests += 1
        body = {"items": [{"product_id": p, "quantity": q} for p, q in record.items.items()]}
        headers = {
            "X-API-Key": s.api_key,
            "Idempotency-Key": record.key,
            "Accept": "application/json",
        }
        try:
            async with self.session.post(
                base + "/api/checkout",
                json=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=s.request_timeout, connect=2.0),
            ) as resp:
                status = resp.status
                data: Any = None
                with contextlib.suppress(aiohttp.ContentTypeError, ValueError):
                    data = await resp.json()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.stats.outcomes["no answer"] += 1
            return Answer(at=time.time(), http_status=None, reason=type(exc).__name__)
        self.stats.outcomes[str(status)] += 1
        if status == 200 and isinstance(data, dict) and data.get("id"):
            return Answer(
                at=time.time(),
                http_status=status,
                order_id=str(data["id"]),
                status=str(data.get("status")),
                reason=data.get("reason"),
            )
        detail = data.get("detail") if isinstance(data, dict) else None
        return Answer(at=time.time(), http_status=status, reason=str(detail or "")[:200])
