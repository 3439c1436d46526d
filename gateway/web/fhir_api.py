"""The FHIR R4 API under ``/fhir``: the CapabilityStatement, reads and searches.

Links in responses (``Bundle.link``, ``fullUrl``) are built from the configured public base URL
(``[api] public_url``), never from the request's ``Host`` header.
"""
from __future__ import annotations

from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import fhir
from gateway import recordstore as rs
from gateway.web.access import require
from gateway.web.errors import ApiError, clip, json_response

DEFAULT_COUNT = 50
MAX_COUNT = 500


def base(request: Request) -> str:
    return request.app.state.settings.public_url.rstrip("/") + "/fhir/"


def _one(request: Request, name: str) -> str | None:
    v = request.query_params.getlist(name)
    if not v:
        return None
    if len(v) != 1 or not v[0]:
        raise ApiError(400, "invalid", f"{name} must be given once, non-empty")
    return v[0]


def _int(request: Request, name: str, default: int, hi: int) -> int:
    v = _one(request, name)
    if v is None:
        return default
    if not v.isdigit() or len(v) > 10 or int(v) > hi:
        raise ApiError(400, "invalid", f"{name} must be an integer within 0..{hi}, got {clip(v, 24)}")
    return int(v)


@require("records.read")
def observation_search(request: Request) -> Response:
    device, patient = _one(request, "device"), _one(request, "patient")
    if (device is None) == (patient is None):
        raise ApiError(400, "required", "search with exactly one of device=ID or patient=ID")
    count = _int(request, "_count", DEFAULT_COUNT, MAX_COUNT)
    offset = _int(request, "_offset", 0, 10**9)
    if device is not None:
        column, value, name = "device_id", device.removeprefix("Device/"), "device"
    else:
        column, value, name = "patient_id", patient.removeprefix("Patient/"), "patient"
    db = request.app.state.db
    with db.connect() as conn:
        resources, total = rs.observations_page(db, conn, column, value, count, offset)
    b = base(request)

    def link(off):
        return f"{b}Observation?" + urlencode({name: value, "_count": count, "_offset": off})
    next_url = link(offset + count) if count and offset + count < total else None
    return json_response(fhir.searchset_bundle(resources, total, self_url=link(offset), next_url=next_url, base=b))


@require("records.read")
def device_read(request: Request) -> Response:
    device_id = request.path_params["id"]
    db = request.app.state.db
    with db.connect() as conn:
        info = rs.device_info(db, conn, device_id)
    if info is None:
        raise ApiError(404, "not-found", f"Device/{clip(device_id)} not found")
    return json_response(fhir.device_resource(device_id, info))


@require("records.read")
def patient_read(request: Request) -> Response:
    token = request.path_params["id"]
    db = request.app.state.db
    with db.connect() as conn:
        found = rs.patient_exists(db, conn, token)
    if not found:
        raise ApiError(404, "not-found", f"Patient/{clip(token)} not found")
    return json_response(fhir.patient_resource(token))


def capability(request: Request) -> Response:
    return json_response({
        "resourceType": "CapabilityStatement", "status": "active", "kind": "instance",
        "date": "2026-01-01", "fhirVersion": "4.0.1", "format": ["json"],
        "rest": [{"mode": "server", "resource": [
            {"type": "Observation", "interaction": [{"code": "search-type"}],
             "searchParam": [{"name": "device", "type": "reference"},
                             {"name": "patient", "type": "reference"}]},
            {"type": "Device", "interaction": [{"code": "read"}]},
            {"type": "Patient", "interaction": [{"code": "read"}]}]}]})


@require("records.read")
def unknown_type(request: Request) -> Response:
    raise ApiError(404, "not-supported", f"resource type {clip(request.path_params['type'])} is not served here")


ROUTES = [
    Route("/fhir/metadata", capability, methods=["GET", "HEAD"]),  # open, as FHIR clients expect
    Route("/fhir/Observation", observation_search, methods=["GET", "HEAD"]),
    Route("/fhir/Device/{id}", device_read, methods=["GET", "HEAD"]),
    Route("/fhir/Patient/{id}", patient_read, methods=["GET", "HEAD"]),
    Route("/fhir/{type}", unknown_type, methods=["GET", "HEAD"]),
    Route("/fhir/{type}/{id}", unknown_type, methods=["GET", "HEAD"]),
]
