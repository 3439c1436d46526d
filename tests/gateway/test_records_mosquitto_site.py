"""The shipped site broker configuration (gateway/mosquitto/) on the real Mosquitto: TLS listener,
per-device passwords, the protocol's ACL, the gateway user reading every device's readings."""
from __future__ import annotations

import os
import queue
import re
import ssl
import subprocess
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from tests.conftest import free_port, mosquitto_bin, wait_port

SITE = Path(__file__).resolve().parents[2] / "gateway" / "mosquitto"
pytestmark = pytest.mark.broker

USERS = {"nabd.gateway": "gw-pass-1", "nabd-0000000000a1": "dev-a-pass", "nabd-0000000000b2": "dev-b-pass"}


def _certs(d: Path) -> None:
    def run(*a):
        subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=nabd test site CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=localhost")
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf")


@pytest.fixture
def site_broker(tmp_path):
    d = tmp_path / "site"
    (d / "data").mkdir(parents=True)
    _certs(d)
    passwd = d / "passwd"
    passwd.touch()
    for user, pw in USERS.items():   # the operations guide's procedure: mosquitto_passwd -b
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, pw], check=True, capture_output=True)
    (d / "acl").write_text((SITE / "acl").read_text())
    tls_port, plain_port = free_port(), free_port()
    conf = (SITE / "mosquitto.conf").read_text()
    conf = conf.replace("/etc/mosquitto/nabd/", f"{d}/").replace("/var/lib/mosquitto/", f"{d}/data/")
    conf = re.sub(r"^listener 8883$", f"listener {tls_port} 127.0.0.1", conf, flags=re.M)
    conf = re.sub(r"^listener 1883 127.0.0.1$", f"listener {plain_port} 127.0.0.1", conf, flags=re.M)
    conf = conf.replace("log_dest syslog", f"log_dest file {d}/mosquitto.log")
    if os.geteuid() == 0:  # the test's files live in root's private temp folder
        conf = conf.replace("\nuser mosquitto\n", "\nuser root\n")
    assert f"{d}/passwd" in conf and f"{d}/server.key" in conf and "allow_anonymous false" in conf
    (d / "mosquitto.conf").write_text(conf)
    proc = subprocess.Popen([mosquitto_bin(), "-c", str(d / "mosquitto.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        wait_port(tls_port)
        wait_port(plain_port)
    except TimeoutError:
        proc.kill()
        raise RuntimeError("mosquitto did not start: " + proc.stderr.read().decode()) from None
    yield {"dir": d, "tls": tls_port, "plain": plain_port}
    proc.terminate()
    proc.wait(timeout=10)


def client(broker, user, password, port_kind="tls", v5=False):
    msgs: queue.Queue = queue.Queue()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user or f"anon-{uuid.uuid4().hex[:6]}",
                    protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
    if user is not None:
        c.username_pw_set(user, password)
    if port_kind == "tls":
        c.tls_set(ca_certs=str(broker["dir"] / "ca.crt"), cert_reqs=ssl.CERT_REQUIRED)
    result: queue.Queue = queue.Queue()
    c.on_connect = lambda cl, ud, flags, rc, props=None: result.put(rc)
    c.on_message = lambda cl, ud, m: msgs.put((m.topic, m.payload))
    c.connect("127.0.0.1", broker[port_kind])
    c.loop_start()
    rc = result.get(timeout=10)
    c.msgs = msgs
    c.rc = rc
    return c


def drain(q, wait=0.6):
    out = []
    end = time.monotonic() + wait
    while time.monotonic() < end:
        try:
            out.append(q.get(timeout=0.05))
        except queue.Empty:
            pass
    return out


def test_site_config_acl_and_tls(site_broker):
    gw = client(site_broker, "nabd.gateway", USERS["nabd.gateway"], v5=True)
    assert not gw.rc.is_failure
    gw.subscribe("$share/nabd-gateway/nabd/v1/dev/+/reading", qos=1)
    gw.subscribe("nabd/v1/dev/+/status", qos=1)
    a = client(site_broker, "nabd-0000000000a1", USERS["nabd-0000000000a1"])
    b = client(site_broker, "nabd-0000000000b2", USERS["nabd-0000000000b2"])
    a.subscribe("nabd/v1/dev/+/ack", qos=1)        # allowed to ask; only its own ack may arrive
    a.subscribe("nabd/v1/dev/+/reading", qos=1)    # may not read anybody's readings
    time.sleep(0.3)

    a.publish("nabd/v1/dev/nabd-0000000000a1/reading", b"A-own", qos=1).wait_for_publish(5)
    a.publish("nabd/v1/dev/nabd-0000000000b2/reading", b"A-forged-as-B", qos=1).wait_for_publish(5)
    a.publish("nabd/v1/dev/nabd-0000000000a1/status", b"A-status", qos=1, retain=True).wait_for_publish(5)
    b.publish("nabd/v1/dev/nabd-0000000000b2/reading", b"B-own", qos=1).wait_for_publish(5)
    got = drain(gw.msgs)
    assert ("nabd/v1/dev/nabd-0000000000a1/reading", b"A-own") in got
    assert ("nabd/v1/dev/nabd-0000000000b2/reading", b"B-own") in got
    assert ("nabd/v1/dev/nabd-0000000000a1/status", b"A-status") in got
    assert all(p != b"A-forged-as-B" for _, p in got)

    gw.publish("nabd/v1/dev/nabd-0000000000a1/ack", b"ack-A", qos=1).wait_for_publish(5)
    gw.publish("nabd/v1/dev/nabd-0000000000b2/ack", b"ack-B", qos=1).wait_for_publish(5)
    got_a = drain(a.msgs)
    assert got_a == [("nabd/v1/dev/nabd-0000000000a1/ack", b"ack-A")]   # no B ack, no readings at all
    for c in (gw, a, b):
        c.loop_stop()
        c.disconnect()


@pytest.mark.parametrize("user,password,port", [(None, None, "tls"), ("nabd-0000000000a1", "wrong", "tls"),
                                                ("nabd-0000000000a1", "dev-a-pass", "plain-anon")])
def test_refused_connections(site_broker, user, password, port):
    if port == "plain-anon":
        # loopback listener: the same password rules apply (anonymous refused)
        c = client(site_broker, None, None, port_kind="plain")
    else:
        c = client(site_broker, user, password, port_kind=port)
    assert c.rc.is_failure
    c.loop_stop()


def test_plaintext_client_cannot_use_tls_listener(site_broker):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="x", protocol=mqtt.MQTTv311)
    c.username_pw_set("nabd-0000000000a1", USERS["nabd-0000000000a1"])
    with pytest.raises((OSError, ConnectionError)):
        c.connect("127.0.0.1", site_broker["tls"], keepalive=5)
        for _ in range(50):
            c.loop(timeout=0.1)
            if c.is_connected():
                break
        assert not c.is_connected()
        raise ConnectionError("not connected")
