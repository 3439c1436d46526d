"""The connection number in device statuses (firmware/uplink.py ``conn``, firmware/seq.py) on the
real MicroPython VM, against the in-memory peer (sim/hardware/loopback.py), which also keeps the
Last Will of each CONNECT: the will and the statuses of one connection carry the same ``conn``;
every connection, also after a reboot or a power cut, carries a larger one than any before."""
from __future__ import annotations

import json
from pathlib import Path

# the device's communication layer on the shared test board (tests/firmware/_uplinkdev.py)
SETUP = Path(__file__).with_name("_uplinkdev.py").read_text()


def _run(vm, code: str) -> list[dict]:
    vm.exec(code)
    return json.loads(vm.eval("json.dumps([statuses(peer.wills), statuses(peer.published)])"))


def test_will_and_statuses_of_one_connection_share_conn(vm):
    vm.exec(SETUP)
    wills, published = _run(vm, "boot()\nconnect()\n")
    assert [w["state"] for w in wills] == ["offline"]
    assert [p["state"] for p in published] == ["online", "online"]
    (will,) = wills
    assert will["conn"] == 1 and all(p["conn"] == 1 for p in published)
    # up only grows within the connection; the will was signed first (connect time)
    assert will["up"] <= published[0]["up"] < published[1]["up"]
    assert vm.eval("up.conn") == 1
    # the payload writes conn right after state (firmware.reading's fixed key order)
    assert vm.eval("statuses(peer.published) and jws.verify(cfg.key, peer.published[0][1], "
                   "'nabd-status+jws', kid=cfg.kid)[:60]").startswith(
        '{"v":1,"dev":"nabd-240ac400002a","state":"online","conn":1,')

    # the next connection of the same boot: a larger conn for its will and its statuses
    wills, published = _run(vm, "connect()\n")
    assert [w["conn"] for w in wills] == [1, 2]
    assert [p["conn"] for p in published] == [1, 1, 2, 2]
    # close(): the offline status published at a clean disconnect carries the connection's conn
    _, published = _run(vm, "up.step()\nup.close()\n")
    assert (published[-1]["state"], published[-1]["conn"]) == ("offline", 3)


def test_conn_keeps_increasing_across_reboots_and_is_persisted_in_blocks(vm):
    vm.exec(SETUP)
    seen = []
    for _ in range(4):
        wills, published = _run(vm, "boot()\nconnect()\nconnect()\nconnect()\n")
        assert [w["conn"] for w in wills] == [p["conn"] for p in published[::2]] == [p["conn"] for p in published[1::2]]
        seen += [w["conn"] for w in wills]
    assert all(b > a for a, b in zip(seen, seen[1:], strict=False)), seen
    # a reboot skips the rest of the block reserved on flash (64 numbers: one write per 64 connects)
    assert seen == [1, 2, 3, 65, 66, 67, 129, 130, 131, 193, 194, 195]
    assert vm.eval("sorted(n for n in os.listdir('/flash') if n.startswith('conn.'))") == ["conn.a", "conn.b"]
    # a flash that cannot keep the counter: no connection (a reused conn would be superseded by
    # the old will), the error is logged, nothing was published; a later attempt works
    vm.exec("boot()\nfrom firmware.seq import SeqError\n"
            "def broken(v):\n    raise SeqError('cannot persist counter: ENOSPC')\n"
            "keep = up._conns._store.set\nup._conns._store.set = broken\n"
            "up.step()\n")
    assert vm.eval("[up.state, peer.connects, up.last_error]") == [
        "offline", 0, "connect: cannot persist counter: ENOSPC"]
    wills, _ = _run(vm, "up._conns._store.set = keep\nboard.clock.sleep_ms(70000)\nconnect()\n")
    assert len(wills) == 1 and wills[0]["conn"] > seen[-1]
