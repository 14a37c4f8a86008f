"""The `cityops` command: worker, check-config, simulate, demo, topics, nab-detect, dashboards, agent,
evaluate-alerts, backtest, record."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

from cityops import __version__
from cityops.errors import CityopsError, ConfigError, Unreachable
from cityops.units import CITY_TZ, parse_duration

CST = CITY_TZ
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
# `cityops worker` after SIGTERM: the final flush left committed outputs undelivered (they stay in
# CITYOPS_DATA_DIR and the next start delivers them). 1 = error, 2 = bad configuration.
EXIT_UNDELIVERED = 3


def _logging(level: str = "INFO") -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)s")


def _duration(text: str) -> float:
    """A duration argument (cityops.units.parse_duration: '90s', '15m', '2h', '1d', plain seconds) → seconds."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 90s, 15m, 2h, 1d): {exc}") from None


def _start(text: str) -> datetime:
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO time: {text!r} (e.g. 2026-11-25T07:00:00+08:00)") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=CST)


def cmd_worker(args: argparse.Namespace) -> int:
    # Until the app loads the manifests (and installs the reload handler), a SIGHUP has nothing to reload:
    # the load reads the files as they are then. It must not end the process as by default (set first).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from cityops.settings import load_settings

    settings = load_settings()
    _logging(args.log_level or settings.log_level)
    from cityops.connections import kafka_client_security
    from cityops.engine.state import check_format
    from cityops.topics import ensure_topics, topic_specs

    # A data directory this release cannot read stops the start (exit 2) before any server is needed.
    check_format(Path(settings.data_dir) / "state")
    from cityops.plugins import plugin_set

    # A plugin that does not load, or collides with another, stops the start (exit 2) here too.
    plugins = plugin_set(settings)
    # The manifests, their rules and the source registry are files: a mistake in them stops the start
    # (exit 2, naming the file and key) before any server is needed, as check-config would.
    from cityops.alerts.wiring import build_rules, load_registry_gate, load_rules

    rules_dir, rule_specs = load_rules(settings)
    if rules_dir is not None:
        build_rules(rules_dir, rule_specs, plugins.rule_kinds)
    load_registry_gate(settings)
    # Then, before the heavy imports: without the broker the worker cannot go on.
    from cityops.runtime import check_task

    check_task(settings, plugins)  # CITYOPS_TASK names a task of the loaded agents
    if args.standby and (settings.task is None or settings.state_store != "kafka"):
        raise ConfigError("--standby needs CITYOPS_STATE_STORE=kafka and CITYOPS_TASK (the worker starts its "
                          "standbys itself)")
    specs = topic_specs(settings.topic_partitions, plugins)
    if settings.state_store == "kafka":
        from cityops.topics import lease_topic_spec, state_topic_spec

        for task in [settings.task] if settings.task else plugins.tasks():
            specs += [state_topic_spec(task), lease_topic_spec(task)]
    ensure_topics(settings.kafka_bootstrap, specs, security=kafka_client_security(settings))
    from cityops.plugins import describe_loaded

    logging.getLogger("cityops.plugins").info("agent plugins: %s", describe_loaded(plugins))
    from cityops.connections import run_preflight

    run_preflight(settings)  # refused credentials / bad certificates stop here, naming the setting
    if settings.state_store == "kafka" and settings.task is None:
        # The service's member: the lease group says which tasks this worker runs (cityops.ha).
        from cityops.ha import run_supervisor

        return run_supervisor(settings, plugins.tasks(), args.log_level or settings.log_level)
    import faust

    from cityops.agents.app import create_app
    from cityops.engine.kafka_state import Fenced

    try:
        store = None
        if args.standby:
            from cityops.ha import run_standby

            store = run_standby(settings)
            if store is None:
                return 0  # stopped while standing by
        t0 = time.perf_counter()
        app, runtime = create_app(settings, store=store)
        logging.getLogger("cityops.agents").info("worker built in %.2fs (tables declared: %d)",
                                                 time.perf_counter() - t0, len(runtime.store.tables))
    except Fenced as exc:  # CITYOPS_STATE_STORE=kafka: another worker claimed the task as we did
        print(f"cityops: error: {exc}", file=sys.stderr)
        return 4
    tune_gc(settings.gc_threshold)
    t0 = time.perf_counter()
    worker = faust.Worker(app, loglevel=args.log_level or settings.log_level, quiet=True,
                          redirect_stdouts=False, override_logging=False)
    logging.getLogger("cityops.agents").info("faust worker made in %.2fs", time.perf_counter() - t0)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:  # mode's Worker always ends with sys.exit
        if exc.code not in (0, None):
            raise
    # The exit code tells a supervisor (or `cityops demo`) whether "stopped" also means "delivered".
    if runtime.shutdown is not None and not runtime.shutdown.clean:
        return EXIT_UNDELIVERED
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from cityops.checkconfig import check_config

    report = check_config()
    print(report.text())
    for problem in report.problems:
        print(f"cityops: {problem}", file=sys.stderr)
    return 0 if report.ok else 2


def tune_gc(threshold: int) -> None:
    """Fewer cyclic-GC passes for a process that holds much live state (measured: benchmarks/bench_kpi_path.py).

    Almost everything the engine allocates is freed by reference counting; the cyclic collector's
    frequent passes over the long-lived state are pure cost. What exists after start-up (code, settings,
    restored state) is frozen out of the collector's view.
    """
    import gc

    if threshold > 0:
        _, g1, g2 = gc.get_threshold()
        gc.set_threshold(threshold, g1, g2)
    gc.collect()
    gc.freeze()


def _address(value: str | None, option: str, variable: str, default: str,
             env: dict[str, str] | None = None) -> tuple[str, str]:
    """An address from ``option`` if given, else ``variable``, else ``default``; and what set it.

    The second value goes into error messages, so a reader knows which setting to fix.
    """
    env = dict(os.environ) if env is None else env
    if value:
        return value, option
    if env.get(variable):
        return env[variable], variable
    return default, f"the default; set {variable} or {option}"


def cmd_simulate(args: argparse.Namespace) -> int:
    from cityops.simulate.run import run_simulation

    _logging("WARNING")
    args.bootstrap, args.bootstrap_setting = _address(args.bootstrap, "--bootstrap", "CITYOPS_KAFKA_BOOTSTRAP",
                                                      DEFAULT_BOOTSTRAP)
    return run_simulation(args, _kafka_security(args.bootstrap) if args.to == "kafka" else None)


def _kafka_security(bootstrap: str, env: dict[str, str] | None = None) -> dict[str, object]:
    """SASL/TLS client arguments from the CITYOPS_KAFKA_* settings (``env``: default the process
    environment), for the commands that are given --bootstrap."""
    from cityops.connections import kafka_client_security
    from cityops.settings import load_kafka_settings

    return kafka_client_security(load_kafka_settings(env, kafka_bootstrap=bootstrap))


def cmd_demo(args: argparse.Namespace) -> int:
    from cityops.demo import run_demo

    _logging("WARNING")
    return run_demo(args)


def cmd_topics(args: argparse.Namespace) -> int:
    from cityops.topics import ensure_topics, topic_specs

    bootstrap, setting = _address(args.bootstrap, "--bootstrap", "CITYOPS_KAFKA_BOOTSTRAP", DEFAULT_BOOTSTRAP)
    created = ensure_topics(bootstrap, topic_specs(args.partitions), setting=setting,
                            security=_kafka_security(bootstrap))
    print("created: " + (", ".join(created) if created else "nothing (all topics exist)"))
    return 0


def cmd_nab_detect(args: argparse.Namespace) -> int:
    from cityops.alerts.nab import run

    def progress(*a: object, **kw: object) -> None:
        print(" ".join(str(x) for x in a), file=sys.stderr)

    sensitivity, detector = args.sensitivity, {}
    if args.rule:
        # Score exactly what a KPI rule runs: its sensitivity and detector arguments from agents/.
        from cityops.alerts.manifest import load_manifests
        from cityops.alerts.wiring import default_rules_dir

        rules_dir = Path(args.rules_dir) if args.rules_dir else default_rules_dir()
        spec = load_manifests(rules_dir).get(args.rule)
        if spec is None or spec.kind != "kpi_anomaly":
            print(f"error: --rule {args.rule}: no kpi_anomaly rule of that name in {rules_dir}", file=sys.stderr)
            return 2
        from cityops.alerts.kinds import KpiAnomaly

        rule = KpiAnomaly(spec)
        sensitivity = float(rule.params["sensitivity"])
        # The rule's detector arguments and its calendar; not min_history (NAB has its own probation).
        detector = {**rule.calendar_kwargs(), **dict(rule.params["detector"])}
        print(f"rule {args.rule}: sensitivity={sensitivity} detector={detector}", file=sys.stderr)
    if args.detector:
        try:
            extra = json.loads(args.detector)
        except ValueError as exc:
            print(f"error: --detector: not JSON: {exc}", file=sys.stderr)
            return 2
        if not isinstance(extra, dict):
            print("error: --detector: expected a JSON object of KpiDetector arguments", file=sys.stderr)
            return 2
        detector.update(extra)
    # NAB's probationary period as the ART learning period (what NAB hands every detector), unless a rule is
    # scored as it streams or the learning period is given as a detector argument.
    learning_period = args.learning_period or (
        "detector" if args.rule or "art_learn_pts" in detector else "probation")
    try:
        stats = run(Path(args.data_dir), Path(args.out_dir), sensitivity=sensitivity, progress=progress,
                    model=args.model, detector=detector, learning_period=learning_period)
    except (TypeError, ValueError) as exc:
        print(f"error: detector arguments: {exc}", file=sys.stderr)
        return 2
    print(stats)
    return 0


def cmd_dashboards(args: argparse.Namespace) -> int:
    from cityops import dashboards
    from cityops.plugins import catalogue, load_all_dashboards, load_plugins

    plugins = load_plugins()  # (every installed plugin: their dashboards query their KPIs)
    if args.dir:
        boards = dashboards.load_dashboards(Path(args.dir))
    else:
        boards = [board for _, board in load_all_dashboards(plugins)]
    measurements = catalogue(plugins)
    seen: set[str] = set()
    bad = 0
    for b in boards:
        problems = dashboards.validate(b, seen_uids=seen, measurements=measurements)
        for p in problems:
            print(f"{b.get('uid')}: {p}")
        bad += len(problems)
    if args.action == "validate":
        print(f"{len(boards)} dashboards, {bad} problems")
        return 1 if bad else 0
    if bad:
        print("not pushing: fix the problems above first", file=sys.stderr)
        return 1
    url, setting = _address(args.url, "--url", "CITYOPS_GRAFANA_URL", "http://127.0.0.1:3000")
    token = os.environ.get("CITYOPS_GRAFANA_TOKEN")
    from grafana_client.client import GrafanaException, GrafanaTimeoutError, GrafanaUnauthorizedError

    from cityops.reach import describe

    try:
        dashboards.push(boards, url, token, args.folder)
    except (OSError, GrafanaTimeoutError) as exc:  # the HTTP client's connection errors are OSErrors
        raise Unreachable("Grafana", url, setting, describe(exc)) from None
    except GrafanaUnauthorizedError as exc:
        raise CityopsError(f"Grafana at {url} refused the credentials (CITYOPS_GRAFANA_TOKEN, or user:password "
                           f"in {setting}): {describe(exc)}") from None
    except GrafanaException as exc:
        raise CityopsError(f"Grafana at {url} (set by {setting}) refused the push: {describe(exc)}") from None
    print(f"pushed {len(boards)} dashboards to {url}")
    return 0


def cmd_agent_new(args: argparse.Namespace) -> int:
    from cityops.agentkit import AgentNames, new_agent

    target = new_agent(args.name, args.dir)
    names = AgentNames.of(args.name)
    print(f"created {target}: plugin {names.name} (package {names.module}, entry point {names.name} in group "
          f"cityops.agents): stream {names.topic}, KPI {names.kpi}, rule kind {names.kind}, alert {names.alert}")
    print(f"next: cd {target} && pip install -e '.[test]' && python -m pytest tests && cityops agent test "
          f"--plugin {names.name}")
    return 0


def cmd_agent_test(args: argparse.Namespace) -> int:
    from cityops.agentkit import check

    if args.path is not None and args.plugin is not None:
        raise ConfigError("agent test: give PATH or --plugin NAME, not both")
    lines, problems = check(args.path, args.plugin)
    for line in lines:
        print(line)
    for problem in problems:
        print(f"cityops: agent test: {problem}", file=sys.stderr)
    return 2 if problems else 0


def cmd_evaluate_alerts(args: argparse.Namespace) -> int:
    import json

    from cityops import evaluate
    from cityops.streams.city_streams import Pseudonymizer

    env = dict(os.environ)
    if args.env_file:
        # A worker's settings file (e.g. the one `cityops demo` writes); its values win over the environment.
        from dotenv import dotenv_values

        if not Path(args.env_file).is_file():
            raise ConfigError(f"--env-file {args.env_file}: no such file")
        env.update({k: v for k, v in dotenv_values(args.env_file).items() if v is not None})
    key = env.get(args.pseudonym_key_env)
    if not key:
        raise ConfigError(f"{args.pseudonym_key_env} is not set: card labels are pseudonyms, so the worker's "
                          f"CITYOPS_PSEUDONYM_KEY is needed to map the truth's card numbers "
                          f"(pass the worker's settings with --env-file, or name another variable with "
                          f"--pseudonym-key-env)")
    truth = Path(args.truth)
    if not truth.is_file():
        raise ConfigError(f"--truth {truth}: no such file (written by `cityops simulate --incidents --truth ...`)")
    rows = json.loads(truth.read_text())
    incidents = evaluate.incidents_from_truth(rows, Pseudonymizer(key.encode()))
    if args.until is not None:
        # A run stopped early (a demo's Ctrl-C) never sent the later incidents: they are not misses.
        later = [i for i in incidents if i.reference > args.until.timestamp()]
        incidents = [i for i in incidents if i.reference <= args.until.timestamp()]
        if later:
            print(f"not counted: {len(later)} incidents of the truth after --until {args.until.isoformat()}",
                  file=sys.stderr)
    if args.alerts:
        try:
            transitions = evaluate.load_alerts(Path(args.alerts))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--alerts {args.alerts}: {exc}") from None
    else:
        from cityops.reach import check_kafka

        bootstrap, setting = _address(args.bootstrap, "--bootstrap", "CITYOPS_KAFKA_BOOTSTRAP", DEFAULT_BOOTSTRAP,
                                      env)
        if setting == "CITYOPS_KAFKA_BOOTSTRAP" and args.env_file:
            setting = f"CITYOPS_KAFKA_BOOTSTRAP in {args.env_file}"
        check_kafka(bootstrap, setting)
        transitions = evaluate.read_alerts(bootstrap, args.topic, security=_kafka_security(bootstrap, env))
    alerts = evaluate.firing_alerts(transitions)
    result = evaluate.score(incidents, alerts)
    print(evaluate.format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(evaluate.to_json(result), ensure_ascii=False, indent=1))
    problems = evaluate.check_goals(result)
    for problem in problems:
        print(f"goal not met: {problem}", file=sys.stderr)
    return 1 if problems and args.check else 0


def _settings_env(env_file: str | None) -> dict[str, str]:
    """The process environment, with a worker's settings file (KEY=value lines) over it when given."""
    env = dict(os.environ)
    if env_file:
        from dotenv import dotenv_values

        if not Path(env_file).is_file():
            raise ConfigError(f"--env-file {env_file}: no such file")
        env.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    return env


def cmd_backtest(args: argparse.Namespace) -> int:
    from cityops.backtest import run_backtest

    _logging(args.log_level)
    return run_backtest(args, _settings_env(args.env_file))


def cmd_record(args: argparse.Namespace) -> int:
    from cityops.backtest import run_record

    _logging("WARNING")
    return run_record(args, _settings_env(args.env_file))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cityops",
        description="Live KPIs and alerts over a city's event streams (Kafka → Faust → InfluxDB/Alertmanager).",
        epilog="Configuration comes from CITYOPS_* environment variables; see README.md.",
    )
    p.add_argument("--version", action="version", version=f"cityops {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    w = sub.add_parser("worker", help="run all agents (needs CITYOPS_KAFKA_BOOTSTRAP, CITYOPS_INFLUX_URL, ...)",
                       description="Consume every stream, write KPIs to InfluxDB, send alerts; serves "
                                   "/metrics and /healthz on CITYOPS_WEB_PORT. SIGTERM flushes, then exits.")
    w.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default CITYOPS_LOG_LEVEL or INFO)")
    w.add_argument("--standby", action="store_true", help="(started by the worker itself) a warm standby of "
                   "CITYOPS_TASK: tail its state topic until the worker activates it, then claim it and run")
    w.set_defaults(func=cmd_worker)

    c = sub.add_parser("check-config", help="load settings, rules, source registry and data files; print what "
                                            "is active; exit 2 naming each problem (needs no servers)",
                       description="Everything `cityops worker` would load at start, from the same CITYOPS_* "
                                   "variables: settings (unknown CITYOPS_* names are errors), rule manifests "
                                   "and runbooks, the source registry, the EPCIS schema, stream contracts and "
                                   "dashboards. Opens no connection.")
    c.set_defaults(func=cmd_check_config)

    s = sub.add_parser("simulate", help="generate realistic Changzhou events to Kafka or a JSONL file",
                       description="Deterministic simulator: transit one-card taps, road detectors, "
                                   "health-card events and EPCIS meat-chain events.")
    s.add_argument("--seed", type=int, default=1, help="random seed (same seed → same events; default 1)")
    s.add_argument("--start", type=_start, default=None,
                   help="event time of the first event, ISO 8601 (default: the latest 06:00 +08:00 from which "
                        "--duration ends by the wall clock, so no event is dated ahead of it)")
    s.add_argument("--duration", type=_duration, default=_duration("1h"), help="event-time span (default 1h)")
    s.add_argument("--rate", type=float, default=None,
                   help="mean events/s across streams (default: the city's realistic rate)")
    s.add_argument("--speedup", type=float, default=0.0,
                   help="replay speed vs real time (60 = a minute per second; 0 = as fast as possible)")
    s.add_argument("--batch", type=int, default=1, help="events per Kafka message (JSON array; default 1)")
    s.add_argument("--streams", default="traffic,health,food",
                   help="comma list of traffic, health, road, food (default: traffic,health,food — road is "
                        "part of traffic)")
    s.add_argument("--to", choices=("kafka", "file"), default="kafka",
                   help="destination (default kafka; file: a recording for cityops backtest, to --out, default "
                        "events.jsonl)")
    s.add_argument("--bootstrap", default=None,
                   help=f"Kafka bootstrap (default $CITYOPS_KAFKA_BOOTSTRAP, else {DEFAULT_BOOTSTRAP})")
    s.add_argument("--out", default="events.jsonl", help="with --to file: the recording's path (default events.jsonl; JSONL, one Kafka record "
                        "per line: topic, timestamp, value)")
    s.add_argument("--incidents", action="store_true", help="inject incidents and write the ground truth")
    s.add_argument("--truth", default="incidents.json", help="where --incidents writes the ground truth")
    s.add_argument("--warmup", type=_duration, default=_duration("2h"),
                   help="with --incidents: normal traffic before the first incident (default 2h; KPI anomaly "
                        "detectors need about a day of history)")
    s.add_argument("--quiet", action="store_true", help="no progress line")
    s.set_defaults(func=cmd_simulate)

    d = sub.add_parser("demo", help="run everything locally: broker, InfluxDB, worker, simulator, live KPIs",
                       description="Starts the embedded Kafka-compatible broker (Tansu), a local influxd, "
                                   "Alertmanager if installed, the worker and the simulator (with incidents); "
                                   "shows live KPIs and active alerts. Ctrl-C stops the simulator, then the "
                                   "worker (final commit and flush), then the servers. The folder keeps the "
                                   "worker's settings (cityops.env), the incidents' ground truth (incidents.json) "
                                   "and, after the stop, every alert transition (alerts.jsonl).")
    d.add_argument("--dir", default=".cityops-demo", help="working directory for data and logs")
    d.add_argument("--speedup", type=float, default=60.0,
                   help="simulated seconds per real second (default 60: a simulated hour per real minute)")
    d.add_argument("--seed", type=int, default=1)
    d.add_argument("--duration", type=_duration, default=_duration("1d"), help="simulated span (default 1d)")
    d.add_argument("--incidents", action=argparse.BooleanOptionalAction, default=True,
                   help="inject the simulator's incidents, so alerts fire, and keep their ground truth in the "
                        "folder for `cityops evaluate-alerts` (default on; --no-incidents for normal traffic only)")
    d.add_argument("--warmup", type=_duration, default=_duration("2h"),
                   help="simulated normal traffic before the first incident (default 2h)")
    d.add_argument("--for", dest="run_for", type=_duration, default=None,
                   help="stop by itself after this much wall time (default: until Ctrl-C)")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("topics", help="create the Kafka topics with their configs")
    t.add_argument("--bootstrap", default=None,
                   help=f"Kafka bootstrap (default $CITYOPS_KAFKA_BOOTSTRAP, else {DEFAULT_BOOTSTRAP})")
    t.add_argument("--partitions", type=int, default=6)
    t.set_defaults(func=cmd_topics)

    n = sub.add_parser("nab-detect", help="run the KPI anomaly detector over NAB data files",
                       description="One fresh detector per file, no look-ahead (the score of a row uses the rows "
                                   "up to it and the file's NAB probationary period); writes "
                                   "timestamp,anomaly_score CSVs mirroring DATA_DIR. Score with "
                                   "../shared/tools/nabscore.py.")
    n.add_argument("data_dir")
    n.add_argument("out_dir")
    n.add_argument("--sensitivity", type=float, default=1.0)
    n.add_argument("--model", choices=("kpi", "seasonal", "profile", "art"), default="kpi",
                   help="channels of the KPI detector (KpiDetector, the class the kpi_anomaly rules run): "
                        "kpi = the default channels, as the shipped rules run it (default); seasonal = "
                        "seasonal+range only; profile = the per time-of-day profile channel alone; art = the "
                        "ARTime channel alone")
    n.add_argument("--rule", metavar="ALERTNAME",
                   help="use a kpi_anomaly rule's sensitivity and detector arguments from agents/*.yml, "
                        "e.g. RidershipAnomaly")
    n.add_argument("--rules-dir", help="manifest directory for --rule (default: the manifests shipped in the "
                                       "package, = the repository's agents/)")
    n.add_argument("--detector", metavar="JSON",
                   help='further KpiDetector arguments, e.g. \'{"noise": "poisson"}\' (applied after --rule)')
    n.add_argument("--learning-period", choices=("probation", "detector"), default=None,
                   help="the ART channel's learning period per file: probation = the file's NAB probationary "
                        "period, min(floor(0.15 rows), 750), at least 104 (what NAB hands every detector; the "
                        "default); detector = the detector's own art_learn_pts, as a stream of unknown length "
                        "runs it (the default with --rule or an art_learn_pts in --detector)")
    n.set_defaults(func=cmd_nab_detect)

    g = sub.add_parser("dashboards", help="validate dashboards/ or push them to Grafana (grafana-client)")
    g.add_argument("action", choices=("validate", "push"))
    g.add_argument("--dir", default=None,
                   help="folder of dashboard JSON files (default: the dashboards shipped in the package, "
                        "= the repository's dashboards/, and every installed agent plugin's)")
    g.add_argument("--url", default=None,
                   help="Grafana base URL (default $CITYOPS_GRAFANA_URL, else http://127.0.0.1:3000); token in "
                        "$CITYOPS_GRAFANA_TOKEN")
    g.add_argument("--folder", default="cityops")
    g.set_defaults(func=cmd_dashboards)
    a = sub.add_parser("agent", help="scaffold (new) or validate (test) an agent plugin package",
                       description="Agent plugins add streams, KPIs, rule kinds, manifests and dashboards from a "
                                   "package installed beside cityops (entry point group cityops.agents).")
    agent = a.add_subparsers(dest="agent_command", required=True, metavar="ACTION")
    an = agent.add_parser("new", help="write a plugin package that passes its own tests as generated",
                          description="Writes cityops-NAME/: pyproject.toml with the entry point, a stream contract "
                                      "(schema + samples), a msgspec decoder, a KPI, a rule kind, a manifest and "
                                      "runbook, a Grafana dashboard and tests.")
    an.add_argument("name", metavar="NAME", help="lower-case words joined by '-', e.g. bike-docks")
    an.add_argument("--dir", default=".", help="folder to create cityops-NAME/ in (default: the current one)")
    an.set_defaults(func=cmd_agent_new)
    at = agent.add_parser("test", help="validate a plugin; exit 2 with one line per problem",
                          description="Contract samples validate against the schema and decode; KPI points hold "
                                      "only declared fields; manifests load with every plugin's rule kinds, each "
                                      "rule has its runbook section and builds; dashboards check against the KPI "
                                      "catalogue; topics, KPI measurements, rule kinds, alertnames and agents do not "
                                      "collide with the built-in agents or other installed plugins.")
    at.add_argument("path", metavar="PATH", nargs="?", default=None,
                    help="a plugin package folder (its pyproject.toml names the entry point)")
    at.add_argument("--plugin", metavar="NAME", default=None,
                    help="an installed plugin by name (default without PATH: every installed plugin)")
    at.set_defaults(func=cmd_agent_test)

    e = sub.add_parser("evaluate-alerts", help="score the alerts topic against `simulate --incidents` truth",
                       description="Per rule: incidents, firing alerts, TP/FP/FN, precision, recall and "
                                   "time-to-alert (event time, seconds); see cityops.evaluate for the rules.")
    e.add_argument("--truth", default="incidents.json", help="ground truth written by simulate --incidents")
    e.add_argument("--env-file", default=None,
                   help="the worker's settings as KEY=value lines (e.g. the cityops.env that `cityops demo` writes "
                        "into its folder): CITYOPS_PSEUDONYM_KEY and CITYOPS_KAFKA_BOOTSTRAP are read from it")
    e.add_argument("--alerts", default=None,
                   help="read the alert transitions from this JSONL file (one cityops.alerts value per line, e.g. "
                        "the alerts.jsonl `cityops demo` writes when it stops) instead of the Kafka topic")
    e.add_argument("--bootstrap", default=None,
                   help=f"Kafka bootstrap (default $CITYOPS_KAFKA_BOOTSTRAP, else {DEFAULT_BOOTSTRAP})")
    e.add_argument("--topic", default="cityops.alerts", help="alert transitions topic (default cityops.alerts)")
    e.add_argument("--pseudonym-key-env", default="CITYOPS_PSEUDONYM_KEY",
                   help="environment variable holding the worker's pseudonym key (default CITYOPS_PSEUDONYM_KEY)")
    e.add_argument("--until", type=_start, default=None,
                   help="count only incidents up to this event time, ISO 8601 (a run that stopped early, e.g. a "
                        "demo, never sent the later ones; `cityops demo` prints it when it stops)")
    e.add_argument("--json", default=None, help="also write the table as JSON to this path")
    e.add_argument("--check", action="store_true",
                   help="exit 1 unless recall is 100%% per rule, precision >= 95%% and time-to-alert <= 120 s")
    e.set_defaults(func=cmd_evaluate_alerts)

    b = sub.add_parser("backtest", help="run proposed agent manifests over recorded events with the worker's "
                                        "engine; print KPIs, alerts and the difference to the deployed ones",
                       description="Runs recorded events (a JSONL recording, or Kafka topics' retained history) "
                                   "through the worker's engine with the manifests of --agents, writing nothing "
                                   "anywhere (state in a temporary directory; no InfluxDB, Alertmanager, Kafka "
                                   "writes or consumer group), and prints the KPIs and the alerts it would have "
                                   "raised, and per rule the alerts added, removed and changed against the "
                                   "deployed manifests. Settings (lateness, window, source registry, pseudonym "
                                   "key) are the worker's CITYOPS_* variables. Exit 0 ok, 2 bad configuration or "
                                   "manifest, 1 other failure. See cityops.backtest for the recording format.")
    b.add_argument("--from", dest="source", required=True, metavar="FILE|TOPIC[,TOPIC]",
                   help="a recording (JSONL, one Kafka record per line: cityops record, cityops simulate --to file), "
                        "or Kafka topics read from their start to their current end ('all' = every topic the "
                        "worker consumes)")
    b.add_argument("--agents", default=None, metavar="DIR",
                   help="the proposed manifests and runbooks (default: the deployed ones, nothing to compare)")
    b.add_argument("--baseline", default=None, metavar="DIR",
                   help="the deployed manifests to compare with (default: what the worker loads now: "
                        "$CITYOPS_RULES_DIR, else the manifests shipped in the package)")
    b.add_argument("--bootstrap", default=None,
                   help=f"Kafka bootstrap for topics (default $CITYOPS_KAFKA_BOOTSTRAP, else {DEFAULT_BOOTSTRAP})")
    b.add_argument("--env-file", default=None,
                   help="the worker's settings as KEY=value lines (e.g. a demo's cityops.env), over the environment")
    b.add_argument("--pseudonym-key", default=None,
                   help="the worker's pseudonym key, when CITYOPS_PSEUDONYM_KEY is not set")
    b.add_argument("--kpis-out", default=None, metavar="FILE", help="also write the final KPI points here")
    b.add_argument("--kpis-format", choices=("lp", "jsonl"), default=None,
                   help="lp = InfluxDB line protocol, jsonl = one point per JSON line (default: jsonl for a "
                        ".jsonl/.json file, else lp)")
    b.add_argument("--json", default=None, metavar="FILE", help="also write the whole report as JSON")
    b.add_argument("--max-listed", type=int, default=20, help="alerts and bad lines listed per rule (default 20)")
    b.add_argument("--quiet", action="store_true", help="no progress bar (none either when stderr is no terminal)")
    b.add_argument("--log-level", default="WARNING", help="the engine's log level (default WARNING)")
    b.set_defaults(func=cmd_backtest)

    r = sub.add_parser("record", help="write Kafka topics' retained history to a recording for cityops backtest",
                       description="Reads the topics from their start to their current end offsets without a "
                                   "consumer group (nothing committed) and writes one record per JSON line, "
                                   "merged in record-timestamp order: the format `cityops backtest --from` reads.")
    r.add_argument("--topic", required=True, metavar="TOPIC[,TOPIC]", help="topics to record")
    r.add_argument("--out", required=True, help="the JSONL file to write")
    r.add_argument("--bootstrap", default=None,
                   help=f"Kafka bootstrap (default $CITYOPS_KAFKA_BOOTSTRAP, else {DEFAULT_BOOTSTRAP})")
    r.add_argument("--env-file", default=None, help="settings file (KAFKA_* security) over the environment")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_record)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.func is not cmd_check_config:  # check-config reports them among every other problem
        from cityops.settings import unknown_variables

        # Every subcommand, also those that read no setting: a typo (CITYOPS_PSEUDONYM for
        # CITYOPS_PSEUDONYM_KEY) must not leave a default silently in force. One line per variable.
        unknown = unknown_variables(os.environ)
        if unknown:
            for problem in unknown:
                print(f"cityops: {problem}", file=sys.stderr)
            return 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"cityops: {exc}", file=sys.stderr)
        return 2
    except CityopsError as exc:
        print(f"cityops: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
