"""High availability on Kafka: tasks, a lease group, warm standbys, fencing (CITYOPS_STATE_STORE=kafka).

A *task* is a set of streams that share engine state (``StreamFactory.task``: traffic, health, food, one per
plugin). Each task's state lives on its own topic ``cityops.state.<task>`` (``cityops.engine.kafka_state``:
commit records with their input offsets, chunked snapshots, claim epochs). Any number of ``cityops worker``
processes with the same settings form one service:

* **Which worker should run a task** comes from Kafka's group membership: every worker is a member of the
  consumer group ``cityops-leases`` subscribed to one empty topic per task, ``cityops.leases.<task>``; the
  group's sticky assignment of those partitions spreads the tasks over the live workers (three tasks,
  three workers: one each) and moves only what must move when a worker joins or leaves. A worker that dies leaves the group when its session times out
  (``CITYOPS_CONSUMER_SESSION_TIMEOUT_S``); one that stops leaves at once.
* **Which worker may write** is decided by the claim epoch (``KafkaStateStore.claim``), not by the group: a
  group that briefly assigns a task twice (a paused worker, an extra rebalance on a weak broker) makes two
  claimants, and the older one finds the newer claim at its next commit and exits without releasing it.
* Each task runs in a child process (``cityops worker`` with ``CITYOPS_TASK``): on the worker assigned the task
  it is **active** (claims, consumes the task's streams with the consumer group ``cityops-<task>``, commits,
  delivers); on every other worker it is a **warm standby** (``--standby``): it restores the task's state from
  Kafka and keeps tailing the state topic, so taking over is a claim plus the records since its last read,
  not a cold restore. Activation is a file the supervisor creates; SIGTERM on an active child is a clean stop (final commit,
  flush, hand-over record).
* A worker joins the lease group only once its standbys are warm, so a task it is given starts at once;
  its ``/healthz`` is ready once it has joined and every task assigned to it is active (a rolling restart
  moves to the next worker then).
* The supervisor (this module) serves ``/healthz`` (each task's role, epoch, standby lag, the active
  child's own health) and ``/metrics`` (its own plus the active children's, labelled by task) on
  ``CITYOPS_WEB_PORT``. Children die with it (``PR_SET_PDEATHSIG``): a ``kill -9`` of the worker is the loss
  of all its tasks, as the loss of its machine would be.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from cityops.runtime import EXIT_FENCED
from cityops.settings import Settings

__all__ = ["LEASE_GROUP", "Supervisor", "run_standby", "run_supervisor"]

log = logging.getLogger("cityops.ha")

LEASE_GROUP = "cityops-leases"
STANDBY_STATUS = "standby.json"  # written by a standby child in its data directory, read by the supervisor
# Created by the supervisor in a standby's data directory: take the task over. A file, not a signal: a
# standby still importing would die of a signal it has no handler for yet.
ACTIVATE = "activate"

ACTIVE, STANDBY, STARTING, STOPPING = "active", "standby", "starting", "stopping"


# -- the standby child ---------------------------------------------------------------------------------
def run_standby(settings: Settings) -> Any:
    """A task's warm standby (``cityops worker --standby`` with ``CITYOPS_TASK``): restore the task's state
    from ``cityops.state.<task>`` and tail it until activated, then claim it and return the store (the caller
    builds the worker on it). Returns None on SIGTERM/SIGINT (a standby has nothing to flush).
    Activation: the file ``activate`` in ``CITYOPS_DATA_DIR`` (created by the supervisor).

    Writes ``standby.json`` in ``CITYOPS_DATA_DIR`` about once a second: the owner's epoch, whether it
    handed over, commits applied, the state-topic records not read yet (``lag``). Raises ``Fenced`` when
    another worker's claim lands before ours.
    """
    from cityops.runtime import kafka_state_store

    # Imported now, not at the takeover: the worker's modules take seconds to import on a busy machine.
    import faust.worker  # noqa: F401

    import cityops.agents.app  # noqa: F401
    import cityops.alerts.wiring  # noqa: F401

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda s, f: stop.set())
    signal.signal(signal.SIGINT, lambda s, f: stop.set())
    store = kafka_state_store(settings).restore()
    status_path = Path(settings.data_dir) / STANDBY_STATUS
    activate = Path(settings.data_dir) / ACTIVATE
    log.info("standby task=%s restored commits=%d in %.2fs; tailing %s", settings.task, store.commits,
             store.restore_s, store.topic)
    last_status = 0.0
    while not activate.exists():
        if stop.is_set():
            store.close()
            status_path.unlink(missing_ok=True)
            log.info("standby task=%s stopped", settings.task)
            return None
        store.tail(0.2)
        now = time.monotonic()
        if now - last_status >= 1.0:
            last_status = now
            _write_json(status_path, {"role": STANDBY, "pid": os.getpid(), "lag": store.lag(),
                                      "updated": time.time(), **store.standby_status()})
    t0 = time.perf_counter()
    lag = store.lag()
    store.tail(0.0)
    # A clean hand-over (the owner's worker got SIGTERM and left the group first) ends with a hand-over
    # record within about a commit interval: wait that long for it rather than fence its final commit.
    before = store.await_handover(alive_s=2 * settings.flush_interval_s + 1.0,
                                  wait_s=2 * settings.flush_interval_s + 3.0)
    store.claim()
    status_path.unlink(missing_ok=True)
    activate.unlink(missing_ok=True)
    log.info("takeover task=%s epoch=%d lag_at_activation=%d owner=%s claim_s=%.3f", settings.task, store.epoch,
             lag, before, time.perf_counter() - t0)
    return store


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


# -- the supervisor --------------------------------------------------------------------------------------
def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the supervisor dies (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except Exception:  # (not Linux) the child polls its parent instead: see Child.watch_parent
        pass


@dataclass
class Child:
    """One task's child process on this worker."""

    task: str
    role: str  # active | standby | starting (active, not yet healthy) | stopping
    proc: asyncio.subprocess.Process
    port: int
    data_dir: Path
    started: float = field(default_factory=time.time)
    activated: float | None = None


class _Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.role = Gauge("cityops_task_role", "1 for the role this worker has for each task "
                          "(active|standby|starting|stopping)", ["task", "role"], registry=r)
        self.epoch = Gauge("cityops_task_epoch", "Claim epoch of each task as this worker knows it (its own "
                           "when active, the owner's read by the standby)", ["task"], registry=r)
        self.lag = Gauge("cityops_standby_lag_records", "State-topic records a standby has not read yet",
                         ["task"], registry=r)
        self.takeovers = Counter("cityops_task_takeovers", "Tasks this worker became active for, by how "
                                 "(standby = a warm standby activated; cold = a new child restored from Kafka)",
                                 ["task", "how"], registry=r)
        self.assigned = Gauge("cityops_lease_assigned_tasks", "Tasks the lease group assigns this worker",
                              registry=r)
        self.rebalances = Counter("cityops_lease_rebalances", "Lease group assignments received", registry=r)
        self.exits = Counter("cityops_task_child_exits", "Task child processes that ended, by role and exit "
                             "code", ["task", "role", "code"], registry=r)


class Supervisor:
    """``cityops worker`` with CITYOPS_STATE_STORE=kafka and no CITYOPS_TASK: the lease group member that runs
    one child per task (active or standby). ``tasks``: task name -> its stream topics."""

    def __init__(self, settings: Settings, tasks: Mapping[str, list[str]], *, log_level: str = "INFO") -> None:
        self.settings = settings
        self.tasks = dict(tasks)
        self.log_level = log_level
        self.worker_id = uuid.uuid4().hex[:12]
        self.children: dict[str, Child] = {}
        self.assigned: set[str] = set()
        self.metrics = _Metrics()
        self._stop = asyncio.Event()
        self._changed = asyncio.Event()
        self._backoff: dict[str, float] = {}
        self._undelivered = False
        self._assignments = 0
        self.metrics.registry.register(_ChildCollector(self))

    # -- children ----------------------------------------------------------------------------------------
    async def _spawn(self, task: str, role: str) -> Child:
        from cityops.localproc import free_port

        data_dir = Path(self.settings.data_dir) / "tasks" / task
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / ACTIVATE).unlink(missing_ok=True)
        (data_dir / STANDBY_STATUS).unlink(missing_ok=True)  # a previous run's: not this standby's
        port = free_port("127.0.0.1")
        env = dict(os.environ)
        env.update({"CITYOPS_TASK": task, "CITYOPS_DATA_DIR": str(data_dir), "CITYOPS_WEB_PORT": str(port),
                    "CITYOPS_WEB_HOST": "127.0.0.1"})
        argv = [sys.executable, "-m", "cityops.cli", "worker", "--log-level", self.log_level]
        if role == STANDBY:
            argv.append("--standby")
        # The children's logs go to ours (stdout/stderr inherited), each line names its task (logger names
        # and the task= fields).
        proc = await asyncio.create_subprocess_exec(*argv, env=env, preexec_fn=_die_with_parent)
        child = Child(task, STARTING if role == ACTIVE else STANDBY, proc, port, data_dir)
        if role == ACTIVE:
            child.activated = time.time()
            self.metrics.takeovers.labels(task=task, how="cold").inc()
        self.children[task] = child
        log.info("task=%s child pid=%d role=%s port=%d", task, proc.pid, role, port)
        return child

    async def _reconcile(self) -> None:
        """Make the children match the assignment: activate or start the assigned tasks' children, stop
        the active children of tasks no longer assigned (clean stop: final commit, hand-over), keep a
        standby for every other task."""
        now = time.monotonic()
        for task in self.tasks:
            child = self.children.get(task)
            alive = child is not None and child.proc.returncode is None
            if task in self.assigned:
                if alive and child.role == STANDBY:
                    child.role = STARTING
                    child.activated = time.time()
                    (child.data_dir / ACTIVATE).touch()
                    self.metrics.takeovers.labels(task=task, how="standby").inc()
                    log.info("task=%s activating standby pid=%d", task, child.proc.pid)
                elif not alive and now >= self._backoff.get(task, 0.0):
                    await self._spawn(task, ACTIVE)
            else:
                if alive and child.role in (ACTIVE, STARTING):
                    child.role = STOPPING
                    child.proc.send_signal(signal.SIGTERM)
                    log.info("task=%s no longer assigned here: stopping pid=%d (final commit, hand-over)", task,
                             child.proc.pid)
                elif not alive and now >= self._backoff.get(task, 0.0):
                    await self._spawn(task, STANDBY)
        self._update_metrics()

    def _reap(self) -> None:
        for task, child in list(self.children.items()):
            code = child.proc.returncode
            if code is None:
                continue
            del self.children[task]
            self.metrics.exits.labels(task=task, role=child.role, code=str(code)).inc()
            if code == 3:
                self._undelivered = True
            if child.role == STOPPING and code in (0, 3, EXIT_FENCED):
                log.info("task=%s child pid=%d stopped (exit %d)", task, child.proc.pid, code)
                continue
            if self._stop.is_set():
                continue
            # Fenced: another worker holds the task (the group moved it, or assigned it twice for a
            # moment). Anything else is a crash. Either way: back off, then follow the assignment again.
            level = log.info if code == EXIT_FENCED else log.error
            level("task=%s %s child pid=%d exited %d; following the lease assignment again", task, child.role,
                  child.proc.pid, code)
            self._backoff[task] = time.monotonic() + (1.0 if code == EXIT_FENCED else 2.0)

    def _update_metrics(self) -> None:
        self.metrics.role.clear()
        for task in self.tasks:
            child = self.children.get(task)
            if child is not None:
                self.metrics.role.labels(task=task, role=child.role).set(1)
            st = self._standby_status(task)
            if st is not None:
                self.metrics.lag.labels(task=task).set(st.get("lag", 0))
                self.metrics.epoch.labels(task=task).set(st.get("epoch", -1))
        self.metrics.assigned.set(len(self.assigned))

    def _standby_status(self, task: str) -> dict[str, Any] | None:
        child = self.children.get(task)
        if child is None or child.role != STANDBY:
            return None
        try:
            return dict(json.loads((child.data_dir / STANDBY_STATUS).read_text()))
        except (OSError, ValueError):
            return None

    def _child_health(self, child: Child, timeout_s: float = 1.0) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{child.port}/healthz", timeout=timeout_s) as resp:
                return dict(json.loads(resp.read()))
        except urllib.error.HTTPError as exc:  # 503 still carries the body
            try:
                return dict(json.loads(exc.read()))
            except ValueError:
                return None
        except (OSError, ValueError):
            return None

    async def health(self) -> tuple[bool, dict[str, Any]]:
        """(ready, body) of ``/healthz``: ready when every assigned task's active child is ready."""
        loop = asyncio.get_running_loop()
        tasks: dict[str, Any] = {}
        ready = self._assignments > 0  # not before the lease group has answered
        for task in self.tasks:
            child = self.children.get(task)
            entry: dict[str, Any] = {"role": child.role if child else "none", "assigned": task in self.assigned,
                                     "pid": child.proc.pid if child else None}
            if child is not None and child.role == STANDBY:
                st = self._standby_status(task) or {}
                entry.update({"epoch": st.get("epoch"), "standby_lag_records": st.get("lag"),
                              "owner_handed_over": st.get("handed_over"), "commits": st.get("commits")})
            elif child is not None and child.role in (ACTIVE, STARTING):
                h = await loop.run_in_executor(None, self._child_health, child)
                if h is not None and h.get("ready"):
                    if child.role == STARTING:
                        child.role = ACTIVE
                        log.info("task=%s active pid=%d (%.2fs after activation)", task, child.proc.pid,
                                 time.time() - (child.activated or child.started))
                entry["epoch"] = ((h or {}).get("state") or {}).get("epoch")
                entry["health"] = h
            if task in self.assigned and (child is None or child.role != ACTIVE):
                ready = False
            tasks[task] = entry
        # The active tasks' event counts, summed as one worker's /healthz gives them.
        events: dict[str, int] = {}
        for entry in tasks.values():
            for key, n in ((entry.get("health") or {}).get("events") or {}).items():
                events[key] = events.get(key, 0) + n
        pending = sum(int((e.get("health") or {}).get("influx_pending_points") or 0) for e in tasks.values())
        body = {"ready": ready, "worker": self.worker_id, "store": "kafka", "assigned": sorted(self.assigned),
                "active": sorted(t for t, e in tasks.items() if e["role"] == ACTIVE),
                "tasks": tasks, "events": events, "influx_pending_points": pending}
        return ready, body

    # -- lease group -------------------------------------------------------------------------------------
    async def run(self) -> int:
        from aiohttp import web
        from aiokafka import AIOKafkaConsumer
        from aiokafka.abc import ConsumerRebalanceListener
        from aiokafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor

        from cityops.connections import kafka_client_security
        from cityops.topics import lease_topic

        sup = self
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._forward_hup)

        app = web.Application()

        async def healthz(request: Any) -> Any:
            ok, body = await sup.health()
            return web.json_response(body, status=200 if ok else 503)

        async def metrics(request: Any) -> Any:
            sup._update_metrics()
            data = await loop.run_in_executor(None, generate_latest, sup.metrics.registry)
            return web.Response(body=data, content_type="text/plain", charset="utf-8",
                                headers={"X-Content-Type-Options": "nosniff"})

        app.router.add_get("/healthz", healthz)
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, self.settings.web_host, self.settings.web_port).start()

        for task in self.tasks:  # every task starts as a standby here; the assignment activates some
            await self._spawn(task, STANDBY)
        # Join the lease group only once the standbys are warm (restored, tailing): a worker that joins
        # earlier can be given a task it would then take seconds to start.
        t0 = time.monotonic()
        while not self._stop.is_set() and time.monotonic() - t0 < 180:
            warm = [t for t, c in self.children.items()
                    if c.proc.returncode is not None or (c.data_dir / STANDBY_STATUS).exists()]
            if len(warm) == len(self.tasks):
                break
            await asyncio.sleep(0.1)
        log.info("standbys warm in %.1fs; joining %s", time.monotonic() - t0, LEASE_GROUP)

        class Leases(ConsumerRebalanceListener):  # type: ignore[misc]
            async def on_partitions_revoked(self, revoked: Any) -> None:
                # Nothing is stopped here: the next assignment often gives the same tasks back (a member
                # joined, or the broker rebalanced for nothing). If a task does move, its new owner's claim
                # fences this worker's child at its next commit, and the assignment stops it cleanly.
                pass

            async def on_partitions_assigned(self, assigned: Any) -> None:
                topics = {tp.topic for tp in assigned}
                sup.assigned = {t for t in sup.tasks if lease_topic(t) in topics}
                sup.metrics.rebalances.inc()
                sup._assignments += 1
                log.info("lease assignment worker=%s tasks=%s", sup.worker_id, ",".join(sorted(sup.assigned)) or "-")
                sup._changed.set()

        s = self.settings
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap, group_id=LEASE_GROUP, client_id=f"cityops-{self.worker_id}",
            enable_auto_commit=False, auto_offset_reset="latest",
            # Sticky: a member joining or leaving moves only the tasks it must (round-robin reshuffles
            # them all, and every move is a hand-over).
            partition_assignment_strategy=(StickyPartitionAssignor,),
            session_timeout_ms=int(s.consumer_session_timeout_s * 1000),
            # Frequent heartbeats: a member learns of a rebalance (a worker gone) at its next heartbeat.
            heartbeat_interval_ms=int(min(0.5, s.consumer_session_timeout_s / 6) * 1000),
            **kafka_client_security(s))
        await consumer.start()
        consumer.subscribe(topics=[lease_topic(t) for t in self.tasks], listener=Leases())
        log.info("worker %s in lease group %s for tasks %s web=http://%s:%d", self.worker_id, LEASE_GROUP,
                 ",".join(self.tasks), s.web_host, s.web_port)
        checked = 0.0
        try:
            while not self._stop.is_set():
                # The lease topics are never written: getmany only keeps this member in the group.
                poll = asyncio.ensure_future(consumer.getmany(timeout_ms=500))
                stop = asyncio.ensure_future(self._stop.wait())
                changed = asyncio.ensure_future(self._changed.wait())  # an assignment: act on it at once
                await asyncio.wait({poll, stop, changed}, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                changed.cancel()
                if not poll.done():
                    poll.cancel()
                self._reap()
                self._changed.clear()
                await self._reconcile()
                if any(c.role == STARTING for c in self.children.values()) and time.monotonic() - checked >= 1.0:
                    checked = time.monotonic()
                    await self.health()  # a starting task process that answers ready becomes active

        finally:
            await self._shutdown(consumer, runner)
        return 3 if self._undelivered else 0

    def _forward_hup(self) -> None:
        for child in self.children.values():
            if child.role in (ACTIVE, STARTING):
                child.proc.send_signal(signal.SIGHUP)

    async def _shutdown(self, consumer: Any, runner: Any) -> None:
        """SIGTERM: leave the lease group first, so the rebalance that gives this worker's tasks to others
        runs while its active task processes make their final commit, flush and write their hand-over
        record (the new owners' standbys wait for it: ``KafkaStateStore.await_handover``); then the
        standbys stop."""
        log.info("stopping: leaving %s, then %d children", LEASE_GROUP, len(self.children))
        await _leave_group(consumer)
        actives = [c for c in self.children.values() if c.role in (ACTIVE, STARTING, STOPPING)]
        for c in actives:
            c.role = STOPPING
            if c.proc.returncode is None:
                c.proc.send_signal(signal.SIGTERM)
        for c in self.children.values():
            if c.role == STANDBY and c.proc.returncode is None:
                c.proc.send_signal(signal.SIGTERM)
        for c in list(self.children.values()):
            try:
                code = await asyncio.wait_for(c.proc.wait(), 60)
            except asyncio.TimeoutError:
                log.error("task=%s child pid=%d did not stop in 60 s: killing it", c.task, c.proc.pid)
                c.proc.kill()
                code = await c.proc.wait()
            if code == 3:
                self._undelivered = True
        await runner.cleanup()
        log.info("stopped worker %s", self.worker_id)


async def _leave_group(consumer: Any) -> None:
    """Leave the lease group now, so the rebalance starts at once rather than after the session timeout,
    and close the lease consumer.

    aiokafka's close sends LeaveGroup only when its generation is above 0 (``_maybe_leave_group``), but
    Tansu numbers a group's first generation 0: for that case the same request (aiokafka's own
    ``LeaveGroupRequest``, through its coordinator) is sent here first.
    """
    from aiokafka.protocol.group import LeaveGroupRequest

    coordinator = getattr(consumer, "_coordinator", None)
    try:
        if coordinator is not None and coordinator.generation == 0 and coordinator.member_id:
            await asyncio.wait_for(coordinator._send_req(LeaveGroupRequest(coordinator.group_id,
                                                                           coordinator.member_id)), 5)
            log.info("left %s (generation 0)", LEASE_GROUP)
    except Exception as exc:  # the session times out instead
        log.warning("leaving %s: %s: %s", LEASE_GROUP, type(exc).__name__, exc)
    try:
        await asyncio.wait_for(consumer.stop(), 10)
    except Exception as exc:
        log.warning("closing the lease consumer: %s: %s", type(exc).__name__, exc)


class _ChildCollector:
    """The active children's own metrics on the supervisor's /metrics, with a ``task`` label added (the
    children listen on ports only the supervisor knows)."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    def collect(self) -> Any:
        families: dict[str, Metric] = {}
        for child in list(self.sup.children.values()):
            if child.role not in (ACTIVE, STARTING):
                continue
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{child.port}/metrics", timeout=1.0) as resp:
                    text = resp.read().decode()
            except OSError:
                continue
            for fam in text_string_to_metric_families(text):
                out = families.get(fam.name)
                if out is None:
                    out = families[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
                for smp in fam.samples:
                    labels = dict(smp.labels)
                    labels.setdefault("task", child.task)
                    out.add_sample(smp.name, labels, smp.value, smp.timestamp, smp.exemplar)
        yield from families.values()

    def describe(self) -> list[Any]:
        return []  # collected at scrape time only


def run_supervisor(settings: Settings, tasks: Mapping[str, list[str]], log_level: str = "INFO") -> int:
    """Run the worker as lease-group member and task supervisor until SIGTERM; the exit code is 3 when a
    child's final flush left committed outputs undelivered (as the single worker's), else 0.

    Raises ConfigError when another worker runs on the same CITYOPS_DATA_DIR (their task processes would
    share files: each worker needs its own directory)."""
    import fcntl

    from cityops.errors import ConfigError

    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = open(data_dir / ".worker.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigError(f"CITYOPS_DATA_DIR: {data_dir} is in use by another running worker; give each worker "
                          "its own data directory") from None
    try:
        return asyncio.run(Supervisor(settings, tasks, log_level=log_level).run())
    finally:
        lock.close()
