"""The ingest's network process on its hot path (gateway/ingest.py): the broker socket read through
``ReadBuffer``, and the PUBLISH fast path of ``_Client``, which must hand on exactly what paho's
own decoding gives, and leave every other packet to paho."""
from __future__ import annotations

import socket
import struct

import paho.mqtt.client as mqtt
import pytest

from gateway.ingest import ReadBuffer, _Client


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _publish(topic: bytes, payload: bytes, qos: int = 1, retain: bool = False, mid: int = 7,
             props: bytes = b"", dup: bool = False) -> tuple[int, bytearray]:
    """(command byte, the packet after the fixed header) of an MQTT 5 PUBLISH."""
    cmd = 0x30 | (qos << 1) | (0x01 if retain else 0) | (0x08 if dup else 0)
    body = struct.pack("!H", len(topic)) + topic + (struct.pack("!H", mid) if qos else b"")
    return cmd, bytearray(body + _varint(len(props)) + props + payload)


def _clients():
    """A stock paho client and ours, both MQTT 5 with manual acks, each recording what it hands on."""
    got: dict[str, list] = {"stock": [], "fast": [], "slow": []}
    stock = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, manual_ack=True)
    stock.on_message = lambda c, u, m: got["stock"].append((m.topic, bytes(m.payload), m.mid, m.qos, bool(m.retain)))
    ours = _Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, manual_ack=True)
    # the topic as received (bytes): paho's ``topic`` raises on one that is not UTF-8
    ours.on_message = lambda c, u, m: got["slow"].append((m._topic.decode("utf-8", "replace"), bytes(m.payload),
                                                          m.mid, m.qos, bool(m.retain)))
    ours.on_publish_fast = lambda topic, raw, mid, retain: got["fast"].append((topic, raw, mid, 1, retain))
    return stock, ours, got


def _feed(client: mqtt.Client, cmd: int, packet: bytearray) -> None:
    client._in_packet = {"command": cmd, "packet": bytearray(packet), "have_remaining": 1, "remaining_count": [],
                         "remaining_mult": 1, "remaining_length": len(packet), "to_process": 0, "pos": 0}
    assert client._handle_publish() == mqtt.MQTT_ERR_SUCCESS


@pytest.mark.parametrize("topic,payload,retain,mid,dup", [
    (b"nabd/v1/dev/nabd-0001/reading", b"eyJhbGciOi.x.y" * 40, False, 1, False),
    (b"nabd/v1/dev/nabd-0001/status", b"", True, 65535, True),
    (b"nabd/v1/dev/\xd9\x86\xd8\xa8\xd8\xb6/reading", bytes(range(256)), False, 300, False),   # UTF-8 topic
])
def test_the_fast_path_hands_on_what_paho_decodes(topic, payload, retain, mid, dup):
    stock, ours, got = _clients()
    cmd, packet = _publish(topic, payload, retain=retain, mid=mid, dup=dup)
    _feed(stock, cmd, packet)
    _feed(ours, cmd, packet)
    assert got["fast"] == got["stock"] and len(got["stock"]) == 1
    assert got["slow"] == []


@pytest.mark.parametrize("case", ["qos0", "properties", "bad_utf8_topic"])
def test_every_other_publish_goes_through_paho_unchanged(case):
    stock, ours, got = _clients()
    topic, qos, props = b"nabd/v1/dev/nabd-0001/reading", 1, b""
    if case == "qos0":
        qos = 0
    elif case == "properties":
        props = b"\x02" + struct.pack("!I", 60)          # Message Expiry Interval 60 s
    else:
        topic = b"nabd/v1/dev/\xff\xfe/reading"
    cmd, packet = _publish(topic, b"payload", qos=qos, props=props)
    if case == "bad_utf8_topic":   # paho's message, whose ``topic`` raises when read: as before
        _feed(ours, cmd, packet)
        assert got["fast"] == [] and len(got["slow"]) == 1
        return
    _feed(stock, cmd, packet)
    _feed(ours, cmd, packet)
    assert got["fast"] == []
    assert got["slow"] == got["stock"] and len(got["stock"]) == 1


def test_a_client_without_the_fast_handler_is_stock_paho():
    _, ours, got = _clients()
    ours.on_publish_fast = None
    _feed(ours, *_publish(b"nabd/v1/dev/nabd-0001/reading", b"x"))
    assert got["fast"] == [] and got["slow"] == [("nabd/v1/dev/nabd-0001/reading", b"x", 7, 1, False)]


def test_read_buffer_serves_small_reads_from_one_recv_and_reports_what_it_holds():
    a, b = socket.socketpair()
    try:
        a.sendall(b"\x32\x05hello\x40\x02\x00\x07")
        buf = ReadBuffer(b)
        assert buf.recv(1) == b"\x32"
        assert buf.pending() == 10
        assert buf.recv(1) == b"\x05"
        assert buf.recv(5) == b"hello"
        assert buf.recv(100) == b"\x40\x02\x00\x07"      # never more than it holds: the rest is the kernel's
        assert buf.pending() == 0
        b.setblocking(False)
        with pytest.raises(BlockingIOError):               # nothing buffered, nothing on the socket
            buf.recv(1)
        assert buf.fileno() == b.fileno()                  # everything else is the socket's own
        a.sendall(b"xy")
        assert buf.recv(1) == b"x" and buf.pending() == 1 and buf.recv(1) == b"y"
        a.close()
        b.setblocking(True)
        assert buf.recv(1) == b""                          # EOF: paho sees the connection lost
    finally:
        b.close()

