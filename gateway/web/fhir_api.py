"""The FHIR R4 API under ``/fhir``: the CapabilityStatement, reads and searches (read-only).

Interactions: ``GET /fhir/metadata`` (open); ``read`` of Observation, Device and Patient by id,
with ``ETag``/``meta.versionId``, ``Last-Modified``/``meta.lastUpdated`` and ``If-None-Match`` /
``If-Modified-Since`` (304); ``search-type`` on the three (``gateway/web/fhir_search.py`` has the
parameters and their semantics). Formats: JSON only, as ``application/fhir+json`` (default) or
``application/json`` when the client asks for exactly that (``Accept`` or ``_format``); anything
else is 406. Every error is an ``OperationOutcome``.

Links in responses (``Bundle.link``, ``fullUrl``) are built from the configured public base URL
(``[api] public_url``), never from the request's ``Host`` header.
"""
from __future__ import annotations

import copy
import datetime as dt
import email.utils
import hashlib
import json
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import fhir
from gateway import recordstore as rs
from gateway.web import fhir_search as fs
from gateway.web.access import require
from gateway.web.errors import FHIR_JSON, JSON, ApiError, clip, json_response

TYPES = ("Observation", "Device", "Patient")
_FHIR_TYPES = {"application/fhir+json", "application/json+fhir", "application/json", "json",
               "application/*", "*/*"}
_FORMAT_PARAM = {"json": FHIR_JSON, "application/fhir+json": FHIR_JSON, "application/json+fhir": FHIR_JSON,
                 "application/json": JSON}
GET = ["GET", "HEAD"]


def base(request: Request) -> str:
    return request.app.state.settings.public_url.rstrip("/") + "/fhir/"


# -- format and preferences --------------------------------------------------------------------------

def negotiate(request: Request) -> tuple[str, int | None]:
    """(Content-Type, indent) for the response; 406 when the client accepts no JSON."""
    q = request.query_params
    pretty = 2 if q.get("_pretty") == "true" else None
    fmt = q.get("_format")
    if fmt is not None:
        ctype = _FORMAT_PARAM.get(fmt.split(";")[0].strip().lower())
        if ctype is None:
            raise ApiError(406, "not-supported", f"_format {clip(fmt, 40)}: this server speaks JSON only "
                                                 "(json, application/fhir+json, application/json)")
        return ctype, pretty
    accept = request.headers.get("accept", "").strip()
    if not accept:
        return FHIR_JSON, pretty
    ranges = []
    for part in accept.split(",")[:32]:
        media, *params = (x.strip() for x in part.split(";"))
        qv = 1.0
        for p in params:
            if p.startswith("q="):
                try:
                    qv = float(p[2:])
                except ValueError:
                    qv = 0.0
        if qv > 0:
            ranges.append(media.lower())
    if "application/fhir+json" in ranges or "application/json+fhir" in ranges:
        return FHIR_JSON, pretty
    if "application/json" in ranges:
        return JSON, pretty
    if any(r in _FHIR_TYPES for r in ranges):
        return FHIR_JSON, pretty
    raise ApiError(406, "not-supported", "this server answers in JSON only (application/fhir+json, "
                                         "application/json)")


def lenient(request: Request) -> bool:
    """``Prefer: handling=lenient`` (strict is the default)."""
    for part in request.headers.get("prefer", "").split(","):
        k, _, v = part.strip().partition("=")
        if k.strip().lower() == "handling":
            v = v.strip().strip('"').lower()
            if v not in ("strict", "lenient"):
                raise ApiError(400, "invalid", "Prefer: handling must be strict or lenient")
            return v == "lenient"
    return False


def reply(request: Request, obj: Any, status: int = 200, headers: dict | None = None) -> Response:
    ctype, indent = negotiate(request)
    return json_response(obj, status, ctype, headers, indent)


# -- versions ----------------------------------------------------------------------------------------

def _http_date(t: dt.datetime) -> str:
    return email.utils.format_datetime(t.astimezone(dt.timezone.utc).replace(microsecond=0), usegmt=True)


def with_meta(resource: dict, version: str, last_updated: dt.datetime | None) -> dict:
    r = copy.copy(resource)
    meta = dict(r.get("meta") or {})
    meta["versionId"] = version
    if last_updated is not None:
        meta["lastUpdated"] = rs.to_iso(last_updated)
    r["meta"] = meta
    # meta goes right after id, where FHIR puts it
    return {k: r[k] for k in ("resourceType", "id", "meta") if k in r} | r


def content_version(resource: dict) -> str:
    """A Device's version: its content's digest (it changes when the record does)."""
    body = json.dumps({k: v for k, v in resource.items() if k != "meta"}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def _read_reply(request: Request, resource: dict) -> Response:
    meta = resource["meta"]
    etag = f'W/"{meta["versionId"]}"'
    last = rs.parse_time(meta.get("lastUpdated"))
    headers = {"ETag": etag}
    if last is not None:
        headers["Last-Modified"] = _http_date(last)
    inm = request.headers.get("if-none-match")
    ims = request.headers.get("if-modified-since")
    if inm is not None:
        if etag in [t.strip() for t in inm.split(",")] or inm.strip() == "*":
            return Response(status_code=304, headers=headers)
    elif ims is not None and last is not None:
        try:
            since = email.utils.parsedate_to_datetime(ims)
        except (TypeError, ValueError):
            since = None
        if since is not None and since.tzinfo is not None and last.replace(microsecond=0) <= since:
            return Response(status_code=304, headers=headers)
    return reply(request, resource, headers=headers)


# -- records -----------------------------------------------------------------------------------------

_OBS_COLS = "o.reading_id, o.code, o.resource, r.raw, r.received_at, r.device_id, r.patient_id"
_DEVICE_COLS = ("d.id, d.facility, d.region, d.status, d.fw, d.cal_id, d.cal_date, d.cal_due, d.registered_at, "
                "d.last_seen_at, (SELECT MAX(k.revoked_at) FROM device_keys k WHERE k.device_id = d.id "
                "AND k.revoked_at <= ?) AS key_revoked_at")


def _observation(row: dict, cache: dict) -> dict:
    # immutable once stored (signed bytes): version 1, last updated when received
    return with_meta(rs.observation_resource(row, cache), "1", rs.parse_time(row["received_at"]))


def _device(row: dict) -> dict:
    res = fhir.device_resource(row["id"], row)
    changed = [t for t in (rs.parse_time(row.get(k)) for k in ("registered_at", "last_seen_at", "key_revoked_at"))
               if t is not None]
    return with_meta(res, content_version(res), max(changed) if changed else None)


def _patient(row: dict) -> dict:
    return with_meta(fhir.patient_resource(row["id"]), "1", rs.parse_time(row["created_at"]))


def _ts(db):
    return (lambda t: t) if db.dialect == "postgresql" else rs.to_iso


def _now_param(db):
    return _ts(db)(rs.now_utc())


def fetch_devices(db, conn, ids: list[str]) -> list[dict]:
    if not ids:
        return []
    marks = ",".join("?" * len(ids))
    rows = rs.rows(conn, rs.q(db, f"SELECT {_DEVICE_COLS} FROM devices d WHERE d.id IN ({marks}) ORDER BY d.id"),
                   (_now_param(db), *ids))
    return [_device(r) for r in rows]


def fetch_patients(db, conn, ids: list[str]) -> list[dict]:
    if not ids:
        return []
    marks = ",".join("?" * len(ids))
    rows = rs.rows(conn, rs.q(db, f"SELECT p.id, p.created_at FROM patients p WHERE p.id IN ({marks}) "
                                  "ORDER BY p.id"), tuple(ids))
    return [_patient(r) for r in rows]


# -- endpoints ---------------------------------------------------------------------------------------

@require("records.read")
def observation_read(request: Request) -> Response:
    oid = request.path_params["id"]
    m = fs._OBS_ID.match(oid)
    if not m:
        raise ApiError(404, "not-found", f"Observation/{clip(oid)} not found")
    db = request.app.state.db
    with db.connect() as conn:
        rows = rs.rows(conn, rs.q(db, f"SELECT {_OBS_COLS} FROM readings r JOIN observations o ON o.reading_id = r.id "
                                      "WHERE r.device_id = ? AND r.seq = ? AND o.code = ?"),
                       (m.group(1), int(m.group(2)), m.group(3)))
    if not rows:
        raise ApiError(404, "not-found", f"Observation/{clip(oid)} not found")
    return _read_reply(request, _observation(rows[0], {}))


@require("records.read")
def device_read(request: Request) -> Response:
    did = request.path_params["id"]
    db = request.app.state.db
    found = []
    if fhir._DEVICE_ID.match(did):
        with db.connect() as conn:
            found = fetch_devices(db, conn, [did])
    if not found:
        raise ApiError(404, "not-found", f"Device/{clip(did)} not found")
    return _read_reply(request, found[0])


@require("records.read")
def patient_read(request: Request) -> Response:
    pid = request.path_params["id"]
    db = request.app.state.db
    found = []
    if fhir._PATIENT.match(pid):
        with db.connect() as conn:
            found = fetch_patients(db, conn, [pid])
    if not found:
        raise ApiError(404, "not-found", f"Patient/{clip(pid)} not found")
    return _read_reply(request, found[0])


def _parse(request: Request, rtype: str) -> fs.Search:
    db = request.app.state.db
    try:
        return fs.parse(rtype, request.query_params.multi_items(), lenient=lenient(request), base=base(request),
                        ts=_ts(db))
    except fs.SearchError as e:
        raise ApiError(e.status, e.code, str(e)) from None


def _bundle(request: Request, s: fs.Search, matches: list[dict], included: list[dict], total: int) -> dict:
    b = base(request)

    def link(offset: int) -> str:
        q = [*s.applied, ("_count", str(s.count)), ("_offset", str(max(offset, 0)))]
        return f"{b}{s.resource_type}?" + urlencode(q)

    bundle: dict = {"resourceType": "Bundle", "type": "searchset", "total": int(total)}
    if s.summary_count:
        bundle["link"] = [{"relation": "self", "url": f"{b}{s.resource_type}?" + urlencode(s.applied)}]
        return bundle
    links = [("self", link(s.offset))]
    if s.count:
        links.append(("first", link(0)))
        if s.offset > 0:
            links.append(("previous", link(s.offset - s.count)))
        if s.offset + s.count < total:
            links.append(("next", link(s.offset + s.count)))
        links.append(("last", link(max(total - 1, 0) // s.count * s.count)))
    bundle["link"] = [{"relation": r, "url": u} for r, u in links]
    entries = [{"fullUrl": f"{b}{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "match"}}
               for r in matches]
    entries += [{"fullUrl": f"{b}{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "include"}}
                for r in included]
    if entries:
        bundle["entry"] = entries
    return bundle


def _page(db, conn, s: fs.Search, select: str, frm: str, order: str) -> tuple[list[dict], int]:
    total = rs.rows(conn, rs.q(db, f"SELECT COUNT(*) AS n FROM {frm} WHERE {s.where_sql()}"), tuple(s.params))[0]["n"]
    if s.summary_count or s.count == 0:
        return [], int(total)
    rows = rs.rows(conn, rs.q(db, f"SELECT {select} FROM {frm} WHERE {s.where_sql()} ORDER BY {order} "
                                  "LIMIT ? OFFSET ?"), (*s.params, s.count, s.offset))
    return rows, int(total)


@require("records.read")
def observation_search(request: Request) -> Response:
    negotiate(request)
    s = _parse(request, "Observation")
    db = request.app.state.db
    order = ("r.effective_at DESC, r.id DESC, o.pos" if s.descending else "r.effective_at, r.id, o.pos")
    with db.connect() as conn:
        rows, total = _page(db, conn, s, _OBS_COLS, "readings r JOIN observations o ON o.reading_id = r.id", order)
        cache: dict = {}
        matches = [_observation(r, cache) for r in rows]
        included: list[dict] = []
        if "Observation:patient" in s.includes:
            included += fetch_patients(db, conn, sorted({r["patient_id"] for r in rows if r["patient_id"]}))
        if "Observation:device" in s.includes:
            included += fetch_devices(db, conn, sorted({r["device_id"] for r in rows}))
    return reply(request, _bundle(request, s, matches, included, total))


@require("records.read")
def device_search(request: Request) -> Response:
    negotiate(request)
    s = _parse(request, "Device")
    db = request.app.state.db
    s.params.insert(0, _now_param(db))   # the key_revoked_at sub-select's bound comes first
    with db.connect() as conn:
        total = rs.rows(conn, rs.q(db, f"SELECT COUNT(*) AS n FROM devices d WHERE {s.where_sql()}"),
                        tuple(s.params[1:]))[0]["n"]
        rows = [] if s.summary_count or s.count == 0 else rs.rows(
            conn, rs.q(db, f"SELECT {_DEVICE_COLS} FROM devices d WHERE {s.where_sql()} ORDER BY d.id "
                           "LIMIT ? OFFSET ?"), (*s.params, s.count, s.offset))
    return reply(request, _bundle(request, s, [_device(r) for r in rows], [], int(total)))


@require("records.read")
def patient_search(request: Request) -> Response:
    negotiate(request)
    s = _parse(request, "Patient")
    db = request.app.state.db
    with db.connect() as conn:
        rows, total = _page(db, conn, s, "p.id, p.created_at", "patients p", "p.id")
    return reply(request, _bundle(request, s, [_patient(r) for r in rows], [], total))


def capability(request: Request) -> Response:
    return reply(request, capability_statement(base(request)))


def capability_statement(fhir_base: str) -> dict:
    """Exactly what this API implements (kept in step with fhir_search.SEARCH_PARAMS)."""
    docs = {
        "patient": "Patient/ID, ID or this server's URL; comma = OR; :missing=true|false",
        "subject": "as patient (subject:Patient)",
        "device": "Device/ID, ID or this server's URL; comma = OR",
        "code": "LOINC or IEEE 11073 MDC code: code, system|code, |code, system|; comma = OR",
        "date": "effectiveDateTime: eq ne gt ge lt le, YYYY to seconds, partial dates are ranges (UTC when no zone)",
        "category": "vital-signs (every Observation here)",
        "identifier": "system|value or value",
        "_id": "logical id; comma = OR",
    }
    types = {"reference": "reference", "token": "token", "date": "date"}

    def resource(rtype: str, profile: str | None = None) -> dict:
        r: dict = {"type": rtype}
        if profile:
            r["profile"] = profile
        r["interaction"] = [{"code": "read"}, {"code": "search-type"}]
        r["versioning"] = "versioned"
        r["readHistory"] = False
        r["updateCreate"] = False
        r["conditionalRead"] = "full-support"
        if rtype in fs.INCLUDES:
            r["searchInclude"] = list(fs.INCLUDES[rtype])
        r["searchParam"] = [{"name": n, "type": types[t], "documentation": docs[n]}
                            for n, t in fs.SEARCH_PARAMS[rtype].items()]
        return r

    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-30",
        "publisher": "nabd project",
        "kind": "instance",
        "software": {"name": "nabd-gateway"},
        "implementation": {"description": "nabd site gateway: vital signs from nabd devices (read-only)",
                           "url": fhir_base.rstrip("/")},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "documentation": ("Read-only. Search: a parameter repeated is AND, a comma is OR; _count (0..500, "
                              "default 50), _offset (paging links), _summary=count; Observation _sort=date|-date. "
                              "Unknown parameters are refused (400) unless Prefer: handling=lenient."),
            "security": {"description": "Authorization: Bearer token (site admin token or a user's scoped token); "
                                        "/metadata is open."},
            "resource": [resource("Observation", "http://hl7.org/fhir/StructureDefinition/vitalsigns"),
                         resource("Device"), resource("Patient")],
        }],
    }


@require("records.read")
def unknown_type(request: Request) -> Response:
    t = request.path_params["type"]
    if t in TYPES:
        raise ApiError(404, "not-found", f"no {t} at {clip(request.url.path)}")
    raise ApiError(404, "not-supported", f"resource type {clip(t)} is not served here (served: {', '.join(TYPES)})")


ROUTES = [
    Route("/fhir/metadata", capability, methods=GET),  # open, as FHIR clients expect
    Route("/fhir/Observation", observation_search, methods=GET),
    Route("/fhir/Observation/{id}", observation_read, methods=GET),
    Route("/fhir/Device", device_search, methods=GET),
    Route("/fhir/Device/{id}", device_read, methods=GET),
    Route("/fhir/Patient", patient_search, methods=GET),
    Route("/fhir/Patient/{id}", patient_read, methods=GET),
    Route("/fhir/{type}", unknown_type, methods=GET),
    Route("/fhir/{type}/{id:path}", unknown_type, methods=GET),
]
