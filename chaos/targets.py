"""Turn a fault's target and blast radius into the concrete instances or links it acts on.

A target is a service (every instance of it), one instance, or a link. The blast radius then
picks among those candidates: ``one``, ``all`` or a percentage (rounded up, at least one). The
pick is reproducible: candidates are sorted by id and drawn with a ``random.Random`` seeded from
the experiment's seed and the fault's name, so the same file picks the same instances every run
and adding a fault does not change what another fault picks.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from chaos.model import BlastRadius, Target
from chaos.stack import InstanceInfo, StackInfo
from mesh.errors import ConfigError

__all__ = ["Unit", "pick", "resolve"]


@dataclass(frozen=True)
class Unit:
    """One thing a fault acts on: an instance (with its proxy, if any) or a link's proxy."""

    id: str
    proxy: str | None
    instance: InstanceInfo | None = None


def pick(candidates: list[Unit], radius: BlastRadius, rng: random.Random) -> list[Unit]:
    """Choose among ``candidates`` (sorted by id first) as the blast radius says."""
    ordered = sorted(candidates, key=lambda u: u.id)
    if not ordered or radius == "all":
        return ordered
    count = 1 if radius == "one" else max(1, math.ceil(len(ordered) * float(radius) / 100.0))
    chosen = rng.sample(ordered, k=min(count, len(ordered)))
    return sorted(chosen, key=lambda u: u.id)


def _candidates(target: Target, stack: StackInfo) -> list[Unit]:
    if target.service is not None:
        found = stack.instances_of(target.service)
        if not found:
            known = ", ".join(stack.services()) or "none"
            raise ConfigError(
                f"no running instance of service {target.service!r} (running: {known})"
            )
        return [Unit(i.instance_id, i.proxy, i) for i in found]
    if target.instance is not None:
        inst = stack.instance(target.instance)
        if inst is None:
            known = ", ".join(sorted(i.instance_id for i in stack.instances)) or "none"
            raise ConfigError(f"no instance {target.instance!r} is running (instances: {known})")
        return [Unit(inst.instance_id, inst.proxy, inst)]
    assert target.link is not None
    name = target.link.replace(" ", "")
    links = [
        link for link in stack.links if link.name == name or f"{link.source}->{link.target}" == name
    ]
    if links:
        return [Unit(link.name, link.proxy) for link in links]
    # A service link has no proxy of its own: every instance of the callee sits behind its own
    # proxy, so the fault goes there (and so also reaches the callee's other callers).
    callee = name.partition("->")[2]
    proxied = [i for i in stack.instances_of(callee) if i.proxy]
    if proxied:
        return [Unit(i.instance_id, i.proxy, i) for i in proxied]
    known = ", ".join(link.name for link in stack.links) or "none"
    raise ConfigError(f"no proxy for link {target.link!r} (links with a proxy: {known})")


def resolve(
    target: Target, radius: BlastRadius, stack: StackInfo, *, seed: int, fault_name: str
) -> list[Unit]:
    """The units a fault acts on, picked reproducibly from ``seed`` and the fault's name."""
    rng = random.Random(f"{seed}:{fault_name}")
    return pick(_candidates(target, stack), radius, rng)
