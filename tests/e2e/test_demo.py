"""The README's main command, end to end: `nabd demo` builds a site from the real parts (Mosquitto
with per-device passwords and ACL, `nabd-gateway serve`, the virtual device) and reads the records
back through the FHIR API."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.broker]
REPO = Path(__file__).resolve().parents[2]


def test_demo_files_signed_readings_into_fhir_records(tmp_path):
    p = subprocess.run([sys.executable, "-m", "host", "demo", "--json", "--out", str(tmp_path), "--readings", "3"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["ok"] and all(c["ok"] for c in out["selftest"])
    assert len(out["readings"]) == 3 and out["readings"] == sorted(set(out["readings"]))
    obs = out["observations"]
    assert len(obs) == 3 * 4                                   # temp, SpO2, HR, PI per reading
    assert {o["code"] for o in obs} == {"8310-5", "2708-6", "8867-4", "61006-3"}
    # readings after the signed assign-patient command are filed under the patient, the first is not
    assert sum(o["subject"] == "Patient/p-demo01" for o in obs) == 8
    assert out["command"]["cmd"] == "assign_patient" and out["command"]["n"] == 1
    # the scenario's truth (sim.physiology 'normal', seed 0): HR 87.8, SpO2 97.1, core 37.0
    by = {c: [o["value"] for o in obs if o["code"] == c] for c in ("8310-5", "2708-6", "8867-4")}
    assert all(abs(v - 37.0) <= 0.4 for v in by["8310-5"])
    assert all(abs(v - 97) <= 3 for v in by["2708-6"])
    assert all(abs(v - 88) <= 5 for v in by["8867-4"])
    # one patient in the facility: every reading cell is suppressed, registrations still counted
    rows = out["observatory"]["rows"]
    assert rows and all(r["suppressed"] and r["devices_registered"] == 1 for r in rows)
    # the console: a clinician account, and the readings filed under the patient on their page
    assert out["console"]["url"].endswith("/console/") and out["console"]["readings_shown"] == 2
    assert Path(out["screen_png"]).stat().st_size > 1000
    # no secret reaches the output: the device key and passwords are only in the site's files
    site = tmp_path / "site"
    ident = json.loads((site / "device" / "config.json").read_text())
    assert ident["key"] not in p.stdout and ident["mqtt_password"] not in p.stdout
