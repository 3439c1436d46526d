"""`nabd deploy` on the virtual device: compiled .mpy files copied when their hash differs, the
device soft-rebooted and running them (the version read back from the deployed files)."""
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.host.test_virtual_device import Device as VDevice
from tests.host.test_virtual_device import mpremote

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture
def vdev(tmp_path, monkeypatch):
    monkeypatch.setenv("NABD_VIRTUAL_PORTS", str(tmp_path / "ports"))
    d = VDevice(tmp_path / "flash")
    yield d
    d.stop()


def deploy(port: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "nabd"), "deploy", "--port", port, "--json", *extra], capture_output=True,
                          text=True, timeout=300, cwd=REPO)


def test_deploy_copies_what_changed_and_the_device_runs_it(vdev):
    p = deploy(vdev.port)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    n = len(list((REPO / "firmware").rglob("*.py")))
    assert out["ok"] and out["files"] == n and out["copied"] == n
    assert out["loaded_from"] == "firmware/version.mpy" and out["code_bytes"] > 0
    assert (vdev.state / "firmware" / "app.mpy").read_bytes()[:1] == b"M"       # an .mpy file
    assert (vdev.state / "boot.py").exists()
    # nothing changed: nothing copied
    out = json.loads(deploy(vdev.port).stdout)
    assert out["ok"] and out["copied"] == 0 and out["unchanged"] == n
    # one file differs on the device, one stale file the checkout does not have
    p = mpremote(vdev.port, "exec", "f = open('firmware/ui.mpy', 'ab'); f.write(b'x'); f.close()\n"
                 "f = open('firmware/gone.mpy', 'wb'); f.write(b'M'); f.close()")
    assert p.returncode == 0, p.stderr
    out = json.loads(deploy(vdev.port).stdout)
    assert out["ok"] and out["copied"] == 1 and out["removed"] == 1
    assert not (vdev.state / "firmware" / "gone.mpy").exists()
    p = subprocess.run([str(BIN / "nabd"), "selftest", "--port", vdev.port, "--json"], capture_output=True, text=True,
                       timeout=120, cwd=REPO)
    assert p.returncode == 0 and json.loads(p.stdout)["ok"], p.stdout + p.stderr


def test_a_device_that_stops_answering_mid_deploy(vdev):
    proc = subprocess.Popen([str(BIN / "nabd"), "deploy", "--port", vdev.port], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    first = proc.stdout.readline()                    # "32 of 32 files changed ...": copying starts
    assert "files changed" in first, first
    threading.Timer(0.5, lambda: os.kill(vdev.proc.pid, signal.SIGSTOP)).start()
    try:
        out, err = proc.communicate(timeout=200)
    finally:
        os.kill(vdev.proc.pid, signal.SIGCONT)
    assert proc.returncode == 3 and "stopped answering" in err, out + err
    assert err.strip().count("\n") == 0
    # every file on the device is either absent or whole (written through a .tmp and a rename)
    for f in (vdev.state / "firmware").rglob("*.mpy"):
        assert f.read_bytes()[:1] == b"M"


def test_micropython_without_nabd_is_named_and_deploy_installs_it(tmp_path, monkeypatch):
    """A board with MicroPython but another `firmware` package (not nabd's): every device command
    says so and points at `nabd deploy`, which installs nabd over it."""
    monkeypatch.setenv("NABD_VIRTUAL_PORTS", str(tmp_path / "ports"))
    state = tmp_path / "flash"
    (state / "firmware").mkdir(parents=True)
    (state / "firmware" / "__init__.py").write_text("")          # shadows the frozen image
    d = VDevice(state)
    try:
        p = subprocess.run([str(BIN / "nabd"), "info", "--port", d.port], capture_output=True, text=True,
                           timeout=60, cwd=REPO)
        assert p.returncode == 3 and "runs MicroPython but not the nabd firmware" in p.stderr, p.stderr
        assert f"nabd deploy --port {d.port}" in p.stderr
        p = deploy(d.port)
        assert p.returncode == 0 and json.loads(p.stdout)["ok"], p.stdout + p.stderr
        p = subprocess.run([str(BIN / "nabd"), "info", "--port", d.port, "--json"], capture_output=True, text=True,
                           timeout=60, cwd=REPO)
        assert p.returncode == 0, p.stderr
    finally:
        d.stop()
