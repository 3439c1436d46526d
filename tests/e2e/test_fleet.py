"""`nabd sim fleet` end to end at a small size: device identities registered in bulk (gateway
registry + Mosquitto password file), the firmware's comms stack per device on real sockets, a real
Mosquitto with per-device passwords and the protocol's ACL, a real `nabd-gateway serve` on
PostgreSQL that is started late, SIGKILLed and restarted during the run. Every reading produced is
stored exactly once."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import tomli_w

from gateway.registration import broker_passwd_line
from tests.support.harness import GatewayProcess, rows, write_config

pytestmark = [pytest.mark.broker]

REPO = Path(__file__).resolve().parents[2]
GW_USER = "nabd.gateway"


def nabd(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "host", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def region(tmp_path, pg_url):
    """A broker folder (password file with the gateway's user, the protocol's ACL) and a gateway
    configuration on PostgreSQL that logs in as its own broker user."""
    bdir = tmp_path / "broker"
    bdir.mkdir()
    passwd = bdir / "passwd"
    gw_pw = "gw-" + tmp_path.name
    passwd.write_text(broker_passwd_line(GW_USER, gw_pw) + "\n")
    (bdir / "acl").write_text((REPO / "gateway" / "mosquitto" / "acl").read_text())
    cfg = write_config(tmp_path / "gw", "mqtt://127.0.0.1:1", pg_url)
    (tmp_path / "gw" / "broker.password").write_text(gw_pw + "\n")
    return {"dir": tmp_path, "bdir": bdir, "passwd": passwd, "cfg": cfg, "db": pg_url}


def point_gateway(cfg: Path, broker_url: str) -> None:
    data = tomllib.loads(cfg.read_text())
    data["broker"].update(url=broker_url, username=GW_USER, client_id="",
                          password_file=str(cfg.parent / "broker.password"))
    cfg.write_bytes(tomli_w.dumps(data).encode())


def broker_config(region) -> str:
    b = region["bdir"]
    return (f"user root\nallow_anonymous false\npassword_file {b}/passwd\nacl_file {b}/acl\n"
            f"persistence true\npersistence_location {b}/\nmax_packet_size 2560\n"
            "use_username_as_clientid true\n")


def test_usage_errors_exit_2(tmp_path):
    p = nabd("sim", "fleet", "--devices", "0", "--interval", "1", "--broker", "mqtt://127.0.0.1:1883", "--json")
    assert p.returncode == 2 and json.loads(p.stdout)["exit"] == 2
    p = nabd("sim", "fleet", "--devices", "2", "--interval", "1", "--broker", "http://x", "--json")
    assert p.returncode == 2, p.stdout + p.stderr
    p = nabd("sim", "fleet", "--devices", "2", "--interval", "1", "--broker", "mqtt://127.0.0.1:1883",
             "--register-only")
    assert p.returncode == 2 and "--register-only" in p.stderr
    for procs in ("0", "3"):
        p = nabd("sim", "fleet", "--devices", "2", "--procs", procs, "--interval", "1", "--broker",
                 "mqtt://127.0.0.1:1883")
        assert p.returncode == 2 and "--procs" in p.stderr, p.stderr


def test_fleet_readings_stored_exactly_once_through_a_gateway_kill(region, broker_factory):
    n, state = 6, region["dir"] / "fleet"
    # 1. bulk registration: the gateway's registry and the broker's password file, before the broker starts
    reg = nabd("sim", "fleet", "--devices", str(n), "--clinics", "2", "--interval", "1", "--broker",
               "mqtt://127.0.0.1:1", "--state", str(state), "--gateway", str(region["cfg"]),
               "--broker-passwd", str(region["passwd"]), "--register-only", "--json")
    assert reg.returncode == 0, reg.stdout + reg.stderr
    assert json.loads(reg.stdout) == {"ok": True, "devices": n, "registered": n, "already_registered": 0,
                                      "broker_passwd_set": True}
    facilities = rows(region["db"], "SELECT facility, COUNT(*) FROM devices GROUP BY facility ORDER BY facility")
    assert facilities == [("clinic-0", 3), ("clinic-1", 3)]
    lines = region["passwd"].read_text().splitlines()
    assert len(lines) == n + 1 and all(":$7$" in x for x in lines)
    ids = [json.loads((state / f"dev-{i:05d}" / "config.json").read_text())["device_id"] for i in range(n)]
    assert not any(json.loads((state / f"dev-{i:05d}" / "config.json").read_text())["mqtt_password"]
                   in region["passwd"].read_text() for i in range(n))     # hashed, never in clear

    b = broker_factory(config=broker_config(region))
    point_gateway(region["cfg"], b.url)
    produced = region["dir"] / "produced.json"
    # the gateway's persistent session (its shared subscription) exists from a first start, as at a
    # deployed site: the broker queues readings for it while no gateway process runs
    GatewayProcess(region["cfg"]).start(timeout=30).terminate()
    # 2. the fleet runs 8 s (one reading a second each); the gateway joins late, is killed, restarted
    fleet = subprocess.Popen([sys.executable, "-m", "host", "sim", "fleet", "--devices", str(n), "--clinics", "2",
                              "--interval", "1", "--duration", "8", "--drain", "90", "--broker", b.url,
                              "--state", str(state), "--produced", str(produced), "--json"],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.5)
        gw = GatewayProcess(region["cfg"]).start(timeout=30)
        time.sleep(2.5)
        gw.kill()
        time.sleep(1.0)
        gw = GatewayProcess(region["cfg"]).start(timeout=30)
        out, err = fleet.communicate(timeout=150)
    finally:
        if fleet.poll() is None:
            fleet.kill()
        gw.terminate()
    assert fleet.returncode == 0, out[-3000:] + err[-3000:]
    lines = [json.loads(x) for x in out.strip().splitlines()]
    ticks, summary = lines[:-1], lines[-1]
    assert len(ticks) >= 8 and all({"t", "connected", "produced", "acked", "waiting"} <= set(t) for t in ticks)
    assert max(t["connected"] for t in ticks) == n
    assert any(t["waiting"] > 0 for t in ticks)            # readings waited for the late/killed gateway
    assert summary["ok"] and summary["devices"] == n and summary["waiting"] == 0
    assert summary["readings_produced"] >= n * 7
    assert summary["acked"] == summary["readings_produced"]

    made = json.loads(produced.read_text())
    assert sorted(made) == sorted(ids)
    want = sorted((d, s) for d, seqs in made.items() for s in seqs)
    assert len(want) == summary["readings_produced"]
    got = sorted(rows(region["db"], "SELECT device_id, seq FROM readings"))
    assert got == want                                      # every reading once, nothing else

    # 3. a second run with the same identities: registration keeps them, seq continues
    again = nabd("sim", "fleet", "--devices", str(n), "--interval", "1", "--broker", b.url, "--state", str(state),
                 "--gateway", str(region["cfg"]), "--duration", "0", "--drain", "5", "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    last = json.loads(again.stdout.strip().splitlines()[-1])
    assert last["registration"]["already_registered"] == n and last["readings_produced"] == 0


def test_outbox_overflow_drops_are_reported_in_status_and_shown_by_the_gateway(region, broker_factory):
    """A link down for longer than the outbox holds: the device drops its oldest readings, counts
    them in its status, and `nabd-gateway devices list` shows the count; the rest arrive once."""
    from host.commands.fleet import register_fleet
    from sim.fleet import Fleet

    b = broker_factory(config=broker_config(region))
    fleet = Fleet(region["dir"] / "small", 2, [b.url], outbox_capacity=3)
    register_fleet(fleet, str(region["cfg"]), [str(region["passwd"])])
    b.restart()                                     # reads the new password lines
    point_gateway(region["cfg"], b.url)
    with GatewayProcess(region["cfg"]):
        fleet.pump(lambda: fleet.counts()["connected"] == 2, 30)
        fleet.outage({0}, True)
        fleet.pump(lambda: False, 0.5)
        for _ in range(5):
            fleet.measure_all()                      # 5 readings into an outbox of 3: 2 dropped each
        assert fleet.counts()["drops"] == 4
        fleet.outage({0}, False)
        ids = [d.cfg.device_id for d in fleet.devices]

        def shown():
            p = subprocess.run([sys.executable, "-m", "gateway.cli", "devices", "list", "--config",
                                str(region["cfg"]), "--json"], cwd=REPO, capture_output=True, text=True, timeout=60)
            return {d["id"]: d["drops"] for d in json.loads(p.stdout) if d["id"] in ids}

        fleet.pump(lambda: fleet.counts()["waiting"] == 0, 60)
        end = time.monotonic() + 30
        while shown() != {i: 2 for i in ids} and time.monotonic() < end:
            fleet.pump(lambda: False, 0.5)
        assert shown() == {i: 2 for i in ids}
        for d in fleet.devices:
            d.uplink.close()
    got = sorted(rows(region["db"], "SELECT device_id, seq FROM readings"))
    assert got == sorted((i, s) for i, seqs in fleet.produced().items() for s in seqs[2:])   # the 3 newest


def test_procs_run_the_same_identities_in_shards_and_sum_the_report(region, broker_factory):
    """--procs 3: the identities registered by a one-process run connect from three processes
    (device i in process i % 3); the per-second lines and the summary count all of them, and
    every reading produced is stored exactly once."""
    n, state = 6, region["dir"] / "fleet"
    reg = nabd("sim", "fleet", "--devices", str(n), "--clinics", "2", "--interval", "1", "--broker",
               "mqtt://127.0.0.1:1", "--state", str(state), "--gateway", str(region["cfg"]),
               "--broker-passwd", str(region["passwd"]), "--register-only", "--json")
    assert reg.returncode == 0, reg.stdout + reg.stderr
    b = broker_factory(config=broker_config(region))
    point_gateway(region["cfg"], b.url)
    produced = region["dir"] / "produced.json"
    with GatewayProcess(region["cfg"]):
        p = nabd("sim", "fleet", "--devices", str(n), "--clinics", "2", "--procs", "3", "--interval", "1",
                 "--duration", "4", "--drain", "60", "--broker", b.url, "--state", str(state),
                 "--produced", str(produced), "--json", timeout=150)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    lines = [json.loads(x) for x in p.stdout.strip().splitlines()]
    ticks, summary = lines[:-1], lines[-1]
    assert ticks and max(t["connected"] for t in ticks) == n
    assert all(t["produced"] >= t["acked"] for t in ticks)
    assert summary["procs"] == 3 and summary["devices"] == n and summary["waiting"] == 0
    assert summary["readings_produced"] >= n * 3 and summary["acked"] == summary["readings_produced"]
    made = json.loads(produced.read_text())
    ids = [json.loads((state / f"dev-{i:05d}" / "config.json").read_text())["device_id"] for i in range(n)]
    assert sorted(made) == sorted(ids)
    want = sorted((d, s) for d, seqs in made.items() for s in seqs)
    assert len(want) == summary["readings_produced"]
    assert sorted(rows(region["db"], "SELECT device_id, seq FROM readings")) == want
