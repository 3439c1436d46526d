"""A region (host/region.py) at the size issue 11 gives for CI: 300 devices (sim/fleet.py, the
firmware's comms stack) in 3 clinics, each clinic's Mosquitto bridged over QoS 1 to a regional
Mosquitto, two `nabd-gateway serve` processes sharing the subscription on a PostgreSQL cluster of
the test's own (tests/support/pgcluster.py: the machine's is shared by every test). The faults of
the issue, one after another while the devices measure: clinic 0's bridge link cut and restored,
one gateway SIGKILLed and restarted, PostgreSQL stopped and started, the regional broker
restarted, then every clinic's devices reconnecting at the same moment with full outboxes (the
thundering herd). Every reading produced is stored exactly once. The bridge users' ACL lets a
clinic see only its own devices' topics (a small region on the shared PostgreSQL)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from host.region import Region, bridge_user, gateway_user
from sim.fleet import Fleet
from tests.support.harness import rows
from tests.support.link import Link
from tests.support.pgcluster import PgCluster

pytestmark = [pytest.mark.broker]

REPO = Path(__file__).resolve().parents[2]
DEVICES, CLINICS, GATEWAYS = 300, 3, 2      # the faults' run (issue 11's CI size)
SMALL = 6                                   # the configuration/ACL checks
OUTBOX = 16                                 # each device's outbox: the herd fills it


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
    r = Region(tmp_path / "region", 2, GATEWAYS, pg_url, broker_user="root" if os.geteuid() == 0 else None)
    link = Link(r.regional_port)
    r.uplink[0] = ("127.0.0.1", link.port)     # clinic 0's bridge goes through a link the test cuts
    fleet = Fleet(tmp_path / "fleet", SMALL, r.clinic_urls(), clinics=2)
    assert r.add_devices(fleet) == {"registered": SMALL, "already_registered": 0}
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


def _log_lines(r: Region, n: int) -> list[str]:
    return (r.gateway_config(n).parent / "serve.log").read_text(errors="replace").splitlines()


def test_every_fault_of_the_issue_at_ci_size_stores_each_reading_exactly_once(tmp_path):
    with PgCluster() as pg, Region(tmp_path / "region", CLINICS, GATEWAYS, pg.url,
                                   broker_user="root" if os.geteuid() == 0 else None) as r:
        link = Link(r.regional_port)
        r.uplink[0] = ("127.0.0.1", link.port)
        fleet = Fleet(tmp_path / "fleet", DEVICES, r.clinic_urls(), clinics=CLINICS, outbox_capacity=OUTBOX)
        assert r.add_devices(fleet) == {"registered": DEVICES, "already_registered": 0}
        r.write()
        r.start()
        try:
            _faults_then_herd(r, link, pg, fleet)
        finally:
            for d in fleet.devices:
                d.uplink.close()
            link.cut()
        made = sorted((d, s) for d, seqs in fleet.produced().items() for s in seqs)
        got = sorted(rows(pg.url, "SELECT device_id, seq FROM readings"))
        assert got == made                         # every reading produced, once, and nothing else
        gateways = dict(r.gw)
    # the gateways rode out PostgreSQL's restart in the same processes (no crash, no restart loop),
    # each logged the outage once when it began and once when it cleared, in one line, no secret
    assert all(p.returncode == 0 for p in gateways.values()), {n: p.returncode for n, p in gateways.items()}
    outages = 0
    for n in range(GATEWAYS):
        lines = _log_lines(r, n)
        text = "\n".join(lines)
        assert pg.password not in text and "Traceback" not in text and "store process ended" not in text, text[-3000:]
        for who in ("nabd.gateway.writer", "nabd.gateway.status"):
            began = [x for x in lines if who in x and "database error:" in x]
            cleared = [x for x in lines if who in x and "database available again" in x]
            assert len(began) == len(cleared) <= 1, text[-3000:]
            outages += len(began) if who == "nabd.gateway.writer" else 0
    assert outages >= 1          # the restart was seen (a store process meets it at its next batch)


def _faults_then_herd(r: Region, link: Link, pg: PgCluster, fleet: Fleet) -> None:
    interval, per_clinic = 2.0, DEVICES // CLINICS
    seen: dict[str, int] = {}
    log: list[tuple[float, str]] = []

    def faults(t: float) -> None:
        for at, what in ((2, "cut"), (4, "kill"), (6, "restart-gw"), (8, "pg-stop"), (11, "pg-down"),
                         (14, "pg-start"), (16, "restore"), (18, "regional")):
            if t < at or what in seen:
                continue
            seen[what] = fleet.counts()["acked"]
            log.append((t, what))
            if what == "cut":
                link.cut()                         # clinic 0 loses its uplink; its devices keep measuring
            elif what == "kill":
                r.kill_gateway(0)
            elif what == "restart-gw":
                r.start_gateway(0)
            elif what == "pg-stop":
                pg.stop()                          # fast shutdown: every session terminated
            elif what == "pg-start":
                pg.start()
            elif what == "restore":
                seen["stored-before-restore"] = rows(pg.url, "SELECT COUNT(*) FROM readings")[0][0]
                link.restore()
            elif what == "regional":
                r.restart_broker("regional")       # bridges and gateways reconnect to it

    peak = [0]
    s = fleet.run(interval, 24, drain_s=150, on_tick=faults, report=lambda c: peak.__setitem__(
        0, max(peak[0], c["waiting"])), close=False)
    assert [w for _, w in log] == ["cut", "kill", "restart-gw", "pg-stop", "pg-down", "pg-start", "restore",
                                   "regional"], log
    assert s["waiting"] == 0 and s["drops"] == 0 and s["acked"] == s["readings_produced"], s
    assert s["readings_produced"] >= DEVICES * 11
    # clinic 0's readings made during the cut waited on its devices (a reading leaves a device only
    # on the gateway's signed ack) and arrived after the restore
    assert peak[0] >= per_clinic * 3, peak
    assert seen["stored-before-restore"] < s["readings_produced"]
    # nothing was acknowledged while PostgreSQL was down (from 3 s after the stop, once acks of
    # commits made before it arrived, until its start): no ack without a commit
    assert seen["pg-down"] == seen["pg-start"], seen

    # the thundering herd: every clinic's devices lose their link, fill their outboxes, and all
    # reconnect at the same moment
    everyone = set(range(CLINICS))
    fleet.outage(everyone, True)
    fleet.pump(lambda: fleet.counts()["connected"] == 0, 10)
    for _ in range(OUTBOX):
        fleet.measure_all()
    assert all(d.uplink.queued == OUTBOX for d in fleet.devices) and fleet.counts()["drops"] == 0
    fleet.outage(everyone, False)
    fleet.pump(lambda: fleet.counts()["waiting"] == 0, 150)
    c = fleet.counts()
    assert c["waiting"] == 0 and c["connected"] == DEVICES and c["drops"] == 0, c
