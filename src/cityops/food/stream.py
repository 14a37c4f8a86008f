"""Food traceability stream: EPCIS 2.0 events on `food.trace-events` -> trace, inspection and cold-chain KPIs and alerts."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cityops.alerts.spec import RuleSpec
from cityops.engine.codec import Codec
from cityops.engine.context import Context, Decoded, Rejected
from cityops.engine.windows import Fields, Kpi
from cityops.errors import ConfigError
from cityops.food.epcis import (
    EpcisValidator,
    EventRuleError,
    canonical_id,
    canonical_json,
    cbv,
    epc_ids,
    event_identity,
    event_time,
    extract_events,
    temperatures,
)
from cityops.food.lineage import Lineage
from cityops.streams import jsontext

__all__ = ["FOOD_KPIS", "RULE_KINDS", "FoodStream", "normalise"]

# The rule kinds this stream evaluates itself (kind -> one-shot): their alert names and thresholds are only
# in the manifests (agents/food-safety.yml), given to the stream by ``FoodStream.from_rules``.
RULE_KINDS = {"certificate_reuse": True, "untraced_sale": True, "cold_chain": False}
# The chilled range (°C) of the food_cold_chain KPI when no manifest has a cold_chain rule.
DEFAULT_COLD_MIN_C, DEFAULT_COLD_MAX_C = 0.0, 4.0


# -- KPIs ------------------------------------------------------------------------------------------------------
# Accumulators are plain lists mutated by position; ``slots`` names each position in durable state.


def _new_count() -> list[Any]:
    return [0]


def _trace_fields(acc: list[Any]) -> Fields | None:
    return {"events": acc[0]} if acc[0] else None


def _new_chain() -> list[Any]:
    return [{}]  # lot -> 1 if traced at (any of) its sale(s) in this window, else 0


def _chain_fields(acc: list[Any]) -> Fields | None:
    lots: dict[str, int] = acc[0]
    if not lots:
        return None
    traced = sum(lots.values())
    return {"lots_sold": len(lots), "lots_traced": traced, "trace_rate": traced / len(lots)}


def _new_pair() -> list[Any]:
    return [0, 0]


def _inspection_fields(acc: list[Any]) -> Fields | None:
    return {"inspections": acc[0], "non_conformant": acc[1]} if acc[0] else None


def _cold_fields(acc: list[Any]) -> Fields | None:
    return {"readings": acc[0], "out_of_range": acc[1]} if acc[0] else None


FOOD_KPIS: dict[str, Kpi] = {
    "food_trace": Kpi("food_trace", ("biz_step",), _new_count, _trace_fields,
                      doc={"events": "accepted EPCIS events by CBV bizStep ('none' if absent, 'extension' if not CBV)"},
                      slots=("events",)),
    "food_chain": Kpi("food_chain", (), _new_chain, _chain_fields,
                      doc={"lots_sold": "distinct lots with a retail_selling event",
                           "lots_traced": "of those, lots whose history (own, inputs', containers') held commissioning,"
                                          " a conformant inspection and a receiving when the sale was processed",
                           "trace_rate": "lots_traced / lots_sold"},
                      slots=("lots",)),
    "food_inspection": Kpi("food_inspection", ("location",), _new_pair, _inspection_fields,
                           doc={"inspections": "inspecting events", "non_conformant": "with disposition non_conformant"},
                           slots=("inspections", "non_conformant")),
    "food_cold_chain": Kpi("food_cold_chain", ("location",), _new_pair, _cold_fields,
                           doc={"readings": "temperature sensor reports", "out_of_range": "outside the chilled range"},
                           slots=("readings", "out_of_range")),
}
# ``food_cold``: location -> True while its last readings were out of range.
COLD_CODEC = Codec("cold_breach", bool, migrations={0: lambda k, v: v})
_K_TRACE = FOOD_KPIS["food_trace"]
_K_CHAIN = FOOD_KPIS["food_chain"]
_K_INSPECT = FOOD_KPIS["food_inspection"]
_K_COLD = FOOD_KPIS["food_cold_chain"]


# -- normalised event ------------------------------------------------------------------------------------------


def _loc(ev: dict[str, Any], key: str) -> str | None:
    v = ev.get(key)
    if isinstance(v, dict) and isinstance(v.get("id"), str):
        return canonical_id(v["id"])
    return None


def normalise(ev: dict[str, Any]) -> dict[str, Any]:
    """The plain-data view ``apply`` works on: CBV terms, canonical identifiers by role, certificates, °C readings.

    Keys: type, action, step, disp, loc (bizLocation), rp (readPoint), own, parent, children, inputs, outputs,
    certs, temps.
    """
    certs = ev.get("certificationInfo")
    if isinstance(certs, str):
        certs = [certs]
    out: dict[str, Any] = {
        "type": ev.get("type"),
        "action": ev.get("action"),
        "step": cbv(ev.get("bizStep"), "BizStep"),
        "disp": cbv(ev.get("disposition"), "Disp"),
        "loc": _loc(ev, "bizLocation"),
        "rp": _loc(ev, "readPoint"),
        "certs": [c for c in certs if isinstance(c, str)] if isinstance(certs, list) else [],
        "temps": temperatures(ev),
    }
    out.update(epc_ids(ev))
    return out


def _step_tag(step: str | None) -> str:
    if step is None:
        return "none"
    return "extension" if ":" in step else step  # non-CBV URIs would make the tag unbounded


class FoodStream:
    """StreamKind for GS1 EPCIS 2.0 food-trace messages (documents, query documents or single events).

    ``alertnames``: rule kind (``RULE_KINDS``) -> the manifest's alert name; a kind without a rule raises
    nothing (its KPIs are still written). ``cold_min_c`` / ``cold_max_c``: the range in °C (inclusive) of
    the ``cold_chain`` rule, also used by the ``food_cold_chain`` KPI's ``out_of_range`` (default 0–4 when
    no manifest has a cold_chain rule). Built from manifests with ``from_rules``.
    ``retention_s``: lineage history kept, in event time (default 7 days).
    ``schema_path``: the official EPCIS JSON schema (default: the copy in streams/food.trace-events/).
    ``legacy_cbv_urns``: rewrite EPCIS 1.x CBV URNs (urn:epcglobal:cbv:...) to web URIs before validation;
    the 2.0 JSON schema forbids them, so by default such events are dead-lettered.
    """

    name = "food"
    topic = "food.trace-events"

    kpis = FOOD_KPIS  # the engine writes these windows (same rules as the city streams)
    rule_kinds = RULE_KINDS  # the rule kinds it evaluates itself; a manifest reload reaches them (reconfigure)
    event_type = dict[str, Any]  # Decoded.event: the plain view of ``normalise``

    def __init__(self, *, alertnames: Mapping[str, str] | None = None, cold_min_c: float = DEFAULT_COLD_MIN_C,
                 cold_max_c: float = DEFAULT_COLD_MAX_C, retention_s: float = 7 * 86400.0,
                 schema_path: Path | str | None = None, legacy_cbv_urns: bool = False) -> None:
        names = dict(alertnames or {})
        unknown = set(names) - set(RULE_KINDS)
        if unknown:
            raise ValueError(f"FoodStream evaluates rule kinds {sorted(RULE_KINDS)}, not {sorted(unknown)}")
        self._cert_rule = names.get("certificate_reuse")
        self._untraced_rule = names.get("untraced_sale")
        self._cold_rule = names.get("cold_chain")
        if cold_min_c >= cold_max_c:
            raise ValueError(f"cold_min_c ({cold_min_c}) must be below cold_max_c ({cold_max_c})")
        self.cold_min_c = float(cold_min_c)
        self.cold_max_c = float(cold_max_c)
        self.retention_s = float(retention_s)
        self.legacy_cbv_urns = legacy_cbv_urns
        self.validator = EpcisValidator(schema_path)
        self._lineage: Lineage | None = None

    @classmethod
    def from_rules(cls, rules: Iterable[RuleSpec], **kw: Any) -> "FoodStream":
        """The stream evaluating the manifests' rules of its kinds (``RULE_KINDS``); ``kw`` as the constructor.

        One rule per kind; the ``cold_chain`` rule's ``params`` ``min_c``/``max_c`` (°C) are its range.
        Errors: ``ConfigError`` naming the rules (two of one kind) or the manifest parameter.
        """
        return cls(**{**kw, **cls.rule_config(rules)})

    @staticmethod
    def rule_config(rules: Iterable[RuleSpec]) -> dict[str, Any]:
        """The constructor arguments the manifests' rules give (``alertnames``, and ``cold_min_c``/``cold_max_c``
        when a cold_chain rule exists); ``ConfigError`` as ``from_rules``."""
        names: dict[str, str] = {}
        kw: dict[str, Any] = {}
        for spec in rules:
            if spec.kind not in RULE_KINDS:
                continue
            if spec.kind in names:
                raise ConfigError(f"rules {names[spec.kind]!r} and {spec.name!r} are both of kind {spec.kind!r}: "
                                  f"the food stream evaluates one rule of each kind")
            names[spec.kind] = spec.name
            if spec.kind == "cold_chain":
                # A manifest's rule names its file and key (RuleSpec.source), as every manifest error does.
                where = f"{spec.source}.params" if spec.source else f"rule {spec.name!r} ({spec.agent}): params"
                for key in ("min_c", "max_c"):
                    value = spec.params.get(key)
                    if key not in spec.params:
                        raise ConfigError(f"{where}.{key}: required (kind cold_chain: the allowed range in °C)")
                    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                        raise ConfigError(f"{where}.{key}: expected a number of °C, got {value!r}")
                    kw[f"cold_{key}"] = float(value)
                if kw["cold_min_c"] >= kw["cold_max_c"]:
                    raise ConfigError(f"{where}.min_c: {kw['cold_min_c']:g} must be below max_c "
                                      f"({kw['cold_max_c']:g})")
        kw["alertnames"] = names
        return kw

    def reconfigure(self, rules: Iterable[RuleSpec]) -> None:
        """Evaluate the rules ``rules`` define from now on (a manifest reload): their alert names and the
        cold-chain range; the stream's state (lineage, KPI windows) is kept. ``ConfigError`` as ``from_rules``,
        and then nothing changes."""
        kw = self.rule_config(rules)
        names = kw["alertnames"]
        self._cert_rule = names.get("certificate_reuse")
        self._untraced_rule = names.get("untraced_sale")
        self._cold_rule = names.get("cold_chain")
        # Without a cold_chain rule, the range a start without one would use (the KPI's out_of_range).
        self.cold_min_c = float(kw.get("cold_min_c", DEFAULT_COLD_MIN_C))
        self.cold_max_c = float(kw.get("cold_max_c", DEFAULT_COLD_MAX_C))

    # -- decode --------------------------------------------------------------------------------------------
    def decode(self, raw: bytes) -> list[Decoded | Rejected]:
        """Every event of one message, accepted (Decoded) or dead-lettered (Rejected with the schema path).

        Each event is judged on its own, at any depth (a document's eventList, a query document's
        resultsBody, the sensor readings inside an event): a schema error, a cityops rule or any error while
        decoding one event rejects that event alone, with its index and its JSON Pointer in the reason. Only
        a message that is not JSON, or whose envelope is broken, is rejected whole.
        """
        if self.legacy_cbv_urns and b"urn:epcglobal:cbv:" in raw:
            raw = (raw.replace(b"urn:epcglobal:cbv:bizstep:", b"https://ref.gs1.org/cbv/BizStep-")
                   .replace(b"urn:epcglobal:cbv:disp:", b"https://ref.gs1.org/cbv/Disp-"))
        try:
            msg, lenient = jsontext.loads(raw)
        except jsontext.MalformedJson as exc:
            return [Rejected(f"malformed JSON: {exc}", None, raw[:200])]
        ex = extract_events(msg, self.validator, lenient=lenient)
        if ex.fatal is not None:
            return [Rejected(ex.fatal, None, None)]
        out: list[Decoded | Rejected] = [Rejected(reason, i, frag, ex.event_path(i) or None)
                                         for i, reason, frag in ex.rejected]
        for i, ev, ctx in ex.events:
            out.append(self._event(ex, i, ev, ctx))
        if len(out) > 1 and ex.rejected:
            out.sort(key=lambda r: r.index if r.index is not None else -1)
        return out

    def _event(self, ex: Any, i: int, ev: dict[str, Any], ctx: Any) -> Decoded | Rejected:
        """One schema-valid event: its identity, event time and normalised form, or why cityops rejects it."""
        where = ex.event_path(i)
        try:
            try:
                ts = event_time(ev["eventTime"])
            except ValueError as exc:
                raise EventRuleError("/eventTime", f"eventTime: {exc}") from None
            norm = normalise(ev)
            return Decoded(
                event_id=event_identity(ev, ctx),
                ts=ts,
                source=norm["rp"] or norm["loc"] or "unknown",
                digest=hashlib.sha256(canonical_json(ev)).digest()[:16],
                event=norm,
                index=i,
            )
        except EventRuleError as exc:
            return Rejected(f"{exc.reason} at {where}{exc.path}", i, ev, where or None)
        except Exception as exc:  # a decoder bug must not take the document's other events with it
            return Rejected(f"decoder error at {where or '/'}: {type(exc).__name__}: {exc}", i, ev, where or None)

    # -- apply ---------------------------------------------------------------------------------------------
    def restore(self, ctx: Context) -> None:
        """Declare this stream's durable tables now: restored state is checked at start-up, not at first use."""
        self.lineage(ctx)
        ctx.store.table("food_cold", COLD_CODEC)

    def lineage(self, ctx: Context) -> Lineage:
        lin = self._lineage
        if lin is None or lin.store is not ctx.store:
            lin = self._lineage = Lineage(ctx.store, retention_s=self.retention_s)
        return lin

    def apply(self, ev: Decoded, ctx: Context) -> None:
        e: dict[str, Any] = ev.event
        ts = ev.ts
        windows = ctx.windows
        lin = self.lineage(ctx)
        step = e["step"]
        windows.acc(_K_TRACE, (_step_tag(step),), ts)[0] += 1
        lin.record(e, ts, ctx.clock)
        location = e["loc"] or e["rp"] or "unknown"

        if step == "inspecting":
            acc = windows.acc(_K_INSPECT, (location,), ts)
            acc[0] += 1
            if e["disp"] == "non_conformant":
                acc[1] += 1
            for cert in e["certs"]:
                n = lin.certificate(cert, location, ts)
                if n > 1 and self._cert_rule is not None:
                    ctx.signals.signal(self._cert_rule, {"certificate": cert}, ts, active=True, value=float(n),
                                       summary=f"quarantine certificate {cert} used on inspections at {n} locations")

        temps = e["temps"]
        if temps:
            lo, hi = self.cold_min_c, self.cold_max_c
            bad = [t for t in temps if t < lo or t > hi]
            acc = windows.acc(_K_COLD, (location,), ts)
            acc[0] += len(temps)
            acc[1] += len(bad)
            if self._cold_rule is not None:
                self._cold(ctx, self._cold_rule, location, ts, bad, temps)

        if step == "retail_selling":
            acc = windows.acc(_K_CHAIN, (), ts)
            sold: dict[str, int] = acc[0]
            for lot in e["own"]:
                ok = lin.traced(lot)
                sold[lot] = max(sold.get(lot, 0), int(ok))
                if not ok and self._untraced_rule is not None and lin.mark_alerted(lot):
                    ctx.signals.signal(self._untraced_rule, {"lot": lot}, ts, active=True,
                                       summary=f"lot {lot} sold without slaughter, conformant inspection and"
                                               " receiving in its history")

    def _cold(self, ctx: Context, rule: str, location: str, ts: float, bad: list[float],
              temps: list[float]) -> None:
        table = ctx.store.table("food_cold", COLD_CODEC)
        was_out = table.data.get(location, False)
        if bad:
            worst = max(bad, key=lambda t: max(self.cold_min_c - t, t - self.cold_max_c))
            if not was_out:
                table[location] = True
            ctx.signals.signal(rule, {"location": location}, ts, active=True, value=worst,
                               summary=f"{worst:.1f} °C at {location}, outside "
                                       f"{self.cold_min_c:g}–{self.cold_max_c:g} °C")
        elif was_out:
            del table[location]
            ctx.signals.signal(rule, {"location": location}, ts, active=False, value=temps[-1],
                               summary=f"back in range at {location}")
