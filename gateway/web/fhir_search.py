"""FHIR R4 search over the gateway's records: parameters parsed and checked, then one SQL query.

Pure parsing (no web framework): ``parse(resource_type, params, lenient, base)`` returns a
``Search`` (SQL WHERE fragments with their parameters, paging, sort, includes) or raises
``SearchError`` (HTTP 400 with a FHIR issue code). Values only ever reach the database as bound
parameters.

Semantics (FHIR R4 "Search"): a parameter given twice is AND, a comma inside one value is OR.

- reference (``patient``, ``subject``, ``device``): ``ID``, ``Type/ID`` or this server's
  ``{base}Type/ID``; ``:missing=true|false`` on ``patient``/``subject`` (readings with or without a
  patient), ``subject:Patient``;
- token (``code``, ``category``, ``identifier``): ``code``, ``system|code``, ``|code`` (no
  system), ``system|`` (any code of the system);
- date (``date``: the Observation's effective time): prefixes ``eq`` (default) ``ne`` ``gt`` ``ge``
  ``lt`` ``le``; values ``YYYY``, ``YYYY-MM``, ``YYYY-MM-DD``, ``YYYY-MM-DDThh:mm[:ss[.f]][Z|+hh:mm]``,
  each standing for the range it covers (no zone: UTC);
- ``_id``; ``_count`` (0..500, default 50), ``_offset`` (paging), ``_sort=date|-date``
  (Observation), ``_include=Observation:device|Observation:patient``, ``_summary=count|false``;
  ``_format`` and ``_pretty`` are read by the caller.

Unknown parameters, unsupported modifiers and prefixes are refused (strict handling, FHIR's
default); with ``Prefer: handling=lenient`` they are ignored, and the Bundle's ``self`` link shows
what was applied.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

from gateway import fhir

UTC = dt.timezone.utc
DEFAULT_COUNT = 50
MAX_COUNT = 500
MAX_OFFSET = 10_000_000
MAX_VALUE = 512          # characters of one parameter value
MAX_OR = 50              # comma-separated alternatives in one value

RESULT_PARAMS = {"_count", "_offset", "_sort", "_include", "_summary"}
FORMAT_PARAMS = {"_format", "_pretty"}
SEARCH_PARAMS = {
    "Observation": {"patient": "reference", "subject": "reference", "device": "reference", "code": "token",
                    "date": "date", "category": "token", "_id": "token"},
    "Device": {"identifier": "token", "_id": "token"},
    "Patient": {"identifier": "token", "_id": "token"},
}
INCLUDES = {"Observation": ("Observation:device", "Observation:patient")}
SORTS = {"Observation": ("date", "-date")}
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6}))?)?"
                   r"(Z|[+-]\d{2}:\d{2})?)?)?)?$")
_PREFIXES = ("eq", "ne", "gt", "ge", "lt", "le", "sa", "eb", "ap")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_OBS_ID = re.compile(r"^([a-z0-9][a-z0-9-]{2,39})-(\d{1,18})-(temp|spo2|hr|pi)$")
_MAC_SYSTEMS = (fhir.EUI64_SYSTEM, fhir.ETHMAC_SYSTEM)


class SearchError(ValueError):
    def __init__(self, message: str, code: str = "invalid", status: int = 400):
        super().__init__(message)
        self.code, self.status = code, status


def _quote(v: str, n: int = 40) -> str:
    s = "".join(c if c.isprintable() else "?" for c in v[:n])
    return repr(s + ("..." if len(v) > n else ""))


@dataclass
class Search:
    resource_type: str
    where: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)
    count: int = DEFAULT_COUNT
    offset: int = 0
    descending: bool = False
    includes: list[str] = field(default_factory=list)
    summary_count: bool = False
    applied: list[tuple[str, str]] = field(default_factory=list)   # for the self/next links

    def add(self, sql: str, *params: Any) -> None:
        self.where.append(sql)
        self.params.extend(params)

    def where_sql(self) -> str:
        return " AND ".join(self.where) if self.where else "1=1"


# -- values ---------------------------------------------------------------------------------------

def split_or(value: str) -> list[str]:
    parts = [p.replace("\\,", ",") for p in re.split(r"(?<!\\),", value)]
    if len(parts) > MAX_OR:
        raise SearchError(f"at most {MAX_OR} alternatives in one parameter")
    return parts


def parse_token(value: str) -> tuple[str | None, str]:
    """(system, code): system None = any system, "" = no system; code "" = any code."""
    if "|" in value.replace("\\|", ""):
        i = re.search(r"(?<!\\)\|", value).start()  # type: ignore[union-attr]
        return value[:i], value[i + 1:].replace("\\|", "|")
    return None, value.replace("\\|", "|")


def parse_id(value: str, what: str) -> str:
    if not _ID.match(value):
        raise SearchError(f"{what} {_quote(value)} is not a FHIR id ([A-Za-z0-9-.], 1..64)")
    return value


def parse_reference(value: str, rtype: str, base: str, name: str) -> str:
    """The id in ``ID``, ``Type/ID`` or ``{base}Type/ID``; another type is an error."""
    v = value
    if v.startswith(("http://", "https://")):
        if not v.startswith(base):
            raise SearchError(f"{name}: {_quote(value)} is not a reference to this server")
        v = v[len(base):]
    if "/" in v:
        t, _, v = v.partition("/")
        if t != rtype:
            raise SearchError(f"{name} refers to {rtype}, not {_quote(t)}")
    return parse_id(v, name)


def parse_date(value: str) -> tuple[str, dt.datetime, dt.datetime | None]:
    """(prefix, lo, hi): the value's range [lo, hi) in UTC; hi None = unbounded (year 9999)."""
    prefix = "eq"
    if value[:2] in _PREFIXES:
        prefix, value = value[:2], value[2:]
    if prefix in ("sa", "eb", "ap"):
        raise SearchError(f"date prefix {prefix} is not supported (eq, ne, gt, ge, lt, le)", "not-supported")
    m = _DATE.match(value)
    if not m:
        raise SearchError(f"date {_quote(value)}: expected YYYY[-MM[-DD[Thh:mm[:ss[.f]][Z|+hh:mm]]]]")
    y, mo, d, hh, mi, ss, frac, tz = m.groups()
    try:
        zone = UTC
        if tz and tz != "Z":
            sign = 1 if tz[0] == "+" else -1
            zone = dt.timezone(sign * dt.timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6])))
        lo = dt.datetime(int(y), int(mo or 1), int(d or 1), int(hh or 0), int(mi or 0), int(ss or 0),
                         int((frac or "0").ljust(6, "0")), tzinfo=zone)
    except ValueError as e:  # month 13, February 30, hour 25, offset +25:00, year 0
        raise SearchError(f"date {_quote(value)}: {e}") from None
    hi: dt.datetime | None
    try:
        if frac or ss or mi or d:
            hi = lo + (dt.timedelta(microseconds=10 ** (6 - len(frac))) if frac else dt.timedelta(seconds=1) if ss
                       else dt.timedelta(minutes=1) if mi else dt.timedelta(days=1))
        elif mo:
            hi = dt.datetime(int(y) + (int(mo) == 12), int(mo) % 12 + 1, 1, tzinfo=zone)
        else:
            hi = dt.datetime(int(y) + 1, 1, 1, tzinfo=zone)
        hi = hi.astimezone(UTC)
    except (OverflowError, ValueError):  # past the end of year 9999
        hi = None
    try:
        lo = lo.astimezone(UTC)
    except OverflowError:
        lo = dt.datetime.min.replace(tzinfo=UTC)
    return prefix, lo, hi


def parse_int(value: str, name: str, hi: int) -> int:
    if not value.isdigit() or len(value) > 12 or int(value) > hi:
        raise SearchError(f"{name} must be an integer within 0..{hi}, got {_quote(value, 24)}")
    return int(value)


# -- one search ------------------------------------------------------------------------------------

def parse(resource_type: str, items: list[tuple[str, str]], *, lenient: bool, base: str, ts) -> Search:
    """``items``: the query's (name, value) pairs in order; ``ts(datetime)`` makes a timestamp
    parameter for the database. Raises SearchError."""
    known = SEARCH_PARAMS[resource_type]
    s = Search(resource_type)
    seen: set[str] = set()

    def unsupported(msg: str) -> bool:
        """Strict: refuse. Lenient: ignore (False: not applied)."""
        if not lenient:
            raise SearchError(msg + " (Prefer: handling=lenient ignores it)", "not-supported")
        return False

    for raw_name, value in items:
        if len(value) > MAX_VALUE:
            raise SearchError(f"{_quote(raw_name, 30)}: value longer than {MAX_VALUE} characters", "too-costly")
        if _CONTROL.search(value) or _CONTROL.search(raw_name):
            raise SearchError(f"{_quote(raw_name, 30)}: control characters are not allowed in a search")
        name, _, modifier = raw_name.partition(":")
        if name in FORMAT_PARAMS:
            continue
        if name in RESULT_PARAMS:
            if modifier:
                unsupported(f"{name} takes no modifier")
                continue
            if name in seen and name != "_include":
                raise SearchError(f"{name} given more than once")
            seen.add(name)
            _result_param(s, name, value, unsupported)
            continue
        if name not in known:
            unsupported(f"unknown or unsupported search parameter {_quote(raw_name, 40)} for {resource_type}; "
                        f"supported: {', '.join(sorted(known))}")
            continue
        if value == "":
            continue   # FHIR: an empty value is ignored
        handler = _HANDLERS[(resource_type, name)]
        if handler(s, name, modifier, value, base, ts, unsupported) is not False:
            s.applied.append((raw_name, value))
    return s


def _result_param(s: Search, name: str, value: str, unsupported) -> Any:
    if name == "_count":
        s.count = parse_int(value, "_count", MAX_COUNT)
    elif name == "_offset":
        s.offset = parse_int(value, "_offset", MAX_OFFSET)
    elif name == "_sort":
        if value not in SORTS.get(s.resource_type, ()):
            return unsupported(f"_sort {_quote(value)} is not supported for {s.resource_type} "
                               f"(supported: {', '.join(SORTS.get(s.resource_type, ())) or 'none'})")
        s.descending = value.startswith("-")
        s.applied.append(("_sort", value))
    elif name == "_include":
        if value not in INCLUDES.get(s.resource_type, ()):
            return unsupported(f"_include {_quote(value)} is not supported for {s.resource_type} "
                               f"(supported: {', '.join(INCLUDES.get(s.resource_type, ())) or 'none'})")
        if value not in s.includes:
            s.includes.append(value)
            s.applied.append(("_include", value))
    elif name == "_summary":
        if value == "count":
            s.summary_count = True
            s.applied.append(("_summary", value))
        elif value != "false":
            unsupported(f"_summary={_quote(value)} is not supported (count, false)")


def _missing(s: Search, column: str, value: str) -> None:
    if value not in ("true", "false"):
        raise SearchError(":missing takes true or false")
    s.add(f"{column} IS NULL" if value == "true" else f"{column} IS NOT NULL")


def _in(s: Search, column: str, values: list[str]) -> None:
    s.add(f"{column} IN ({','.join('?' * len(values))})", *values)


def _obs_patient(s, name, modifier, value, base, ts, unsupported):
    if modifier == "missing":
        return _missing(s, "r.patient_id", value)
    if modifier not in ("", "Patient") or (modifier == "Patient" and name != "subject"):
        return unsupported(f"{name}:{modifier} is not supported")
    _in(s, "r.patient_id", [parse_reference(v, "Patient", base, name) for v in split_or(value)])


def _obs_device(s, name, modifier, value, base, ts, unsupported):
    if modifier:
        return unsupported(f"device:{modifier} is not supported")
    _in(s, "r.device_id", [parse_reference(v, "Device", base, name) for v in split_or(value)])


def _codes_matching(system: str | None, code: str) -> set[str]:
    out = set()
    for ours, spec in fhir.CODES.items():
        codings = [(fhir.LOINC, c) for c, _ in spec["loinc"]] + [(fhir.MDC, spec["mdc"][0])]
        for sys_, c in codings:
            if (system is None or system == sys_) and (code == "" or code == c):
                out.add(ours)
    return out


def _obs_code(s, name, modifier, value, base, ts, unsupported):
    if modifier:
        return unsupported(f"code:{modifier} is not supported")
    codes: set[str] = set()
    for v in split_or(value):
        system, code = parse_token(v)
        if system == "":       # "|code": codings without a system; ours all have one
            continue
        codes |= _codes_matching(system, code)
    if codes:
        _in(s, "o.code", sorted(codes))
    else:
        s.add("1=0")


def _obs_category(s, name, modifier, value, base, ts, unsupported):
    if modifier:
        return unsupported(f"category:{modifier} is not supported")
    hit = any((sy in (None, fhir.OBS_CATEGORY)) and c in ("", "vital-signs")
              for sy, c in map(parse_token, split_or(value)))
    if not hit:
        s.add("1=0")   # every Observation here is in vital-signs


def _obs_date(s, name, modifier, value, base, ts, unsupported):
    if modifier:
        return unsupported(f"date:{modifier} is not supported")
    ors, params = [], []
    for v in split_or(value):
        prefix, lo, hi = parse_date(v)
        col = "r.effective_at"
        if prefix == "eq":
            part = [(f"{col} >= ?", lo)] + ([(f"{col} < ?", hi)] if hi else [])
            ors.append(" AND ".join(p for p, _ in part))
            params += [ts(x) for _, x in part]
        elif prefix == "ne":
            ors.append(f"({col} < ? OR {col} >= ?)" if hi else f"{col} < ?")
            params += [ts(lo)] + ([ts(hi)] if hi else [])
        elif prefix in ("gt",):
            ors.append(f"{col} >= ?" if hi else "1=0")
            params += [ts(hi)] if hi else []
        elif prefix == "ge":
            ors.append(f"{col} >= ?")
            params.append(ts(lo))
        elif prefix == "lt":
            ors.append(f"{col} < ?")
            params.append(ts(lo))
        elif prefix == "le":
            ors.append(f"{col} < ?" if hi else "1=1")
            params += [ts(hi)] if hi else []
    s.add("(" + " OR ".join(f"({o})" for o in ors) + ")", *params)


def _obs_id(s, name, modifier, value, base, ts, unsupported):
    if modifier:
        return unsupported(f"_id:{modifier} is not supported")
    ors, params = [], []
    for v in split_or(value):
        m = _OBS_ID.match(parse_id(v, "_id"))
        if m:
            ors.append("(r.device_id = ? AND r.seq = ? AND o.code = ?)")
            params += [m.group(1), int(m.group(2)), m.group(3)]
    s.add("(" + " OR ".join(ors) + ")" if ors else "1=0", *params)


def device_ids_for_identifier(system: str | None, value: str) -> list[str] | None:
    """Device ids an identifier token can name (None: every device)."""
    out = []
    if system in (None, fhir.DEVICE_SYSTEM):
        if value == "":
            return None
        if fhir._DEVICE_ID.match(value):
            out.append(value)
    if system in (None, *_MAC_SYSTEMS) and value:
        octets = value.lower().split("-")
        if system in (None, fhir.EUI64_SYSTEM) and len(octets) == 8 and octets[3:5] == ["ff", "fe"]:
            octets = octets[:3] + octets[5:]
        if len(octets) == 6 and all(re.fullmatch(r"[0-9a-f]{2}", o) for o in octets):
            out.append("nabd-" + "".join(octets))
    return out


def _device_identifier(s, name, modifier, value, base, ts, unsupported):
    if modifier:
        return unsupported(f"identifier:{modifier} is not supported")
    ids: list[str] = []
    for v in split_or(value):
        system, code = parse_token(v)
        found = device_ids_for_identifier(system, code)
        if found is None:
            return None          # every device: no condition
        ids += found
    _in(s, "d.id", ids) if ids else s.add("1=0")


def _patient_identifier(s, name, modifier, value, base, ts, unsupported):
    if modifier:
        return unsupported(f"identifier:{modifier} is not supported")
    ids: list[str] = []
    for v in split_or(value):
        system, code = parse_token(v)
        if system in (None, fhir.PATIENT_SYSTEM):
            if code == "":
                return None
            if fhir._PATIENT.match(code):
                ids.append(code)
    _in(s, "p.id", ids) if ids else s.add("1=0")


def _plain_id(column: str):
    def handler(s, name, modifier, value, base, ts, unsupported):
        if modifier:
            return unsupported(f"_id:{modifier} is not supported")
        _in(s, column, [parse_id(v, "_id") for v in split_or(value)])
    return handler


_HANDLERS = {
    ("Observation", "patient"): _obs_patient, ("Observation", "subject"): _obs_patient,
    ("Observation", "device"): _obs_device, ("Observation", "code"): _obs_code,
    ("Observation", "category"): _obs_category, ("Observation", "date"): _obs_date,
    ("Observation", "_id"): _obs_id,
    ("Device", "identifier"): _device_identifier, ("Device", "_id"): _plain_id("d.id"),
    ("Patient", "identifier"): _patient_identifier, ("Patient", "_id"): _plain_id("p.id"),
}
