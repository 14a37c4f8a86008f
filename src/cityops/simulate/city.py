"""Reference data for the simulated city: Changzhou (常州), Jiangsu — network, volumes, source registry.

Everything here is *approximate reference data* for a simulator, not an authoritative dataset.

Basis (all numbers are estimates; see ``docs/simulator.md``):

* Population ~4.7 million permanent residents (Changzhou statistical bulletins, early 2020s, rounded).
* Metro: Line 1 opened 2019-09-21, north–south, 34.24 km, 29 stations (森林公园—南夏墅), 27 underground;
  Line 2 opened 2021-06-28, west–east, 19.79 km, 15 stations (青枫公园—五一路), interchange at 文化宫.
  Station names follow public encyclopaedia tables; Line 2 names are the published phase-1 names
  (a few final names may differ slightly). Two Line 1 stations between 科教城南 and 南夏墅 are
  omitted because their names could not be verified while writing this file; the route length and
  fares still use the official 34.24 km. Coordinates are interpolated along the alignment from a few
  known anchors (森林公园 31.9031 N 119.9605 E is from the station article) and are good to ~1 km.
* Daily volumes: metro ~350k trips/day (operator press figures for 2023–2024 sit around 0.3–0.4
  million), buses ~600k boardings/day, public bikes ~150k trips/day, intercity coach ~15k boardings/day,
  networked public car parks ~120k entries/day, hospital outpatients ~60k visits/day city-wide
  (a few large tertiary hospitals each see 8k–12k outpatient visits on a weekday).
* Road detectors: 60 monitored arterial segments, 2 directions x 2 lane groups, one report per minute.
* Fares: metro distance fare 2–7 CNY, bus 1–2 CNY, public bike first hour free, coach by route,
  parking by duration — rounded published tariffs.

The *source registry* (``SOURCES``) lists every reader/terminal/detector id that may produce events,
with its topic, location, service hours, allowed silence gap and, for signing sources, a demo HMAC key.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from cityops.units import CITY_TZ_NAME, CITY_UTC_OFFSET

TOPIC_TAPS = "traffic.card-taps"
TOPIC_ROAD = "traffic.road-detectors"
TOPIC_HEALTH = "health.card-events"
TOPICS: tuple[str, ...] = (TOPIC_TAPS, TOPIC_ROAD, TOPIC_HEALTH)

POPULATION = 4_700_000
UTC_OFFSET_MIN = int(CITY_UTC_OFFSET.total_seconds()) // 60  # cityops.units: the one definition

# --- daily volumes (estimates, weekday) ------------------------------------------------------------
METRO_TRIPS_PER_DAY = 350_000
BUS_BOARDINGS_PER_DAY = 600_000
BIKE_TRIPS_PER_DAY = 150_000
COACH_BOARDINGS_PER_DAY = 15_000
PARKING_ENTRIES_PER_DAY = 120_000
OUTPATIENT_VISITS_PER_DAY = 60_000


@dataclass(frozen=True, slots=True)
class Station:
    """A metro station on one line (an interchange appears once per line)."""

    line: str
    name: str
    lat: float
    lon: float
    weight: float  # relative share of boardings


@dataclass(frozen=True, slots=True)
class Source:
    """One registered event producer.

    ``service_hours`` is local (Asia/Shanghai) ``("HH:MM", "HH:MM")`` or ``None`` for 24 h.
    ``max_silence_s`` is the longest normal gap between two events inside service hours; ``None``
    means the source is not silence-monitored (buses park between runs, bike docks idle at night).
    Silence is measured from ``max(last event, service-hours open)``.
    """

    source_id: str
    topic: str
    kind: str
    location: str
    lat: float | None
    lon: float | None
    service_hours: tuple[str, str] | None
    max_silence_s: int | None
    signing_key: str | None = None  # hex; the source must sign its events when set


# --- metro ---------------------------------------------------------------------------------------
METRO_L1 = "地铁1号线"
METRO_L2 = "地铁2号线"
METRO_LINE_KM = {METRO_L1: 34.24, METRO_L2: 19.79}
METRO_OPENED = {METRO_L1: "2019-09-21", METRO_L2: "2021-06-28"}
METRO_STATIONS_OFFICIAL = {METRO_L1: 29, METRO_L2: 15}
METRO_SERVICE_HOURS = ("06:00", "23:00")
METRO_INTERCHANGE = "文化宫"

# North to south. (name, lat, lon, boarding weight)
_L1 = [
    ("森林公园", 31.9031, 119.9605, 0.6), ("新龙", 31.8935, 119.9600, 0.6),
    ("旅游学校", 31.8830, 119.9610, 0.7), ("新桥", 31.8735, 119.9620, 0.9),
    ("常州北站", 31.8640, 119.9630, 2.2), ("北郊中学", 31.8540, 119.9640, 1.0),
    ("外国语学校", 31.8450, 119.9660, 1.0), ("环球港", 31.8355, 119.9690, 1.8),
    ("新区公园", 31.8260, 119.9700, 1.2), ("河海", 31.8175, 119.9710, 1.3),
    ("奥体中心", 31.8080, 119.9725, 1.1), ("市民广场", 31.7990, 119.9735, 1.5),
    ("翠竹", 31.7915, 119.9720, 1.2), ("常州火车站", 31.7840, 119.9690, 2.5),
    ("博爱路", 31.7770, 119.9640, 1.6), ("文化宫", 31.7715, 119.9580, 2.5),
    ("同济桥", 31.7630, 119.9560, 1.2), ("清凉寺", 31.7540, 119.9555, 1.0),
    ("茶山", 31.7445, 119.9550, 1.1), ("聚湖路", 31.7340, 119.9545, 1.0),
    ("湖塘", 31.7240, 119.9540, 1.9), ("新天地公园", 31.7145, 119.9535, 1.1),
    ("长虹路", 31.7050, 119.9530, 1.0), ("延政大道", 31.6950, 119.9525, 1.2),
    ("科教城北", 31.6850, 119.9520, 1.0), ("科教城南", 31.6750, 119.9515, 0.9),
    ("南夏墅", 31.6550, 119.9510, 0.6),
]
# West to east.
_L2 = [
    ("青枫公园", 31.7795, 119.8930, 0.9), ("海棠路", 31.7790, 119.9040, 0.8),
    ("五星", 31.7770, 119.9150, 0.9), ("勤业", 31.7745, 119.9260, 1.1),
    ("怀德", 31.7730, 119.9370, 1.2), ("南大街", 31.7725, 119.9480, 2.0),
    ("文化宫", 31.7715, 119.9580, 1.6), ("红梅公园", 31.7830, 119.9720, 1.2),
    ("五角场", 31.7840, 119.9850, 1.0), ("三角场", 31.7810, 119.9980, 0.9),
    ("紫云", 31.7740, 120.0110, 0.8), ("青洋路", 31.7680, 120.0230, 0.8),
    ("丁塘河公园", 31.7620, 120.0340, 0.6), ("潞城", 31.7560, 120.0450, 0.6),
    ("五一路", 31.7480, 120.0560, 0.7),
]
METRO_STATIONS: tuple[Station, ...] = tuple(
    [Station(METRO_L1, n, la, lo, w) for n, la, lo, w in _L1]
    + [Station(METRO_L2, n, la, lo, w) for n, la, lo, w in _L2]
)
# Metro distance fare (CNY) by travelled km: (upper km bound, fare). Rounded published tariff.
METRO_FARE_BANDS: tuple[tuple[float, float], ...] = (
    (6, 2.0), (11, 3.0), (17, 4.0), (24, 5.0), (32, 6.0), (math.inf, 7.0),
)
METRO_AVG_SPEED_KMH = 34.0  # end-to-end Line 1 takes about an hour including dwell times


def metro_station_id(st: Station) -> str:
    """Stable gate-array reader id of a station, e.g. ``cz-metro-l1-s05``."""
    lines = {METRO_L1: 1, METRO_L2: 2}
    idx = [s for s in METRO_STATIONS if s.line == st.line].index(st) + 1
    return f"cz-metro-l{lines[st.line]}-s{idx:02d}"


# --- buses -------------------------------------------------------------------------------------------
# Named anchor places (approximate) used to lay out bus routes and car parks.
PLACES: dict[str, tuple[float, float]] = {
    "常州火车站": (31.7840, 119.9690), "文化宫": (31.7715, 119.9580), "南大街": (31.7725, 119.9480),
    "市民广场": (31.7990, 119.9735), "常州北站": (31.8640, 119.9630), "环球港": (31.8355, 119.9690),
    "湖塘": (31.7240, 119.9540), "武进区政府": (31.6980, 119.9460), "青枫公园": (31.7795, 119.8930),
    "戚墅堰": (31.7350, 120.0550), "红梅公园": (31.7830, 119.9720), "恐龙园": (31.8230, 119.9930),
    "西太湖": (31.7050, 119.8650), "科教城": (31.6800, 119.9520), "春江": (31.8950, 119.9300),
    "罗溪": (31.8700, 119.8700), "邹区": (31.7600, 119.8200), "横林": (31.6950, 120.0900),
    "天宁寺": (31.7790, 119.9660), "新北万达": (31.8100, 119.9790), "奔牛": (31.8450, 119.8150),
    "潞城": (31.7560, 120.0450), "雕庄": (31.7900, 120.0100), "牛塘": (31.7300, 119.9150),
}
# (route, from, to, number of stops, vehicles in service, flat fare CNY, boarding weight)
BUS_ROUTES: tuple[tuple[str, str, str, int, int, float, float], ...] = (
    ("B1", "春江", "科教城", 30, 30, 1.0, 3.0),       # BRT north–south trunk
    ("B2", "青枫公园", "戚墅堰", 24, 24, 1.0, 2.5),     # BRT west–east trunk
    ("B11", "常州北站", "湖塘", 22, 16, 1.0, 1.5),
    ("B15", "罗溪", "常州火车站", 20, 12, 1.0, 1.0),
    ("1路", "常州火车站", "湖塘", 20, 14, 1.0, 1.6),
    ("2路", "青枫公园", "天宁寺", 18, 12, 1.0, 1.3),
    ("3路", "文化宫", "恐龙园", 16, 10, 1.0, 1.0),
    ("11路", "南大街", "新北万达", 18, 12, 1.0, 1.2),
    ("15路", "红梅公园", "武进区政府", 22, 12, 1.0, 1.0),
    ("19路", "邹区", "文化宫", 20, 10, 2.0, 0.8),
    ("23路", "奔牛", "常州火车站", 24, 10, 2.0, 0.7),
    ("31路", "雕庄", "南大街", 16, 10, 1.0, 0.9),
    ("35路", "西太湖", "湖塘", 18, 8, 1.0, 0.7),
    ("42路", "横林", "戚墅堰", 14, 6, 2.0, 0.5),
    ("61路", "牛塘", "科教城", 16, 8, 1.0, 0.6),
    ("302路", "潞城", "市民广场", 22, 10, 1.0, 0.8),
)
BUS_STOP_SPACING_MIN = 2.5  # minutes between stops incl. dwell
BUS_SERVICE_HOURS = ("05:30", "22:00")

# --- public bikes (docked, one-card) -----------------------------------------------------------------
# (area, centre lat, centre lon, docks, weight)
BIKE_AREAS: tuple[tuple[str, float, float, int, float], ...] = (
    ("天宁区", 31.7800, 119.9750, 14, 1.2), ("钟楼区", 31.7720, 119.9350, 14, 1.2),
    ("新北区", 31.8250, 119.9700, 16, 1.4), ("武进区", 31.7150, 119.9500, 16, 1.3),
    ("经开区", 31.7550, 120.0350, 10, 0.6),
)
BIKE_AREA_RADIUS_KM = 1.4
BIKE_SERVICE_HOURS = ("06:00", "22:00")

# --- intercity coach (ticket gates sign their events) ---------------------------------------------
# (route, fare CNY, weight)
COACH_ROUTES: tuple[tuple[str, float, float], ...] = (
    ("常州—南京", 50.0, 2.0), ("常州—上海", 80.0, 2.0), ("常州—苏州", 40.0, 1.5),
    ("常州—无锡", 18.0, 1.2), ("常州—杭州", 110.0, 1.0), ("常州—溧阳", 28.0, 1.3),
    ("常州—金坛", 15.0, 1.0), ("常州—扬州", 50.0, 0.8),
)
# (station, lat, lon, gates)
COACH_STATIONS: tuple[tuple[str, float, float, int], ...] = (
    ("常州客运中心", 31.7860, 119.9700, 4), ("武进客运站", 31.7200, 119.9480, 2),
)
COACH_SERVICE_HOURS = ("06:00", "19:00")

# --- car parks (networked, one-card payment) -----------------------------------------------------
# (lot name, anchor place, capacity-ish weight)
PARKING_LOTS: tuple[tuple[str, str, float], ...] = (
    ("南大街商圈停车场", "南大街", 1.5), ("常州火车站停车场", "常州火车站", 1.8),
    ("常州北站停车场", "常州北站", 1.4), ("环球港停车场", "环球港", 1.3),
    ("新北万达停车场", "新北万达", 1.2), ("市民广场停车场", "市民广场", 0.9),
    ("湖塘乐购停车场", "湖塘", 1.1), ("恐龙园停车场", "恐龙园", 0.9),
    ("红梅公园停车场", "红梅公园", 0.6), ("市一院停车场", "文化宫", 1.0),
    ("武进区政府停车场", "武进区政府", 0.5), ("青枫公园停车场", "青枫公园", 0.6),
)
PARKING_RATE_CNY_PER_H = 3.0  # first 30 min free; rounded city-centre tariff

# --- hospitals ----------------------------------------------------------------------------------------
# (name, short code, lat, lon, share of outpatient visits, queue factor, departments)
_GENERAL = ("内科", "外科", "骨科", "心血管内科", "消化内科", "神经内科", "眼科", "耳鼻喉科",
            "口腔科", "皮肤科", "急诊科")
HOSPITALS: tuple[tuple[str, str, float, float, float, float, tuple[str, ...]], ...] = (
    ("常州市第一人民医院", "h1", 31.7760, 119.9520, 0.19, 1.3, _GENERAL + ("肿瘤科", "内分泌科")),
    ("常州市第二人民医院", "h2", 31.7800, 119.9470, 0.17, 1.25, _GENERAL + ("泌尿外科", "呼吸内科")),
    ("常州市中医医院", "h3", 31.7830, 119.9640, 0.11, 1.0, ("中医内科", "针灸科", "推拿科", "骨伤科",
                                                        "中医妇科", "中医儿科", "脾胃科")),
    ("常州市第三人民医院", "h4", 31.7880, 119.9800, 0.07, 0.8, ("感染科", "肝病科", "呼吸内科", "内科",
                                                           "外科")),
    ("常州市第四人民医院", "h5", 31.7700, 119.9700, 0.05, 0.9, ("肿瘤内科", "放疗科", "胸外科", "内科")),
    ("常州市儿童医院", "h6", 31.8150, 119.9700, 0.12, 1.2, ("儿内科", "儿外科", "新生儿科", "儿童保健科",
                                                       "儿童耳鼻喉科", "急诊科")),
    ("常州市妇幼保健院", "h7", 31.7720, 119.9640, 0.09, 1.0, ("产科", "妇科", "生殖医学科", "儿童保健科",
                                                         "乳腺科")),
    ("武进人民医院", "h8", 31.7120, 119.9450, 0.15, 1.15, _GENERAL + ("肾内科",)),
    ("常州市德安医院", "h9", 31.7870, 119.9560, 0.05, 0.7, ("皮肤科", "性病科", "精神科")),
)
HOSPITAL_REGISTRATION_HOURS = ("07:00", "17:30")
HOSPITAL_KIOSKS = 3
HOSPITAL_WINDOWS = 2

# --- roads -----------------------------------------------------------------------------------------------
# (road, start lat/lon, end lat/lon, free-flow km/h, lanes per direction, segments)
ROADS: tuple[tuple[str, float, float, float, float, float, int, int], ...] = (
    ("龙城大道", 31.8050, 119.8900, 31.8100, 120.0400, 80.0, 3, 4),   # elevated expressway
    ("延陵西路", 31.7720, 119.9250, 31.7720, 119.9500, 50.0, 2, 3),
    ("延陵中路", 31.7720, 119.9500, 31.7740, 119.9700, 45.0, 2, 2),
    ("延陵东路", 31.7740, 119.9700, 31.7760, 120.0000, 50.0, 2, 3),
    ("晋陵路", 31.8200, 119.9620, 31.7400, 119.9620, 50.0, 2, 4),
    ("长江路", 31.8800, 119.9580, 31.8000, 119.9580, 60.0, 3, 4),
    ("通江大道", 31.8700, 119.9750, 31.7900, 119.9800, 60.0, 3, 4),
    ("劳动路", 31.7650, 119.9200, 31.7650, 120.0000, 50.0, 2, 3),
    ("关河路", 31.7820, 119.9300, 31.7830, 119.9900, 45.0, 2, 3),
    ("青洋路", 31.8300, 120.0150, 31.7300, 120.0200, 60.0, 3, 4),
    ("常澄路", 31.8500, 119.9900, 31.7900, 119.9950, 60.0, 2, 3),
    ("人民路", 31.7450, 119.9100, 31.7450, 120.0000, 50.0, 2, 3),
    ("武宜路", 31.7450, 119.9350, 31.6500, 119.9300, 60.0, 3, 4),
    ("长虹路", 31.7050, 119.9000, 31.7050, 120.0000, 60.0, 3, 3),
    ("聚湖路", 31.7340, 119.9200, 31.7340, 119.9900, 50.0, 2, 2),
    ("怀德路", 31.7900, 119.9380, 31.7450, 119.9380, 50.0, 2, 3),
    ("中吴大道", 31.7550, 119.9000, 31.7550, 120.0300, 60.0, 3, 4),
    ("星港路", 31.7950, 119.8950, 31.7450, 119.8950, 50.0, 2, 2),
)
ROAD_LANE_CAPACITY_VEH_H = 1_800
ROAD_DETECTOR_INTERVAL_S = 60
ROAD_GROUPS_PER_DIRECTION = 2  # one loop-detector station per lane group


@dataclass(frozen=True, slots=True)
class RoadSegment:
    """One monitored road segment (both directions)."""

    segment: str
    road: str
    lat: float
    lon: float
    free_kmh: float
    lanes: int


def _segments() -> tuple[RoadSegment, ...]:
    out: list[RoadSegment] = []
    for road, la0, lo0, la1, lo1, free, lanes, n in ROADS:
        for i in range(n):
            f = (i + 0.5) / n
            out.append(RoadSegment(f"{road}-{i + 1}", road, round(la0 + (la1 - la0) * f, 5),
                                   round(lo0 + (lo1 - lo0) * f, 5), free, lanes))
    return tuple(out)


ROAD_SEGMENTS: tuple[RoadSegment, ...] = _segments()


# --- registry ---------------------------------------------------------------------------------------
def demo_key(source_id: str) -> str:
    """Deterministic demo HMAC key (hex) for a signing source. Never use for real devices."""
    return hashlib.sha256(f"cityops-demo-key:{source_id}".encode()).hexdigest()


def spiral_offsets(n: int, radius_km: float) -> list[tuple[float, float]]:
    """``n`` deterministic (dlat, dlon) offsets filling a disc of ``radius_km`` (golden-angle spiral)."""
    out = []
    for i in range(n):
        r = radius_km * math.sqrt((i + 0.5) / n)
        a = i * 2.399963229728653
        out.append((r * math.cos(a) / 111.0, r * math.sin(a) / 94.6))  # km per degree at 31.8 N
    return out


def hospital_sources(code: str) -> dict[str, list[str]]:
    """Source ids of one hospital by channel: kiosk, window, app (registration/payment), his."""
    return {
        "kiosk": [f"cz-{code}-kiosk-{i + 1}" for i in range(HOSPITAL_KIOSKS)],
        "window": [f"cz-{code}-window-{i + 1}" for i in range(HOSPITAL_WINDOWS)],
        "app": [f"cz-{code}-app"],
        "other": [f"cz-{code}-his"],
    }


def bus_vehicle_id(route_no: int, vehicle: int) -> str:
    """On-board reader id of one bus, e.g. ``cz-bus-r03-v07``."""
    return f"cz-bus-r{route_no:02d}-v{vehicle:02d}"


def bike_dock_id(area_no: int, dock: int) -> str:
    """Dock terminal id, e.g. ``cz-bike-a2-d11``."""
    return f"cz-bike-a{area_no}-d{dock:02d}"


def coach_gate_id(station_no: int, gate: int) -> str:
    """Signing ticket-gate id, e.g. ``cz-coach-c1-g2``."""
    return f"cz-coach-c{station_no}-g{gate}"


def parking_gate_id(lot_no: int) -> str:
    """Car-park barrier reader id, e.g. ``cz-park-p04``."""
    return f"cz-park-p{lot_no:02d}"


def road_detector_id(seg_no: int, direction: str, group: int) -> str:
    """Loop-detector station id, e.g. ``cz-rd-017-E2`` (direction letter + lane group)."""
    return f"cz-rd-{seg_no:03d}-{direction}{group}"


def road_directions(seg: RoadSegment) -> tuple[str, str]:
    """The two direction letters of a segment (N/S for north–south roads, E/W otherwise)."""
    road = next(r for r in ROADS if r[0] == seg.road)
    return ("N", "S") if abs(road[3] - road[1]) * 111 > abs(road[4] - road[2]) * 94.6 else ("E", "W")


def _registry() -> dict[str, Source]:
    reg: dict[str, Source] = {}

    def add(s: Source) -> None:
        assert s.source_id not in reg, s.source_id
        reg[s.source_id] = s

    for st in METRO_STATIONS:
        add(Source(metro_station_id(st), TOPIC_TAPS, "metro_gate", f"{st.line} {st.name}站",
                   st.lat, st.lon, METRO_SERVICE_HOURS, 600))
    for r, (route, a, b, _stops, vehicles, _fare, _w) in enumerate(BUS_ROUTES, start=1):
        for v in range(1, vehicles + 1):
            add(Source(bus_vehicle_id(r, v), TOPIC_TAPS, "bus_reader", f"{route} {a}—{b}", None, None,
                       BUS_SERVICE_HOURS, None))
    for a_no, (area, la, lo, docks, _w) in enumerate(BIKE_AREAS, start=1):
        for d, (dla, dlo) in enumerate(spiral_offsets(docks, BIKE_AREA_RADIUS_KM), start=1):
            add(Source(bike_dock_id(a_no, d), TOPIC_TAPS, "bike_dock", f"公共自行车 {area} {d}号点",
                       round(la + dla, 5), round(lo + dlo, 5), BIKE_SERVICE_HOURS, None))
    for c_no, (name, la, lo, gates) in enumerate(COACH_STATIONS, start=1):
        for g in range(1, gates + 1):
            sid = coach_gate_id(c_no, g)
            add(Source(sid, TOPIC_TAPS, "coach_gate", f"{name} {g}号检票口", la, lo,
                       COACH_SERVICE_HOURS, None, demo_key(sid)))
    for p_no, (lot, place, _w) in enumerate(PARKING_LOTS, start=1):
        la, lo = PLACES[place]
        add(Source(parking_gate_id(p_no), TOPIC_TAPS, "parking_gate", lot, la, lo, None, None))
    for s_no, seg in enumerate(ROAD_SEGMENTS, start=1):
        for d in road_directions(seg):
            for g in range(1, ROAD_GROUPS_PER_DIRECTION + 1):
                add(Source(road_detector_id(s_no, d, g), TOPIC_ROAD, "road_detector", seg.segment,
                           seg.lat, seg.lon, None, 600))
    for name, code, la, lo, _share, _q, _depts in HOSPITALS:
        for channel, ids in hospital_sources(code).items():
            for sid in ids:
                if channel == "other":
                    add(Source(sid, TOPIC_HEALTH, "hospital_his", f"{name} HIS", la, lo,
                               ("07:00", "21:00"), None))
                else:
                    add(Source(sid, TOPIC_HEALTH, f"hospital_{channel}", f"{name} {channel}", la, lo,
                               HOSPITAL_REGISTRATION_HOURS, 900))
    return reg


SOURCES: Mapping[str, Source] = MappingProxyType(_registry())


def signing_key(source_id: str) -> bytes | None:
    """The HMAC key of a signing source, or ``None`` when the source does not sign."""
    s = SOURCES.get(source_id)
    return bytes.fromhex(s.signing_key) if s is not None and s.signing_key else None


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km between two WGS84 points."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0088 * math.asin(math.sqrt(h))


def registry_document() -> dict[str, object]:
    """The source registry in the streams/sources.json format (see streams/sources.README.md).

    Signing keys here are the simulator's deterministic demo keys; production passes real keys to
    ``SourceRegistry.load(..., keys=...)`` from a secret store instead.
    """
    sources: dict[str, dict[str, object]] = {}
    for sid, s in SOURCES.items():
        entry: dict[str, object] = {"stream": s.topic}
        if s.signing_key:
            entry["must_sign"] = True
            entry["key"] = s.signing_key
        if s.service_hours:
            entry["service_hours"] = [list(s.service_hours)]
        if s.max_silence_s is None:
            entry["expected"] = False
        else:
            entry["max_gap_s"] = s.max_silence_s
        if s.lat is not None and s.lon is not None:
            entry["lat"], entry["lon"] = s.lat, s.lon
        entry["station"] = s.location
        sources[sid] = entry
    return {"tz": CITY_TZ_NAME, "sources": sources}
