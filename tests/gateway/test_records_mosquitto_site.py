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


def client(broker, user, password, port_kind="tls", v5=False, client_id=None, clean=True):
    msgs: queue.Queue = queue.Queue()
    cid = client_id or user or f"anon-{uuid.uuid4().hex[:6]}"
    if v5:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
    else:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv311, clean_session=clean)
    if user is not None:
        c.username_pw_set(user, password)
    if port_kind == "tls":
        c.tls_set(ca_certs=str(broker["dir"] / "ca.crt"), cert_reqs=ssl.CERT_REQUIRED)
    result: queue.Queue = queue.Queue()
    c.on_connect = lambda cl, ud, flags, rc, props=None: result.put(rc)
    c.on_message = lambda cl, ud, m: msgs.put((m.topic, m.payload))
    c.disconnects = []
    c.on_disconnect = lambda cl, ud, *a: c.disconnects.append(a)
    if v5:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0 if clean else 3600
        c.connect("127.0.0.1", broker[port_kind], clean_start=clean, properties=props)
    else:
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


def _stop(*clients):
    for c in clients:
        c.loop_stop()
        c.disconnect()


def test_client_id_takeover_refused(site_broker):
    """Device A's password, connecting with device B's client id (clean session) or the gateway's,
    neither kicks that client nor wipes its session: the broker takes the client id from the
    username (use_username_as_clientid). B's command queued while it was away still arrives."""
    b_id, a_id = "nabd-0000000000b2", "nabd-0000000000a1"
    gw = client(site_broker, "nabd.gateway", USERS["nabd.gateway"], v5=True, clean=False)
    assert not gw.rc.is_failure
    b = client(site_broker, b_id, USERS[b_id], clean=False)
    b.subscribe(f"nabd/v1/dev/{b_id}/cmd", qos=1)
    time.sleep(0.3)
    _stop(b)                                    # B goes away; its session keeps the subscription
    gw.publish(f"nabd/v1/dev/{b_id}/cmd", b"cmd-for-B", qos=1).wait_for_publish(5)
    for cid in (b_id, "nabd.gateway"):          # A's credentials, someone else's client id
        thief = client(site_broker, a_id, USERS[a_id], client_id=cid, clean=True)
        assert not thief.rc.is_failure         # A may connect (as itself) ...
        time.sleep(0.3)
        _stop(thief)
    time.sleep(0.3)
    assert gw.is_connected() and gw.disconnects == []      # ... the gateway was not kicked
    b = client(site_broker, b_id, USERS[b_id], clean=False)
    assert ("nabd/v1/dev/nabd-0000000000b2/cmd", b"cmd-for-B") in drain(b.msgs, 1.0)
    _stop(gw, b)


def test_oversized_packets_refused(site_broker):
    """The protocol's largest message passes; a larger packet is refused at the broker, which
    disconnects the sender and queues nothing (max_packet_size)."""
    gw = client(site_broker, "nabd.gateway", USERS["nabd.gateway"], v5=True)
    gw.subscribe("$share/nabd-gateway/nabd/v1/dev/+/reading", qos=1)
    a = client(site_broker, "nabd-0000000000a1", USERS["nabd-0000000000a1"])
    time.sleep(0.3)
    topic = "nabd/v1/dev/nabd-0000000000a1/reading"
    a.publish(topic, b"r" * 2048, qos=1).wait_for_publish(5)
    assert drain(gw.msgs) == [(topic, b"r" * 2048)]
    a.publish(topic, b"x" * 4000, qos=1)
    time.sleep(1.0)
    assert drain(gw.msgs) == []
    assert a.disconnects, "the broker kept a client that sent an oversized packet"
    _stop(gw, a)
