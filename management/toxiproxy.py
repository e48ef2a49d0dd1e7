"""A small async client for the real Toxiproxy server's HTTP API, and where its binary is.

Hand-written rather than ``toxiproxy-python`` because that library is synchronous (``requests``
without timeouts) and keeps the server address in class attributes (a process-wide singleton);
the management plane needs async calls with deadlines against one server per stack.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from management.plan import ProxyPlan
from mesh.errors import ConfigError, TestbedError

__all__ = ["ToxiproxyClient", "ToxiproxyError", "find_binary"]

REPO_ROOT = Path(__file__).resolve().parents[1]
INSTALL_HINT = "run `make setup` (it builds Toxiproxy into tools/bin/)"


class ToxiproxyError(TestbedError):
    """Toxiproxy refused a request or could not be reached."""


def find_binary(name: str, *, env_var: str, hint: str) -> str:
    """``$env_var``, else ``tools/bin/<name>`` of this checkout, else ``<name>`` on PATH."""
    override = os.environ.get(env_var)
    candidates = [override] if override else []
    candidates.append(str(REPO_ROOT / "tools" / "bin" / name))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if found:
        return found
    raise ConfigError(f"{name} is not installed (looked in {candidates[-1]} and PATH): {hint}")


class ToxiproxyClient:
    """Talks to one Toxiproxy server at ``http://127.0.0.1:<port>``."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, *, timeout: float = 3.0):
        self._session = session
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            async with self._session.request(
                method, self.base_url + path, json=body, timeout=self._timeout
            ) as resp:
                text = await resp.text()
                if resp.status >= 300:
                    raise ToxiproxyError(f"toxiproxy {method} {path}: {resp.status} {text.strip()}")
                return await resp.json(content_type=None) if text.strip() else None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ToxiproxyError(f"toxiproxy at {self.base_url} unreachable: {exc!r}") from None

    async def version(self) -> str:
        try:
            async with self._session.get(self.base_url + "/version", timeout=self._timeout) as resp:
                return (await resp.text()).strip()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ToxiproxyError(f"toxiproxy at {self.base_url} unreachable: {exc!r}") from None

    async def proxies(self) -> dict[str, Any]:
        found = await self._call("GET", "/proxies")
        return dict(found or {})

    async def populate(self, proxies: Sequence[ProxyPlan]) -> None:
        """Create (or update) proxies in one call, then add each one's latency toxic."""
        if not proxies:
            return
        body = [
            {"name": p.name, "listen": p.listen, "upstream": p.upstream, "enabled": True}
            for p in proxies
        ]
        await self._call("POST", "/populate", body)
        for p in proxies:
            if p.latency_ms > 0:
                await self.set_latency(p.name, p.latency_ms, p.jitter_ms, toxic="region_latency")

    async def set_latency(
        self, proxy: str, latency_ms: float, jitter_ms: float = 0.0, *, toxic: str = "latency"
    ) -> None:
        """Add (or replace) a latency toxic on the answers coming back through ``proxy``."""
        existing = await self._call("GET", f"/proxies/{proxy}/toxics") or []
        if any(t.get("name") == toxic for t in existing):
            await self._call("DELETE", f"/proxies/{proxy}/toxics/{toxic}")
        await self._call(
            "POST",
            f"/proxies/{proxy}/toxics",
            {
                "name": toxic,
                "type": "latency",
                "stream": "downstream",
                "toxicity": 1.0,
                "attributes": {"latency": int(latency_ms), "jitter": int(jitter_ms)},
            },
        )

    async def delete(self, names: Iterable[str]) -> None:
        for name in names:
            try:
                await self._call("DELETE", f"/proxies/{name}")
            except ToxiproxyError as exc:
                if "404" not in str(exc):
                    raise
