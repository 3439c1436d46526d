"""End to end, device status and commands: the firmware's communication layer (firmware/uplink.py
under CPython, real sockets) <-> a real Mosquitto with per-device passwords and the protocol's ACL
<-> `nabd-gateway serve` (a real process, user `gateway`) and `nabd-gateway devices command` (the
real CLI), on SQLite and PostgreSQL.

- the device's signed retained `online` status is verified and stored, devices.fw / cal_due follow;
- a forged status (the device's broker credentials, another key) is quarantined, nothing stored;
- the device process is SIGKILLed: the broker publishes its Last Will (signed `offline` status made
  at connect time) and the gateway records the device offline; its earlier signed `online` status,
  published again with the device's broker credentials, is quarantined as `stale_status` and the
  device stays offline;
- `devices command ID assign-patient TOKEN` reaches the device, which applies it: its next reading
  carries the patient and is filed under that patient; the same command bytes replayed are
  refused by the device; commands sent while it is away are delivered when it reconnects, except
  one whose time to live has passed.

The device runs on sim.hardware.board.SimBoard (via tests/firmware/_commsboard.make_board) with its
virtual clock advanced by the real elapsed time, so its Unix time agrees with the gateway's.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
import tomli_w

from firmware import config as fw_config
from firmware import jws as fw_jws
from firmware import reading as fw_reading
from firmware.log import Log
from firmware.outbox import Outbox
from firmware.seq import SeqCounter
from firmware.uplink import Uplink
from gateway.db import Database
from tests.e2e.test_device_broker import GW_PASSWORD, device_identity, start_broker
from tests.firmware._commsboard import make_board
from tests.support.harness import GatewayProcess, register, rows, scalar, wait_for, write_config

REPO = Path(__file__).resolve().parents[2]
NABD_GATEWAY = str(Path(sys.executable).parent / "nabd-gateway")
pytestmark = pytest.mark.broker


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/gateway.db"
    return request.getfixturevalue("pg_url")


class RecordingUplink(Uplink):
    """The firmware's Uplink, keeping a copy of every raw message it receives (to replay one)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.received: list[tuple[str, bytes]] = []

    def _on_message(self, topic, msg, retained):
        self.received.append((topic, bytes(msg)))
        super()._on_message(topic, msg, retained)


class FwDevice:
    """A unit: board (flash at ``flash``), provisioning, outbox, seq, log, uplink, and the
    application's command handler (patient, identify, settings) the firmware's app will have."""

    def __init__(self, flash: Path, ident: dict, broker_url: str):
        now = int(time.time())
        self.board = make_board(str(flash), unix_time=now, seed=int(ident["device_id"][-6:], 16))
        if not (flash / "config.json").exists():
            fw_config.save(self.board, dict(ident, broker=broker_url, ca=None, client_cert=None, client_key=None))
        self.cfg = fw_config.load(self.board)
        self.outbox = Outbox(self.board)
        self.seq = SeqCounter(self.board, floor=self.outbox.max_seq)
        self.log = Log(self.board)
        self.patient: str | None = None
        self.identified: list[int] = []
        self.settings: dict = {}
        self.applied: list[tuple[str, dict]] = []
        self.up = RecordingUplink(self.board, self.cfg, self.outbox, self.seq, self.log, on_command=self.command,
                                  backoff_max_ms=2000)
        self._t = time.monotonic()

    def command(self, cmd: str, args: dict) -> None:
        if cmd == "assign_patient":
            self.patient = args["patient"]
        elif cmd == "identify":
            self.identified.append(args["seconds"])
        elif cmd == "settings":
            unknown = set(args) - {"temp_site_offset_c", "report_pi"}
            if unknown:
                raise ValueError(f"unknown settings {sorted(unknown)}")
            self.settings.update(args)
        self.applied.append((cmd, args))

    def measure(self) -> int:
        obs, flags = fw_reading.observations(temp_mc=36870, spo2=97, hr=72, pi_cp=240, q_temp=970, q_ppg=910)
        ts, ok = self.up.timestamp()
        return self.up.submit(fw_reading.build_reading(ts, ok, self.up.uptime_s(), "0.1.0", self.cfg.calibration,
                                                       self.patient, obs, flags))

    def run(self, until, timeout: float = 10.0) -> bool:
        """Step the uplink, the virtual clock following real time, until ``until()`` or timeout."""
        end = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            self.board.clock.sleep_ms(int((now - self._t) * 1000))
            self._t += int((now - self._t) * 1000) / 1000
            self.up.step()
            if until():
                return True
            if now > end:
                return False
            time.sleep(0.005)


def gateway_config(tmp_path: Path, broker, db_url: str) -> Path:
    """write_config plus the gateway's broker account (user `gateway` of the test ACL)."""
    cfg = write_config(tmp_path / "gw", broker.url, db_url)
    pw = tmp_path / "gw" / "broker.pw"
    pw.write_text(GW_PASSWORD + "\n")
    pw.chmod(0o600)
    import tomllib

    data = tomllib.loads(cfg.read_text())
    data["broker"].update(username="gateway", password_file=str(pw))
    cfg.write_bytes(tomli_w.dumps(data).encode())
    return cfg


class _Key:
    def __init__(self, ident: dict):
        self.id = ident["device_id"]
        self.key = bytes.fromhex(ident["key"])
        self.key_version = 1


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([NABD_GATEWAY, *args], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, NABD_ADMIN="test-admin"))


def mqtt_client(broker, user: str, password: str, v5: bool = False) -> paho.Client:
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"{user}-x{os.urandom(3).hex()}",
                    protocol=paho.MQTTv5 if v5 else paho.MQTTv311)
    c.username_pw_set(user, password)
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def status_row(db_url: str, dev: str):
    r = rows(db_url, "SELECT state, fw, cal_due, sensors, outbox, received_at FROM device_status WHERE device_id = ?",
             (dev,))
    return r[0] if r else None


DEVICE_PROCESS = r"""
import json, sys
from pathlib import Path
sys.path[:0] = [{repo!r}, {repo!r} + "/compat"]
from tests.e2e.test_gateway_commands import FwDevice
d = FwDevice(Path({flash!r}), json.loads({ident!r}), {url!r})
print("online" if d.run(lambda: d.up.state == "online", timeout=15) else "offline", flush=True)
while True:
    d.run(lambda: False, timeout=1.0)
"""


def test_status_stored_forged_quarantined_last_will_recorded(broker_factory, tmp_path, db_url):
    ident = device_identity(7)
    dev = ident["device_id"]
    b = start_broker(broker_factory, tmp_path, [ident])
    cfg = gateway_config(tmp_path, b, db_url)
    register(cfg, [_Key(ident)])
    flash = tmp_path / "flash"
    script = tmp_path / "device.py"
    script.write_text(DEVICE_PROCESS.format(repo=str(REPO), flash=str(flash), ident=json.dumps(ident), url=b.url))
    with GatewayProcess(cfg) as gw:
        p = subprocess.Popen([sys.executable, str(script)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        try:
            assert p.stdout.readline().strip() == "online", p.stderr.read() if p.poll() is not None else ""
            assert wait_for(lambda: status_row(db_url, dev) is not None, timeout=15), gw.log[-2000:]
            state, fw, cal_due, sensors, outbox, first_rx = status_row(db_url, dev)
            assert state == "online" and fw == "0.1.0" and str(cal_due) == "2027-11-02" and outbox == 0
            assert json.loads(sensors) == {"mlx90614": "ok", "max30102": "ok"}
            assert str(scalar(db_url, "SELECT cal_due FROM devices WHERE id = ?", (dev,))) == "2027-11-02"
            assert scalar(db_url, "SELECT fw FROM devices WHERE id = ?", (dev,)) == "0.1.0"

            # forged: the device's own broker account (the ACL lets it publish there) but another key
            c = mqtt_client(b, dev, ident["mqtt_password"])
            forged = fw_jws.sign(os.urandom(32), dev + "/1", "nabd-status+jws", fw_reading.dumps(
                {"v": 1, "dev": dev, "state": "offline", "ts": int(time.time()), "ts_ok": True, "up": 1,
                 "fw": "9.9.9", "rssi": None, "heap": 1, "outbox": 0, "drops": 0, "seq": 0,
                 "sensors": {}, "cal_due": None, "errors": 0}))
            c.publish(f"nabd/v1/dev/{dev}/status", forged, qos=1).wait_for_publish(5)
            c.loop_stop()
            c.disconnect()
            assert wait_for(lambda: int(scalar(db_url, "SELECT COUNT(*) FROM quarantine")) == 1, timeout=10)
            (reason, topic, raw), = rows(db_url, "SELECT reason, topic, raw FROM quarantine")
            assert reason == "bad_signature" and topic == f"nabd/v1/dev/{dev}/status" and bytes(raw) == forged
            assert status_row(db_url, dev)[0] == "online" and status_row(db_url, dev)[1] == "0.1.0"
            # what anyone reading the status topic gets: the retained signed online status
            watcher = mqtt_client(b, "gateway", GW_PASSWORD)
            retained: list[bytes] = []
            watcher.on_message = lambda cl, u, m: retained.append(bytes(m.payload))
            watcher.subscribe(f"nabd/v1/dev/{dev}/status", qos=1)
            assert wait_for(lambda: bool(retained), timeout=10)
            watcher.loop_stop()
            watcher.disconnect()
            old_online = retained[0]
            assert json.loads(fw_jws.verify(bytes.fromhex(ident["key"]), old_online, "nabd-status+jws",
                                            kid=dev + "/1"))["state"] == "online"

            # the device dies: the broker publishes its Last Will, the gateway records it
            os.kill(p.pid, signal.SIGKILL)
            p.wait(10)
            assert wait_for(lambda: status_row(db_url, dev)[0] == "offline", timeout=15), gw.log[-2000:]
            state, fw, cal_due, _, _, rx = status_row(db_url, dev)
            assert fw == "0.1.0" and str(cal_due) == "2027-11-02" and str(rx) > str(first_rx)
            assert int(scalar(db_url, "SELECT COUNT(*) FROM quarantine")) == 1
            assert int(scalar(db_url, "SELECT messages FROM device_status WHERE device_id = ?", (dev,))) == 2
            # its old online status, validly signed, replayed on its topic: it does not bring it back
            c = mqtt_client(b, dev, ident["mqtt_password"])
            c.publish(f"nabd/v1/dev/{dev}/status", old_online, qos=1).wait_for_publish(5)
            c.loop_stop()
            c.disconnect()
            assert wait_for(lambda: int(scalar(db_url, "SELECT COUNT(*) FROM quarantine")) == 2, timeout=10)
            assert rows(db_url, "SELECT reason, raw FROM quarantine ORDER BY id")[1][0] == "stale_status"
            assert status_row(db_url, dev)[0] == "offline"
            # a gateway that lost the row learns the state again from the broker's retained status
            assert gw.terminate() == 0
            with Database(db_url).connect() as conn:
                conn.execute("DELETE FROM device_status")
            gw.start()
            assert wait_for(lambda: status_row(db_url, dev) is not None, timeout=15), gw.log[-2000:]
            assert status_row(db_url, dev)[0] == "offline"
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    assert "Traceback" not in gw.log, gw.log[-3000:]


def test_commands_reach_the_device_which_applies_them_once(broker_factory, tmp_path, db_url):
    ident = device_identity(8)
    dev = ident["device_id"]
    b = start_broker(broker_factory, tmp_path, [ident])
    cfg = gateway_config(tmp_path, b, db_url)
    register(cfg, [_Key(ident)])
    flash = tmp_path / "flash"
    with GatewayProcess(cfg) as gw:
        d = FwDevice(flash, ident, b.url)
        assert d.run(lambda: d.up.state == "online"), d.log.lines()
        assert wait_for(lambda: status_row(db_url, dev) is not None, timeout=10), gw.log[-2000:]

        # assign a patient through the real CLI; the device applies it
        r = cli("devices", "command", dev, "assign-patient", "p-Ab12cd", "--config", str(cfg), "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["n"] == 1
        assert d.run(lambda: d.patient == "p-Ab12cd", timeout=10), d.log.lines()[-5:]
        assert d.applied == [("assign_patient", {"patient": "p-Ab12cd"})] and d.up.errors == 0
        # the next reading carries the patient and is filed under it
        seq = d.measure()
        assert d.run(lambda: d.up.reading_state(seq) == "stored", timeout=15), gw.log[-2000:]
        assert rows(db_url, "SELECT patient_id FROM readings WHERE device_id = ? AND seq = ?", (dev, seq)) == \
            [("p-Ab12cd",)]
        assert ("p-Ab12cd",) in rows(db_url, "SELECT id FROM patients")

        # the same command bytes again (anyone who captured them, as the gateway user here): refused
        cmd_raw = [m for t, m in d.up.received if t.endswith("/cmd")]
        assert len(cmd_raw) == 1
        g = mqtt_client(b, "gateway", GW_PASSWORD, v5=True)
        g.publish(f"nabd/v1/dev/{dev}/cmd", cmd_raw[0], qos=1).wait_for_publish(5)
        errors = d.up.errors
        assert d.run(lambda: d.up.errors > errors, timeout=10)
        assert d.applied == [("assign_patient", {"patient": "p-Ab12cd"})]
        assert any("cmd ignored: replayed n=1" in line for line in d.log.lines())

        r = cli("devices", "command", dev, "identify", "--seconds", "4", "--config", str(cfg))
        assert r.returncode == 0 and "n=2" in r.stdout, r.stderr
        assert d.run(lambda: d.identified == [4], timeout=10)

        # away: commands wait in the device's broker session; one outlives its ttl and is dropped
        d.up.close()
        r = cli("devices", "command", dev, "identify", "--ttl", "1", "--config", str(cfg), "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["n"] == 3, r.stderr
        r = cli("devices", "command", dev, "settings", "report_pi=false", "temp_site_offset_c=0.3",
                "--config", str(cfg), "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["n"] == 4, r.stderr
        r = cli("devices", "command", dev, "assign-patient", "--clear", "--config", str(cfg), "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["n"] == 5, r.stderr
        time.sleep(2.2)
        d2 = FwDevice(flash, ident, b.url)          # a reboot: same flash, same persistent session
        assert d2.run(lambda: d2.patient is None and len(d2.applied) >= 2, timeout=10), d2.log.lines()[-5:]
        d2.run(lambda: False, timeout=0.5)
        assert d2.applied == [("settings", {"report_pi": False, "temp_site_offset_c": 0.3}),
                              ("assign_patient", {"patient": None})]
        assert d2.identified == []                   # the expired identify never ran
        # the device's replay guard survived the reboot: n=1 again is refused
        g.publish(f"nabd/v1/dev/{dev}/cmd", cmd_raw[0], qos=1).wait_for_publish(5)
        errors = d2.up.errors
        assert d2.run(lambda: d2.up.errors > errors, timeout=10)
        assert len(d2.applied) == 2
        g.loop_stop()
        g.disconnect()
        seq2 = d2.measure()
        assert d2.run(lambda: d2.up.reading_state(seq2) == "stored", timeout=15)
        d2.up.close()                                # a clean close publishes the signed offline status
        assert wait_for(lambda: status_row(db_url, dev)[0] == "offline", timeout=10), gw.log[-2000:]
    assert rows(db_url, "SELECT patient_id FROM readings WHERE device_id = ? AND seq = ?", (dev, seq2)) == [(None,)]
    assert scalar(db_url, "SELECT cmd_n FROM devices WHERE id = ?", (dev,)) == 5
    audit = rows(db_url, "SELECT actor, action, target FROM audit_log WHERE action = ?", ("devices.command",))
    assert audit == [("test-admin", "devices.command", dev)] * 5
    assert int(scalar(db_url, "SELECT COUNT(*) FROM quarantine")) == 0
