"""Alert quality over longer simulated runs than the end-to-end test: the engine and every alert rule in
process (no Kafka, no Alertmanager), fed by `cityops simulate --incidents`, scored like the e2e test.

    python benchmarks/alert_quality.py --hours 60 --rate 5 --seed 7

The end-to-end test (tests/integration/test_alerts_e2e.py) runs 36 h of event time through the real
broker, worker and Alertmanager; this runs the same engine code for as long as you like, to see what
the detectors do on days 3, 4, ... (false alerts after the incidents). Prints the per-rule table of
`cityops evaluate-alerts`; `--json FILE` also writes it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cityops import evaluate
from cityops.alerts.wiring import build_alerting
from cityops.engine.pipeline import Engine
from cityops.engine.state import StateStore
from cityops.runtime import build_streams
from cityops.settings import load_settings
from cityops.simulate.run import Batcher, events, truth_row
from cityops.streams.city_streams import Pseudonymizer

CST = timezone(timedelta(hours=8))
KEY = "alert-quality-key-0123456789"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=60.0, help="event time simulated (default 60)")
    ap.add_argument("--rate", type=float, default=5.0, help="events/s of event time, as `simulate --rate` (default 5)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--warmup-hours", type=float, default=26.0, help="before the first incident (default 26)")
    ap.add_argument("--json", type=Path, help="also write the scores here")
    args = ap.parse_args()

    settings = load_settings({"CITYOPS_KAFKA_BOOTSTRAP": "unused:9092", "CITYOPS_INFLUX_URL": "http://unused:8086",
                              "CITYOPS_PSEUDONYM_KEY": KEY, "CITYOPS_DATA_DIR": "/nonexistent",
                              "CITYOPS_SOURCE_REGISTRY": "simulator"})
    store = StateStore(None)  # in memory
    alerts, rules, gate = build_alerting(settings, store)
    clock = [0.0]
    streams = build_streams(settings, alerts.rules if alerts is not None else None)
    eng = Engine(store, streams, signals=alerts, rules=rules, registry=gate, settings=settings,
                 now=lambda: clock[0])
    start = datetime(2026, 11, 23, 0, 0, tzinfo=CST)
    it, truth = events(seed=args.seed, start=start, duration_s=args.hours * 3600, rate=args.rate,
                       streams={"traffic", "health", "food"}, incidents=True, warmup_s=args.warmup_hours * 3600)
    batcher = Batcher(20)
    t0, n = time.monotonic(), 0

    def tick() -> None:
        # Wall clock = event time here (a live feed); the worker commits about this often.
        clock[0] = eng.engine_time or 0.0
        eng.checkpoint()

    last_tick = 0.0
    for topic, value in it:
        n += 1
        out = batcher.add(topic, value)
        if out is not None:
            eng.process(out[0], 0, n, out[1])
            # A live feed: the worker's 1-second commits tick the rules about once per second of event
            # time; once per 60 s keeps clock-driven rules (SourceSilent) as timely as the rules' own
            # check_every_s, at a fraction of the cost.
            if (eng.engine_time or 0.0) - last_tick >= 60.0:
                last_tick = eng.engine_time or 0.0
                tick()
        if n % 20000 == 0:
            print(f"\r{n:,} events, event time {datetime.fromtimestamp(clock[0], CST):%d %H:%M}", end="",
                  file=sys.stderr, flush=True)
    for topic, raw in batcher.drain():
        n += 1
        eng.process(topic, 0, n, raw)
    tick()
    clock[0] += 3600.0  # let every clock-driven rule see the end
    eng.checkpoint()
    print(f"\r{n:,} events in {time.monotonic() - t0:.0f} s", file=sys.stderr)

    rows = [truth_row(i) for i in truth]
    incidents = evaluate.incidents_from_truth(rows, Pseudonymizer(KEY.encode()))
    transitions = [tr for _, tr in sorted(store.table("alert_outbox").items())]
    result = evaluate.score(incidents, evaluate.firing_alerts(transitions))
    print(f"seed {args.seed}, {args.hours:g} h at rate {args.rate:g}, incidents after {args.warmup_hours:g} h")
    print(evaluate.format_table(result))
    for rs in result.rules.values():
        for alert in rs.false_alerts:
            print(f"false alert: {alert.alertname} {alert.entity} at {datetime.fromtimestamp(alert.starts_at, CST):%d %H:%M}")
        for inc in rs.missed:
            print(f"missed: {inc.rule} {dict(inc.labels)}")
    if args.json:
        args.json.write_text(json.dumps(evaluate.to_json(result), ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
