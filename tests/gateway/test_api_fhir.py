"""The FHIR R4 API against a database seeded through the gateway's code, over real HTTP: auth,
CapabilityStatement, reads with versions, every search parameter, paging, formats, bad input."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient

from gateway.web import fhir_search
from gateway.web.server import start_api
from tests.gateway import _records
from tests.gateway._records import UTC, add_device, make_db, payload, store_reading

TOKEN = "s3cret-admin-token"
DEV = "nabd-a1b2c3d4e5f6"
DEV2 = "nabd-0000000000aa"
DEV3 = "nabd-0000000000bb"
T0 = dt.datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
T_UNASSIGNED = dt.datetime(2026, 10, 5, 12, 0, tzinfo=UTC)
PUBLIC = "https://127.0.0.2:8443"   # where clients reach it (a proxy, say): loopback, and no DNS
BASE = PUBLIC + "/fhir/"


@pytest.fixture(scope="module", params=_records._DBS)
def api(request, tmp_path_factory):
    """One seeded database per dialect for the module (the tests read; the one that writes restores)."""
    if request.param == "postgresql":
        import psycopg

        from tests.conftest import pg_base_url

        base, name = pg_base_url(), "t_" + os.urandom(6).hex()
        with psycopg.connect(base, autocommit=True, connect_timeout=5) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        url = base.rsplit("/", 1)[0] + "/" + name
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('api')}/gateway.db"
    db = make_db(url)
    add_device(db, DEV)
    add_device(db, DEV2, facility="CS Agdal", region="MA-04")
    add_device(db, DEV3, facility="CS Agdal", region="MA-04")
    for i in range(7):
        store_reading(db, payload(DEV, 100 + i, T0 + dt.timedelta(minutes=i)))
    store_reading(db, payload(DEV2, 1, T0, patient="p-other1", codes=("hr",)))
    store_reading(db, payload(DEV3, 1, T_UNASSIGNED, patient=None, codes=("temp",)))
    config = {"api": {"listen": "127.0.0.1:0", "token_sha256": hashlib.sha256(TOKEN.encode()).hexdigest(),
                      "public_url": PUBLIC},
              "observatory": {"suppress_below": 1}}
    server = start_api(config, db)
    server.db = db
    yield server
    server.shutdown()
    if request.param == "postgresql":
        with psycopg.connect(base, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def get(server, path, token=TOKEN, accept=None, headers=None, method="GET"):
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    if accept:
        h["Accept"] = accept
    if path.startswith(BASE):
        path = "/fhir/" + path[len(BASE):]
    req = urllib.request.Request(server.url + path, headers=h, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def search(server, rtype, params, **kw):
    status, headers, body = get(server, f"/fhir/{rtype}?" + urllib.parse.urlencode(params), **kw)
    assert status == 200, body[:500]
    b = json.loads(body)
    Bundle.model_validate(b)
    return b


def ids(bundle, mode="match"):
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def links(bundle):
    return {link["relation"]: link["url"] for link in bundle.get("link", [])}


def outcome_of(status, headers, body, expect):
    assert status == expect, (status, body[:300])
    assert headers["Content-Type"].startswith("application/fhir+json")
    oo = json.loads(body)
    OperationOutcome.model_validate(oo)
    return oo["issue"][0]


# -- access --------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/fhir/Observation?device=" + DEV, "/fhir/Observation/" + DEV + "-100-temp",
                                  "/fhir/Device/" + DEV, "/fhir/Device", "/fhir/Patient?identifier=p-7Hq2xK",
                                  "/fhir/Patient/p-7Hq2xK", "/fhir/Encounter",
                                  "/observatory/device-counts?from=2026-11-23&to=2026-11-23", "/metrics"])
@pytest.mark.parametrize("token", [None, "wrong", ""])
def test_unauthorised_is_401_with_outcome(api, path, token):
    status, headers, body = get(api, path, token=token)
    assert headers["WWW-Authenticate"].startswith("Bearer")
    outcome_of(status, headers, body, 401)


def test_healthz_open(api):
    status, _, body = get(api, "/healthz", token=None)
    assert status == 200 and json.loads(body)["status"] == "ok"


# -- CapabilityStatement -----------------------------------------------------------------------------

def test_capability_statement_lists_what_is_implemented(api):
    status, headers, body = get(api, "/fhir/metadata", token=None)   # open, as clients expect
    assert status == 200 and headers["Content-Type"].startswith("application/fhir+json")
    cs = json.loads(body)
    CapabilityStatement.model_validate(cs)
    assert cs["fhirVersion"] == "4.0.1" and "application/fhir+json" in cs["format"]
    assert cs["implementation"]["url"] == PUBLIC + "/fhir"
    res = {r["type"]: r for r in cs["rest"][0]["resource"]}
    assert set(res) == {"Observation", "Device", "Patient"}
    assert res["Observation"]["searchInclude"] == ["Observation:device", "Observation:patient"]
    sample = {"patient": "p-7Hq2xK", "subject": "Patient/p-7Hq2xK", "device": DEV, "code": "8310-5",
              "date": "ge2026", "category": "vital-signs", "identifier": DEV, "_id": DEV}
    for rtype, r in res.items():
        assert {i["code"] for i in r["interaction"]} == {"read", "search-type"}
        names = {p["name"] for p in r["searchParam"]}
        assert names == set(fhir_search.SEARCH_PARAMS[rtype])
        for n in names:   # every parameter listed is accepted ...
            search(api, rtype, {n: "p-7Hq2xK" if (rtype, n) == ("Patient", "identifier") else sample[n]})
    # ... and a standard one not listed is refused
    status, headers, body = get(api, "/fhir/Observation?value-quantity=gt37")
    assert outcome_of(status, headers, body, 400)["code"] == "not-supported"


# -- reads -----------------------------------------------------------------------------------------

def test_every_full_url_reads_back_with_versions(api):
    b = search(api, "Observation", {"device": DEV, "_count": 8, "_include": "Observation:device"})
    b2 = search(api, "Observation", {"patient": "p-7Hq2xK", "_count": 1, "_include": "Observation:patient"})
    entries = b["entry"] + b2["entry"]
    assert {e["resource"]["resourceType"] for e in entries} == {"Observation", "Device", "Patient"}
    for e in entries:
        assert e["fullUrl"].startswith(BASE)
        status, headers, body = get(api, e["fullUrl"])
        assert status == 200, e["fullUrl"]
        r = json.loads(body)
        assert r == e["resource"]
        {"Observation": Observation, "Device": Device, "Patient": Patient}[r["resourceType"]].model_validate(r)
        assert headers["ETag"] == f'W/"{r["meta"]["versionId"]}"'
        last = dt.datetime.strptime(headers["Last-Modified"], "%a, %d %b %Y %H:%M:%S GMT").replace(tzinfo=UTC)
        assert last == dt.datetime.fromisoformat(r["meta"]["lastUpdated"]).replace(microsecond=0)
        # conditional reads
        status, _, body = get(api, e["fullUrl"], headers={"If-None-Match": headers["ETag"]})
        assert status == 304 and body == b""
        status, _, _ = get(api, e["fullUrl"], headers={"If-None-Match": 'W/"other"'})
        assert status == 200
        status, _, _ = get(api, e["fullUrl"], headers={"If-Modified-Since": headers["Last-Modified"]})
        assert status == 304
    obs = json.loads(get(api, f"/fhir/Observation/{DEV}-100-temp")[2])
    assert obs["effectiveDateTime"] == "2026-11-23T09:00:00+00:00" and obs["meta"]["versionId"] == "1"


def test_device_version_changes_with_the_record(api):
    _, h1, _ = get(api, f"/fhir/Device/{DEV}")
    with api.db.connect() as c:
        c.execute(api.db.sql("UPDATE devices SET fw = '0.2.0', last_seen_at = ? WHERE id = ?"),
                  (dt.datetime(2026, 11, 24, tzinfo=UTC).isoformat(), DEV))
    status, h2, body = get(api, f"/fhir/Device/{DEV}", headers={"If-None-Match": h1["ETag"]})
    assert status == 200 and h2["ETag"] != h1["ETag"] and h2["Last-Modified"] == "Tue, 24 Nov 2026 00:00:00 GMT"
    assert any(v["value"] == "0.2.0" for v in json.loads(body)["version"])
    with api.db.connect() as c:
        c.execute(api.db.sql("UPDATE devices SET fw = '0.1.0', last_seen_at = NULL WHERE id = ?"), (DEV,))


@pytest.mark.parametrize("path", ["/fhir/Device/nabd-ffffffffffff", "/fhir/Patient/p-unknown",
                                  f"/fhir/Observation/{DEV}-999-temp", f"/fhir/Observation/{DEV}-100-bp",
                                  "/fhir/Observation/x", "/fhir/Observation/a/b", "/fhir/Encounter/1",
                                  "/fhir/Encounter", "/fhir/..%2F..%2Fetc%2Fpasswd", "/nope"])
def test_not_found(api, path):
    outcome_of(*get(api, path), 404)


# -- search: Observation -----------------------------------------------------------------------------

def test_paging_links_walk_every_match_once(api):
    b = search(api, "Observation", {"device": DEV, "_count": 10})
    assert b["total"] == 28 and len(b["entry"]) == 10
    assert all(e["resource"]["device"]["reference"] == f"Device/{DEV}" for e in b["entry"])
    lk = links(b)
    assert set(lk) == {"self", "first", "next", "last"} and all(u.startswith(BASE) for u in lk.values())
    seen = ids(b)
    while "next" in links(b):
        prev = b
        b = json.loads(get(api, links(b)["next"])[2])
        assert links(b)["previous"] and json.loads(get(api, links(b)["previous"])[2])["entry"] == prev["entry"]
        seen += ids(b)
    assert len(seen) == len(set(seen)) == 28
    assert links(b)["self"] == links(b)["last"]


def test_search_by_patient_and_subject(api):
    for params in ({"patient": "p-other1"}, {"patient": "Patient/p-other1"}, {"subject": "p-other1"},
                   {"subject:Patient": "p-other1"}, {"patient": BASE + "Patient/p-other1"},
                   {"patient": "p-other1,p-nobody"}):
        b = search(api, "Observation", params)
        assert b["total"] == 1 and b["entry"][0]["resource"]["subject"]["reference"] == "Patient/p-other1", params
    assert search(api, "Observation", {"patient": "nobody"})["total"] == 0
    assert search(api, "Observation", {"patient": "p-7Hq2xK,p-other1"})["total"] == 29
    # repeated = AND
    assert search(api, "Observation", {"patient": "p-7Hq2xK", "device": DEV2})["total"] == 0
    # readings that no patient is assigned to (the clinicians' inbox)
    b = search(api, "Observation", {"subject:missing": "true"})
    assert ids(b) == [f"{DEV3}-1-temp"] and "subject" not in b["entry"][0]["resource"]
    assert search(api, "Observation", {"patient:missing": "false"})["total"] == 29


def test_search_by_code(api):
    def codes(params):
        b = search(api, "Observation", {"device": DEV, **params})
        return b["total"], {e["resource"]["id"].rsplit("-", 1)[1] for e in b.get("entry", [])}

    assert codes({"code": "8310-5"}) == (7, {"temp"})
    assert codes({"code": "http://loinc.org|2708-6"}) == (7, {"spo2"})
    assert codes({"code": "http://loinc.org|59408-5"}) == (7, {"spo2"})
    assert codes({"code": "urn:iso:std:iso:11073:10101|149530"}) == (7, {"hr"})
    assert codes({"code": "8310-5,8867-4"}) == (14, {"temp", "hr"})
    assert codes({"code": "http://loinc.org|"})[0] == 28
    assert codes({"code": "|8310-5"}) == (0, set())
    assert codes({"code": "http://snomed.info/sct|8310-5"}) == (0, set())
    assert codes({"code": "8310-5", "_count": 50})[0] == 7


def test_search_by_date(api):
    def total(*dates):
        return search(api, "Observation", [("date", d) for d in dates] + [("_summary", "count")])["total"]

    # 28 + 1 observations on 2026-11-23 from 09:00 to 09:06, 1 on 2026-10-05 12:00
    assert total("2026") == 30 and total("2026-11") == 29 and total("2026-11-23") == 29
    assert total("2026-10-05") == 1 and total("2025") == 0 and total("eq2026-11-22") == 0
    assert total("2026-11-23T09:00") == 5 and total("2026-11-23T09:00:00Z") == 5
    assert total("2026-11-23T10:00+01:00") == 5                  # the same minute, another zone
    assert total("ge2026-11-23T09:03") == 16 and total("gt2026-11-23T09:03") == 12
    assert total("lt2026-11-23T09:03") == 14 and total("le2026-11-23T09:03") == 18   # + October
    assert total("ne2026-11") == 1
    assert total("ge2026-11-23T09:01", "lt2026-11-23T09:03") == 8   # repeated = AND: a range
    assert total("2026-10,2026-11-23T09:06") == 5                   # comma = OR
    assert total("gt9999") == 0 and total("le9999") == 30 and total("ge0001") == 30
    b = search(api, "Observation", {"date": "ge2026-11-23", "_sort": "-date", "_count": 4})
    eff = [e["resource"]["effectiveDateTime"] for e in b["entry"]]
    assert eff == sorted(eff, reverse=True) and eff[0] == "2026-11-23T09:06:00+00:00"
    b = search(api, "Observation", {"_sort": "date", "_count": 1})
    assert b["entry"][0]["resource"]["effectiveDateTime"] == "2026-10-05T12:00:00+00:00"


def test_category_id_include_summary(api):
    assert search(api, "Observation", {"category": "vital-signs", "_summary": "count"})["total"] == 30
    assert search(api, "Observation", {"category": "http://terminology.hl7.org/CodeSystem/observation-category|"
                                                   "vital-signs", "_summary": "count"})["total"] == 30
    assert search(api, "Observation", {"category": "laboratory"})["total"] == 0
    b = search(api, "Observation", {"_id": f"{DEV}-101-hr,{DEV2}-1-hr,{DEV}-1-zz"})
    assert sorted(ids(b)) == sorted([f"{DEV}-101-hr", f"{DEV2}-1-hr"])
    b = search(api, "Observation", [("device", f"{DEV},{DEV2}"), ("code", "8867-4"),
                                    ("_include", "Observation:device"), ("_include", "Observation:patient")])
    assert b["total"] == 8 and len(ids(b)) == 8
    assert sorted(ids(b, "include")) == sorted([DEV, DEV2, "p-7Hq2xK", "p-other1"])
    b = search(api, "Observation", {"device": DEV, "_summary": "count"})
    assert b["total"] == 28 and "entry" not in b
    b = search(api, "Observation", {"device": DEV, "_count": 0})
    assert b["total"] == 28 and "entry" not in b


# -- search: Device, Patient ---------------------------------------------------------------------------

def test_device_and_patient_search(api):
    for ident in (DEV, f"urn:nabd:device|{DEV}", "http://hl7.org/fhir/sid/eui-48/ethernet|A1-B2-C3-D4-E5-F6",
                  "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680|A1-B2-C3-FF-FE-D4-E5-F6", f"{DEV},nabd-nothing"):
        assert ids(search(api, "Device", {"identifier": ident})) == [DEV], ident
    assert search(api, "Device", {"identifier": "urn:nabd:patient|" + DEV})["total"] == 0
    assert ids(search(api, "Device", {})) == sorted([DEV, DEV2, DEV3])
    assert ids(search(api, "Device", {"_id": DEV2})) == [DEV2]
    assert ids(search(api, "Patient", {"identifier": "urn:nabd:patient|p-other1"})) == ["p-other1"]
    assert ids(search(api, "Patient", {"identifier": "p-7Hq2xK"})) == ["p-7Hq2xK"]
    assert ids(search(api, "Patient", {})) == ["p-7Hq2xK", "p-other1"]
    assert search(api, "Patient", {"identifier": "urn:other|p-7Hq2xK"})["total"] == 0
    assert search(api, "Patient", {"_summary": "count"})["total"] == 2


# -- strict and lenient ----------------------------------------------------------------------------------

@pytest.mark.parametrize("query", ["foo=1", "value-quantity=gt37", "code:text=temp", "date:missing=true",
                                   "_sort=status", "_include=Observation:encounter", "_summary=true",
                                   "_elements=id", "_total=accurate", "date=sa2026", "subject:Device=x",
                                   "_count=5&_count=6"])
def test_unsupported_parameters_refused(api, query):
    issue = outcome_of(*get(api, "/fhir/Observation?device=" + DEV + "&" + query), 400)
    assert issue["code"] in ("not-supported", "invalid")


def test_lenient_handling_ignores_and_says_what_it_applied(api):
    b = search(api, "Observation", {"device": DEV, "foo": "1", "code:text": "x", "_count": 2},
               headers={"Prefer": "handling=lenient"})
    assert b["total"] == 28
    q = urllib.parse.parse_qs(urllib.parse.urlsplit(links(b)["self"]).query)
    assert q == {"device": [DEV], "_count": ["2"], "_offset": ["0"]}
    outcome_of(*get(api, f"/fhir/Observation?device={DEV}&foo=1", headers={"Prefer": "handling=strict"}), 400)
    outcome_of(*get(api, f"/fhir/Observation?device={DEV}", headers={"Prefer": "handling=maybe"}), 400)


# -- formats -----------------------------------------------------------------------------------------

def test_formats(api):
    path = f"/fhir/Device/{DEV}"
    for accept, want in [(None, "application/fhir+json"), ("application/fhir+json", "application/fhir+json"),
                         ("application/json", "application/json"), ("text/html,*/*;q=0.8", "application/fhir+json"),
                         ("application/json+fhir", "application/fhir+json")]:
        status, headers, body = get(api, path, accept=accept)
        assert status == 200 and headers["Content-Type"].startswith(want), accept
        Device.model_validate(json.loads(body))
    for q, want in [("_format=json", "application/fhir+json"), ("_format=application/json", "application/json"),
                    ("_format=application%2Ffhir%2Bjson", "application/fhir+json")]:
        status, headers, _ = get(api, f"/fhir/Observation?device={DEV}&{q}", accept="application/fhir+xml")
        assert status == 200 and headers["Content-Type"].startswith(want), q
    status, _, body = get(api, path + "?_pretty=true")
    assert b'\n  "resourceType"' in body
    outcome_of(*get(api, path, accept="application/fhir+xml"), 406)
    outcome_of(*get(api, path, accept="application/json;q=0"), 406)
    outcome_of(*get(api, path + "?_format=xml"), 406)


# -- bad input ---------------------------------------------------------------------------------------------

HOSTILE = ["' OR '1'='1", "1; DROP TABLE readings;--", "../../etc/passwd", "<script>alert(1)</script>",
           "%00", "\u202e\u0000x", "Patient/../../x", "http://evil.example/fhir/Patient/x", "a" * 600,
           "${jndi:ldap://x}", "2026-11-23' --", "\\", "|", ",,,", "Patient/", "x|y|z"]


@pytest.mark.parametrize("rtype,param", [("Observation", p) for p in fhir_search.SEARCH_PARAMS["Observation"]]
                         + [("Device", "identifier"), ("Patient", "identifier"), ("Patient", "_id"),
                            ("Observation", "_count"), ("Observation", "_offset"), ("Observation", "_sort"),
                            ("Observation", "_include"), ("Observation", "_summary"), ("Observation", "_format")])
def test_hostile_values_never_500(api, rtype, param):
    for v in HOSTILE:
        status, headers, body = get(api, f"/fhir/{rtype}?" + urllib.parse.urlencode({param: v}))
        assert status in (200, 400, 406), (param, v, status, body[:200])
        if status != 200:
            outcome_of(status, headers, body, status)
        else:
            Bundle.model_validate(json.loads(body))
        assert b"Traceback" not in body and b"SELECT" not in body
    with api.db.connect() as c:   # nothing dropped
        assert c.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == 9


@pytest.mark.parametrize("query,code", [
    ("_offset=99999999999999999999999", 400), ("_offset=-1", 400), ("_count=-1", 400), ("_count=x", 400),
    ("_count=100000", 400), ("_count=1e3", 400), ("date=2026-02-30", 400), ("date=2026-13", 400),
    ("date=20261", 400), ("date=2026-11-23T25:00", 400), ("date=2026-11-23T09:00+25:00", 400),
    ("date=0000", 400), ("date=yesterday", 400), ("patient=Device/x", 400), ("device=" + "%27" * 70, 400),
    ("code=" + ",".join(["x"] * 60), 400), ("q=" + "x" * 9000, 414)])
def test_malformed_values_are_4xx_outcomes(api, query, code):
    outcome_of(*get(api, "/fhir/Observation?" + query), code)


def test_huge_request_head_refused_without_500(api):
    """Past the server's 32 KiB request head: h11 refuses it (400) before the app sees it."""
    with socket.create_connection((api.host, api.port), timeout=5) as s:
        s.sendall(b"GET /fhir/Observation?q=" + b"x" * 40000 + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        head = s.recv(200)
    assert head.startswith(b"HTTP/1.1 4")


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", ["/fhir/Observation", f"/fhir/Device/{DEV}", "/fhir/Patient", "/fhir/metadata",
                                  "/fhir/Observation/_search"])
def test_write_methods_refused(api, method, path):
    status, headers, body = get(api, path, method=method)
    outcome_of(status, headers, body, 405)
    assert "GET" in headers["Allow"]


def test_links_never_from_host_header(api):
    b = search(api, "Observation", {"device": DEV, "_count": 5},
               headers={"Host": "evil.example", "X-Forwarded-Host": "evil.example", "Forwarded": "host=evil.example"})
    urls = [e["fullUrl"] for e in b["entry"]] + list(links(b).values())
    assert urls and all(u.startswith(BASE) for u in urls) and not any("evil" in u for u in urls)


def test_metrics_with_token(api):
    status, headers, body = get(api, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert b"# TYPE nabd_readings_accepted_total counter" in body and b"nabd_forward_pending" in body
    assert b"nabd_api_connections_evicted_total" in body


# -- a real FHIR client library (fhirpy, from PyPI) ------------------------------------------------

@pytest.fixture
def client(api):
    from fhirpy import SyncFHIRClient

    # url_aliases: the public base in Bundle links is this server seen from elsewhere
    return SyncFHIRClient(api.url + "/fhir", authorization=f"Bearer {TOKEN}", url_aliases=[PUBLIC + "/fhir"])


def test_fhirpy_search_read_and_paging(client):
    obs = client.resources("Observation").search(patient="p-7Hq2xK", code="http://loinc.org|8310-5") \
        .sort("-date").limit(3)
    page = obs.fetch()
    assert len(page) == 3 and all(o["code"]["coding"][0]["code"] == "8310-5" for o in page)
    assert page[0]["effectiveDateTime"] == "2026-11-23T09:06:00+00:00"
    every = obs.fetch_all()             # follows the Bundle's next links
    assert len(every) == 7 and len({o["id"] for o in every}) == 7
    Observation.model_validate(every[0].serialize())
    ranged = client.resources("Observation").search(device=DEV, date__ge="2026-11-23T09:05",
                                                    date__lt="2026-11-23T09:06").fetch_all()
    assert len(ranged) == 4
    dev = client.reference("Device", DEV).to_resource()          # read by id
    assert dev["id"] == DEV and dev["meta"]["versionId"]
    assert client.resources("Patient").search(identifier="urn:nabd:patient|p-other1").get()["id"] == "p-other1"
    with_inc = client.resources("Observation").search(device=DEV2).include("Observation", "device").fetch_raw()
    assert {e["search"]["mode"] for e in with_inc["entry"]} == {"match", "include"}


def test_fhirpy_strict_and_lenient(client, api):
    from fhirpy import SyncFHIRClient
    from fhirpy.base.exceptions import OperationOutcome as FhirpyOutcome

    # fhirpy's count() adds a server-specific _totalMethod: refused under strict handling ...
    with pytest.raises(FhirpyOutcome):
        client.resources("Observation").search(device=DEV).count()
    with pytest.raises(FhirpyOutcome):
        client.resources("Observation").search(date="2026-02-30").fetch()
    # ... ignored under Prefer: handling=lenient
    lenient_client = SyncFHIRClient(api.url + "/fhir", authorization=f"Bearer {TOKEN}",
                                    extra_headers={"Prefer": "handling=lenient"})
    assert lenient_client.resources("Observation").search(device=DEV).count() == 28
