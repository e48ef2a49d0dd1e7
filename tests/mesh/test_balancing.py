"""Balancing policies and outlier ejection: units with a fake clock, and the RPC client
spreading calls over small real upstream apps."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from prometheus_client import CollectorRegistry

from mesh.balancing import Balancer, OutlierPolicy
from mesh.discovery import Instance, StaticDiscovery
from mesh.errors import ConfigError, NoInstanceError
from mesh.resilience import ResilienceProfile, RetryPolicy
from mesh.rpc import Code, RpcError
from tests.mesh.conftest import (
    UPSTREAM_SERVICE,
    FakeClock,
    MakeClient,
    StartUpstreams,
    sample,
)

METHOD = f"{UPSTREAM_SERVICE}/Do"


def instances(n: int) -> list[Instance]:
    return [Instance(id=f"i{k}", address=f"10.0.0.{k}:80") for k in range(n)]


def test_round_robin_is_exactly_even() -> None:
    balancer = Balancer("round_robin")
    pool = instances(4)
    counts = Counter(balancer.pick(pool).id for _ in range(400))
    assert set(counts.values()) == {100}


def canary(share: str) -> Instance:
    return Instance(
        id="canary", address="10.0.0.9:80", version="v2", metadata={"canary_share": share}
    )


@pytest.mark.parametrize("policy", ["round_robin", "least_request", "consistent_hash"])
def test_a_canary_gets_its_share_under_every_policy(policy: str) -> None:
    balancer = Balancer(policy, rng=random.Random(3))
    pool = (*instances(3), canary("0.2"))
    picks = Counter(balancer.pick(pool, key=f"k{n}").id for n in range(4000))
    assert 0.17 <= picks["canary"] / 4000 <= 0.23
    # The old instances share the rest evenly enough (every one is used).
    assert all(picks[f"i{k}"] > 800 for k in range(3))


def test_a_tried_or_ejected_canary_leaves_the_pool_to_the_others(clock: FakeClock) -> None:
    balancer = Balancer(
        "round_robin",
        outlier=OutlierPolicy(consecutive_failures=1, max_ejection_percent=100),
        clock=clock,
        rng=random.Random(1),
    )
    pool = (*instances(2), canary("0.5"))
    tried = pool[2]
    assert {balancer.pick(pool, exclude=[tried]).id for _ in range(50)} == {"i0", "i1"}
    balancer.record_failure(tried)
    assert {balancer.pick(pool).id for _ in range(50)} == {"i0", "i1"}
    # Only canaries left: they take everything.
    assert balancer.pick([tried]).id == "canary"


@pytest.mark.parametrize("raw", ["0", "1", "1.5", "-0.1", "lots"])
def test_an_invalid_share_is_an_ordinary_instance(raw: str) -> None:
    balancer = Balancer("round_robin")
    pool = (*instances(3), canary(raw))
    picks = Counter(balancer.pick(pool).id for _ in range(400))
    assert set(picks.values()) == {100}


def test_least_request_prefers_the_less_loaded() -> None:
    balancer = Balancer("least_request", rng=random.Random(7))
    pool = instances(2)
    for _ in range(5):
        balancer.begin(pool[0])
    assert {balancer.pick(pool).id for _ in range(50)} == {"i1"}
    for _ in range(5):
        balancer.end(pool[0])
    # Equal load: the two random choices spread requests over both.
    counts = Counter(balancer.pick(pool).id for _ in range(400))
    assert all(150 <= c <= 250 for c in counts.values())


def test_least_request_spreads_under_concurrency() -> None:
    """Power of two choices keeps in-flight counts close together."""
    balancer = Balancer("least_request", rng=random.Random(1))
    pool = instances(5)
    for _ in range(100):
        balancer.begin(balancer.pick(pool))
    loads = [balancer.in_flight(i) for i in pool]
    assert max(loads) - min(loads) <= 4


def test_consistent_hash_is_stable_and_moves_few_keys() -> None:
    balancer = Balancer("consistent_hash")
    pool = instances(4)
    keys = [f"user-{k}" for k in range(2000)]
    first = {k: balancer.pick(pool, key=k).id for k in keys}
    assert first == {k: balancer.pick(pool, key=k).id for k in keys}
    counts = Counter(first.values())
    assert all(300 <= c <= 700 for c in counts.values()), counts  # 500 each +-40%
    smaller = [i for i in pool if i.id != "i2"]
    second = {k: balancer.pick(smaller, key=k).id for k in keys}
    moved = [k for k in keys if first[k] != second[k]]
    assert all(first[k] == "i2" for k in moved)  # only the removed instance's keys move


def test_exclude_avoids_tried_instances_unless_none_left() -> None:
    balancer = Balancer("round_robin")
    pool = instances(3)
    assert {balancer.pick(pool, exclude=pool[:2]).id for _ in range(6)} == {"i2"}
    assert balancer.pick(pool, exclude=pool) in pool
    with pytest.raises(NoInstanceError):
        balancer.pick([])
    with pytest.raises(ConfigError, match="policy"):
        Balancer("fastest")


def test_ejection_after_consecutive_failures_and_return(clock: FakeClock) -> None:
    policy = OutlierPolicy(
        consecutive_failures=3, base_ejection_seconds=10, max_ejection_percent=50
    )
    ejected: list[tuple[str, float]] = []
    balancer = Balancer(
        outlier=policy, clock=clock, on_eject=lambda i, s: ejected.append((i.id, s))
    )
    pool = instances(4)
    balancer.pick(pool)
    bad = pool[1]
    balancer.record_failure(bad)
    balancer.record_failure(bad)
    balancer.record_success(bad)  # a success resets the streak
    balancer.record_failure(bad)
    balancer.record_failure(bad)
    assert not balancer.is_ejected(bad)
    balancer.record_failure(bad)
    assert balancer.is_ejected(bad)
    assert ejected == [("i1", 10)]
    assert "i1" not in {balancer.pick(pool).id for _ in range(40)}
    clock.advance(10)
    assert not balancer.is_ejected(bad)
    assert "i1" in {balancer.pick(pool).id for _ in range(8)}
    # Ejected again soon after: the ejection lasts longer each time, up to the maximum.
    for _ in range(3):
        balancer.record_failure(bad)
    assert ejected[-1] == ("i1", 20)


def test_ejection_multiplier_is_capped_and_decays(clock: FakeClock) -> None:
    policy = OutlierPolicy(
        consecutive_failures=1,
        base_ejection_seconds=10,
        max_ejection_seconds=25,
        decay_seconds=60,
        max_ejection_percent=100,
    )
    durations: list[float] = []
    balancer = Balancer(outlier=policy, clock=clock, on_eject=lambda i, s: durations.append(s))
    (inst,) = instances(1)
    for _ in range(3):
        balancer.record_failure(inst)
        clock.advance(30)
    assert durations == [10, 20, 25]
    clock.advance(200)  # long healthy: the multiplier decays back
    balancer.is_ejected(inst)
    balancer.record_failure(inst)
    assert durations[-1] == 10


def test_max_ejection_percent_is_respected_but_one_may_always_go(clock: FakeClock) -> None:
    policy = OutlierPolicy(consecutive_failures=1, max_ejection_percent=34)
    balancer = Balancer(outlier=policy, clock=clock)
    pool = instances(3)
    balancer.pick(pool)
    for inst in pool:
        balancer.record_failure(inst)
    assert balancer.ejected() == ["i0"]  # 34% of 3 is one instance
    tiny = Balancer(outlier=OutlierPolicy(consecutive_failures=1, max_ejection_percent=10))
    two = instances(2)
    tiny.pick(two)
    tiny.record_failure(two[0])
    assert tiny.is_ejected(two[0])  # 10% of 2 rounds down to 0, but one may always go


def test_all_ejected_panics_to_the_whole_pool(clock: FakeClock) -> None:
    balancer = Balancer(outlier=OutlierPolicy(consecutive_failures=1, max_ejection_percent=100))
    pool = instances(2)
    balancer.pick(pool)
    for inst in pool:
        balancer.record_failure(inst)
    assert len(balancer.ejected()) == 2
    assert {balancer.pick(pool).id for _ in range(4)} == {"i0", "i1"}


# -- with the RPC client over real sockets -------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "tolerance"), [("round_robin", 0), ("least_request", 0.3), ("consistent_hash", 0.4)]
)
async def test_client_spreads_calls_evenly(
    policy: str, tolerance: float, start_upstreams: StartUpstreams, make_client: MakeClient
) -> None:
    ups = await start_upstreams(3)
    client = make_client([u.address for u in ups], ResilienceProfile(), policy=policy)
    calls = 300
    for k in range(calls):
        await client.call(METHOD, {}, dict, hash_key=f"user-{k}")
    expected = calls / len(ups)
    for up in ups:
        assert abs(up.hits - expected) <= expected * tolerance, [u.hits for u in ups]


async def test_failing_instance_is_ejected_and_comes_back(
    start_upstreams: StartUpstreams,
    make_client: MakeClient,
    registry: CollectorRegistry,
    clock: FakeClock,
) -> None:
    ups = await start_upstreams(3)
    bad = ups[0]
    bad.mode = "fail"
    outlier = OutlierPolicy(consecutive_failures=3, base_ejection_seconds=30)
    client = make_client(
        [u.address for u in ups],
        ResilienceProfile(outlier=outlier, retry=RetryPolicy(max_retries=2)),
    )
    for _ in range(30):  # idempotent calls: a failure is retried on another instance
        assert await client.call(METHOD, {}, dict, idempotent=True) != {"instance": bad.name}
    assert bad.hits == 3  # ejected after 3 consecutive failures, then left alone
    assert sample(registry, "rpc_client_ejections_total", upstream="up") == 1
    bad.mode = "ok"
    clock.advance(30)
    for _ in range(30):
        await client.call(METHOD, {}, dict)
    assert bad.hits == 3 + 10  # back in the rotation with its share


async def test_discovery_changes_are_followed(
    start_upstreams: StartUpstreams, make_client: MakeClient
) -> None:
    a, b, c = await start_upstreams(3)
    client = make_client([a.address, b.address], ResilienceProfile())
    for _ in range(4):
        await client.call(METHOD, {}, dict)
    assert isinstance(client.discovery, StaticDiscovery)
    client.discovery.update("up", [c.address])
    for _ in range(4):
        await client.call(METHOD, {}, dict)
    assert (a.hits, b.hits, c.hits) == (2, 2, 4)
    client.discovery.update("up", [])
    with pytest.raises(RpcError) as caught:
        await client.call(METHOD, {}, dict)
    assert caught.value.code is Code.UNAVAILABLE
    assert "no instance" in caught.value.message
