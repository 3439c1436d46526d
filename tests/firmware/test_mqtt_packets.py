"""firmware/mqtt.py on the MicroPython VM: packets against fixed byte vectors (MQTT 3.1.1), and
the client against a scripted in-memory peer (the VM has no socket)."""
from __future__ import annotations

from pathlib import Path

import pytest

from firmware import mqtt

LENGTHS = {0: "00", 127: "7f", 128: "8001", 16383: "ff7f", 16384: "808001", 2097151: "ffff7f",
           2097152: "80808001", 268435455: "ffffff7f"}

VECTORS = {
    # CONNECT, user+password, retained QoS 1 will, clean session off, keep-alive 60
    "connect_packet('dev1', 'dev1', 'pw', 60, False, ('t', b'off', 1, True))":
        "1022" "00044d5154540" "4" "ec" "003c" "000464657631" "000174" "00036f6666" "000464657631" "00027077",
    "connect_packet('a', keepalive=60, clean=True)": "100d00044d51545404" "02" "003c" "000161",
    "publish_packet('a/b', b'hi', 1, False, 10)": "3209" "0003612f62" "000a" "6869",
    "publish_packet('a/b', b'hi', 1, True, 10, True)": "3b09" "0003612f62" "000a" "6869",
    "publish_packet('a/b', b'hi')": "3007" "0003612f62" "6869",
    "publish_packet('t', b'x' * 200, 1, False, 258)": "32cd01" "000174" "0102" + "78" * 200,
    "subscribe_packet(1, [('a/b', 1), ('c', 1)])": "820c" "0001" "0003612f6201" "00016301",
    "puback_packet(10)": "4002000a",
    "PINGREQ": "c000",
    "DISCONNECT": "e000",
}

# the scripted peer and helpers, run in the VM (tests/firmware/_mqttpeer.py)
PEER = Path(__file__).with_name("_mqttpeer.py").read_text()


def test_remaining_length_vectors(vm):
    vm.exec(PEER)
    got = vm.eval("[H(M.encode_length(n)) for n in " + repr(list(LENGTHS)) + "]")
    assert got == list(LENGTHS.values())
    assert vm.eval("[M.decode_length(U(h)) for h in " + repr(list(LENGTHS.values())) + "]") == [
        [n, len(h) // 2] for n, h in LENGTHS.items()]
    assert vm.eval("err(lambda: M.decode_length(U('ffffffff7f')))")[0] == "malformed remaining length"
    assert vm.eval("err(lambda: M.decode_length(U('ff')))")[0] == "truncated remaining length"
    for n, h in LENGTHS.items():  # the same module under CPython
        assert mqtt.encode_length(n).hex() == h


def test_packet_vectors(vm):
    vm.exec(PEER + "from firmware.mqtt import *\n")
    exprs = list(VECTORS)
    got = vm.eval("[H(x) for x in [" + ", ".join(exprs) + "]]")
    assert dict(zip(exprs, got, strict=True)) == VECTORS
    ns = vars(mqtt)
    assert {e: eval(e, ns).hex() for e in exprs} == VECTORS  # noqa: S307 - our own expressions


def test_session_with_scripted_peer(vm):
    vm.exec(PEER + "c, p = make(chunk=1)\n"  # byte by byte: reads must reassemble packets
            "p.feed('20020000')\nsp = c.connect(p, will=('st', b'off', 1, True))\n")
    assert vm.eval("[sp, c.connected]") == [False, True]
    assert vm.eval("p.take()").startswith("10")  # CONNECT went out
    # SUBACK arrives after a queued PUBLISH from the persistent session: both handled
    vm.exec("p.feed('3209' '0003612f62' '0007' '6869')\np.feed('9004000101' '80')\n"
            "codes = c.subscribe([('a/b', 1), ('c', 1)])\n")
    assert vm.eval("codes") == [1, 0x80]
    assert vm.eval("got") == [["a/b", "6869", False]]
    assert vm.eval("p.take()") == "820c" "0001" "0003612f6201" "00016301" "40020007"  # SUBSCRIBE, PUBACK 7
    # QoS 1 publish stays in flight until PUBACK; resent with DUP after retry_ms
    vm.exec("pid = c.publish('r', b'hello', 1)\nsent = p.take()\nc.poll()\n")
    assert vm.eval("[pid, sent, p.take(), list(c.inflight)]") == [2, "320a" "000172" "0002" + b"hello".hex(), "", [2]]
    vm.exec("clock.sleep_ms(5000)\nc.poll()\n")
    assert vm.eval("[p.take(), c.retransmits]") == ["3a0a" "000172" "0002" + b"hello".hex(), 1]
    vm.exec("p.feed('40020002')\nc.poll()\n")
    assert vm.eval("[acked, c.inflight]") == [[2], {}]
    # retained QoS 0 message, then keep-alive: PINGREQ at 30 s of silence, PINGRESP clears it
    vm.exec("p.feed('3105' '000174' '6f6b')\nc.poll()\n")
    assert vm.eval("got[-1]") == ["t", "6f6b", True]
    vm.exec("clock.sleep_ms(30000)\nc.poll()\n")
    assert vm.eval("p.take()") == "c000"
    vm.exec("p.feed('d000')\nc.poll()\nclock.sleep_ms(61000)\nc.poll()\n")
    assert vm.eval("p.take()") == "c000"  # a new ping, no error: the first was answered
    assert vm.eval("err(lambda: (clock.sleep_ms(61000), c.poll()))")[0] == "no PINGRESP within the keep-alive"


def test_reconnect_resends_inflight_with_dup(vm):
    vm.exec(PEER + "c, p = make()\np.feed('20020000')\nc.connect(p)\np.take()\n"
            "c.publish('r', b'a', 1)\nc.close()\nc2, p2 = make()\np = Peer()\np.feed('20020100')\n"
            "sp = c.connect(p)\n")
    connect = vm.eval("H(M.connect_packet('dev1', 'dev1', 'pw', 60))")
    assert vm.eval("[sp, p.take()]") == [True, connect + "3a06" "000172" "0001" "61"]


@pytest.mark.parametrize("script,expect", [
    ("20020005", ["connection refused: not authorized", 5]),
    ("20020004", ["connection refused: bad user name or password", 4]),
    ("9003000100", ["expected CONNACK, got packet 0x90", None]),
])
def test_connack_errors(vm, script, expect):
    vm.exec(PEER + f"c, p = make()\np.feed('{script}')\n")
    assert vm.eval("err(lambda: c.connect(p))") == expect


@pytest.mark.parametrize("script,msg", [
    ("3409000174000168690000", "QoS 2 PUBLISH received; the device subscribes with QoS <= 1"),
    ("10020000", "unexpected packet type 0x10"),
    ("30ffffffff7f", "malformed remaining length"),
    ("3080ff01", "packet of 32640 bytes exceeds the receive buffer"),
    ("4003000000", "malformed PUBACK"),
    ("3001", "read failed: "),  # body never arrives
])
def test_protocol_errors(vm, script, msg):
    vm.exec(PEER + "c, p = make()\np.feed('20020000')\nc.connect(p)\n" + f"p.feed('{script}')\n")
    assert vm.eval("err(c.poll)")[0].startswith(msg)


def test_closed_stream_and_nothing_to_read(vm):
    vm.exec(PEER + "c, p = make()\np.feed('20020000')\nc.connect(p)\n")
    assert vm.eval("c.poll()") == 0  # nothing there: returns at once
    vm.exec("p.eof = True\n")
    assert vm.eval("err(c.poll)")[0] == "connection closed by the broker"
    vm.exec("c.disconnect()\n")
    assert vm.eval("[p.closed, c.connected, c.stream]") == [True, False, None]
