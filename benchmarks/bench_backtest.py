"""Throughput of `cityops backtest` on a simulated recording, against reading the same recording in the same run.

    python benchmarks/bench_backtest.py --events 100000

Writes a recording with `cityops simulate --to file` (every stream, 100-event batches, `--rate 28` over the
hours needed), then measures: the baseline, parsing every line of it into records (`cityops.backtest.
read_recording`: what any replay must do at least); the backtest of the shipped manifests (one engine: every
rule, the simulator's source registry); and the backtest of a proposal against them (two engines: the
comparison). Prints events/s of each and the ratio to the baseline (the machine is shared: compare ratios).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from cityops import backtest, resources
from cityops.cli import main as cli


def args(source: Path, agents: str | None) -> SimpleNamespace:
    return SimpleNamespace(source=str(source), agents=agents, baseline=None, bootstrap=None, pseudonym_key=None,
                           kpis_out=None, kpis_format=None, json=None, max_listed=0, quiet=True, log_level="WARNING")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-backtest-"))
    try:
        rec = tmp / "recording.jsonl"
        hours = a.events / 28 / 3600
        assert cli(["simulate", "--to", "file", "--out", str(rec), "--duration", f"{hours * 3600:.0f}s",
                    "--rate", "28", "--seed", str(a.seed), "--batch", "100", "--start", "2026-11-25T08:00:00+08:00",
                    "--quiet"]) == 0
        proposal = tmp / "proposed"
        shutil.copytree(resources.rules_dir(), proposal)
        yml = proposal / "traffic-security.yml"
        yml.write_text(yml.read_text().replace("max_speed_kmh: 150", "max_speed_kmh: 100"))
        env = {"CITYOPS_PSEUDONYM_KEY": "bench-backtest-key-0123456789", "CITYOPS_SOURCE_REGISTRY": "simulator"}
        os.environ.update(env)

        t0 = time.perf_counter()
        bad = backtest.BadLines()
        records = sum(1 for _ in backtest.read_recording(rec, bad))
        base_s = time.perf_counter() - t0
        rows = []
        for name, agents in (("backtest, shipped manifests (1 engine)", None),
                             ("backtest, proposal vs shipped (2 engines)", str(proposal))):
            import io
            import json

            report = tmp / "report.json"
            ns = args(rec, agents)
            ns.json = str(report)
            t0 = time.perf_counter()
            assert backtest.run_backtest(ns, dict(os.environ), out=io.StringIO()) == 0
            rows.append((name, time.perf_counter() - t0, json.loads(report.read_text())))
        events = sum(n for c in rows[0][2]["events"].values() for n in c.values())
        print(f"recording: {records:,} records, {events:,} events, {rec.stat().st_size / 1e6:.1f} MB")
        print(f"{'':44} {'events/s':>10} {'ratio':>7}")
        base_rate = events / base_s
        print(f"{'baseline: parse the recording':44} {base_rate:>10,.0f} {1:>7.3f}")
        for name, secs, _rep in rows:
            rate = events / secs
            print(f"{name:44} {rate:>10,.0f} {rate / base_rate:>7.3f}")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
