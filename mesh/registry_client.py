"""A small async client for the registry's HTTP API (``management/registry/routes.py``).

Used by the self-registration of every process (``mesh.registration``), by the
registry-backed discovery (``mesh.registry_discovery``) and by the management plane (status,
drain before a rolling restart). Every call has an explicit deadline.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from mesh.discovery import Instance
from mesh.errors import TestbedError

__all__ = [
    "Drained",
    "NotRegistered",
    "RegistryClient",
    "RegistryError",
    "RegistryUnavailable",
    "ServiceView",
]


class RegistryError(TestbedError):
    """The registry answered with an error."""


class RegistryUnavailable(RegistryError):
    """The registry could not be reached (or did not answer in time)."""


class NotRegistered(RegistryError):
    """A heartbeat for an instance the registry does not know: register again."""


class Drained(RegistryError):
    """The management plane drained this instance: stop heartbeating, do not register again."""


@dataclass(frozen=True)
class ServiceView:
    """One answer about a service: its instances, the index to watch from, the registry epoch."""

    service: str
    index: int
    epoch: str
    instances: tuple[Instance, ...]


def _instance(raw: Mapping[str, Any]) -> Instance:
    return Instance(
        id=str(raw["id"]),
        address=str(raw["address"]),
        version=str(raw.get("version", "v1")),
        metadata={str(k): str(v) for k, v in dict(raw.get("metadata") or {}).items()},
    )


class RegistryClient:
    """Calls one registry at ``base_url`` through the caller's session."""

    def __init__(
        self, session: aiohttp.ClientSession, base_url: str, *, timeout: float = 2.0
    ) -> None:
        self._session = session
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout

    def _url(self, service: str, instance_id: str | None = None, suffix: str = "") -> str:
        url = f"{self.base_url}/v1/services/{service}"
        if instance_id is not None:
            url += f"/instances/{instance_id}"
        return url + suffix

    async def _request(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        within: float | None = None,
    ) -> tuple[int, Any]:
        deadline = aiohttp.ClientTimeout(total=within or self._timeout)
        try:
            async with self._session.request(
                method, url, json=json, params=params, timeout=deadline
            ) as resp:
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    body = None
                return resp.status, body
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise RegistryUnavailable(f"registry at {self.base_url} unreachable: {exc!r}") from None

    @staticmethod
    def _fail(status: int, body: Any) -> RegistryError:
        message = body.get("message") if isinstance(body, dict) else None
        return RegistryError(f"registry answered {status}: {message or body!r}")

    async def register(
        self,
        service: str,
        instance_id: str,
        *,
        address: str,
        session_id: str,
        version: str = "v1",
        metadata: Mapping[str, str] | None = None,
        ttl: float | None = None,
    ) -> float:
        """Register (or re-register) an instance; returns the TTL the registry granted."""
        body: dict[str, Any] = {
            "address": address,
            "version": version,
            "metadata": dict(metadata or {}),
            "session": session_id,
        }
        if ttl is not None:
            body["ttl_seconds"] = ttl
        status, answer = await self._request("PUT", self._url(service, instance_id), json=body)
        if status == 410:
            raise Drained(f"{service}/{instance_id} was drained")
        if status != 200 or not isinstance(answer, dict):
            raise self._fail(status, answer)
        return float(answer["ttl_seconds"])

    async def heartbeat(self, service: str, instance_id: str, session_id: str) -> float:
        """Renew the TTL; raises ``NotRegistered`` (register again) or ``Drained`` (stop)."""
        status, answer = await self._request(
            "PUT", self._url(service, instance_id, "/heartbeat"), json={"session": session_id}
        )
        if status == 404:
            raise NotRegistered(f"{service}/{instance_id} is not registered")
        if status == 410:
            raise Drained(f"{service}/{instance_id} was drained")
        if status != 200 or not isinstance(answer, dict):
            raise self._fail(status, answer)
        return float(answer["ttl_seconds"])

    async def deregister(
        self, service: str, instance_id: str, session_id: str | None = None
    ) -> bool:
        """Remove the registration (only this session's, when given); True if it existed."""
        params = {"session": session_id} if session_id else None
        status, answer = await self._request(
            "DELETE", self._url(service, instance_id), params=params
        )
        if status != 200 or not isinstance(answer, dict):
            raise self._fail(status, answer)
        return bool(answer.get("removed"))

    async def drain(self, service: str, instance_id: str) -> bool:
        """Deregister an instance and keep that process from registering again."""
        status, answer = await self._request("POST", self._url(service, instance_id, "/drain"))
        if status != 200 or not isinstance(answer, dict):
            raise self._fail(status, answer)
        return bool(answer.get("removed"))

    async def service(
        self,
        service: str,
        *,
        index: int | None = None,
        epoch: str | None = None,
        wait: float = 0.0,
    ) -> ServiceView:
        """The instances of ``service``; with ``index`` and ``wait``, a blocking query."""
        params: dict[str, str] = {}
        if index is not None and wait > 0:
            params = {"index": str(index), "wait": f"{wait:g}"}
            if epoch:
                params["epoch"] = epoch
        status, answer = await self._request(
            "GET", self._url(service), params=params, within=wait + self._timeout
        )
        if status != 200 or not isinstance(answer, dict):
            raise self._fail(status, answer)
        return ServiceView(
            service=service,
            index=int(answer["index"]),
            epoch=str(answer.get("epoch", "")),
            instances=tuple(_instance(raw) for raw in answer["instances"]),
        )

    async def services(self) -> dict[str, tuple[Instance, ...]]:
        """Every service with its live instances."""
        status, answer = await self._request("GET", f"{self.base_url}/v1/services")
        if status != 200 or not isinstance(answer, dict):
            raise self._fail(status, answer)
        return {
            str(name): tuple(_instance(raw) for raw in items)
            for name, items in dict(answer["services"]).items()
        }
