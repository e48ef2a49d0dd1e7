"""Property-based tests of the public API from its own OpenAPI document (schemathesis).

Against the gateway in front of the five real services, with no fault injected, schemathesis
generates valid and invalid requests for every operation and checks that no answer is a 5xx,
that every status, content type, header and body is one the document declares, that invalid
input is refused, that a missing or wrong API key is refused, and that a required header
(``Idempotency-Key``) is enforced. Bounded: a few examples per operation, a time cap.
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

CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "missing_required_header",
        "unsupported_method",
        "ignored_auth",
    )
)


async def test_public_api_conforms_to_its_openapi_document(
    spawner: Spawner, tmp_path: Path
) -> None:
    stack = await start_stack(
        spawner,
        # far above what the run sends, so 429 never hides an answer
        gateway_env={"GATEWAY_API_KEYS": f"{DEMO_KEY}:10000:10000"},
    )
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{stack.gateway.url}/openapi.json",
        "--checks",
        CHECKS,
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
