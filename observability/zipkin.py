"""Spans for the trace UI: the run's span files, converted to Zipkin v2 JSON and posted to Zipkin.

Every process already writes its spans to ``<run_dir>/traces/<instance>.jsonl`` (OTLP/JSON
lines, ``observability.otlp_json``), also when Jaeger runs. The shipper reads those files from
where it stopped, converts each span to Zipkin's v2 model and POSTs batches to
``/api/v2/spans``. Nothing changes in the services: no second exporter, no extra work on their
event loops or export threads (``management.bench_trace_ship`` measures both ways; README
"Trace UI"). The files are the buffer: a batch Zipkin did not take (it is still starting, or
busy) is read again on the next round, so nothing is held in memory beyond one bounded batch.

Run by ``testbed up`` under supervisord::

    python -m observability.zipkin --traces <run>/traces --url http://127.0.0.1:<port>
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import signal
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp

from observability.logs import get_logger

__all__ = ["ShipperConfig", "ZipkinShipper", "otlp_to_zipkin", "span_lines_to_zipkin"]

_KINDS: Final = {2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
_STATUS_ERROR: Final = 2
MAX_BATCH_BYTES: Final = 512 * 1024
"""Bytes of span file read per file and round: the most the shipper holds at once."""


def _value(value: Mapping[str, Any]) -> str:
    """An OTLP ``AnyValue`` as a Zipkin tag (tags are strings)."""
    for key in ("stringValue", "intValue", "doubleValue"):
        if key in value:
            return str(value[key])
    if "boolValue" in value:
        return "true" if value["boolValue"] else "false"
    if "arrayValue" in value:
        return json.dumps([_value(v) for v in value["arrayValue"].get("values", [])])
    return ""


def _attributes(items: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    return {a["key"]: _value(a.get("value", {})) for a in items if "key" in a}


def _micros(nanos: object) -> int:
    return int(str(nanos or 0)) // 1000


def _remote_endpoint(tags: Mapping[str, str]) -> dict[str, Any]:
    """Where a client span went: ``peer.service`` names a service; an address is an address
    (an IP as a service name would show as one more service in the UI)."""
    out: dict[str, Any] = {}
    if tags.get("peer.service"):
        out["serviceName"] = tags["peer.service"]
    address, port = tags.get("server.address", ""), tags.get("server.port", "")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        if address and "serviceName" not in out:
            out["serviceName"] = address
    else:
        out["ipv4" if ip.version == 4 else "ipv6"] = address
    if port.isdigit():
        out["port"] = int(port)
    return out


def otlp_to_zipkin(request: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One ``ExportTraceServiceRequest`` (OTLP/JSON) as Zipkin v2 spans.

    The service is the resource's ``service.name``; the other resource attributes
    (``service.instance.id``, ``service.version``) become tags, so an instance can be told
    apart in the UI. An error status becomes the ``error`` tag Zipkin shows in red.
    """
    out: list[dict[str, Any]] = []
    for resource_spans in request.get("resourceSpans", ()):
        resource = _attributes(resource_spans.get("resource", {}).get("attributes", ()))
        service = resource.pop("service.name", "unknown")
        for scope_spans in resource_spans.get("scopeSpans", ()):
            for span in scope_spans.get("spans", ()):
                start = _micros(span.get("startTimeUnixNano"))
                end = _micros(span.get("endTimeUnixNano"))
                tags = {**resource, **_attributes(span.get("attributes", ()))}
                status = span.get("status", {})
                if status.get("code") == _STATUS_ERROR:
                    tags["error"] = status.get("message") or "true"
                zipkin: dict[str, Any] = {
                    "traceId": span["traceId"],
                    "id": span["spanId"],
                    "name": span.get("name", ""),
                    "timestamp": start,
                    "duration": max(end - start, 1),
                    "localEndpoint": {"serviceName": service},
                    "tags": tags,
                }
                if span.get("parentSpanId"):
                    zipkin["parentId"] = span["parentSpanId"]
                kind = _KINDS.get(int(span.get("kind", 0)))
                if kind is not None:
                    zipkin["kind"] = kind
                if kind == "CLIENT":
                    remote = _remote_endpoint(tags)
                    if remote:
                        zipkin["remoteEndpoint"] = remote
                events = span.get("events", ())
                if events:
                    zipkin["annotations"] = [
                        {"timestamp": _micros(e.get("timeUnixNano")), "value": e.get("name", "")}
                        for e in events
                    ]
                out.append(zipkin)
    return out


def span_lines_to_zipkin(lines: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """Zipkin spans of span-file lines; a line that is not OTLP/JSON is skipped."""
    for line in lines:
        try:
            yield from otlp_to_zipkin(json.loads(line))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue


@dataclass(frozen=True)
class ShipperConfig:
    traces_dir: Path
    zipkin_url: str
    """Zipkin's base URL (``/api/v2/spans`` is appended)."""
    interval_s: float = 0.5
    timeout_s: float = 5.0


@dataclass
class ZipkinShipper:
    """Follows every span file of a run and posts what is new to Zipkin."""

    config: ShipperConfig
    offsets: dict[Path, int] = field(default_factory=dict)
    shipped: int = 0

    def _read_new(self, path: Path) -> tuple[list[bytes], int]:
        """Complete lines after the file's offset (at most ``MAX_BATCH_BYTES``), and the new
        offset; a line still being written stays for the next round."""
        start = self.offsets.get(path, 0)
        with path.open("rb") as f:
            f.seek(start)
            chunk = f.read(MAX_BATCH_BYTES)
        end = chunk.rfind(b"\n")
        if end < 0:
            if len(chunk) == MAX_BATCH_BYTES:  # one line longer than a batch: skip it
                return [], start + len(chunk)
            return [], start
        return chunk[: end + 1].splitlines(), start + end + 1

    async def ship_once(self, http: aiohttp.ClientSession) -> int:
        """One round over the span files; returns spans Zipkin accepted."""
        sent = 0
        url = self.config.zipkin_url.rstrip("/") + "/api/v2/spans"
        for path in sorted(self.config.traces_dir.glob("*.jsonl")):
            lines, offset = await asyncio.to_thread(self._read_new, path)
            if offset == self.offsets.get(path, 0):
                continue
            spans = list(span_lines_to_zipkin(lines))
            if spans:
                async with http.post(url, json=spans) as resp:
                    if resp.status >= 300:
                        raise aiohttp.ClientResponseError(
                            resp.request_info, resp.history, status=resp.status
                        )
            self.offsets[path] = offset
            sent += len(spans)
        self.shipped += sent
        return sent

    async def run(self, stop: asyncio.Event) -> None:
        log = get_logger(__name__)
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        failing = False
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while not stop.is_set():
                try:
                    await self.ship_once(http)
                    if failing:
                        log.info("zipkin_reachable", shipped=self.shipped)
                    failing = False
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    if not failing:  # Zipkin still starting, or gone: the files wait
                        log.info("zipkin_unreachable", error=f"{type(exc).__name__}: {exc}")
                    failing = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.config.interval_s)
        log.info("zipkin_shipper_stopped", shipped=self.shipped)


async def _main(config: ShipperConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await ZipkinShipper(config).run(stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m observability.zipkin",
        description="Post a run's span files to Zipkin as they grow.",
    )
    parser.add_argument("--traces", type=Path, required=True, help="the run's traces/ folder")
    parser.add_argument(
        "--url", required=True, help="Zipkin's base URL, e.g. http://127.0.0.1:9411"
    )
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between rounds")
    args = parser.parse_args(argv)
    if not args.traces.is_dir():
        parser.error(f"--traces {args.traces} is not a folder (a run's traces/ folder)")
    asyncio.run(_main(ShipperConfig(args.traces, args.url, interval_s=args.interval)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
