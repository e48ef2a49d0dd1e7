"""The shared process config: read once from the environment, bad values named with the fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from management.plan import build_plan
from management.topology import load_topology, parse_topology
from mesh.errors import ConfigError
from mesh.process import ProcessConfig
from mesh.resilience import profile_for, profile_named


def test_defaults_and_upstreams() -> None:
    config = ProcessConfig.from_env(
        "orders",
        {"TESTBED_PORT": "8080", "TESTBED_UPSTREAMS": "payments=127.0.0.1:1,127.0.0.1:2;inv=h:3"},
    )
    assert config.instance_id == "orders-8080"
    assert config.upstreams == {"payments": ("127.0.0.1:1", "127.0.0.1:2"), "inv": ("h:3",)}
    assert config.advertised_address == "127.0.0.1:8080"
    assert config.admin_port is None


def test_resilience_overrides_win_per_upstream() -> None:
    config = ProcessConfig.from_env(
        "orders",
        {"TESTBED_RESILIENCE": "basic", "TESTBED_RESILIENCE_OVERRIDES": "payments=none"},
    )
    assert config.resilience_for("payments") == "none"
    assert config.resilience_for("inventory") == "basic"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"TESTBED_PORT": "http"}, "TESTBED_PORT"),
        ({"TESTBED_PORT": "70000"}, "port 70000"),
        ({"TESTBED_RESILIENCE": "strong"}, "strong"),
        ({"TESTBED_RESILIENCE_OVERRIDES": "payments=fast"}, "payments=fast"),
        ({"TESTBED_UPSTREAMS": "payments=nohostport"}, "nohostport"),
        ({"TESTBED_LOG_FORMAT": "xml"}, "xml"),
        ({"TESTBED_REUSE_PORT": "maybe"}, "TESTBED_REUSE_PORT"),
        ({"TESTBED_CANARY_SHARE": "half"}, "TESTBED_CANARY_SHARE"),
        ({"TESTBED_CANARY_SHARE": "1"}, "strictly between 0 and 1"),
    ],
)
def test_bad_values_are_named(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        ProcessConfig.from_env("orders", env)


def test_a_canary_share_is_read_once() -> None:
    assert ProcessConfig.from_env("payments", {"TESTBED_CANARY_SHARE": "0.25"}).canary_share == 0.25
    assert ProcessConfig.from_env("payments", {}).canary_share is None


def test_link_resilience_reaches_the_callers_environment(tmp_path: Path) -> None:
    topology = parse_topology(
        """
components:
  registry: {kind: registry}
  payments: {kind: service}
  inventory: {kind: service}
  orders: {kind: service}
links:
  - {from: orders, to: payments, resilience: none}
  - {from: orders, to: inventory}
""",
        "inline.yaml",
    )
    plan = build_plan(topology, base_port=30000, run_dir=tmp_path)
    orders = next(i for i in plan.instances if i.component == "orders")
    assert orders.env["TESTBED_RESILIENCE_OVERRIDES"] == "payments=none"
    config = ProcessConfig.from_env("orders", orders.env)
    assert config.resilience_for("payments") == "none"
    assert config.resilience_for("inventory") == "full"


def test_link_per_try_timeout_shapes_the_callers_profile(tmp_path: Path) -> None:
    topology = parse_topology(
        """
components:
  registry: {kind: registry}
  payments: {kind: service, instances: 2}
  orders: {kind: service}
links:
  - {from: orders, to: payments, per_try_timeout_ms: 250}
""",
        "inline.yaml",
    )
    plan = build_plan(topology, base_port=30000, run_dir=tmp_path)
    orders = next(i for i in plan.instances if i.component == "orders")
    config = ProcessConfig.from_env("orders", orders.env)
    profile = profile_for(config, "payments")
    assert profile.retry is not None
    assert profile.retry.per_try_timeout == 0.25
    assert profile_for(config, "inventory") == profile_named("full")
    with pytest.raises(ConfigError, match="payments=fast"):
        ProcessConfig.from_env("orders", {"TESTBED_PER_TRY_TIMEOUT_MS": "payments=fast"})


def test_the_retry_budget_can_be_lifted_to_show_what_it_saves() -> None:
    on = ProcessConfig.from_env("orders", {})
    off = ProcessConfig.from_env("orders", {"TESTBED_RETRY_BUDGET": "off"})
    assert profile_for(on, "payments").budget is not None
    lifted = profile_for(off, "payments")
    assert lifted.budget is None
    assert lifted.retry == profile_named("full").retry  # the retries themselves stay
    assert profile_for(off, "payments") != profile_named("full")
    with pytest.raises(ConfigError, match="TESTBED_RETRY_BUDGET='sometimes' is neither"):
        ProcessConfig.from_env("orders", {"TESTBED_RETRY_BUDGET": "sometimes"})


@pytest.mark.parametrize(
    ("host", "token", "refused"),
    [
        ("127.0.0.1", None, False),
        ("::1", None, False),
        ("localhost", None, False),
        ("0.0.0.0", None, True),
        ("10.1.2.3", None, True),
        ("shop.example", None, True),
        ("0.0.0.0", "a-secret-of-this-run", False),
    ],
)
def test_the_default_admin_token_is_refused_beyond_loopback(
    host: str, token: str | None, refused: bool
) -> None:
    env = {"TESTBED_HOST": host, "TESTBED_ADMIN_PORT": "9001"}
    if token is not None:
        env["TESTBED_ADMIN_TOKEN"] = token
    problem = ProcessConfig.from_env("orders", env).admin_exposure()
    assert (problem is not None) == refused
    if refused:
        assert problem is not None
        assert "TESTBED_ADMIN_TOKEN" in problem
    # Without an admin listener there is nothing to protect.
    assert ProcessConfig.from_env("orders", {"TESTBED_HOST": host}).admin_exposure() is None


def test_a_process_exposing_its_admin_api_with_the_default_token_does_not_start(
    tmp_path: Path,
) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TESTBED_", "OTEL_"))},
        "TESTBED_HOST": "0.0.0.0",
        "TESTBED_PORT": "0",
        "TESTBED_ADMIN_PORT": "0",
        "TESTBED_RUN_DIR": str(tmp_path),
        "OTEL_SDK_DISABLED": "true",
    }
    done = subprocess.run(
        [sys.executable, "-m", "management.registry"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "refusing to start" in lines[0]
    assert "TESTBED_ADMIN_TOKEN" in lines[0]


def test_the_plan_draws_the_trust_boundary_at_the_pops(tmp_path: Path) -> None:
    data = load_topology(None).to_data()
    (balancer,) = [n for n, c in data["components"].items() if c["kind"] == "balancer"]
    data["components"][balancer]["env"] = {"BALANCER_HASH_HEADER": "X-User"}
    plan = build_plan(
        parse_topology(yaml.safe_dump(data)), base_port=20000, run_dir=tmp_path, admin_token="t"
    )
    (lb,) = plan.of(balancer)
    assert lb.env["BALANCER_TRUSTED_PEERS"] == "127.0.0.1/32"
    pops = [i for i in plan.instances if i.kind == "cdn"]
    assert pops
    for pop in pops:
        assert pop.env["CDN_HASH_HEADER"] == "X-User"
        assert "CDN_TRUSTED_NETWORKS" not in pop.env  # the public entry trusts no client
    assert {i.env["TESTBED_ADMIN_TOKEN"] for i in plan.instances} == {"t"}
