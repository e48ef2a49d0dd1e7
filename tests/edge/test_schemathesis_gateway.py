"""Property-based tests of the public API from its own OpenAPI document (schemathesis).

As a client meets it: through a CDN PoP and the load balancer to the gateway in front of the
five real services, with no fault injected. Schemathesis generates valid and invalid requests
for every operation and runs ALL its checks: no answer is a 5xx; every status, content type,
header and body is one the document declares (so every error of the PoP, the balancer and
the gateway is the one problem+json shape); valid input is accepted and invalid input
refused; a missing or wrong API key is refused; a required header (``Idempotency-Key``) is
enforced; an undeclared method is refused with ``Allow``. Bounded: a few examples per
operation, a time cap.

Valid data may also be answered 422: an ``Idempotency-Key`` the generator repeats with another
order is refused, as the IETF idempotency-key draft says (``schemathesis.toml`` below).
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

from tests.edge.support_gateway import DEMO_KEY, start_stack
from tests.support.processes import Spawner

pytestmark = [pytest.mark.slow()]

CONFIG = """\
[checks.positive_data_acceptance]
# Schemathesis' defaults, and 422: a generated Idempotency-Key reused with another order.
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]
"""


async def test_public_api_conforms_to_its_openapi_document(
    spawner: Spawner, tmp_path: Path
) -> None:
    stack = await start_stack(
        spawner,
        # far above what the run sends, so 429 never hides an answer
        gateway_env={"GATEWAY_API_KEYS": f"{DEMO_KEY}:10000:10000"},
    )
    balancer = spawner.start(
        "edge.balancer",
        name="balancer",
        env={"TESTBED_UPSTREAMS": f"gateway={stack.gateway.address}"},
    )
    await balancer.wait_ready(within=30)
    pop = spawner.start(
        "edge.cdn", name="cdn-us", env={"CDN_ORIGIN_URL": balancer.url, "TESTBED_REGION": "us"}
    )
    await pop.wait_ready(within=30)
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        f"{pop.url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        "40",
        "--seed",
        "20260101",
        "--workers",
        "2",
        "--request-timeout",
        "15",
        "--generation-database",
        "none",
        "--header",
        f"X-API-Key: {DEMO_KEY}",
        "--no-color",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path / "schemathesis"),
    ]
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
    )
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), timeout=170)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    text = output.decode(errors="replace")
    (tmp_path / "schemathesis.out").write_text(text)
    assert proc.returncode == 0, "\n".join(line for line in text.splitlines() if line.strip())
    assert "Operations:       4 selected / 4 total" in text, text
    assert re.search(r"Test cases:\s+\d+ generated, \d+ passed", text), text
