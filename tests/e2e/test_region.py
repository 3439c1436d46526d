"""A region at a small size (host/region.py): clinic Mosquitto brokers bridged over QoS 1 to a
regional Mosquitto, two `nabd-gateway serve` processes sharing the subscription on one PostgreSQL,
and `nabd sim fleet` as the devices. Faults during the run: clinic 0's bridge link cut and
restored, one gateway SIGKILLed and restarted, the regional broker restarted. Every reading produced is stored exactly once; the
bridge users' ACL lets a clinic see only its own devices' topics."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from host.region import Region, bridge_user, gateway_user
from sim.fleet import Fleet
from tests.support.harness import rows
from tests.support.link import Link

pytestmark = [pytest.mark.broker]

REPO = Path(__file__).resolve().parents[2]
DEVICES, CLINICS, GATEWAYS = 30, 2, 2


class Client:
    """A paho client logged in at the regional broker as ``user``; collects what it receives."""

    def __init__(self, port: int, user: str, password: str):
        self.got: list[str] = []
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user, protocol=mqtt.MQTTv311)
        self.c.username_pw_set(user, password)
        self.c.on_message = lambda cl, ud, m: self.got.append(m.topic)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def sub(self, topic: str) -> None:
        self.c.subscribe(topic, qos=1)
        time.sleep(0.3)

    def pub(self, topic: str) -> None:
        self.c.publish(topic, b"x", qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def region(tmp_path, pg_url):
    r = Region(tmp_path / "region", CLINICS, GATEWAYS, pg_url, broker_user="root" if os.geteuid() == 0 else None)
    link = Link(r.regional_port)
    r.uplink[0] = ("127.0.0.1", link.port)     # clinic 0's bridge goes through a link the test cuts
    fleet = Fleet(tmp_path / "fleet", DEVICES, r.clinic_urls(), clinics=CLINICS)
    assert r.add_devices(fleet) == {"registered": DEVICES, "already_registered": 0}
    r.write()
    try:
        r.start()
        yield r, link, fleet
    finally:
        r.stop()
        link.cut()


def test_generated_configs_follow_the_protocol(region):
    r, _, fleet = region
    conf = (r.dir / "clinic-1" / "mosquitto.conf").read_text()
    mine = [d.cfg.device_id for d in fleet.devices if d.clinic == 1]
    other = [d.cfg.device_id for d in fleet.devices if d.clinic == 0]
    assert f"topic nabd/v1/dev/{mine[0]}/reading out 1" in conf and f"topic nabd/v1/dev/{mine[0]}/ack in 1" in conf
    assert other[0] not in conf and "cleansession false" in conf and "notifications false" in conf
    assert oct((r.dir / "clinic-1" / "mosquitto.conf").stat().st_mode & 0o777) == "0o600"   # bridge password
    passwd = (r.dir / "clinic-1" / "passwd").read_text()
    assert all(d in passwd for d in mine) and not any(d in passwd for d in other)
    # at the regional broker a clinic's bridge user reaches only its own devices' topics. Its
    # broker and the second gateway stop first: their clients would take over the test's sessions
    r.brokers.pop("clinic-1").terminate()
    r.kill_gateway(1)
    bridge = Client(r.regional_port, bridge_user(1), r._secrets[bridge_user(1)])
    gw = Client(r.regional_port, gateway_user(1), r._secrets[gateway_user(1)])
    try:
        for d in (mine[0], other[0]):
            bridge.sub(f"nabd/v1/dev/{d}/ack")
        gw.sub("nabd/v1/dev/+/reading")
        for d in (mine[0], other[0]):
            gw.pub(f"nabd/v1/dev/{d}/ack")
            bridge.pub(f"nabd/v1/dev/{d}/reading")
        time.sleep(1.0)
        assert bridge.got == [f"nabd/v1/dev/{mine[0]}/ack"]
        assert gw.got == [f"nabd/v1/dev/{mine[0]}/reading"]
    finally:
        bridge.close()
        gw.close()


def test_bridge_cut_gateway_kill_regional_restart_lose_and_duplicate_nothing(region, tmp_path):
    r, link, _ = region
    produced = tmp_path / "produced.json"
    cmd = [sys.executable, "-m", "host", "sim", "fleet", "--devices", str(DEVICES), "--clinics", str(CLINICS),
           "--interval", "2", "--duration", "16", "--drain", "100", "--state", str(tmp_path / "fleet"),
           "--produced", str(produced), "--json"]
    for u in r.clinic_urls():
        cmd += ["--broker", u]
    time.sleep(1.0)                                # the bridges' first connection
    fleet = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)
        link.cut()                                 # clinic 0 loses its uplink; its devices keep measuring
        time.sleep(3)
        r.kill_gateway(0)
        time.sleep(1.5)
        r.start_gateway(0)
        time.sleep(2)
        mid = rows(r.db_url, "SELECT COUNT(*) FROM readings")[0][0]
        link.restore()
        time.sleep(1)
        r.restart_broker("regional")               # bridges and gateways reconnect to it
        out, err = fleet.communicate(timeout=200)
    finally:
        if fleet.poll() is None:
            fleet.kill()
    assert fleet.returncode == 0, out[-3000:] + err[-3000:]
    lines = [json.loads(x) for x in out.strip().splitlines()]
    summary = lines[-1]
    assert summary["ok"] and summary["waiting"] == 0 and summary["acked"] == summary["readings_produced"]
    assert summary["readings_produced"] >= DEVICES * 7
    made = json.loads(produced.read_text())
    want = sorted((d, s) for d, seqs in made.items() for s in seqs)
    got = sorted(rows(r.db_url, "SELECT device_id, seq FROM readings"))
    assert got == want                             # every reading exactly once
    assert mid < len(want), "everything was stored before the link came back: the cut proved nothing"
    # readings of clinic 0's devices made during the cut arrived after the restore
    assert any(t["waiting"] >= DEVICES // CLINICS for t in lines[:-1])
