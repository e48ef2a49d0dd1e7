"""``testbed traces`` on span files in a run folder: tables, JSON and the SVG picture."""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from chaos.traces_cli import SVG_NAME, traces

NOW_NS = int(time.time() * 1e9)


def _span(trace: int, span: int, parent: int | None, name: str, kind: int, start_ms: float,
          end_ms: float, attrs: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    out: dict[str, Any] = {
        "traceId": f"{trace:032x}",
        "spanId": f"{span:016x}",
        "name": name,
        "kind": kind,
        "startTimeUnixNano": str(NOW_NS - 10_000_000_000 + int(start_ms * 1e6)),
        "endTimeUnixNano": str(NOW_NS - 10_000_000_000 + int(end_ms * 1e6)),
        "attributes": [
            {"key": k, "value": {"intValue": str(v)} if isinstance(v, int) else {"stringValue": v}}
            for k, v in (attrs or {}).items()
        ],
    }
    if parent is not None:
        out["parentSpanId"] = f"{parent:016x}"
    return out


def _write(run: Path, service: str, spans: list[dict[str, Any]]) -> None:
    line = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [
                        {"key": "service.name", "value": {"stringValue": service}},
                        {"key": "service.instance.id", "value": {"stringValue": f"{service}-1"}},
                    ]
                },
                "scopeSpans": [{"scope": {"name": "testbed"}, "spans": spans}],
            }
        ]
    }
    (run / "traces").mkdir(parents=True, exist_ok=True)
    with (run / "traces" / f"{service}-1.jsonl").open("a") as f:
        f.write(json.dumps(line) + "\n")


def _run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    for t in range(1, 4):
        base = 10 * t
        gw, gw_c, orders, o_c, pay = (base + i for i in range(5))
        _write(run, "gateway", [
            _span(t, gw, None, "POST /api/checkout", 2, 0, 50, {"http.route": "/api/checkout"}),
            _span(t, gw_c, gw, "OrderService/PlaceOrder", 3, 5, 45,
                  {"testbed.rpc.upstream": "orders"}),
        ])  # fmt: skip
        _write(run, "orders", [
            _span(t, orders, gw_c, "POST /PlaceOrder", 2, 6, 44),
            _span(t, o_c, orders, "PaymentService/Charge", 3, 10, 40,
                  {"testbed.rpc.upstream": "payments"}),
        ])  # fmt: skip
        _write(run, "payments", [_span(t, pay, o_c, "POST /Charge", 2, 11, 30 + t)])
    return run


def test_traces_prints_the_map_and_hops_and_writes_an_svg(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    result = CliRunner().invoke(traces, ["--run-dir", str(run)])
    assert result.exit_code == 0, result.output
    assert "gateway -> orders" in result.output
    assert "orders -> payments" in result.output
    assert "POST /api/checkout" in result.output
    assert str(run / SVG_NAME) in result.output
    svg = ET.parse(run / SVG_NAME).getroot()
    texts = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    assert {"gateway", "orders", "payments"} <= set(texts)
    assert texts.count("3") == 2  # each edge labelled with its 3 calls
    assert len(list(svg.iter("{http://www.w3.org/2000/svg}path"))) >= 2


def test_traces_json_and_since(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    result = CliRunner().invoke(traces, ["--run-dir", str(run), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["spans"], data["traces"]) == (15, 3)
    edges = {(e["caller"], e["callee"]): e for e in data["service_map"]["edges"]}
    assert edges[("orders", "payments")]["calls"] == 3
    assert edges[("orders", "payments")]["wire_p50_ms"] is not None
    assert data["hops"]["POST /api/checkout"]["distribution"] == {"2": 3}
    recent = CliRunner().invoke(traces, ["--run-dir", str(run), "--json", "--since", "1"])
    assert json.loads(recent.output)["spans"] == 0  # the spans are 10 s old


def test_traces_without_span_files_says_so(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(traces, ["--run-dir", str(tmp_path / "empty")])
    assert result.exit_code != 0
    assert "no span files" in result.output
