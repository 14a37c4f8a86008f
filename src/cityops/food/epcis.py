"""GS1 EPCIS 2.0 JSON/JSON-LD intake: parse, split into events, validate, normalise CBV values and identifiers."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import threading
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema_rs
import orjson

from cityops.resources import epcis_schema
from cityops.streams.times import rfc3339_seconds

__all__ = [
    "DEFAULT_SCHEMA_PATH",
    "EVENT_TYPES",
    "EpcisError",
    "EpcisValidator",
    "EventRuleError",
    "Extracted",
    "canonical_id",
    "cbv",
    "epc_ids",
    "event_hash_id",
    "event_identity",
    "event_time",
    "extract_events",
    "canonical_json",
    "gs1_check_digit",
    "to_celsius",
]

# The official schema lives with the stream contract (streams/food.trace-events/), copied from gs1/EPCIS, and
# ships as package data (cityops.resources).
DEFAULT_SCHEMA_PATH = epcis_schema()

EVENT_TYPES = frozenset(
    {"ObjectEvent", "AggregationEvent", "TransformationEvent", "AssociationEvent", "TransactionEvent"}
)


class EpcisError(ValueError):
    """A message that is not an EPCIS 2.0 document or event (the reason is the exception text)."""


class EventRuleError(EpcisError):
    """A schema-valid event that breaks a cityops rule; ``path`` is the JSON Pointer inside the event."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{reason} at {path}")
        self.path = path
        self.reason = reason


# -- validation ---------------------------------------------------------------------------------------------


def _no_remote(uri: str) -> Any:
    # The official schema only uses local "#/definitions/..." refs; anything else is a broken copy, and a
    # stream decoder must never block on the network.
    raise ValueError(f"remote $ref not allowed: {uri}")


def _fmt_path(parts: Iterable[Any]) -> str:
    return "/" + "/".join(str(p) for p in parts)


class EpcisValidator:
    """The official EPCIS 2.0 JSON Schema (draft-07, format checking on), compiled once.

    ``path``: the schema file (default: the copy in ``streams/food.trace-events/``).
    """

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else DEFAULT_SCHEMA_PATH
        try:
            schema = orjson.loads(self.path.read_bytes())
        except OSError as exc:
            raise EpcisError(f"EPCIS schema not readable at {self.path}: {exc}; copy it from gs1/EPCIS") from exc
        self._validator = jsonschema_rs.validator_for(schema, validate_formats=True, retriever=_no_remote)

    def is_valid(self, instance: Any) -> bool:
        return bool(self._validator.is_valid(instance))

    def errors(self, instance: Any) -> list[tuple[list[str | int], str]]:
        """(instance path, reason) per failure; reason = schema path + instance path + message."""
        out: list[tuple[list[str | int], str]] = []
        for err in self._validator.iter_errors(instance):
            ipath = list(err.instance_path)
            msg = err.message if len(err.message) <= 300 else err.message[:297] + "..."
            out.append((ipath, f"schema {_fmt_path(err.schema_path)} at {_fmt_path(ipath)}: {msg}"))
        return out


# -- documents and events ------------------------------------------------------------------------------------


class Extracted:
    """Events of one message: (index, event, JSON-LD context in force) plus per-index/whole-message failures."""

    __slots__ = ("events", "rejected", "fatal", "prefix")

    def __init__(self) -> None:
        self.events: list[tuple[int, dict[str, Any], Any]] = []
        self.rejected: list[tuple[int, str, Any]] = []
        self.fatal: str | None = None
        self.prefix: tuple[str, ...] | None = None  # instance path of the event list; () = a single event

    def event_path(self, index: int) -> str:
        """JSON Pointer of event ``index`` in its message ("" for a single-event message)."""
        if not self.prefix:
            return ""
        return _fmt_path((*self.prefix, index))


def _merge_context(outer: Any, inner: Any) -> Any:
    if inner is None:
        return outer
    if outer is None:
        return inner
    a = outer if isinstance(outer, list) else [outer]
    b = inner if isinstance(inner, list) else [inner]
    return a + [c for c in b if c not in a]


def _event_list(doc: dict[str, Any]) -> tuple[list[Any] | None, tuple[str, ...]]:
    """(events, instance-path prefix of the list) of a document; (None, ()) if it has no list where expected."""
    body = doc.get("epcisBody")
    if not isinstance(body, dict):
        return None, ()
    if doc.get("type") == "EPCISQueryDocument":
        qr = body.get("queryResults")
        rb = qr.get("resultsBody") if isinstance(qr, dict) else None
        evs = rb.get("eventList") if isinstance(rb, dict) else None
        return (evs if isinstance(evs, list) else None), ("epcisBody", "queryResults", "resultsBody", "eventList")
    evs = body.get("eventList")
    return (evs if isinstance(evs, list) else None), ("epcisBody", "eventList")


_RULE_SURROGATE = "cityops rule: lone surrogate in a string, not Unicode text (RFC 8259 section 8.2)"
_RULE_DOUBLE = "cityops rule: number beyond the range of a double (the event could not be kept as sent)"


def _lenient_reason(value: Any) -> str | None:
    """Why a value the lenient JSON parse let through cannot be taken: "<reason> at <pointer>", or None."""
    from cityops.streams import jsontext

    for finder, rule in ((jsontext.lone_surrogate, _RULE_SURROGATE), (jsontext.beyond_double, _RULE_DOUBLE)):
        at = finder(value)
        if at is not None:
            return f"{rule} at {_fmt_path(at) if at else '/'}"
    return None


def extract_events(msg: Any, validator: EpcisValidator, *, lenient: bool = False) -> Extracted:
    """Split a parsed message into its events and validate them against the official schema.

    Failures inside one event reject that event only; failures in the envelope (header, body shape) or a
    single-event message reject the whole message (``fatal``). ``lenient``: the message was parsed by the
    standard library (``cityops.streams.jsontext.loads``) and may hold lone surrogates or numbers beyond a
    double; an event holding one is rejected by a cityops rule (the schema validator cannot judge them).
    """
    out = Extracted()
    if not isinstance(msg, dict):
        out.fatal = f"not an EPCIS document or event: top-level JSON {type(msg).__name__}"
        return out
    kind = msg.get("type")
    if kind in ("EPCISDocument", "EPCISQueryDocument"):
        events, prefix = _event_list(msg)
        ctx = msg.get("@context")
    elif isinstance(kind, str):
        events, prefix, ctx = [msg], (), None
    else:
        out.fatal = "schema /required at /: \"type\" is missing or not a string"
        return out
    out.prefix = prefix

    early: dict[int, tuple[str, Any]] = {}  # index -> (reason, the event as sent)
    if lenient:
        if not prefix or events is None:
            reason = _lenient_reason(msg)
            if reason is not None:
                out.fatal = reason
                return out
        else:
            for i, ev in enumerate(events):
                reason = _lenient_reason(ev)
                if reason is not None:
                    early[i] = (reason.replace(" at /", f" at {_fmt_path((*prefix, i))}/", 1), ev)
                    events[i] = {}  # the validator sees a placeholder (its errors there are not reported)
            reason = _lenient_reason(msg)
            if reason is not None:  # left in the envelope
                out.fatal = reason
                return out

    valid = validator.is_valid(msg)
    bad: dict[int, str] = {}
    if not valid:
        n = len(prefix)
        for ipath, reason in validator.errors(msg):
            if prefix and events is not None and len(ipath) > n and tuple(ipath[:n]) == prefix \
                    and isinstance(ipath[n], int):
                bad.setdefault(ipath[n], reason)  # first error per event is the most specific one
            else:
                out.fatal = out.fatal or reason
        if out.fatal is None and not bad:
            out.fatal = "schema / at /: invalid (no error detail)"
    if out.fatal is not None:
        return out
    assert events is not None
    for i, ev in enumerate(events):
        if i in early:
            events[i] = early[i][1]
            out.rejected.append((i, early[i][0], early[i][1]))
        elif i in bad:
            out.rejected.append((i, bad[i], ev))
        else:
            out.events.append((i, ev, _merge_context(ctx, ev.get("@context"))))
    return out


def event_time(value: str) -> float:
    """Epoch seconds (UTC) of an RFC 3339 date-time (the schema's ``format: date-time``, checked before).

    The parser accepts exactly what the schema's format accepts, leap seconds included (23:59:60 UTC is
    counted at 23:59:59.999999 UTC: ``cityops.streams.times``). Raises ValueError otherwise.
    """
    return rfc3339_seconds(value)


def canonical_json(value: Any) -> bytes:
    """Key-sorted compact JSON of a parsed value: orjson's, or the standard library's for integers beyond
    64 bits (valid JSON that orjson cannot write), so identity and digest never fail on them."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# -- CBV vocabulary ------------------------------------------------------------------------------------------

_CBV_PREFIX = {
    # kind -> (web-vocabulary term prefix, EPCIS 1.x URN prefix)
    "BizStep": ("BizStep-", "urn:epcglobal:cbv:bizstep:"),
    "Disp": ("Disp-", "urn:epcglobal:cbv:disp:"),
    "BTT": ("BTT-", "urn:epcglobal:cbv:btt:"),
    "SDT": ("SDT-", "urn:epcglobal:cbv:sdt:"),
    "ER": ("ER-", "urn:epcglobal:cbv:er:"),
}
_CBV_BASES = ("https://ref.gs1.org/cbv/", "http://ref.gs1.org/cbv/", "cbv:")


@lru_cache(maxsize=4096)
def cbv(value: str | None, kind: str = "BizStep") -> str | None:
    """The bare CBV term of a bizStep/disposition/... value in any of its spellings; other URIs unchanged.

    ``shipping``, ``https://ref.gs1.org/cbv/BizStep-shipping``, ``cbv:BizStep-shipping`` and
    ``urn:epcglobal:cbv:bizstep:shipping`` all give ``shipping``. ``kind``: BizStep, Disp, BTT, SDT or ER.
    """
    if value is None:
        return None
    term, urn = _CBV_PREFIX[kind]
    if value.startswith(urn):
        return value[len(urn):]
    for base in _CBV_BASES:
        if value.startswith(base):
            rest = value[len(base):]
            if rest.startswith(term):
                return rest[len(term):]
            return value
    return value


# -- identifiers ---------------------------------------------------------------------------------------------


def gs1_check_digit(digits: str) -> int:
    """GS1 mod-10 check digit for a key without its check digit (GTIN, GLN, SSCC, GRAI...)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        total += int(ch) * (3 if i % 2 == 0 else 1)
    return (10 - total % 10) % 10


@lru_cache(maxsize=1 << 16)
def canonical_id(uri: str) -> str:
    """One spelling per identifier: the canonical GS1 Digital Link URI (https://id.gs1.org/...).

    EPC URNs (sgtin, sscc, sgln, grai, giai, lgtin class, idpat...) and Digital Link URIs on any domain map to
    the same string, e.g. ``urn:epc:id:sgtin:4012345.011111.987`` and ``https://id.gs1.org/01/04012345111118/21/987``.
    Uses the normaliser the EPCIS event-hash algorithm uses, so identity and lineage agree. Non-GS1 URIs are
    returned unchanged.
    """
    from epcis_event_hash_generator.dl_normaliser import normaliser

    try:
        out = normaliser(uri)
    except Exception:  # noqa: BLE001 - a malformed key is just an opaque identifier to us
        out = None
    return out or uri


def _ids(values: Any) -> list[str]:
    if not isinstance(values, list):
        return []
    return [canonical_id(v) for v in values if isinstance(v, str)]


def _classes(values: Any) -> list[str]:
    if not isinstance(values, list):
        return []
    return [canonical_id(q["epcClass"]) for q in values if isinstance(q, dict) and isinstance(q.get("epcClass"), str)]


def epc_ids(ev: dict[str, Any]) -> dict[str, list[str]]:
    """Canonical identifiers of an event by role: own, parent, children, inputs, outputs."""
    parent = ev.get("parentID")
    parents = [canonical_id(parent)] if isinstance(parent, str) else []
    return {
        "own": _ids(ev.get("epcList")) + _classes(ev.get("quantityList")),
        "parent": parents,
        "children": _ids(ev.get("childEPCs")) + _classes(ev.get("childQuantityList")),
        "inputs": _ids(ev.get("inputEPCList")) + _classes(ev.get("inputQuantityList")),
        "outputs": _ids(ev.get("outputEPCList")) + _classes(ev.get("outputQuantityList")),
    }


# -- sensors -------------------------------------------------------------------------------------------------

_TEMPERATURE = frozenset({"Temperature", "gs1:Temperature", "https://gs1.org/voc/MT-Temperature",
                          "gs1:MT-Temperature", "MT-Temperature"})


def to_celsius(value: float, uom: str | None) -> float | None:
    """°C from a UN/CEFACT unit code: CEL (default when absent), FAH, KEL; None for anything else."""
    if uom is None or uom == "CEL":
        return float(value)
    # Rounded so a converted 39.2 °F is exactly 4.0 °C, not 4.000000000000001 (outside a 0-4 °C range).
    if uom == "FAH":
        return round((float(value) - 32.0) * 5.0 / 9.0, 6)
    if uom == "KEL":
        return round(float(value) - 273.15, 6)
    return None


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def temperatures(ev: dict[str, Any]) -> list[float]:
    """Temperature readings (°C) of an event's sensorElementList: value, else mean, else min and max.

    Raises ``EventRuleError`` (with the reading's path) for a reading that is not a finite double in °C
    (JSON allows numbers like 1e400; a KPI or an alert value cannot hold them): a cityops rule.
    """
    out: list[float] = []
    sel = ev.get("sensorElementList")
    if not isinstance(sel, list):
        return out
    for i, element in enumerate(sel):
        reports = element.get("sensorReport") if isinstance(element, dict) else None
        if not isinstance(reports, list):
            continue
        for j, rep in enumerate(reports):
            if not isinstance(rep, dict) or rep.get("type") not in _TEMPERATURE:
                continue
            uom = rep.get("uom")
            keys = [k for k in ("value",) if _number(rep.get(k))]
            if not keys and _number(rep.get("meanValue")):
                keys = ["meanValue"]
            if not keys:
                keys = [k for k in ("minValue", "maxValue") if _number(rep.get(k))]
            for k in keys:
                try:
                    c = to_celsius(rep[k], uom)
                except OverflowError:
                    c = math.inf
                if c is not None and not math.isfinite(c):
                    raise EventRuleError(f"/sensorElementList/{i}/sensorReport/{j}/{k}",
                                         f"cityops rule: temperature {rep[k]!r} {uom or 'CEL'} is not a finite "
                                         "number")
                if c is not None:
                    out.append(c)
    return out


# -- identity ------------------------------------------------------------------------------------------------

_HASH_LOCK = threading.Lock()  # the hash generator keeps module globals (_namespaces, JOIN_BY)
_CONTEXT_FILES = {
    "https://gs1.github.io/EPCIS/epcis-context.jsonld":
        "14b10c9d3e92d35f577bfc610fe5ec15aa2941124987919389d7cd9998516861.jsonld",
    "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld":
        "e532647e8eb371379b8b0e8602d8981c8566bc60f7351f22c76a5bc865962008.jsonld",
}
_context_cache: dict[str, Any] = {}


def _local_loader(url: str, options: Any = None) -> dict[str, Any]:
    # The generator's own loader falls back to fetching unknown contexts over HTTP; a decoder must not.
    from pyld.jsonld import JsonLdError
    import importlib.resources

    name = _CONTEXT_FILES.get(url)
    if name is None:
        raise JsonLdError(f"JSON-LD context {url} is not available offline", "jsonld.LoadDocumentError",
                          code="loading document failed")
    doc = _context_cache.get(url)
    if doc is None:
        doc = _context_cache[url] = json.loads(
            importlib.resources.files("epcis_event_hash_generator").joinpath(name).read_text("utf-8"))
    return {"contentType": "application/ld+json", "contextUrl": None, "documentUrl": url,
            "document": copy.deepcopy(doc)}


def _set_namespaces(mod: Any, context: Any) -> None:
    # Same as json_to_py._collect_namespaces_from_jsonld_context, but skips non-string term definitions
    # (which crash it) and starts empty so one document's prefixes never leak into another's hash.
    mod._namespaces = {}
    items = context if isinstance(context, list) else [context]
    for c in items:
        if isinstance(c, str):
            mod._namespaces[c] = "{" + c + "}"
        elif isinstance(c, dict):
            for k, v in c.items():
                if isinstance(v, str):
                    mod._namespaces[k] = "{" + v + "}"


def event_hash_id(event: dict[str, Any], context: Any) -> str:
    """The EPCIS event hash ID (ni:///sha-256;...?ver=CBV2.0) per the GS1 algorithm (epcis-event-hash-generator).

    ``context``: the JSON-LD @context in force for the event. Raises EpcisError when the algorithm cannot run
    (offline context missing, or an input the reference implementation cannot handle).
    """
    from pyld import jsonld
    from epcis_event_hash_generator import hash_generator, json_to_py
    from epcis_event_hash_generator import json_xml_model_mismatch_correction as corr

    body = {k: v for k, v in event.items() if k != "@context"}
    doc = {"@context": context if context is not None else list(_CONTEXT_FILES)[1], "type": "EPCISDocument",
           "epcisBody": {"eventList": [body]}}
    with _HASH_LOCK:
        previous = jsonld._default_document_loader
        jsonld.set_document_loader(_local_loader)
        try:
            expanded = json_to_py._bare_string_pre_preocessing(doc)
            _set_namespaces(json_to_py, expanded.get("@context"))
            py = corr.deep_structure_correction(json_to_py._json_to_py(expanded["epcisBody"]["eventList"][0]))
            pre = hash_generator.derive_prehashes_from_events(("EventList", "", [py]))
        except Exception as exc:  # noqa: BLE001 - pyld and the reference code raise many kinds
            raise EpcisError(f"event hash: {type(exc).__name__}: {exc}") from exc
        finally:
            jsonld.set_document_loader(previous)
    if len(pre) != 1:
        raise EpcisError("event hash: the reference implementation could not pre-hash this event")
    return hash_generator.calculate_hashes_from_pre_hashes(pre)[0]


def _fallback_id(event: dict[str, Any]) -> str:
    body = {k: v for k, v in event.items() if k not in ("@context", "eventID", "recordTime", "errorDeclaration")}
    digest = hashlib.sha256(canonical_json(body)).hexdigest()
    return f"ni:///sha-256;{digest}?ver=cityops-json"


def event_identity(event: dict[str, Any], context: Any) -> str:
    """``eventID`` when present, else the standard event hash ID.

    If the reference hash implementation fails on a schema-valid event (it does on a bizTransaction without
    ``type``, and on contexts that redefine protected terms) the identity is the sha-256 of the event's
    key-sorted JSON without recordTime/eventID/errorDeclaration, marked ``?ver=cityops-json`` so it can never
    be mistaken for a standard hash.
    """
    eid = event.get("eventID")
    if isinstance(eid, str) and eid:
        return eid
    try:
        return event_hash_id(event, context)
    except EpcisError:
        return _fallback_id(event)
