"""FHIR R4 mapping: every resource and bundle validated by fhir.resources' R4B models."""
from __future__ import annotations

import datetime as dt
import json

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient

from gateway import fhir

RECEIVED = dt.datetime(2026, 11, 24, 8, 30, 5, tzinfo=dt.timezone.utc)


def reading(**over):
    p = {"v": 1, "dev": "nabd-a1b2c3d4e5f6", "seq": 1042, "ts": 1795430400, "ts_ok": True, "up": 73125,
         "fw": "0.1.0", "cal": {"id": "cal-2026-11-02", "date": "2026-11-02"}, "patient": "p-7Hq2xK",
         "site": "forehead+finger",
         "obs": [{"code": "temp", "value": 36.9, "unit": "Cel", "q": 0.97, "site": "forehead"},
                 {"code": "spo2", "value": 97, "unit": "%", "q": 0.91},
                 {"code": "hr", "value": 72, "unit": "/min", "q": 0.91},
                 {"code": "pi", "value": 2.4, "unit": "%", "q": 0.91}],
         "flags": []}
    p.update(over)
    return p


def codes(obs):
    return {(c["system"], c["code"]) for c in obs["code"]["coding"]}


def test_observations_validate_as_r4_and_carry_codes():
    obs = fhir.observations_for_reading(reading(), RECEIVED)
    assert [o["code"]["coding"][0]["code"] for o in obs] == ["8310-5", "2708-6", "8867-4", "61006-3"]
    for o in obs:
        Observation.model_validate(o)
        json.dumps(o)  # plain JSON
        assert o["status"] == "final"
        assert o["category"][0]["coding"][0] == {"system": fhir.OBS_CATEGORY, "code": "vital-signs",
                                                 "display": "Vital Signs"}
        assert o["device"] == {"reference": "Device/nabd-a1b2c3d4e5f6"}
        assert o["subject"] == {"reference": "Patient/p-7Hq2xK"}
        assert o["valueQuantity"]["system"] == "http://unitsofmeasure.org"
        assert o["component"][0]["code"]["coding"][0]["code"] == "signal-quality"
    temp, spo2, hr, pi = obs
    assert (fhir.MDC, "150364") in codes(temp)
    assert {(fhir.LOINC, "2708-6"), (fhir.LOINC, "59408-5"), (fhir.MDC, "150456")} <= codes(spo2)
    assert (fhir.MDC, "149530") in codes(hr) and (fhir.LOINC, "8867-4") in codes(hr)
    assert (fhir.MDC, "150488") in codes(pi)
    assert temp["valueQuantity"] == {"value": 36.9, "unit": "Cel", "system": fhir.UCUM, "code": "Cel"}
    assert hr["valueQuantity"]["code"] == "/min" and spo2["valueQuantity"]["code"] == "%"
    assert temp["bodySite"]["coding"][0]["code"] == "52795006"  # forehead
    assert "http://hl7.org/fhir/StructureDefinition/bodytemp" in temp["meta"]["profile"]
    assert "http://hl7.org/fhir/StructureDefinition/oxygensat" in spo2["meta"]["profile"]


def test_identifiers_and_ids_are_deterministic():
    obs = fhir.observations_for_reading(reading(), RECEIVED)
    assert [o["identifier"] for o in obs] == [
        [{"system": "urn:nabd:obs", "value": f"nabd-a1b2c3d4e5f6/1042/{c}"}] for c in ("temp", "spo2", "hr", "pi")]
    assert obs[0]["id"] == "nabd-a1b2c3d4e5f6-1042-temp"
    assert fhir.observations_for_reading(reading(), RECEIVED) == obs


def test_effective_time_has_timezone_and_is_measurement_time():
    o = fhir.observations_for_reading(reading(), RECEIVED)[0]
    assert o["effectiveDateTime"] == "2026-11-23T10:40:00+00:00"
    parsed = dt.datetime.fromisoformat(o["effectiveDateTime"])
    assert parsed.tzinfo is not None and parsed.timestamp() == 1795430400
    assert o["issued"] == "2026-11-24T08:30:05+00:00"
    assert "extension" not in o and "note" not in o


def test_unsynced_clock_uses_receipt_time_and_says_so():
    naive_receipt = RECEIVED.replace(tzinfo=None)  # naive receipt times are taken as UTC
    for o in fhir.observations_for_reading(reading(ts=812, ts_ok=False), naive_receipt):
        Observation.model_validate(o)
        assert o["effectiveDateTime"] == "2026-11-24T08:30:05+00:00"
        assert {"url": fhir.EXT_CLOCK_UNSYNCED, "valueBoolean": True} in o["extension"]
        assert "receipt time" in o["note"][0]["text"]


def test_other_timezone_converted_to_utc():
    casa = dt.timezone(dt.timedelta(hours=1))
    o = fhir.observations_for_reading(reading(ts_ok=False), RECEIVED.astimezone(casa))[0]
    assert o["effectiveDateTime"] == "2026-11-24T08:30:05+00:00"


def test_no_patient_no_subject_and_partial_obs():
    p = reading(obs=[{"code": "hr", "value": 61, "unit": "/min", "q": 0.5}])
    del p["patient"]
    (o,) = fhir.observations_for_reading(p, RECEIVED)
    Observation.model_validate(o)
    assert "subject" not in o
    assert o["bodySite"]["coding"][0]["code"] == "7569003"  # finger


def test_alert_flags_become_interpretations():
    p = reading(flags=["fever", "low_spo2", "tachycardia"])
    temp, spo2, hr, pi = fhir.observations_for_reading(p, RECEIVED)
    assert temp["interpretation"][0]["coding"][0] == {"system": fhir.INTERPRETATION, "code": "H", "display": "High"}
    assert spo2["interpretation"][0]["coding"][0]["code"] == "L"
    assert hr["interpretation"][0]["coding"][0]["code"] == "H"
    assert "interpretation" not in pi
    p = reading(flags=["hypothermia", "bradycardia"])
    temp, _, hr, _ = fhir.observations_for_reading(p, RECEIVED)
    assert temp["interpretation"][0]["coding"][0]["code"] == "L"
    assert hr["interpretation"][0]["coding"][0]["code"] == "L"
    for o in fhir.observations_for_reading(p, RECEIVED):
        Observation.model_validate(o)


def test_irregular_rhythm_flag_is_a_note_on_the_pulse_rate_only():
    p = reading(flags=["irregular", "tachycardia"])
    temp, spo2, hr, pi = fhir.observations_for_reading(p, RECEIVED)
    assert hr["note"] == [{"text": "Irregular rhythm: the pulse rate is the mean over the device's 8-s window."}]
    assert hr["interpretation"][0]["coding"][0]["code"] == "H"      # the alert is kept beside it
    assert all("note" not in o for o in (temp, spo2, pi))
    for o in (temp, spo2, hr, pi):
        Observation.model_validate(o)


@pytest.mark.parametrize("bad", [
    {"obs": [{"code": "bp", "value": 1, "unit": "mm[Hg]"}]},
    {"obs": [{"code": "temp", "value": 36.9, "unit": "degF"}]},
    {"obs": [{"code": "temp", "value": "hot", "unit": "Cel"}]},
    {"dev": "X"},
    {"patient": "Mohammed Alaoui"},
])
def test_unmappable_payloads_raise(bad):
    with pytest.raises(fhir.MappingError):
        fhir.observations_for_reading(reading(**bad), RECEIVED)


def test_device_resource_follows_phd_ig():
    d = fhir.device_resource("nabd-a1b2c3d4e5f6", {
        "facility": "CS Hay Mohammadi", "region": "MA-06", "status": "active", "fw": "0.1.0",
        "cal_id": "cal-2026-11-02", "cal_date": "2026-11-02", "cal_due": dt.date(2027, 5, 2),
        "key_version": 3, "key": "00" * 32})
    Device.model_validate(d)
    assert {"system": "urn:nabd:device", "value": "nabd-a1b2c3d4e5f6"} in d["identifier"]
    sysid = [i for i in d["identifier"] if i["system"] == fhir.EUI64_SYSTEM][0]
    assert sysid["value"] == "A1-B2-C3-FF-FE-D4-E5-F6"
    assert d["type"]["coding"][0]["code"] == "65573"
    assert {s["systemType"]["coding"][0]["code"] for s in d["specialization"]} == {"528388", "528392"}
    fw = [v for v in d["version"] if v["type"]["coding"][0]["code"] == "531976"][0]
    assert fw["value"] == "0.1.0"
    text = json.dumps(d)
    assert "cal-2026-11-02" in text and "2027-05-02" in text and "MA-06" in text
    assert "00" * 32 not in text and "key" not in json.dumps(d["identifier"])
    revoked = fhir.device_resource("clinic-unit-7", {"status": "revoked"})
    Device.model_validate(revoked)
    assert revoked["status"] == "inactive"
    assert len(revoked["identifier"]) == 1  # no MAC-derived identifiers for a custom id


def test_patient_is_pseudonymous():
    p = fhir.patient_resource("p-7Hq2xK")
    Patient.model_validate(p)
    assert set(p) == {"resourceType", "id", "identifier", "active"}
    with pytest.raises(fhir.MappingError):
        fhir.patient_resource("Fatima Zahra")


def test_transaction_bundle_conditional_creates():
    obs = fhir.observations_for_reading(reading(), RECEIVED)
    dev = fhir.device_resource("nabd-a1b2c3d4e5f6", {"fw": "0.1.0"})
    pat = fhir.patient_resource("p-7Hq2xK")
    b = fhir.transaction_bundle(obs + [dev, pat])
    Bundle.model_validate(b)
    assert b["type"] == "transaction"
    kinds = [e["resource"]["resourceType"] for e in b["entry"]]
    assert kinds == ["Patient", "Device"] + ["Observation"] * 4
    req = [e["request"] for e in b["entry"]]
    assert all(r["method"] == "POST" for r in req)
    assert req[0]["ifNoneExist"] == "identifier=urn:nabd:patient|p-7Hq2xK"
    assert req[1]["ifNoneExist"] == "identifier=urn:nabd:device|nabd-a1b2c3d4e5f6"
    assert req[2]["ifNoneExist"] == "identifier=urn:nabd:obs|nabd-a1b2c3d4e5f6/1042/temp"
    # references inside the bundle point at the entries' fullUrls
    o = b["entry"][2]["resource"]
    assert o["device"]["reference"] == b["entry"][1]["fullUrl"]
    assert o["subject"]["reference"] == b["entry"][0]["fullUrl"]
    assert all(e["fullUrl"].startswith("urn:uuid:") for e in b["entry"])
    # inputs untouched, and a rebuilt bundle is identical (safe re-send)
    assert obs[0]["device"]["reference"] == "Device/nabd-a1b2c3d4e5f6"
    assert fhir.transaction_bundle(obs + [dev, pat]) == b
    # observations alone keep their literal references
    b2 = fhir.transaction_bundle(obs)
    Bundle.model_validate(b2)
    assert b2["entry"][0]["resource"]["device"]["reference"] == "Device/nabd-a1b2c3d4e5f6"


def test_searchset_and_outcome():
    obs = fhir.observations_for_reading(reading(), RECEIVED)
    b = fhir.searchset_bundle(obs[:2], 4, self_url="http://x/fhir/Observation?device=d&_count=2",
                              next_url="http://x/fhir/Observation?device=d&_count=2&_offset=2",
                              base="http://x/fhir/")
    Bundle.model_validate(b)
    assert b["type"] == "searchset" and b["total"] == 4 and len(b["entry"]) == 2
    assert b["entry"][0]["fullUrl"] == "http://x/fhir/Observation/nabd-a1b2c3d4e5f6-1042-temp"
    assert [link["relation"] for link in b["link"]] == ["self", "next"]
    empty = fhir.searchset_bundle([], 0)
    Bundle.model_validate(empty)
    OperationOutcome.model_validate(fhir.operation_outcome("error", "not-found", "no such device"))
