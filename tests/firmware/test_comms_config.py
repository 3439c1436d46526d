"""config.json, the bounded log and the reading payloads (firmware/config.py, log.py, reading.py)
on the MicroPython VM, plus one Uplink.submit there."""
from __future__ import annotations

import json
from pathlib import Path

# the shared test board and a config checker, run in the VM (tests/firmware/_configdev.py)
SETUP = Path(__file__).with_name("_configdev.py").read_text()

GOOD = {"device_id": "nabd-240ac400002a", "key": "ab" * 32, "key_version": 1, "mqtt_password": "pw-12345678",
        "broker": "mqtts://gw.example:8883", "ca": "-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n",
        "calibration": {"id": "cal-1", "date": "2026-11-02", "due": "2027-11-02", "spo2": [110, -25]}}


def test_create_identity_and_reload(vm):
    vm.exec(SETUP + "c = C.create_identity(board, broker='mqtt://10.0.0.2:1884')\nc2 = C.load(board)\n")
    assert vm.eval("[c.device_id, c.kid, len(c.key), c.host, c.port, c.tls, c2.key == c.key]") == [
        "nabd-240ac400002a", "nabd-240ac400002a/1", 32, "10.0.0.2", 1884, None, True]
    assert vm.eval("C.create_identity(board).key == c.key")  # an existing identity is kept
    assert "ab" * 32 not in vm.eval("repr(c2)") and vm.eval("c.mqtt_password") not in vm.eval("repr(c2)")
    assert vm.listdir("/flash") == ["config.json"]  # the temp file was renamed away


def test_invalid_configs_named_clearly(vm):
    vm.exec(SETUP)
    cases = {
        "{": "config.json is not valid JSON",
        json.dumps(dict(GOOD, device_id="Nabd_1")): "device_id: must match",
        json.dumps(dict(GOOD, key="ab" * 31)): "key: must be 64 hex digits",
        json.dumps(dict(GOOD, key="zz" * 32)): "key: not hexadecimal",
        json.dumps(dict(GOOD, key_version=0)): "key_version: must be an integer >= 1",
        json.dumps(dict(GOOD, broker="http://x:1")): "broker: URL must start with mqtt:// or mqtts://",
        json.dumps(dict(GOOD, broker="mqtt://x:abc")): "broker: bad port",
        json.dumps(dict(GOOD, ca=None)): "ca: an mqtts:// broker needs the CA certificate",
        json.dumps(dict(GOOD, calibration={"id": "c", "date": "2026-13-01"})): "calibration.date: must be YYYY-MM-DD",
        json.dumps({k: v for k, v in GOOD.items() if k != "mqtt_password"}): "missing field 'mqtt_password'",
    }
    for text, msg in cases.items():
        assert vm.eval("why(" + json.dumps(text) + ")").startswith(msg), msg
    assert vm.eval("why(" + json.dumps(json.dumps(GOOD)) + ")") == "ok"
    vm.exec("import os\nos.remove('/flash/config.json')\n")
    assert vm.eval("C.exists(board)") is False
    assert vm.exec("try:\n    C.load(board)\nexcept C.ConfigError as e:\n    print(e)\n").startswith(
        "no config.json on flash")


def test_log_rotates_and_redacts(vm):
    vm.exec(SETUP + "log = Log(board, max_bytes=600)\nlog.redact('s3cret-key', 'pw-abc')\n"
            "for i in range(60):\n    log.warn('uplink', 'event %d with s3cret-key and pw-abc' % i)\n")
    files = sorted(vm.listdir("/flash"))
    assert files == ["log.1.txt", "log.txt"]
    text = vm.read_file("/flash/log.txt").decode() + vm.read_file("/flash/log.1.txt").decode()
    assert "s3cret" not in text and "pw-abc" not in text and "event 59 with *** and ***" in text
    assert len(vm.read_file("/flash/log.txt")) <= 600 and len(vm.read_file("/flash/log.1.txt")) <= 600


def test_reading_payload_fixed_point_and_ranges(vm):
    vm.exec(SETUP)
    body = vm.eval(
        "R.dumps(R.build_reading(1795430400, True, 73, '0.1.0', {'id': 'cal-1', 'date': '2026-11-02', 'due': 'x'},"
        " 'p-7Hq2xK', *R.observations(temp_mc=38449, spo2=88, hr=131, pi_cp=5, q_temp=1000, q_ppg=904))).decode()")
    assert body == ('{"ts":1795430400,"ts_ok":true,"up":73,"fw":"0.1.0","cal":{"id":"cal-1","date":"2026-11-02"},'
                    '"patient":"p-7Hq2xK","site":"forehead+finger","obs":['
                    '{"code":"temp","value":38.4,"unit":"Cel","q":1.00,"site":"forehead"},'
                    '{"code":"spo2","value":88,"unit":"%","q":0.90},{"code":"hr","value":131,"unit":"/min","q":0.90},'
                    '{"code":"pi","value":0.05,"unit":"%","q":0.90}],"flags":["fever","low_spo2","tachycardia"]}')
    p = json.loads(body)
    assert p["obs"][0]["value"] == 38.4 and p["obs"][3]["value"] == 0.05
    # out of the protocol's ranges: left out, never sent
    assert vm.eval("[o['code'] for o in R.observations(temp_mc=46000, spo2=49, hr=72, pi_cp=1)[0]]") == ["hr"]
    assert vm.eval("R.observations(temp_mc=34000, hr=45)[1]") == ["hypothermia", "bradycardia"]
    assert vm.eval("[R.Fixed(-5, 2).text(), R.Fixed(123, 0).text(), R.Fixed(7, 3).text()]") == ["-0.05", "123", "0.007"]
    assert json.loads(vm.eval("R.dumps({'zz': 'q\"\\\\\\n', 'v': [None, False]}).decode()")) == {"zz": 'q"\\\n', "v": [None, False]}


def test_submit_on_the_vm(vm):
    vm.exec(SETUP + "from firmware.outbox import Outbox\nfrom firmware.seq import SeqCounter\n"
            "from firmware.uplink import Uplink\nfrom firmware import jws\n"
            "c = C.create_identity(board)\nbox = Outbox(board)\n"
            "up = Uplink(board, c, box, SeqCounter(board, floor=box.max_seq), Log(board))\n"
            "obs, flags = R.observations(temp_mc=36870, spo2=97, hr=72)\n"
            "seqs = [up.submit(R.build_reading(*up.timestamp(), 1, '0.1.0', None, None, obs, flags)) for _ in range(3)]\n"
            "tok = list(box.pending(limit=1))[0][1]\n"
            "p = json.loads(jws.verify(c.key, tok, 'nabd-reading+jws', c.kid))\n")
    assert vm.eval("[seqs, up.queued, up.reading_state(1), p['seq'], p['dev'], p['v']]") == [
        [1, 2, 3], 3, "queued", 1, "nabd-240ac400002a", 1]
    vm.exec("up.step()\n")  # no sockets in the VM: offline, backoff scheduled, nothing lost
    assert vm.eval("[up.state, up.queued, up.failures]") == ["offline", 3, 1]
