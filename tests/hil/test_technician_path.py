"""The technician's whole path on one rig, through the `nabd` commands as a technician types them:
ports -> flash -> deploy -> provision (at a running gateway) -> calibrate temp -> calibrate spo2 ->
selftest -> monitor, then one reading reaches the gateway and is acknowledged; config,
calibration and registration are read back at the end.

    pytest tests/hil                                   # virtual device and bootloader (CI)
    pytest tests/hil --port /dev/ttyUSB0 --bootloader-port /dev/ttyUSB1 --image ESP32_GENERIC-nabd.bin
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from host.site import Site

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def nabd(*args: str, timeout: float = 300, env: dict | None = None) -> dict:
    p = subprocess.run([str(BIN / "nabd"), *args, "--json"], capture_output=True, text=True, timeout=timeout,
                       cwd=REPO, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, f"nabd {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_the_whole_technician_session(rig, tmp_path):
    if not rig.virtual and not sys.stdin.isatty():
        pytest.skip("a real rig needs a technician at the terminal for the reference instruments")
    t0 = time.monotonic()
    steps = {}

    def step(name):
        steps[name] = round(time.monotonic() - t0, 1)

    with Site(tmp_path / "site") as site:
        site.setup()
        site.start()
        step("site up")
        # 1. ports: the device and the bootloader are where the technician looks
        ports = {p["port"]: p for p in nabd("ports")["ports"]}
        assert rig.port in ports and rig.boot_port in ports
        step("ports")
        # 2. flash the board in its bootloader
        image = Path(rig.image) if rig.image else tmp_path / "image.bin"
        if not rig.image:
            from tests.host.test_tech_flash import make_image

            make_image(image, 60000)
        out = nabd("flash", "--port", rig.boot_port, str(image))
        assert out["ok"] and out["size"] == image.stat().st_size
        step("flash")
        # 3. deploy the firmware
        out = nabd("deploy", "--port", rig.port)
        assert out["ok"] and out["loaded_from"].endswith(".mpy")
        step("deploy")
        # 4. provision at the running gateway (its configuration, the broker's password file)
        passwd = site.broker_dir / "passwd"
        out = nabd("provision", "--port", rig.port, "--facility", site.facility, "--region", site.region,
                   "--gateway", str(site.gw_config), "--broker", site.broker_url, "--broker-passwd", str(passwd),
                   "--wifi-ssid", "clinic", env={"NABD_WIFI_PSK": "clinic-wifi-pass"})
        device_id = out["device_id"]
        if os.geteuid() == 0:                     # the broker runs as its own user: keep it able to read
            import pwd

            try:
                mq = pwd.getpwnam("mosquitto")
                os.chown(passwd, mq.pw_uid, mq.pw_gid)
            except KeyError:
                pass
        site.procs[0].send_signal(signal.SIGHUP)     # the broker re-reads its password file
        step("provision")
        # 5, 6. calibration against the (virtual) instruments
        temp = nabd("calibrate", "temp", "--port", rig.port, "--points", "35,37,41", "--by", "HIL",
                    "--out", str(tmp_path / "records"))
        spo2 = nabd("calibrate", "spo2", "--port", rig.port, "--by", "HIL", "--out", str(tmp_path / "records"))
        assert temp["accepted"] and spo2["accepted"]
        step("calibrate")
        # 7. self-test
        assert nabd("selftest", "--port", rig.port)["ok"]
        step("selftest")
        # 8. monitor: one measurement, recorded in the device's outbox
        events = subprocess.run([str(BIN / "nabd"), "monitor", "--port", rig.port, "--measure", "1", "--json"],
                                capture_output=True, text=True, timeout=300, cwd=REPO).stdout.splitlines()
        readings = [json.loads(e)["reading"] for e in events if '"reading"' in e]
        assert len(readings) == 1 and readings[0]["seq"] == 1
        step("monitor")
        # the reading reaches the gateway and is acknowledged: the virtual device's interpreter has no
        # sockets, so the same firmware on the same flash runs under CPython with real sockets
        # (`nabd sim run`); a board sends it over its own Wi-Fi
        if rig.virtual:
            rig.stop_device()
            p = subprocess.run([str(BIN / "nabd"), "sim", "run", "--state", str(rig.state), "--broker",
                                site.broker_url, "--readings", "1", "--timeout", "120", "--json"],
                               capture_output=True, text=True, timeout=240, cwd=REPO)
            run = json.loads(p.stdout.strip().splitlines()[-1])
            assert p.returncode == 0 and run["ok"] and run["queued"] == 0, p.stdout + p.stderr
            assert run["acked"] >= 2, run           # the reading taken under monitor, and this one
            rig.start_device()
        deadline = time.monotonic() + 60
        while True:
            p = subprocess.run([str(BIN / "nabd-gateway"), "devices", "list", "--config", str(site.gw_config),
                                "--json"], capture_output=True, text=True, timeout=60, cwd=REPO)
            dev = {d["id"]: d for d in json.loads(p.stdout)}[device_id]
            if dev["readings"] >= 1 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert dev["readings"] >= 1 and dev["key_version"] == 1
        step("acknowledged")
        # read back: config, calibration and registration
        info = nabd("info", "--port", rig.port)
        assert info["device_id"] == device_id and info["outbox"] == 0
        assert info["calibration"]["id"] == spo2["calibration"]["id"]
        assert info["calibration"]["temp_gain"] == temp["fit"]["gain"]
        assert info["calibration"]["spo2"] == spo2["fit"]["coeffs"]
        assert info["facility"] == site.facility and info["wifi_ssid"] == "clinic"
        step("read back")
    print(f"\nwhole technician session: {time.monotonic() - t0:.1f} s; steps (cumulative s): {steps}")
