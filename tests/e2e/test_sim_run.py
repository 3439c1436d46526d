"""`nabd sim run` end to end: the unchanged firmware on the simulated board (CPython, real sockets)
-> real Mosquitto -> the real gateway (`nabd-gateway serve`, SQLite) -> signed acks back to the
device, whose flash lives in a state folder kept across runs."""
from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from tests.support.harness import GatewayProcess, register, rows, write_config

pytestmark = [pytest.mark.broker]

REPO = Path(__file__).resolve().parents[2]


def nabd(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "host", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def identity(state: Path) -> dict:
    p = nabd("sim", "identity", "--state", str(state), "--json")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def run(state: Path, broker_url: str, *extra: str) -> tuple[int, dict]:
    p = nabd("sim", "run", "--state", str(state), "--broker", broker_url, "--json", *extra)
    assert p.stdout.strip(), p.stderr
    return p.returncode, json.loads(p.stdout.strip().splitlines()[-1])


@pytest.fixture
def site(broker_factory, tmp_path):
    """A state folder with an identity, registered with a gateway on a real broker."""
    state = tmp_path / "device"
    ident = identity(state)
    b = broker_factory()
    db_url = f"sqlite:///{tmp_path}/gateway.db"
    cfg = write_config(tmp_path / "gw", b.url, db_url)
    dev = types.SimpleNamespace(id=ident["device_id"], key=bytes.fromhex(ident["key"]),
                                key_version=ident["key_version"])
    register(cfg, [dev])
    return types.SimpleNamespace(state=state, broker=b, db=db_url, cfg=cfg, ident=ident)


def stored(db_url: str, device_id: str) -> list[int]:
    return sorted(r[0] for r in rows(db_url, "SELECT seq FROM readings WHERE device_id = ?", (device_id,)))


def test_identity_is_kept_and_run_prints_no_secret(site):
    again = identity(site.state)
    assert again == site.ident
    cfgfile = json.loads((site.state / "config.json").read_text())
    assert cfgfile["device_id"] == site.ident["device_id"]
    with GatewayProcess(site.cfg):
        p = nabd("sim", "run", "--state", str(site.state), "--broker", site.broker.url, "--readings", "1")
    assert p.returncode == 0, p.stdout + p.stderr
    assert site.ident["key"] not in p.stdout + p.stderr
    assert site.ident["mqtt_password"] not in p.stdout + p.stderr
    assert "acknowledged" in p.stdout
    log = (site.state / "log.txt").read_text()
    assert site.ident["key"] not in log and site.ident["mqtt_password"] not in log


def test_readings_arrive_and_seq_continues_across_runs(site):
    with GatewayProcess(site.cfg):
        rc, out = run(site.state, site.broker.url, "--readings", "2", "--scenario", "normal", "--seed", "3")
        assert rc == 0, out
        assert out["seqs"] == [1, 2] and out["queued"] == 0
        truth = out["results"][0]
        assert 90 <= truth["spo2"] <= 100 and 40 <= truth["hr"] <= 130
        assert 3550 <= truth["temp_cc"] <= 3800
        rc, out = run(site.state, site.broker.url, "--readings", "1", "--scenario", "fever", "--seed", "4")
        assert rc == 0, out
        # seq numbers are reserved on flash in blocks: a restart may skip ahead, never reuse
        (s3,) = out["seqs"]
        assert s3 > 2 and out["seq_before"] >= 2, out
        assert "fever" in out["results"][0]["alerts"]
    got = stored(site.db, site.ident["device_id"])
    assert got == [1, 2, s3]
    obs = rows(site.db, "SELECT code FROM observations")
    assert {o[0] for o in obs} >= {"temp", "spo2", "hr"}


def test_with_the_optional_accelerometer_fitted_a_still_device_measures_as_without(site):
    with GatewayProcess(site.cfg):
        rc, out = run(site.state, site.broker.url, "--readings", "1", "--seed", "3", "--accel")
    assert rc == 0, out
    r = out["results"][0]
    assert r["reason"] is None and 90 <= r["spo2"] <= 100 and 40 <= r["hr"] <= 130
    assert stored(site.db, site.ident["device_id"]) == out["seqs"]


def test_broker_down_keeps_outbox_then_next_run_delivers(site):
    site.broker.stop()
    rc, out = run(site.state, site.broker.url, "--readings", "2", "--timeout", "6")
    assert rc == 3, out  # connection error: the broker never answered (the readings are kept)
    assert out["exit"] == 3 and site.broker.url in out["error"] and "refused" in out["error"]
    assert out["timed_out"] and out["queued"] == 2 and out["seqs"] == [1, 2] and out["connects"] == 0
    assert (site.state / "outbox.bin").stat().st_size > 0
    site.broker.start()
    with GatewayProcess(site.cfg):
        rc, out = run(site.state, site.broker.url, "--readings", "1", "--timeout", "60")
        assert rc == 0, out
        assert out["waiting_before"] == 2 and out["queued"] == 0
        (s3,) = out["seqs"]
        assert s3 > 2
    assert stored(site.db, site.ident["device_id"]) == [1, 2, s3]


def test_bad_arguments_are_usage_errors(tmp_path):
    p = nabd("sim", "run", "--state", str(tmp_path / "s"), "--broker", "http://x:1")
    assert p.returncode == 2 and "broker" in p.stderr
    p = nabd("sim", "run", "--state", str(tmp_path / "s"), "--broker", "mqtt://127.0.0.1:1",
             "--scenario", "nope")
    assert p.returncode == 2 and "unknown scenario" in p.stderr
