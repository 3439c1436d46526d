"""The read API against a database seeded through the gateway's code: auth, FHIR shapes, paging."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import urllib.error
import urllib.request

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient

from gateway.web.server import start_api
from tests.gateway import _records
from tests.gateway._records import UTC, add_device, make_db, payload, store_reading

db_url = _records.db_url  # fixture: SQLite and PostgreSQL

TOKEN = "s3cret-admin-token"
DEV = "nabd-a1b2c3d4e5f6"
T0 = dt.datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


@pytest.fixture
def api(db_url):
    db = make_db(db_url)
    add_device(db, DEV)
    add_device(db, "nabd-0000000000aa", facility="CS Agdal", region="MA-04")
    for i in range(7):
        store_reading(db, payload(DEV, 100 + i, T0 + dt.timedelta(minutes=i)))
    store_reading(db, payload("nabd-0000000000aa", 1, T0, patient="p-other1", codes=("hr",)))
    config = {"api": {"listen": "127.0.0.1:0", "token_sha256": hashlib.sha256(TOKEN.encode()).hexdigest()},
              "observatory": {"suppress_below": 1}}
    server = start_api(config, db)
    yield server
    server.shutdown()


def get(server, path, token=TOKEN, accept=None):
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if accept:
        headers["Accept"] = accept
    req = urllib.request.Request(server.url + path, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


@pytest.mark.parametrize("path", ["/fhir/Observation?device=" + DEV, "/fhir/Device/" + DEV,
                                  "/fhir/Patient/p-7Hq2xK", "/observatory/device-counts?from=2026-11-23&to=2026-11-23",
                                  "/metrics"])
@pytest.mark.parametrize("token", [None, "wrong", ""])
def test_unauthorised_is_401_with_outcome(api, path, token):
    status, headers, body = get(api, path, token=token)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert headers["Content-Type"].startswith("application/fhir+json")
    OperationOutcome.model_validate(json.loads(body))


def test_healthz_open(api):
    status, _, body = get(api, "/healthz", token=None)
    assert status == 200 and json.loads(body)["status"] == "ok"


def test_observation_search_by_device_pages(api):
    status, headers, body = get(api, f"/fhir/Observation?device={DEV}&_count=10")
    assert status == 200 and headers["Content-Type"].startswith("application/fhir+json")
    b = json.loads(body)
    Bundle.model_validate(b)
    assert b["type"] == "searchset" and b["total"] == 28 and len(b["entry"]) == 10
    assert all(e["resource"]["device"]["reference"] == f"Device/{DEV}" for e in b["entry"])
    assert all(e["search"]["mode"] == "match" for e in b["entry"])
    seen = [e["resource"]["id"] for e in b["entry"]]
    nxt = {link["relation"]: link["url"] for link in b["link"]}["next"]
    while nxt:
        status, _, body = get(api, nxt.removeprefix(api.url))
        b = json.loads(body)
        seen += [e["resource"]["id"] for e in b["entry"]]
        nxt = {link["relation"]: link["url"] for link in b["link"]}.get("next")
    assert len(seen) == len(set(seen)) == 28


def test_observation_search_by_patient(api):
    status, _, body = get(api, "/fhir/Observation?patient=Patient/p-other1")
    b = json.loads(body)
    assert status == 200 and b["total"] == 1
    assert b["entry"][0]["resource"]["subject"]["reference"] == "Patient/p-other1"
    status, _, body = get(api, "/fhir/Observation?patient=nobody")
    assert status == 200 and json.loads(body)["total"] == 0


@pytest.mark.parametrize("query", ["", "?device=a&patient=b", "?device=" + DEV + "&_count=x",
                                   "?device=" + DEV + "&_count=100000", "?device=" + DEV + "&device=x"])
def test_observation_search_errors(api, query):
    status, _, body = get(api, "/fhir/Observation" + query)
    assert status == 400
    OperationOutcome.model_validate(json.loads(body))


def test_device_and_patient_reads(api):
    status, _, body = get(api, f"/fhir/Device/{DEV}")
    d = json.loads(body)
    assert status == 200
    Device.model_validate(d)
    assert d["id"] == DEV and {"system": "urn:nabd:device", "value": DEV} in d["identifier"]
    status, _, body = get(api, "/fhir/Patient/p-7Hq2xK")
    p = json.loads(body)
    Patient.model_validate(p)
    assert status == 200 and p["id"] == "p-7Hq2xK" and "name" not in p
    for path in ("/fhir/Device/nabd-ffffffffffff", "/fhir/Patient/p-unknown", "/fhir/Encounter/1", "/nope"):
        status, _, body = get(api, path)
        assert status == 404, path
        OperationOutcome.model_validate(json.loads(body))


def test_write_methods_refused(api):
    req = urllib.request.Request(api.url + "/fhir/Observation", data=b"{}", method="POST",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 405


def test_metrics_with_token(api):
    status, headers, body = get(api, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert b"# TYPE nabd_readings_accepted_total counter" in body and b"nabd_forward_pending" in body
