"""`nabd provision` against the virtual device and a gateway configuration (SQLite), through real
processes: registration in the same step, key rotation at both ends, a refusing gateway leaving the
device as it was, the registration-file route through `nabd-gateway devices add --from`."""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.host.test_virtual_device import Device as VDevice

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run(tool: str, *args: str, env=None, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / tool), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)


@pytest.fixture
def gateway(tmp_path):
    cfg = tmp_path / "gw" / "gateway.toml"
    cfg.parent.mkdir()
    p = run("nabd-gateway", "init", "--config", str(cfg), "--json")
    assert p.returncode == 0, p.stderr
    return cfg


@pytest.fixture
def vdev(tmp_path, monkeypatch):
    monkeypatch.setenv("NABD_VIRTUAL_PORTS", str(tmp_path / "ports"))
    d = VDevice(tmp_path / "flash")
    yield d
    d.stop()


def devices(cfg: Path) -> dict:
    p = run("nabd-gateway", "devices", "list", "--config", str(cfg), "--json")
    assert p.returncode == 0, p.stderr
    return {d["id"]: d for d in json.loads(p.stdout)}


def provision(port: str, *extra: str, env=None) -> subprocess.CompletedProcess:
    return run("nabd", "provision", "--port", port, "--facility", "CS Azrou", "--region", "MA-06", *extra,
               env=env)


def test_provision_registers_then_reprovisioning_rotates_at_both_ends(vdev, gateway, tmp_path):
    passwd = tmp_path / "passwd"
    p = provision(vdev.port, "--gateway", str(gateway), "--broker", "mqtt://127.0.0.1:1883", "--wifi-ssid", "clinic",
                  "--broker-passwd", str(passwd), "--json", env={"NABD_WIFI_PSK": "correct horse"})
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    dev_id = out["device_id"]
    assert dev_id.startswith("nabd-") and out["key_version"] == 1 and not out["rotated"]
    cfg1 = json.loads((vdev.state / "config.json").read_text())
    assert cfg1["device_id"] == dev_id and cfg1["wifi"] == {"ssid": "clinic", "psk": "correct horse"}
    assert "correct horse" not in p.stdout + p.stderr and cfg1["key"] not in p.stdout + p.stderr
    assert not (vdev.state / "config.new").exists()
    assert devices(gateway)[dev_id]["key_version"] == 1
    line1 = passwd.read_text()
    assert line1.startswith(dev_id + ":$7$101$") and cfg1["mqtt_password"] not in line1

    p = provision(vdev.port, "--gateway", str(gateway), "--broker-passwd", str(passwd))
    assert p.returncode == 0, p.stderr
    assert "ROTATED to version 2" in p.stdout and "previous key stays valid" in p.stdout
    cfg2 = json.loads((vdev.state / "config.json").read_text())
    assert (cfg2["device_id"], cfg2["key_version"]) == (dev_id, 2)
    assert cfg2["key"] != cfg1["key"] and cfg2["mqtt_password"] != cfg1["mqtt_password"]
    assert cfg2["wifi"] == cfg1["wifi"] and cfg2["broker"] == cfg1["broker"]      # kept
    assert devices(gateway)[dev_id]["key_version"] == 2
    lines = passwd.read_text().splitlines()
    assert len(lines) == 1 and lines[0] != line1.strip()                             # replaced, not appended
    # the key the gateway holds is the device's
    from gateway.config import load
    from gateway.db import Database

    g = load(str(gateway))
    db = Database(g.database.url)
    with db.connect() as conn:
        row = conn.execute("SELECT key_enc FROM device_keys WHERE device_id = ? AND key_version = 2",
                           (dev_id,)).fetchone()
    from gateway import secrets as gsecrets

    assert gsecrets.decrypt_key(g.security.kek(), dev_id, 2, row[0]).secret == bytes.fromhex(cfg2["key"])


def test_a_refusing_gateway_leaves_the_device_as_it_was(vdev, gateway):
    p = provision(vdev.port, "--gateway", str(gateway), "--broker", "mqtt://127.0.0.1:1883")
    assert p.returncode == 0, p.stderr
    dev_id = json.loads((vdev.state / "config.json").read_text())["device_id"]
    before = (vdev.state / "config.json").read_bytes()
    assert run("nabd-gateway", "devices", "revoke", dev_id, "--config", str(gateway)).returncode == 0
    p = provision(vdev.port, "--gateway", str(gateway))
    assert p.returncode == 1 and "refused" in p.stderr and "unchanged" in p.stderr and p.stderr.count("\n") == 1
    assert (vdev.state / "config.json").read_bytes() == before
    assert sorted(x.name for x in vdev.state.iterdir() if x.name.startswith("config")) == ["config.json"]


def test_a_fresh_device_refused_stays_unprovisioned(vdev, gateway, tmp_path):
    # the gateway already knows this id as revoked (e.g. a board that was stolen and found)
    p = run("nabd", "info", "--port", vdev.port, "--json")
    uid = json.loads(p.stdout)["uid"]
    key = "11" * 32
    assert run("nabd-gateway", "devices", "add", f"nabd-{uid}", "--key", key, "--facility", "X", "--region", "MA-01",
               "--config", str(gateway)).returncode == 0
    assert run("nabd-gateway", "devices", "revoke", f"nabd-{uid}", "--config", str(gateway)).returncode == 0
    p = provision(vdev.port, "--gateway", str(gateway), "--broker", "mqtt://127.0.0.1:1883")
    assert p.returncode == 1 and "revoked" in p.stderr
    assert not any(x.name.startswith("config") for x in vdev.state.iterdir())
    info = json.loads(run("nabd", "info", "--port", vdev.port, "--json").stdout)
    assert info["device_id"] is None


def test_registration_file_imported_by_the_gateway(vdev, gateway, tmp_path):
    reg = tmp_path / "reg.json"
    p = provision(vdev.port, "--registration", str(reg), "--broker", "mqtt://127.0.0.1:1883")
    assert p.returncode == 0, p.stderr
    assert stat.S_IMODE(reg.stat().st_mode) == 0o600
    data = json.loads(reg.read_text())
    cfg = json.loads((vdev.state / "config.json").read_text())
    assert data["key"] == cfg["key"] and cfg["mqtt_password"] not in reg.read_text()
    passwd = tmp_path / "passwd"
    passwd.write_text("nabd.gateway:$7$101$x$y\n")
    p = run("nabd-gateway", "devices", "add", "--from", str(reg), "--broker-passwd", str(passwd),
            "--config", str(gateway), "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["action"] == "added"
    assert devices(gateway)[cfg["device_id"]]["key_version"] == 1
    assert passwd.read_text().splitlines()[0] == "nabd.gateway:$7$101$x$y"       # other users kept
    # the same file again: version 1 is not the next one
    p = run("nabd-gateway", "devices", "add", "--from", str(reg), "--config", str(gateway))
    assert p.returncode == 1 and "expected 2" in p.stderr
    # a re-provisioned device's file rotates the key
    p = provision(vdev.port, "--registration", str(reg))
    assert p.returncode == 0 and "ROTATED" in p.stdout
    p = run("nabd-gateway", "devices", "add", "--from", str(reg), "--config", str(gateway), "--json")
    assert p.returncode == 0 and json.loads(p.stdout) ["action"] == "rotated"
    assert devices(gateway)[cfg["device_id"]]["key_version"] == 2


def test_bad_input_is_refused_before_touching_the_device(vdev, gateway, tmp_path):
    p = provision(vdev.port, "--gateway", str(gateway), "--broker", "mqtt://x:1", "--wifi-ssid", "clinic")
    assert p.returncode == 2 and "NABD_WIFI_PSK" in p.stderr               # no terminal to ask on, never argv
    p = provision(vdev.port, "--broker", "mqtt://x:1")
    assert p.returncode == 2 and "--gateway" in p.stderr
    p = provision(vdev.port, "--gateway", "https://gw.example/admin", "--broker", "mqtt://x:1")
    assert p.returncode == 2 and "--registration" in p.stderr
    p = run("nabd", "provision", "--port", vdev.port, "--facility", "F", "--region", "MA-99", "--gateway",
            str(gateway), "--broker", "mqtt://x:1")
    assert p.returncode == 2 and "--region" in p.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "nabd-registration/1", "device_id": "nabd-x1"}')
    p = run("nabd-gateway", "devices", "add", "--from", str(bad), "--config", str(gateway))
    assert p.returncode == 4 and "key" in p.stderr
    assert not any(x.name.startswith("config") for x in vdev.state.iterdir())


def test_the_broker_accepts_the_hashed_password(tmp_path):
    """The registration's $7$ line is what mosquitto_passwd writes: the real Mosquitto accepts it."""
    import shutil
    import socket
    import time

    import paho.mqtt.client as mqtt

    from gateway.registration import broker_passwd_line

    if not shutil.which("mosquitto"):
        pytest.skip("mosquitto is not installed (make setup)")
    (tmp_path / "passwd").write_text(broker_passwd_line("nabd-abc123", "s3cret-pass") + "\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "m.conf").write_text(f"user root\nallow_anonymous false\npassword_file {tmp_path / 'passwd'}\n"
                                     f"listener {port} 127.0.0.1\n")
    os.chmod(tmp_path / "passwd", 0o644)
    broker = subprocess.Popen(["mosquitto", "-c", str(tmp_path / "m.conf")], stderr=subprocess.DEVNULL)
    try:
        def connect(pw: str) -> int:
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t", protocol=mqtt.MQTTv311)
            c.username_pw_set("nabd-abc123", pw)
            for _ in range(50):
                try:
                    return int(c.connect("127.0.0.1", port) == 0 and c.loop(1.0) == 0 and c.is_connected())
                except ConnectionRefusedError:
                    time.sleep(0.1)
            return -1

        assert connect("s3cret-pass") == 1
        assert connect("wrong-pass") == 0
    finally:
        broker.terminate()
        broker.wait(10)
