"""FHIR R4 mapping of nabd readings, devices and patients (plain JSON dicts).

Everything here is pure: no database, no network. Tests validate every resource with
``fhir.resources.R4B`` (R4-compatible models; the package's default models are R5).

Codes (docs/protocol.md, "Codes for records"):

=========== ======================= ====== =========================================
reading     LOINC                   UCUM   IEEE 11073-10101 (MDC)
=========== ======================= ====== =========================================
temp        8310-5 Body temperature Cel    150364 MDC_TEMP_BODY
spo2        2708-6 + 59408-5        %      150456 MDC_PULS_OXIM_SAT_O2
hr          8867-4 Heart rate       /min   149530 MDC_PULS_OXIM_PULS_RATE
pi          61006-3 Perfusion index %      150488 MDC_PULS_OXIM_PERF_REL
=========== ======================= ====== =========================================

The first three follow the FHIR vital-signs profiles (bodytemp, oxygensat, heartrate: SpO2 carries
both 2708-6, the profile's fixed code, and 59408-5, "by pulse oximetry"). The perfusion index has no
vital-signs profile; it is filed in the vital-signs category with the generic profile.

Identifiers make uploads idempotent: Observation ``urn:nabd:obs|{dev}/{seq}/{code}``, Device
``urn:nabd:device|{id}``, Patient ``urn:nabd:patient|{token}``; transaction Bundles create each entry
with ``ifNoneExist`` on that identifier.
"""
from __future__ import annotations

import copy
import datetime as _dt
import re
import uuid

LOINC = "http://loinc.org"
MDC = "urn:iso:std:iso:11073:10101"
UCUM = "http://unitsofmeasure.org"
SNOMED = "http://snomed.info/sct"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
PHD_IDS = "http://hl7.org/fhir/uv/phd/CodeSystem/ContinuaDeviceIdentifiers"
EUI64_SYSTEM = "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680"
ETHMAC_SYSTEM = "http://hl7.org/fhir/sid/eui-48/ethernet"
ISO3166_2 = "urn:iso:std:iso:3166:-2"

OBS_SYSTEM = "urn:nabd:obs"
DEVICE_SYSTEM = "urn:nabd:device"
PATIENT_SYSTEM = "urn:nabd:patient"
FACILITY_SYSTEM = "urn:nabd:facility"
NABD_CODES = "urn:nabd:code"
EXT_CLOCK_UNSYNCED = "urn:nabd:fhir:extension:clock-unsynced"
EXT_DEVICE_UPTIME = "urn:nabd:fhir:extension:device-uptime"
EXT_REGION = "urn:nabd:fhir:extension:region"

VITALS_PROFILE = "http://hl7.org/fhir/StructureDefinition/vitalsigns"

# code -> LOINC codings, MDC coding, UCUM unit, display text, vital-signs profile
CODES: dict[str, dict] = {
    "temp": {
        "loinc": [("8310-5", "Body temperature")],
        "mdc": ("150364", "MDC_TEMP_BODY"),
        "unit": ("Cel", "Cel"),
        "text": "Body temperature",
        "profile": "http://hl7.org/fhir/StructureDefinition/bodytemp",
    },
    "spo2": {
        "loinc": [("2708-6", "Oxygen saturation in Arterial blood"),
                  ("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry")],
        "mdc": ("150456", "MDC_PULS_OXIM_SAT_O2"),
        "unit": ("%", "%"),
        "text": "Oxygen saturation by pulse oximetry",
        "profile": "http://hl7.org/fhir/StructureDefinition/oxygensat",
    },
    "hr": {
        "loinc": [("8867-4", "Heart rate")],
        "mdc": ("149530", "MDC_PULS_OXIM_PULS_RATE"),
        "unit": ("/min", "/min"),
        "text": "Pulse rate",
        "profile": "http://hl7.org/fhir/StructureDefinition/heartrate",
    },
    "pi": {
        "loinc": [("61006-3", "Perfusion index by Pulse oximetry")],
        "mdc": ("150488", "MDC_PULS_OXIM_PERF_REL"),
        "unit": ("%", "%"),
        "text": "Perfusion index",
        "profile": None,
    },
}

BODY_SITES = {
    "forehead": ("52795006", "Forehead structure"),
    "finger": ("7569003", "Finger structure"),
}
# default site of each measurement when the observation does not name one
DEFAULT_SITE = {"temp": "forehead", "spo2": "finger", "hr": "finger", "pi": "finger"}

# alert flag -> (observation code, interpretation code, display)
FLAG_INTERPRETATION = {
    "fever": ("temp", "H", "High"),
    "hypothermia": ("temp", "L", "Low"),
    "low_spo2": ("spo2", "L", "Low"),
    "tachycardia": ("hr", "H", "High"),
    "bradycardia": ("hr", "L", "Low"),
}

_DEVICE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{2,39}$")
_PATIENT = re.compile(r"^[A-Za-z0-9_-]{4,64}$")
_NABD_MAC = re.compile(r"^nabd-([0-9a-f]{12})$")


class MappingError(ValueError):
    """A payload that cannot be mapped (it should have been rejected by verification)."""


def _utc(t: _dt.datetime) -> _dt.datetime:
    if t.tzinfo is None:
        return t.replace(tzinfo=_dt.timezone.utc)
    return t.astimezone(_dt.timezone.utc)


def iso(t: _dt.datetime) -> str:
    """ISO 8601 with an explicit UTC offset ("+00:00"), second precision."""
    return _utc(t).isoformat(timespec="seconds")


def obs_identifier(dev: str, seq: int, code: str) -> str:
    return f"{dev}/{seq}/{code}"


def obs_id(dev: str, seq: int, code: str) -> str:
    """Logical id of an Observation in the gateway's own records (FHIR id: [A-Za-z0-9.-]{1,64})."""
    return f"{dev}-{seq}-{code}"


def _codeable(code: str) -> dict:
    spec = CODES[code]
    codings = [{"system": LOINC, "code": c, "display": d} for c, d in spec["loinc"]]
    codings.append({"system": MDC, "code": spec["mdc"][0], "display": spec["mdc"][1]})
    return {"coding": codings, "text": spec["text"]}


def observations_for_reading(payload: dict, received_at: _dt.datetime) -> list[dict]:
    """FHIR R4 Observations (JSON dicts) for one verified reading payload, one per ``obs`` item.

    ``received_at`` is the gateway's receipt time; it is the effective time when ``ts_ok`` is false
    (the device clock was never synced and ``ts`` counts seconds since boot)."""
    try:
        dev = payload["dev"]
        seq = int(payload["seq"])
        items = payload["obs"]
    except (KeyError, TypeError, ValueError) as e:
        raise MappingError(f"reading lacks dev/seq/obs: {e}") from None
    if not isinstance(dev, str) or not _DEVICE_ID.match(dev):
        raise MappingError(f"bad device id {dev!r}")
    received_at = _utc(received_at)
    ts_ok = payload.get("ts_ok") is True
    if ts_ok:
        effective = _dt.datetime.fromtimestamp(int(payload["ts"]), _dt.timezone.utc)
    else:
        effective = received_at
    patient = payload.get("patient")
    if patient is not None and (not isinstance(patient, str) or not _PATIENT.match(patient)):
        raise MappingError("bad patient token")
    flags = [f for f in (payload.get("flags") or []) if isinstance(f, str)]
    reading_site = payload.get("site")

    out = []
    for item in items:
        code = item.get("code")
        if code not in CODES:
            raise MappingError(f"unknown observation code {code!r}")
        spec = CODES[code]
        unit = item.get("unit")
        if unit != spec["unit"][0]:
            raise MappingError(f"{code}: unit {unit!r}, expected {spec['unit'][0]!r}")
        value = item["value"]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MappingError(f"{code}: value is not a number")
        ident = obs_identifier(dev, seq, code)
        profiles = [VITALS_PROFILE] + ([spec["profile"]] if spec["profile"] else [])
        obs: dict = {
            "resourceType": "Observation",
            "id": obs_id(dev, seq, code),
            "meta": {"profile": profiles},
            "identifier": [{"system": OBS_SYSTEM, "value": ident}],
            "status": "final",
            "category": [{"coding": [{"system": OBS_CATEGORY, "code": "vital-signs",
                                      "display": "Vital Signs"}], "text": "Vital Signs"}],
            "code": _codeable(code),
        }
        if patient:
            obs["subject"] = {"reference": f"Patient/{patient}"}
        obs["effectiveDateTime"] = iso(effective)
        obs["issued"] = iso(received_at)
        obs["valueQuantity"] = {"value": value, "unit": spec["unit"][1], "system": UCUM,
                                "code": spec["unit"][0]}
        interp = [(c, d) for f, (oc, c, d) in FLAG_INTERPRETATION.items() if f in flags and oc == code]
        if interp:
            obs["interpretation"] = [{"coding": [{"system": INTERPRETATION, "code": c, "display": d}],
                                      "text": d} for c, d in interp[:1]]
        site = item.get("site") or (reading_site if reading_site in BODY_SITES else None) or DEFAULT_SITE[code]
        if site in BODY_SITES:
            sc, sd = BODY_SITES[site]
            obs["bodySite"] = {"coding": [{"system": SNOMED, "code": sc, "display": sd}], "text": site}
        obs["device"] = {"reference": f"Device/{dev}"}
        notes = []
        if not ts_ok:
            obs["extension"] = [
                {"url": EXT_CLOCK_UNSYNCED, "valueBoolean": True},
                {"url": EXT_DEVICE_UPTIME, "valueQuantity": {"value": int(payload.get("up") or 0),
                                                             "unit": "s", "system": UCUM, "code": "s"}},
            ]
            notes.append("Device clock not synchronised: effective time is the gateway's receipt time.")
        if "stale" in flags:
            notes.append("Device flagged this reading as stale.")
        if "irregular" in flags and code == "hr":
            notes.append("Irregular rhythm: the pulse rate is the mean over the device's 8-s window.")
        if notes:
            obs["note"] = [{"text": n} for n in notes]
        q = item.get("q")
        if isinstance(q, (int, float)) and not isinstance(q, bool):
            obs["component"] = [{
                "code": {"coding": [{"system": NABD_CODES, "code": "signal-quality",
                                     "display": "Signal quality index (0-1)"}],
                         "text": "Signal quality"},
                "valueQuantity": {"value": q, "unit": "1", "system": UCUM, "code": "1"},
            }]
        out.append(obs)
    return out


def _mac_identifiers(device_id: str) -> list[dict]:
    """PHD-IG identifiers derived from the ESP32 MAC in a default device id (``nabd-`` + 12 hex)."""
    m = _NABD_MAC.match(device_id)
    if not m:
        return []
    octets = [m.group(1)[i:i + 2].upper() for i in range(0, 12, 2)]
    eui64 = octets[:3] + ["FF", "FE"] + octets[3:]
    return [
        {"type": {"coding": [{"system": PHD_IDS, "code": "SYSID"}], "text": "IEEE 11073 System Identifier"},
         "system": EUI64_SYSTEM, "value": "-".join(eui64)},
        {"type": {"coding": [{"system": PHD_IDS, "code": "ETHMAC"}], "text": "Wi-Fi MAC address"},
         "system": ETHMAC_SYSTEM, "value": "-".join(octets)},
    ]


def device_resource(device_id: str, info: dict) -> dict:
    """A Device resource for one nabd unit, modelled after the HL7 PHD IG's PhdDevice.

    ``info`` keys (all optional): ``facility``, ``region`` ('MA-01'..'MA-12'), ``status``
    ('active'|'revoked'), ``fw``, ``cal_id``, ``cal_date``, ``cal_due`` (str or date),
    ``model``, ``serial``. Key material is never put in a resource."""
    if not _DEVICE_ID.match(device_id or ""):
        raise MappingError(f"bad device id {device_id!r}")
    status = info.get("status") or "active"
    dev: dict = {
        "resourceType": "Device",
        "id": device_id,
        "meta": {"profile": ["http://hl7.org/fhir/uv/phd/StructureDefinition/PhdDevice"]},
        "identifier": [{"system": DEVICE_SYSTEM, "value": device_id}] + _mac_identifiers(device_id),
        "status": "active" if status == "active" else "inactive",
        "manufacturer": "nabd project",
        "deviceName": [{"name": "nabd vital-signs unit", "type": "manufacturer-name"},
                       {"name": device_id, "type": "user-friendly-name"}],
        "modelNumber": str(info.get("model") or "nabd-1"),
        "serialNumber": str(info.get("serial") or device_id),
        "type": {"coding": [{"system": MDC, "code": "65573", "display": "MDC_MOC_VMS_MDS_SIMP"}],
                 "text": "Personal health device (simple MDS)"},
        "specialization": [
            {"systemType": {"coding": [{"system": MDC, "code": "528388",
                                        "display": "MDC_DEV_SPEC_PROFILE_PULS_OXIM"}],
                            "text": "Pulse oximeter"}, "version": "1"},
            {"systemType": {"coding": [{"system": MDC, "code": "528392",
                                        "display": "MDC_DEV_SPEC_PROFILE_TEMP"}],
                            "text": "Thermometer"}, "version": "1"},
        ],
    }
    if status != "active":
        dev["statusReason"] = [{"text": f"device {status}"}]
    versions = []
    if info.get("fw"):
        versions.append({"type": {"coding": [{"system": MDC, "code": "531976", "display": "MDC_ID_PROD_SPEC_FW"}],
                                  "text": "Firmware revision"}, "value": str(info["fw"])})
    versions.append({"type": {"coding": [{"system": MDC, "code": "531977",
                                          "display": "MDC_ID_PROD_SPEC_PROTOCOL_REV"}],
                              "text": "nabd wire protocol"}, "value": "1"})
    dev["version"] = versions
    props = []
    notes = []
    cal_id, cal_date, cal_due = info.get("cal_id"), info.get("cal_date"), info.get("cal_due")
    if cal_id or cal_date:
        props.append({"type": {"coding": [{"system": NABD_CODES, "code": "calibration"}],
                               "text": "Calibration in force"},
                      "valueCode": [{"text": f"{cal_id or '?'} ({cal_date or 'undated'})"}]})
        notes.append(f"Calibration {cal_id or '?'} dated {cal_date or 'unknown'}")
    if cal_due:
        props.append({"type": {"coding": [{"system": NABD_CODES, "code": "calibration-due"}],
                               "text": "Calibration due"},
                      "valueCode": [{"text": str(cal_due)}]})
        notes.append(f"Calibration due {cal_due}")
    if props:
        dev["property"] = props
    if notes:
        dev["note"] = [{"text": "; ".join(notes) + "."}]
    if info.get("facility"):
        dev["owner"] = {"identifier": {"system": FACILITY_SYSTEM, "value": str(info["facility"])},
                        "display": str(info["facility"])}
    if info.get("region"):
        dev["extension"] = [{"url": EXT_REGION, "valueCoding": {"system": ISO3166_2, "code": str(info["region"])}}]
    return dev


def patient_resource(token: str) -> dict:
    """A pseudonymous Patient: the token only (no name, no national identifier)."""
    if not isinstance(token, str) or not _PATIENT.match(token):
        raise MappingError("bad patient token")
    return {
        "resourceType": "Patient",
        "id": token,
        "identifier": [{"use": "secondary", "system": PATIENT_SYSTEM, "value": token}],
        "active": True,
    }


_ID_SYSTEM = {"Observation": OBS_SYSTEM, "Device": DEVICE_SYSTEM, "Patient": PATIENT_SYSTEM}
_ORDER = {"Patient": 0, "Device": 1}


def business_identifier(resource: dict) -> tuple[str, str]:
    """(system, value) of the nabd identifier of a resource."""
    system = _ID_SYSTEM.get(resource.get("resourceType", ""))
    for ident in resource.get("identifier") or []:
        if ident.get("system") == system:
            return system, ident["value"]
    raise MappingError(f"{resource.get('resourceType')} has no {system} identifier")


def transaction_bundle(resources: list[dict], update_observations: bool = False) -> dict:
    """A transaction Bundle creating each resource with ``ifNoneExist`` on its nabd identifier.

    ``update_observations``: the Observations go as conditional updates instead (``PUT
    Observation?identifier=...``), for a reading whose record changed after it was first sent (a
    clinician attached it to a patient): the server's Observation with that identifier is replaced,
    or created if it never arrived. Patients and Devices are still conditional creates.

    Patients and Devices go first; references ``Device/{id}`` and ``Patient/{id}`` to a resource in
    the bundle are rewritten to its ``urn:uuid`` fullUrl, which the server resolves to the created or
    already-existing resource. Local ids are dropped (a POST lets the server assign them). fullUrls
    are deterministic (UUID v5 of the identifier), so a re-sent bundle is byte-identical."""
    resources = sorted(resources, key=lambda r: _ORDER.get(r.get("resourceType", ""), 2))
    full: dict[str, str] = {}
    prepared = []
    for r in resources:
        system, value = business_identifier(r)
        url = "urn:uuid:" + str(uuid.uuid5(uuid.NAMESPACE_URL, f"{system}|{value}"))
        if r.get("id"):
            full[f"{r['resourceType']}/{r['id']}"] = url
        prepared.append((r, system, value, url))
    entries = []
    for r, system, value, url in prepared:
        res = copy.deepcopy(r)
        res.pop("id", None)
        for key in ("subject", "device"):
            ref = res.get(key, {}).get("reference") if isinstance(res.get(key), dict) else None
            if ref in full:
                res[key]["reference"] = full[ref]
        if update_observations and r["resourceType"] == "Observation":
            request = {"method": "PUT", "url": f"Observation?identifier={system}|{value}"}
        else:
            request = {"method": "POST", "url": r["resourceType"], "ifNoneExist": f"identifier={system}|{value}"}
        entries.append({"fullUrl": url, "resource": res, "request": request})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def searchset_bundle(resources: list[dict], total: int, self_url: str | None = None,
                     next_url: str | None = None, base: str = "") -> dict:
    """A searchset Bundle of ``resources`` (one page) out of ``total`` matches."""
    bundle: dict = {"resourceType": "Bundle", "type": "searchset", "total": int(total)}
    links = []
    if self_url:
        links.append({"relation": "self", "url": self_url})
    if next_url:
        links.append({"relation": "next", "url": next_url})
    if links:
        bundle["link"] = links
    bundle["entry"] = [{"fullUrl": f"{base}{r['resourceType']}/{r['id']}" if r.get("id") else None,
                        "resource": r, "search": {"mode": "match"}} for r in resources]
    for e in bundle["entry"]:
        if e["fullUrl"] is None:
            del e["fullUrl"]
    if not bundle["entry"]:
        del bundle["entry"]
    return bundle


def operation_outcome(severity: str, code: str, diagnostics: str) -> dict:
    """An OperationOutcome with one issue (``severity`` error|warning, ``code`` e.g. not-found)."""
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}]}
