"""The embedded stack: bring it up, look at it, scale it, redeploy it, tear it down.

``up`` derives a ``Plan`` from the topology, writes supervisord's, Prometheus' (and Jaeger's)
configuration into the run folder, starts supervisord (which starts Toxiproxy, Prometheus and
every process), creates the Toxiproxy proxies and waits until every instance is ready and
registered. What a later command needs is in ``<run>/state.json`` (the effective topology, base
port, control socket), and ``$TESTBED_STATE_DIR/current`` (default
``~/.local/state/testbed/current``) points at the run that is up, so ``status``, ``scale``,
``deploy``, ``logs`` and ``down`` find it without options, even after the CLI crashed.

Each function is typed and callable without the CLI (tests and the chaos engine use them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from management.canary import CanaryError, Judgement, Thresholds, judge, sample
from management.dashboards import CONSOLE_NAME, write_console
from management.jaeger import jaeger_config
from management.plan import (
    CANARY_SUFFIX,
    DEFAULT_BASE_PORT,
    LOCALHOST,
    CanaryPlan,
    InstancePlan,
    Plan,
    build_plan,
    spare_admin_port,
)
from management.ports import check_ports_free, listening_pids
from management.prometheus import write_prometheus_files, write_targets
from management.supervisor import (
    MARKER_ENV,
    ProgramSpec,
    Supervisor,
    SupervisorError,
    clean_environment,
    launch_supervisord,
    program_config,
    socket_path_for,
    supervisord_config,
)
from management.topology import MAX_INSTANCES, Topology, load_topology, parse_topology
from management.toxiproxy import INSTALL_HINT, ToxiproxyClient, ToxiproxyError, find_binary
from management.trace_ui import find_zipkin, shipper_command, zipkin_command, zipkin_env
from mesh.errors import ConfigError, TestbedError
from mesh.registry_client import RegistryClient, RegistryError

__all__ = [
    "AlreadyUp",
    "CanaryResult",
    "InstanceStatus",
    "NotUp",
    "Stack",
    "StackError",
    "current_run_dir",
    "down",
    "open_stack",
    "up",
]

Progress = Callable[[str], None]
STATE_FILE = "state.json"
SETTLE_SECONDS = 1.0
"""After draining an instance in the registry, how long callers get to see it gone."""
_HTTP_TIMEOUT = aiohttp.ClientTimeout(total=1.0)
JAEGER_UI_ASSETS_ENV = "TESTBED_JAEGER_UI_ASSETS"
TRACE_UI_GRACE = 10.0
"""Seconds ``up`` waits for the trace UI once everything else is ready (it started first)."""
_INFRA_PROGRAMS = ("toxiproxy", "prometheus", "jaeger", "zipkin", "zipkin-shipper")
HANDOFF_KINDS = ("balancer", "cdn")
"""Components run as one instance per listener: deployed by a hand-over on the same port
(``Stack._hand_over``), not by draining a replica."""
NEXT_SUFFIX = "-next"
"""The temporary program that holds a single instance's port during its deploy."""


class StackError(TestbedError):
    """Something went wrong starting or changing the stack; the message says what and where."""


class AlreadyUp(StackError):
    """``up`` found a stack already running."""


class NotUp(StackError):
    """No stack is running where the command looked."""


def _quiet(_: str) -> None:
    return None


CanaryHook = Callable[[InstancePlan], AbstractAsyncContextManager[None]]
"""Wraps the judging window once the canary is ready (the chaos runner injects a bad build)."""


@dataclass(frozen=True)
class CanaryResult:
    """What ``Stack.canary`` did: the verdict with its numbers, and the action taken."""

    component: str
    version: str
    instance_id: str
    judgement: Judgement
    action: str
    """``promoted`` (rolling deploy of the old instances) or ``rolled back``."""
    start_seconds: float
    """From the command to the canary ready and registered."""
    judged_seconds: float
    rollback_seconds: float | None
    """From the verdict to the canary drained and gone (rolled back only)."""
    deploy_seconds: float | None
    """The rolling deploy of the old instances (promoted only)."""


def _canaries_of(state: Mapping[str, Any]) -> dict[str, CanaryPlan]:
    raw = state.get("canaries") or {}
    return {
        name: CanaryPlan(version=str(c["version"]), share=float(c["share"]))
        for name, c in raw.items()
    }


# ---- where the current run is -------------------------------------------------------------------
def state_home() -> Path:
    override = os.environ.get("TESTBED_STATE_DIR")
    if override:
        return Path(override)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "testbed"


def _pointer() -> Path:
    return state_home() / "current"


def current_run_dir() -> Path | None:
    """The run folder of the stack that is up (per the pointer), if any."""
    try:
        text = _pointer().read_text().strip()
    except OSError:
        return None
    return Path(text) if text else None


def _set_pointer(run_dir: Path) -> None:
    pointer = _pointer()
    pointer.parent.mkdir(parents=True, exist_ok=True)
    tmp = pointer.with_suffix(".tmp")
    tmp.write_text(str(run_dir) + "\n")
    tmp.replace(pointer)


def _clear_pointer(run_dir: Path) -> None:
    if current_run_dir() == run_dir:
        with contextlib.suppress(OSError):
            _pointer().unlink()


def _resolve_run_dir(run_dir: Path | None) -> Path:
    if run_dir is not None:
        return run_dir.resolve()
    found = current_run_dir()
    if found is None:
        raise NotUp("no stack is up (no current run); start one with `testbed up`")
    return found


# ---- state file ---------------------------------------------------------------------------------
def _read_state(run_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((run_dir / STATE_FILE).read_text())
    except FileNotFoundError:
        raise NotUp(f"no stack state in {run_dir} (was it started with `testbed up`?)") from None
    except (OSError, ValueError) as exc:
        raise StackError(f"cannot read {run_dir / STATE_FILE}: {exc}") from None
    if not isinstance(data, dict):
        raise StackError(f"{run_dir / STATE_FILE} is not a stack state")
    return data


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, readable by the user only (0600): the run's state and
    the programs' configurations hold the run's admin token."""
    tmp = path.with_suffix(".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    tmp.replace(path)


def _write_state(run_dir: Path, state: dict[str, Any]) -> None:
    _write_private(run_dir / STATE_FILE, json.dumps(state, indent=1))


def _admin_token(state: Mapping[str, Any]) -> str | None:
    """The run's admin token (``up`` makes one per run; older runs have none)."""
    token = state.get("admin_token")
    return token if isinstance(token, str) and token else None


# ---- status -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InstanceStatus:
    """One row of ``testbed status``."""

    instance: str
    component: str
    state: str
    pid: int | None
    address: str
    version: str
    uptime_seconds: float | None
    restarts: int
    ready: bool | None
    registered: bool | None
    not_ready_reason: str = ""
    """Why ``/readyz`` said no (its ``reason``, else its ``status``), when it said no."""


_EXITED = re.compile(r"exited: (\S+) \(.*not expected\)")


def _crash_restarts(log: Path) -> dict[str, int]:
    """Unexpected exits per program, from supervisord's log (it keeps no counter itself)."""
    counts: dict[str, int] = {}
    with contextlib.suppress(OSError), log.open(errors="replace") as f:
        for line in f:
            m = _EXITED.search(line)
            if m:
                counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    return counts


async def _readiness(http: aiohttp.ClientSession, url: str) -> tuple[bool, str]:
    """``/readyz``'s verdict and, when not ready, why (its ``reason`` or ``status``)."""
    try:
        async with http.get(url, timeout=_HTTP_TIMEOUT) as resp:
            if resp.status == 200:
                return True, ""
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                body = None
            if isinstance(body, dict):
                return False, str(body.get("reason") or body.get("status") or resp.status)
            return False, f"HTTP {resp.status}"
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return False, f"no answer ({type(exc).__name__})"


async def _is_ready(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url, timeout=_HTTP_TIMEOUT) as resp:
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


# ---- the stack ----------------------------------------------------------------------------------
@dataclass
class Stack:
    """A stack that is (or was) up, loaded from its run folder."""

    run_dir: Path
    plan: Plan
    state: dict[str, Any]
    supervisor: Supervisor
    progress: Progress = field(default=_quiet)

    @property
    def admin_token(self) -> str | None:
        """The token every process's admin API of this run accepts (``X-Admin-Token``)."""
        return _admin_token(self.state)

    # -- files --
    @property
    def programs_dir(self) -> Path:
        return self.run_dir / "supervisor" / "programs"

    @property
    def logs_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def workdir(self) -> Path:
        return Path(self.state.get("workdir") or os.getcwd())

    def _save(self) -> None:
        self.state["topology"] = self.plan.topology.to_data()
        _write_state(self.run_dir, self.state)

    def _instance_spec(self, inst: InstancePlan) -> ProgramSpec:
        priority = {
            "registry": 10,
            "service": 100,
            "monolith": 100,
            "gateway": 200,
            "balancer": 300,
        }.get(inst.kind, 400)
        env = dict(inst.env)
        if inst.kind in HANDOFF_KINDS:  # its successor shares the port (observability.handoff)
            env["TESTBED_REUSE_PORT"] = "1"
        return ProgramSpec(
            name=inst.instance_id,
            command=inst.command,
            env=env,
            log_file=self.logs_dir / f"{inst.instance_id}.log",
            directory=self.workdir,
            priority=priority,
            stop_wait_seconds=self.plan.topology.defaults.drain_seconds + 5,
        )

    def _write_program(self, spec: ProgramSpec) -> None:
        _write_private(self.programs_dir / f"{spec.name}.conf", program_config(spec))

    def _remove_program(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.programs_dir / f"{name}.conf").unlink()

    def log_files(self, component: str) -> list[Path]:
        """The log files of a component, an instance, or toxiproxy/prometheus/supervisord."""
        names = [i.instance_id for i in self.plan.of(component)]
        if not names and any(i.instance_id == component for i in self.plan.instances):
            names = [component]
        if not names and component in (*_INFRA_PROGRAMS, "supervisord"):
            names = [component]
        if not names:
            known = ", ".join([*self.plan.topology.components, *_INFRA_PROGRAMS[:2], "supervisord"])
            raise ConfigError(f"no component or instance {component!r}; known: {known}")
        return [self.logs_dir / f"{n}.log" for n in names]

    # -- urls --
    @property
    def toxiproxy_url(self) -> str:
        return f"http://{LOCALHOST}:{self.plan.infra.toxiproxy}"

    @property
    def prometheus_url(self) -> str:
        return f"http://{LOCALHOST}:{self.plan.infra.prometheus}"

    @property
    def dashboards_url(self) -> str:
        """The dashboards view: a Prometheus console page (``management.dashboards``)."""
        return f"{self.prometheus_url}/consoles/{CONSOLE_NAME}"

    @property
    def jaeger_url(self) -> str | None:
        return f"http://{LOCALHOST}:{self.plan.infra.jaeger_ui}" if self.plan.jaeger else None

    @property
    def trace_ui_url(self) -> str | None:
        """Zipkin's base URL (its Lens UI is under ``/zipkin/``), when the trace UI runs."""
        return f"http://{LOCALHOST}:{self.plan.infra.zipkin}" if self.plan.trace_ui else None

    def where(self) -> list[tuple[str, str]]:
        """What a user wants to know after ``up``: public URLs and tools."""
        rows: list[tuple[str, str]] = []
        for inst in self.plan.instances:
            if inst.kind == "cdn":
                rows.append((f"CDN PoP {inst.region}", inst.url))
        for inst in self.plan.instances:
            if inst.kind == "balancer":
                rows.append(("load balancer", inst.url))
        if self.plan.registry_url:
            rows.append(("registry", self.plan.registry_url))
        rows.append(("Prometheus", self.prometheus_url))
        rows.append(("alerts", self.prometheus_url + "/alerts"))
        rows.append(("dashboards", self.dashboards_url))
        rows.append(("Toxiproxy API", self.toxiproxy_url))
        if self.jaeger_url:
            rows.append(("Jaeger", self.jaeger_url))
        if self.trace_ui_url:
            rows.append(("trace UI", self.trace_ui_url + "/zipkin/"))
        rows.append(("run folder", str(self.run_dir)))
        if self.admin_token is not None:  # where, never the token itself
            rows.append(("admin token", f"{self.run_dir / STATE_FILE} (admin_token, 0600)"))
        return rows

    # -- waiting --
    async def _registered(self, http: aiohttp.ClientSession) -> dict[str, str] | None:
        """instance id -> version of every registered instance, or None if no registry answers."""
        if not self.plan.registry_url:
            return None
        try:
            services = await RegistryClient(http, self.plan.registry_url, timeout=1.0).services()
        except RegistryError:
            return None
        return {i.id: i.version for items in services.values() for i in items}

    async def wait_ready(
        self,
        instances: Sequence[InstancePlan],
        *,
        within: float = 90.0,
        infra: bool = False,
        registration_grace: float | None = None,
    ) -> None:
        """Wait until each instance answers /readyz 200 and, if it registers, is registered
        with its planned version; fail early (with its log) if supervisord gives up on one.

        With ``registration_grace``, an instance ready that long without registering is let
        through with a warning (its process does not hook in ``mesh.registration``).
        """
        pending = {i.instance_id: i for i in instances}
        ready_since: dict[str, float] = {}
        infra_pending: dict[str, str] = {}
        if infra:
            infra_pending["Prometheus"] = self.prometheus_url + "/-/ready"
            infra_pending["Toxiproxy"] = self.toxiproxy_url + "/version"
            if self.jaeger_url:
                infra_pending["Jaeger"] = self.jaeger_url + "/"
        started = time.monotonic()
        deadline = started + within
        async with aiohttp.ClientSession() as http:
            while pending or infra_pending:
                for name, url in list(infra_pending.items()):
                    if await _is_ready(http, url):
                        del infra_pending[name]
                        self.progress(f"{name} ready ({time.monotonic() - started:.1f}s)")
                registered = await self._registered(http)
                checks = await asyncio.gather(
                    *(_is_ready(http, i.url + "/readyz") for i in pending.values())
                )
                for inst, ready in zip(list(pending.values()), checks, strict=True):
                    if not ready:
                        continue
                    if inst.registers and (
                        registered is None or registered.get(inst.instance_id) != inst.version
                    ):
                        since = ready_since.setdefault(inst.instance_id, time.monotonic())
                        if (
                            registration_grace is None
                            or registered is None
                            or time.monotonic() - since < registration_grace
                        ):
                            continue
                        self.progress(
                            f"warning: {inst.instance_id} is ready but did not register "
                            f"within {registration_grace:g}s (does its app call "
                            "mesh.registration.install_registration?)"
                        )
                    del pending[inst.instance_id]
                    self.progress(f"{inst.instance_id} ready ({time.monotonic() - started:.1f}s)")
                if not (pending or infra_pending):
                    break
                await self._fail_on_fatal(set(pending))
                if time.monotonic() > deadline:
                    waiting = sorted(pending) + sorted(infra_pending)
                    raise StackError(
                        f"not ready after {within:.0f}s: {', '.join(waiting)}\n"
                        + self._log_tails(sorted(pending))
                    )
                await asyncio.sleep(0.1)

    async def wait_trace_ui(self, *, within: float) -> bool:
        """Wait up to ``within`` seconds for Zipkin to answer; the stack does not need it, so
        one still starting (a JVM on a busy machine) is said, not an error."""
        if not self.trace_ui_url:
            return False
        started = time.monotonic()
        async with aiohttp.ClientSession() as http:
            while True:
                if await _is_ready(http, self.trace_ui_url + "/health"):
                    self.progress(f"trace UI ready (+{time.monotonic() - started:.1f}s)")
                    return True
                if time.monotonic() - started > within:
                    self.progress(
                        f"trace UI still starting (its JVM): {self.trace_ui_url}/zipkin/ "
                        "answers in a few seconds; `testbed logs zipkin` shows its progress"
                    )
                    return False
                await asyncio.sleep(0.2)

    async def _fail_on_fatal(self, names: set[str]) -> None:
        with contextlib.suppress(SupervisorError, TimeoutError):
            for proc in await self.supervisor.aprocesses():
                if proc["name"] in names and proc["statename"] in ("FATAL", "BACKOFF"):
                    if proc["statename"] == "BACKOFF" and proc.get("exitstatus", 0) == 0:
                        continue
                    if proc["statename"] == "FATAL":
                        raise StackError(
                            f"{proc['name']} keeps crashing (supervisord gave up):\n"
                            + self._log_tails([proc["name"]])
                        )

    def _log_tails(self, names: Iterable[str], lines: int = 15) -> str:
        out = []
        for name in list(names)[:3]:
            path = self.logs_dir / f"{name}.log"
            try:
                tail = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                tail = ["(no log yet)"]
            out.append(f"--- {path} (last {lines} lines)\n" + "\n".join(tail))
        return "\n".join(out)

    # -- status --
    async def status(self) -> list[InstanceStatus]:
        try:
            procs = {p["name"]: p for p in await self.supervisor.aprocesses()}
        except (SupervisorError, TimeoutError):
            procs = {}
        restarts = _crash_restarts(self.logs_dir / "supervisord.log")
        rows: list[InstanceStatus] = []
        now = time.time()
        async with aiohttp.ClientSession() as http:
            registered = await self._registered(http)
            readiness = await asyncio.gather(
                *(_readiness(http, i.url + "/readyz") for i in self.plan.instances)
            )
            infra = [
                ("toxiproxy", self.plan.infra.toxiproxy, "/version"),
                ("prometheus", self.plan.infra.prometheus, "/-/ready"),
            ]
            if self.plan.jaeger:
                infra.append(("jaeger", self.plan.infra.jaeger_ui, "/"))
            if self.plan.trace_ui:
                infra.append(("zipkin", self.plan.infra.zipkin, "/health"))
            for name, port, path in infra:
                address = f"{LOCALHOST}:{port}"
                ready = await _is_ready(http, f"http://{address}{path}")
                rows.append(
                    self._row(
                        name, name, procs.get(name, {}), address, "-", ready, None, restarts, now
                    )
                )
        for inst, (ready, why) in zip(self.plan.instances, readiness, strict=True):
            proc = procs.get(inst.instance_id, {})
            version = inst.version
            is_registered: bool | None = None
            if inst.registers:
                is_registered = registered is not None and inst.instance_id in registered
                if registered and inst.instance_id in registered:
                    version = registered[inst.instance_id]
            row = self._row(
                inst.instance_id,
                inst.component,
                proc,
                inst.advertise,
                version,
                ready,
                is_registered,
                restarts,
                now,
            )
            rows.append(replace(row, not_ready_reason=why))
        return rows

    @staticmethod
    def _row(
        name: str,
        component: str,
        proc: dict[str, Any],
        address: str,
        version: str,
        ready: bool | None,
        registered: bool | None,
        restarts: dict[str, int],
        now: float,
    ) -> InstanceStatus:
        running = proc.get("statename") == "RUNNING"
        return InstanceStatus(
            instance=name,
            component=component,
            state=str(proc.get("statename", "UNKNOWN")),
            pid=int(proc["pid"]) if running and proc.get("pid") else None,
            address=address,
            version=version,
            uptime_seconds=now - float(proc["start"]) if running and proc.get("start") else None,
            restarts=restarts.get(name, 0),
            ready=ready,
            registered=registered,
        )

    # -- changes --
    @property
    def canaries(self) -> dict[str, CanaryPlan]:
        """The canaries running now (``testbed deploy --canary``), by component."""
        return _canaries_of(self.state)

    def _set_canaries(self, canaries: Mapping[str, CanaryPlan]) -> None:
        self.state["canaries"] = {
            name: {"version": c.version, "share": c.share} for name, c in canaries.items()
        }

    def _replan(self, topology: Topology, canaries: Mapping[str, CanaryPlan] | None = None) -> Plan:
        return build_plan(
            topology,
            base_port=self.plan.base_port,
            run_dir=self.run_dir,
            jaeger=self.plan.jaeger,
            admin_token=self.admin_token,
            trace_ui=self.plan.trace_ui,
            canaries=self.canaries if canaries is None else canaries,
        )

    def _check_component(self, component: str) -> None:
        if component not in self.plan.topology.components:
            known = ", ".join(self.plan.topology.components)
            raise ConfigError(f"no component {component!r} in this stack; known: {known}")

    async def _drain(self, http: aiohttp.ClientSession, inst: InstancePlan) -> None:
        """Take an instance out of the registry so callers stop picking it, then let them see."""
        if not (inst.registers and self.plan.registry_url):
            return
        try:
            await RegistryClient(http, self.plan.registry_url).drain(
                inst.component, inst.instance_id
            )
        except RegistryError as exc:
            self.progress(f"warning: could not drain {inst.instance_id} in the registry: {exc}")
        await asyncio.sleep(SETTLE_SECONDS)

    async def scale(self, component: str, count: int) -> tuple[list[str], list[str]]:
        """Run ``count`` instances of ``component``; returns (added, removed) instance ids.

        New instances get their proxy, start and must be ready and registered; removed ones are
        drained in the registry first, then stopped gracefully (in-flight requests finish).
        """
        self._check_component(component)
        comp = self.plan.topology.components[component]
        if comp.kind in ("cdn", "registry", "balancer"):
            raise ConfigError(f"{component} is a {comp.kind}: its instance count is fixed")
        self._refuse_while_canary(component)
        if not 0 <= count <= MAX_INSTANCES:
            raise ConfigError(f"instance count {count} is out of range 0-{MAX_INSTANCES}")
        new_plan = self._replan(self.plan.topology.with_instances(component, count))
        old_ids = {i.instance_id for i in self.plan.of(component)}
        new_ids = {i.instance_id for i in new_plan.of(component)}
        added = [i for i in new_plan.of(component) if i.instance_id not in old_ids]
        removed = [i for i in self.plan.of(component) if i.instance_id not in new_ids]
        new_proxies = [p for p in new_plan.proxies if p.name in {i.instance_id for i in added}]
        check_ports_free(
            {i.port: i.instance_id for i in added}
            | {int(p.listen.rpartition(":")[2]): f"proxy {p.name}" for p in new_proxies}
        )
        async with aiohttp.ClientSession() as http:
            toxiproxy = ToxiproxyClient(http, self.toxiproxy_url)
            if added:
                await toxiproxy.populate(new_proxies)
                for inst in added:
                    self._write_program(self._instance_spec(inst))
                self.plan = new_plan
                self._save()
                await self.supervisor.update()
                write_targets(self.plan, self.run_dir / "prometheus" / "targets")
                self.progress(f"starting {', '.join(i.instance_id for i in added)}")
                await self.wait_ready(added)
            if removed:
                self.progress(f"draining {', '.join(i.instance_id for i in removed)}")
                await asyncio.gather(*(self._drain(http, inst) for inst in removed))
                for inst in removed:
                    self._remove_program(inst.instance_id)
                self.plan = new_plan
                self._save()
                await self.supervisor.update()
                await toxiproxy.delete(i.instance_id for i in removed if i.proxy_port)
                write_targets(self.plan, self.run_dir / "prometheus" / "targets")
            self.plan = new_plan
            self._save()
        return [i.instance_id for i in added], [i.instance_id for i in removed]

    async def deploy(self, component: str, version: str) -> float:
        """Rolling deploy of ``version``, one instance at a time; returns the seconds it took.

        Per instance: drain it in the registry (callers stop picking it), stop it gracefully
        (it finishes in-flight requests), start it with the new version, wait until it is
        ready and registered with that version, then the next. A balancer or CDN PoP (one
        listener, no replica to fall back on) is handed over on its port instead
        (``_hand_over``).
        """
        self._check_component(component)
        started = time.monotonic()
        new_plan = self._replan(self.plan.topology.with_version(component, version))
        canary = self.canaries.get(component)
        if canary is not None and canary.version != version:
            self._refuse_while_canary(component)
        async with aiohttp.ClientSession() as http:
            for inst in new_plan.of(component):
                if inst.instance_id.endswith(CANARY_SUFFIX):
                    continue  # at this version already; `canary` removes it afterwards
                old = self.plan.instance(inst.instance_id)
                if old.version == version:
                    # Nothing would restart it: draining it would leave it out of the registry.
                    self.progress(f"{inst.instance_id}: already {version}")
                    continue
                self.progress(f"{inst.instance_id}: {old.version} -> {version}")
                if inst.kind in HANDOFF_KINDS:
                    if self._shares_port(old):
                        await self._hand_over(old, inst)
                        continue
                    self.progress(
                        f"warning: {old.instance_id} runs without a shared port (started "
                        "before hand-over deploys existed): restarted in place this time, "
                        "which refuses connections meanwhile; its next deploy hands over"
                    )
                await self._drain(http, old)
                self._write_program(self._instance_spec(inst))
                await self.supervisor.update()
                await self.wait_ready([inst])
        self.plan = new_plan
        self._save()
        return time.monotonic() - started

    def _refuse_while_canary(self, component: str) -> None:
        canary = self.canaries.get(component)
        if canary is not None:
            raise ConfigError(
                f"a canary of {component} ({canary.version}, {component}{CANARY_SUFFIX}) is "
                f"running; wait for its verdict, or remove it with `testbed deploy {component} "
                "--abort-canary`"
            )

    def _check_canary(self, component: str, version: str, share: float, judge_for: float) -> None:
        """Refuse bad input before anything is touched."""
        self._check_component(component)
        comp = self.plan.topology.components[component]
        services = [n for n, c in self.plan.topology.components.items() if c.kind == "service"]
        if comp.kind != "service":
            raise ConfigError(
                f"--canary is for the RPC services ({', '.join(services) or 'none here'}); "
                f"{component} is a {comp.kind}: use a rolling deploy"
            )
        self._refuse_while_canary(component)
        count = len(self.plan.of(component))
        if count == 0:
            raise ConfigError(f"{component} runs no instance: no old version to compare with")
        if count >= MAX_INSTANCES:
            raise ConfigError(
                f"{component} runs {count} instances, the most there are slots for; scale it "
                f"to {MAX_INSTANCES - 1} or fewer to leave the canary a slot"
            )
        if self.plan.topology.version_of(component) == version:
            raise ConfigError(f"{component} is at {version} already: nothing to compare")
        if not 0 < share < 1:
            raise ConfigError(f"canary share {share:g} must lie strictly between 0 and 1")
        if judge_for <= 0:
            raise ConfigError("the judging window must be longer than 0 s")

    async def _start_canary(self, component: str, version: str, share: float) -> InstancePlan:
        canaries = {**self.canaries, component: CanaryPlan(version=version, share=share)}
        new_plan = self._replan(self.plan.topology, canaries)
        inst = new_plan.instance(f"{component}{CANARY_SUFFIX}")
        proxies = [p for p in new_plan.proxies if p.name == inst.instance_id]
        check_ports_free(
            {inst.port: inst.instance_id, inst.admin_port: f"{inst.instance_id} admin"}
            | {int(p.listen.rpartition(":")[2]): f"proxy {p.name}" for p in proxies}
        )
        # From here on the canary is in the state, so that a rollback (or `--abort-canary`
        # after a killed command) finds it.
        self._set_canaries(canaries)
        self.plan = new_plan
        self._save()
        async with aiohttp.ClientSession() as http:
            await ToxiproxyClient(http, self.toxiproxy_url).populate(proxies)
        self._write_program(self._instance_spec(inst))
        await self.supervisor.update()
        write_targets(self.plan, self.run_dir / "prometheus" / "targets")
        self.progress(f"starting {inst.instance_id} at {version} for {share:.0%} of the traffic")
        await self.wait_ready([inst], within=60.0)
        return inst

    async def remove_canary(self, component: str) -> float:
        """Drain the canary of ``component`` and stop it; the old instances are untouched.
        Returns the seconds it took (0 when there was none)."""
        started = time.monotonic()
        if component not in self.canaries:
            return 0.0
        instance_id = f"{component}{CANARY_SUFFIX}"
        remaining = {k: v for k, v in self.canaries.items() if k != component}
        new_plan = self._replan(self.plan.topology, remaining)
        async with aiohttp.ClientSession() as http:
            with contextlib.suppress(ConfigError):
                await self._drain(http, self.plan.instance(instance_id))
            self._remove_program(instance_id)
            self._set_canaries(remaining)
            self.plan = new_plan
            self._save()
            await self.supervisor.update()
            with contextlib.suppress(ToxiproxyError):
                await ToxiproxyClient(http, self.toxiproxy_url).delete([instance_id])
        write_targets(self.plan, self.run_dir / "prometheus" / "targets")
        return time.monotonic() - started

    async def _judge_canary(
        self,
        inst: InstancePlan,
        old_version: str,
        *,
        judge_for: float,
        thresholds: Thresholds,
        progress_every: float,
    ) -> Judgement:
        started = time.monotonic()
        scrape = self.plan.topology.defaults.scrape_interval_seconds
        async with aiohttp.ClientSession() as http:

            async def numbers(window: float) -> Judgement:
                old, new = await sample(
                    http,
                    self.prometheus_url,
                    job=inst.component,
                    canary_instance=inst.instance_id,
                    old_version=old_version,
                    new_version=inst.version,
                    window_seconds=window,
                )
                return judge(old, new, thresholds)

            while (elapsed := time.monotonic() - started) < judge_for:
                await asyncio.sleep(min(progress_every, judge_for - elapsed))
                elapsed = time.monotonic() - started
                if elapsed >= judge_for:
                    break
                with contextlib.suppress(CanaryError):
                    so_far = await numbers(elapsed)
                    share = "n/a" if so_far.share is None else f"{so_far.share:.0%}"
                    self.progress(
                        f"judging {elapsed:.0f}/{judge_for:g}s: canary share {share}; "
                        f"{so_far.new.describe()}; {so_far.old.describe()}"
                    )
            # The last requests of the window reach Prometheus with the next scrape.
            await asyncio.sleep(scrape + 0.5)
            return await numbers(judge_for)

    async def canary(
        self,
        component: str,
        version: str,
        *,
        share: float = 0.2,
        judge_for: float = 30.0,
        thresholds: Thresholds | None = None,
        promote_inconclusive: bool = False,
        during: CanaryHook | None = None,
        progress_every: float = 3.0,
    ) -> CanaryResult:
        """A canary of ``version`` beside the old instances, judged, then promoted (rolling
        deploy of the old instances) or rolled back (canary drained and removed).

        Bad input is refused before anything is touched; on any error or interruption
        (Ctrl-C) after the canary started it is removed again and the error raised.
        """
        self._check_canary(component, version, share, judge_for)
        limits = thresholds or Thresholds()
        old_version = self.plan.topology.version_of(component)
        began = time.monotonic()
        inst: InstancePlan | None = None
        try:
            inst = await self._start_canary(component, version, share)
            start_seconds = time.monotonic() - began
            self.progress(
                f"{inst.instance_id} ready in {start_seconds:.1f}s; judging it for {judge_for:g}s"
            )
            judged_at = time.monotonic()
            if during is not None:
                async with during(inst):
                    judgement = await self._judge_canary(
                        inst,
                        old_version,
                        judge_for=judge_for,
                        thresholds=limits,
                        progress_every=progress_every,
                    )
            else:
                judgement = await self._judge_canary(
                    inst,
                    old_version,
                    judge_for=judge_for,
                    thresholds=limits,
                    progress_every=progress_every,
                )
            judged_seconds = time.monotonic() - judged_at
        except BaseException:
            if component in self.canaries:
                self.progress(f"rolling back the canary of {component}")
                await asyncio.shield(self.remove_canary(component))
            raise
        self.progress(judgement.summary())
        promote = judgement.decision == "promote" or (
            judgement.decision == "inconclusive" and promote_inconclusive
        )
        if not promote:
            self.progress(f"rolling back: draining and removing {inst.instance_id}")
            rollback = await self.remove_canary(component)
            return CanaryResult(
                component,
                version,
                inst.instance_id,
                judgement,
                "rolled back",
                start_seconds,
                judged_seconds,
                rollback,
                None,
            )
        self.progress(f"promoting {version}: rolling deploy of the old instances")
        try:
            deployed = await self.deploy(component, version)
        finally:
            await self.remove_canary(component)
        return CanaryResult(
            component,
            version,
            inst.instance_id,
            judgement,
            "promoted",
            start_seconds,
            judged_seconds,
            None,
            deployed,
        )

    # -- deploying a single instance: a hand-over on its port --
    async def _hand_over(self, old: InstancePlan, new: InstancePlan) -> None:
        """Replace ``old`` by ``new`` (same ports, another version) without refusing a
        connection, as HAProxy's seamless reload does (``observability.handoff``).

        1. start ``<instance>-next`` at the new version on the same public port (its own admin
           port: ``spare_admin_port``; it registers as ``<instance>-next``), wait until it
           listens and is ready: from then on it gets every new connection;
        2. stop the old process gracefully: it closes its listener, finishes in-flight
           requests, closes idle keep-alive connections and exits;
        3. start ``<instance>`` at the new version (same port again), wait until it listens
           and is ready: it now gets every new connection;
        4. stop ``<instance>-next`` the same way.

        A failure or Ctrl-C on the way puts the old version back (if it was stopped) and
        removes the temporary program, then raises.
        """
        temp = self._successor(new)
        check_ports_free({temp.admin_port: f"{temp.instance_id} admin"})
        iid = new.instance_id
        old_stopped = False
        try:
            self.progress(f"{iid}: starting {temp.instance_id} ({new.version}) on port {new.port}")
            self._write_program(self._instance_spec(temp))
            await self.supervisor.update()
            await self._wait_serving(temp)
            self.progress(f"{iid}: stopping {old.version} (closes its listener, finishes requests)")
            old_stopped = True
            await self.supervisor.stop(iid)
            self.progress(f"{iid}: starting {new.version}")
            self._write_program(self._instance_spec(new))
            await self.supervisor.update()
            await self._wait_serving(new)
            self.progress(f"{iid}: stopping {temp.instance_id}")
            self._remove_program(temp.instance_id)
            await self.supervisor.update()
        except BaseException as exc:
            why = (
                "interrupted"
                if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt)
                else (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            )
            self.progress(f"{iid}: deploy stopped ({why}); putting {old.version} back")
            await asyncio.shield(self._restore(old, temp, old_stopped=old_stopped))
            self.progress(f"{iid}: {old.version} serves; {temp.instance_id} removed")
            if isinstance(exc, Exception):
                raise StackError(
                    f"deploy of {iid} to {new.version} failed, {old.version} still serves: {exc}"
                ) from None
            raise

    def _shares_port(self, inst: InstancePlan) -> bool:
        """Whether ``inst``'s program runs with ``TESTBED_REUSE_PORT`` (a successor can bind
        beside it only then)."""
        try:
            text = (self.programs_dir / f"{inst.instance_id}.conf").read_text()
        except OSError:
            return False
        return 'TESTBED_REUSE_PORT="1"' in text

    def _successor(self, inst: InstancePlan) -> InstancePlan:
        """``inst`` as the temporary ``<instance>-next`` program: same public port, its own
        instance id and admin port (so the registry, logs and faults never confuse the two)."""
        iid = inst.instance_id + NEXT_SUFFIX
        admin = spare_admin_port(inst)
        env = {**inst.env, "TESTBED_INSTANCE_ID": iid, "TESTBED_ADMIN_PORT": str(admin)}
        return replace(inst, instance_id=iid, admin_port=admin, env=env)

    async def _wait_serving(self, inst: InstancePlan, *, within: float = 60.0) -> None:
        """Wait until ``inst``'s own process listens on its port (a reply on the shared port
        may come from the other process), then until it is ready."""
        deadline = time.monotonic() + within
        while True:
            pid = 0
            with contextlib.suppress(SupervisorError, TimeoutError):
                info = await self.supervisor.acall("getProcessInfo", inst.instance_id)
                pid = int(info.get("pid") or 0) if info.get("statename") == "RUNNING" else 0
            if pid and pid in await asyncio.to_thread(listening_pids, inst.port):
                break
            await self._fail_on_fatal({inst.instance_id})
            if time.monotonic() > deadline:
                raise StackError(
                    f"{inst.instance_id} does not listen on {inst.port} after {within:.0f}s\n"
                    + self._log_tails([inst.instance_id])
                )
            await asyncio.sleep(0.1)
        await self.wait_ready([inst], within=max(1.0, deadline - time.monotonic()))

    async def _restore(self, old: InstancePlan, temp: InstancePlan, *, old_stopped: bool) -> None:
        """After a failed hand-over: ``old`` serving again, the temporary program gone."""
        try:
            if old_stopped:
                self._write_program(self._instance_spec(old))
                await self.supervisor.update()
                await self.supervisor.start(old.instance_id)
                await self._wait_serving(old)
        finally:
            self._remove_program(temp.instance_id)
            await self.supervisor.update()


# ---- up -----------------------------------------------------------------------------------------
def _default_run_dir() -> Path:
    return (Path("runs") / time.strftime("%Y%m%d-%H%M%S")).resolve()


def _jaeger_config(plan: Plan) -> str:
    infra = plan.infra
    config = jaeger_config(
        host=LOCALHOST,
        ui=infra.jaeger_ui,
        otlp_grpc=infra.jaeger_otlp_grpc,
        otlp_http=infra.jaeger_otlp_http,
        query_grpc=plan.base_port + 5,
        self_tracing=False,
        # A jaeger-ui build the user brought (`yarn build` in jaegertracing/jaeger-ui).
        ui_assets=os.environ.get(JAEGER_UI_ASSETS_ENV) or None,
    )
    return yaml.safe_dump(config, sort_keys=False)


def _find_tools(jaeger: bool | None) -> tuple[str, str, str | None]:
    toxiproxy = find_binary("toxiproxy-server", env_var="TESTBED_TOXIPROXY", hint=INSTALL_HINT)
    prometheus = os.environ.get("TESTBED_PROMETHEUS") or shutil.which("prometheus")
    if not prometheus:
        raise ConfigError(
            "prometheus is not installed (not on PATH): run `make setup` "
            "(Debian: sudo apt-get install prometheus)"
        )
    jaeger_bin: str | None = None
    if jaeger is not False:
        try:
            jaeger_bin = find_binary("jaeger", env_var="TESTBED_JAEGER", hint=INSTALL_HINT)
        except ConfigError:
            if jaeger:
                raise
    return toxiproxy, prometheus, jaeger_bin


def _find_zipkin(trace_ui: bool | None) -> tuple[str, Path] | None:
    if trace_ui is False:
        return None
    try:
        return find_zipkin()
    except ConfigError:
        if trace_ui:
            raise
        return None


def _trace_ui_programs(stack: Stack, java: str, jar: Path) -> list[ProgramSpec]:
    """Zipkin, started first (the JVM is the slowest to start), and the span shipper."""
    port = stack.plan.infra.zipkin
    url = f"http://{LOCALHOST}:{port}"
    return [
        ProgramSpec(
            name="zipkin",
            command=zipkin_command(java, jar, port),
            env=zipkin_env(port),
            log_file=stack.logs_dir / "zipkin.log",
            directory=stack.run_dir,
            priority=1,
            stop_wait_seconds=5,
        ),
        ProgramSpec(
            name="zipkin-shipper",
            command=shipper_command(sys.executable, stack.run_dir / "traces", url),
            env={},
            log_file=stack.logs_dir / "zipkin-shipper.log",
            directory=stack.workdir,
            priority=900,
            stop_wait_seconds=5,
        ),
    ]


def _alive_stack(run_dir: Path) -> Stack | None:
    try:
        stack = open_stack(run_dir)
    except (NotUp, StackError, ConfigError):
        return None
    return stack if stack.supervisor.alive() else None


def _refuse_if_up(run_dir: Path | None) -> None:
    for candidate in filter(None, (current_run_dir(), run_dir.resolve() if run_dir else None)):
        alive = _alive_stack(candidate)
        if alive is not None:
            raise AlreadyUp(_already_up_message(alive))


def _already_up_message(stack: Stack) -> str:
    rows = "\n".join(f"  {k:<16} {v}" for k, v in stack.where())
    return f"the stack is already up:\n{rows}\nstop it with `testbed down`"


async def up(
    *,
    topology: Path | None = None,
    run_dir: Path | None = None,
    base_port: int | None = None,
    jaeger: bool | None = None,
    trace_ui: bool | None = None,
    progress: Progress = _quiet,
    within: float = 90.0,
    env: dict[str, str] | None = None,
) -> Stack:
    """Start the whole stack and wait until every instance is ready; returns it, running.

    ``jaeger``: None starts Jaeger when ``tools/bin/jaeger`` exists, False never, True requires
    it. ``trace_ui`` likewise for Zipkin and its span shipper (``management.trace_ui``): None
    when its jar and Java are there. ``env`` is the environment supervisord starts with
    (default ``os.environ``). On failure, everything started so far is stopped again.
    """
    _refuse_if_up(run_dir)
    topo = load_topology(topology)
    toxiproxy_bin, prometheus_bin, jaeger_bin = _find_tools(jaeger)
    zipkin = _find_zipkin(trace_ui)
    base = base_port or int(os.environ.get("TESTBED_BASE_PORT") or DEFAULT_BASE_PORT)
    run = (run_dir or _default_run_dir()).resolve()
    # A fresh secret per run for every admin API (faults): never the default printed in the
    # code. It lives in the run's state (0600), where the chaos commands find it.
    admin_token = secrets.token_urlsafe(24)
    plan = build_plan(
        topo,
        base_port=base,
        run_dir=run,
        jaeger=jaeger_bin is not None,
        admin_token=admin_token,
        trace_ui=zipkin is not None,
    )
    check_ports_free(plan.ports())

    for sub in ("logs", "data", "traces", "supervisor/programs", "prometheus/data"):
        (run / sub).mkdir(parents=True, exist_ok=True)
    for stale in (run / "supervisor" / "programs").glob("*.conf"):
        stale.unlink()
    socket = socket_path_for(run)
    state: dict[str, Any] = {
        "format": 1,
        "run_dir": str(run),
        "base_port": base,
        "socket": str(socket),
        "workdir": os.getcwd(),
        "topology_source": str(topology) if topology else "(default)",
        "topology": topo.to_data(),
        "jaeger": jaeger_bin is not None,
        "trace_ui": zipkin is not None,
        "started_at": time.time(),
        "status": "starting",
        "admin_token": admin_token,
    }
    _write_state(run, state)
    _set_pointer(run)
    stack = Stack(
        run_dir=run, plan=plan, state=state, supervisor=Supervisor(socket), progress=progress
    )
    try:
        prom_config = write_prometheus_files(plan, run / "prometheus")
        consoles, console_libraries = write_console(
            run / "prometheus", topology_name=plan.topology.name
        )
        infra = [
            ProgramSpec(
                name="toxiproxy",
                command=(toxiproxy_bin, "-host", LOCALHOST, "-port", str(plan.infra.toxiproxy)),
                env={},
                log_file=stack.logs_dir / "toxiproxy.log",
                directory=run,
                priority=1,
                stop_wait_seconds=5,
            ),
            ProgramSpec(
                name="prometheus",
                command=(
                    prometheus_bin,
                    f"--config.file={prom_config}",
                    f"--storage.tsdb.path={run / 'prometheus' / 'data'}",
                    f"--web.listen-address={LOCALHOST}:{plan.infra.prometheus}",
                    "--storage.tsdb.retention.time=1d",
                    f"--web.console.templates={consoles}",
                    f"--web.console.libraries={console_libraries}",
                    "--log.level=warn",
                ),
                env={},
                log_file=stack.logs_dir / "prometheus.log",
                directory=run,
                priority=900,
                stop_wait_seconds=10,
            ),
        ]
        if jaeger_bin is not None:
            jaeger_conf = run / "jaeger.yaml"
            jaeger_conf.write_text(_jaeger_config(plan))
            infra.append(
                ProgramSpec(
                    name="jaeger",
                    command=(jaeger_bin, f"--config={jaeger_conf}"),
                    # Jaeger would trace itself to localhost:4317 (another stack's port, maybe).
                    env={"OTEL_TRACES_EXPORTER": "none", "OTEL_SDK_DISABLED": "true"},
                    log_file=stack.logs_dir / "jaeger.log",
                    directory=run,
                    priority=2,
                    stop_wait_seconds=5,
                )
            )
        if zipkin is not None:
            infra += _trace_ui_programs(stack, *zipkin)
        for spec in infra:
            stack._write_program(spec)
        for inst in plan.instances:
            stack._write_program(stack._instance_spec(inst))
        conf = run / "supervisor" / "supervisord.conf"
        conf.write_text(supervisord_config(run, socket, stack.programs_dir))
        progress(f"starting {len(plan.instances)} processes, Toxiproxy and Prometheus in {run}")
        await asyncio.to_thread(
            launch_supervisord, conf, clean_environment(env or dict(os.environ), run)
        )
        state["supervisord_pid"] = await asyncio.to_thread(stack.supervisor.pid)
        _write_state(run, state)
        await _populate_toxiproxy(stack, within=min(within, 30.0))
        progress(f"Toxiproxy: {len(plan.proxies)} proxies")
        await stack.wait_ready(plan.instances, within=within, infra=True, registration_grace=5.0)
        if stack.trace_ui_url:
            await stack.wait_trace_ui(within=TRACE_UI_GRACE)
    except BaseException:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(down, run)
        raise
    state["status"] = "up"
    _write_state(run, state)
    return stack


async def _populate_toxiproxy(stack: Stack, *, within: float) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as http:
        client = ToxiproxyClient(http, stack.toxiproxy_url)
        while True:
            try:
                await client.version()
                break
            except ToxiproxyError:
                if time.monotonic() > deadline:
                    raise StackError(
                        "Toxiproxy did not start:\n" + stack._log_tails(["toxiproxy"])
                    ) from None
                await asyncio.sleep(0.05)
        await client.populate(stack.plan.proxies)


# ---- open / down --------------------------------------------------------------------------------
def open_stack(run_dir: Path | None = None, *, progress: Progress = _quiet) -> Stack:
    """The stack in ``run_dir`` (default: the current run), from its state file."""
    run = _resolve_run_dir(run_dir)
    state = _read_state(run)
    if state.get("status") == "down":
        raise NotUp(f"the stack in {run} is down; start one with `testbed up`")
    # JSON is YAML, and keeps the components' order (their ports depend on it).
    topo = parse_topology(json.dumps(state["topology"]), str(run / STATE_FILE))
    plan = build_plan(
        topo,
        base_port=int(state["base_port"]),
        run_dir=run,
        jaeger=bool(state.get("jaeger")),
        admin_token=_admin_token(state),
        trace_ui=bool(state.get("trace_ui")),
        canaries=_canaries_of(state),
    )
    return Stack(
        run_dir=run,
        plan=plan,
        state=state,
        supervisor=Supervisor(Path(state["socket"])),
        progress=progress,
    )


def _marked_pids(run_dir: Path) -> list[int]:
    """Processes whose environment carries this stack's marker (what supervisord started)."""
    marker = f"{MARKER_ENV}={run_dir}".encode()
    pids = []
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            environ = Path(f"/proc/{entry.name}/environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0") and _pid_alive(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def _stop_in_parallel(supervisor: Supervisor, *, keep: Sequence[str], within: float = 20.0) -> None:
    """Stop every program not named by (or starting with) one of ``keep``, all at once, and
    wait until they have stopped."""
    names = [
        f"{info['group']}:{info['name']}"
        for info in supervisor.call("getAllProcessInfo")
        if not info["name"].startswith(tuple(keep))
        and info["statename"] in ("RUNNING", "STARTING", "BACKOFF")
    ]
    for name in names:
        with contextlib.suppress(SupervisorError):
            supervisor.call("stopProcess", name, False)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        infos = supervisor.call("getAllProcessInfo")
        states = {f"{i['group']}:{i['name']}": i["statename"] for i in infos}
        if all(states.get(n) not in ("RUNNING", "STARTING", "STOPPING", "BACKOFF") for n in names):
            return
        time.sleep(0.1)


def down(run_dir: Path | None = None, *, progress: Progress = _quiet) -> int:
    """Stop everything the stack started (also after a CLI crash); returns processes killed
    by force. Leaves the run folder (logs, data) but no process, socket or pointer."""
    run = _resolve_run_dir(run_dir)
    try:
        state = _read_state(run)
    except NotUp:
        state = {}
    socket = Path(state.get("socket") or socket_path_for(run))
    supervisor = Supervisor(socket, timeout=10.0)
    pid = state.get("supervisord_pid")
    if socket.exists():
        try:
            pid = pid or supervisor.call("getPID")
            progress("stopping every process (graceful)")
            # Applications first and in parallel (supervisord's own shutdown stops one program
            # after the other), while the registry still takes their deregistrations and
            # Jaeger their last spans; then the rest.
            # (supervisord's shutdown would also spend a second per program already stopped,
            # so every phase is done here and shutdown finds nothing left to stop.)
            with contextlib.suppress(SupervisorError):
                _stop_in_parallel(supervisor, keep=(*_INFRA_PROGRAMS, "registry-"))
                _stop_in_parallel(supervisor, keep=_INFRA_PROGRAMS)
                _stop_in_parallel(supervisor, keep=())
            supervisor.call("shutdown")
        except SupervisorError:
            progress("supervisord is not answering; stopping processes directly")
    if isinstance(pid, int):
        deadline = time.monotonic() + 30
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    forced = 0
    strays = _marked_pids(run)
    if strays:
        progress(f"terminating {len(strays)} leftover processes")
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for p in strays:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(p, signal.SIGCONT)
                    os.kill(p, sig)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and any(_pid_alive(p) for p in strays):
                time.sleep(0.1)
            strays = [p for p in strays if _pid_alive(p)]
            if not strays:
                break
            forced += len(strays)
    for leftover in (socket, run / "supervisord.pid"):
        with contextlib.suppress(OSError):
            leftover.unlink()
    if state:
        state["status"] = "down"
        state["stopped_at"] = time.time()
        _write_state(run, state)
    _clear_pointer(run)
    return forced
