"""In-VM helper of tests/firmware/test_uplink_status.py (exec'd in the MicroPython VM's
``__main__``): a device's communication layer on the shared test board and the in-memory peer,
rebooted at will on the same flash folder. ``boot()`` sets the globals ``board``, ``cfg``, ``up``
and ``peer`` the test reads."""
import json
import os  # noqa: F401  (the tests list the flash folder)

from firmware import config as C
from firmware import jws
from firmware.log import Log
from firmware.outbox import Outbox
from firmware.seq import SeqCounter
from firmware.uplink import Uplink
from sim.hardware.loopback import Loopback
from tests.firmware._commsboard import CommsBoard

cfg = None
board = up = peer = None


def boot():
    """A (re)boot: RAM gone, the flash folder kept."""
    global board, cfg, up, peer
    board = CommsBoard("/flash", 1795430400, seed=0x2A)
    cfg = C.create_identity(board, broker="mqtt://10.0.0.2:1883") if cfg is None else C.load(board)
    peer = Loopback(cfg.key, cfg.kid)
    board.network.stream_factory = peer.open
    box = Outbox(board)
    up = Uplink(board, cfg, box, SeqCounter(board, floor=box.max_seq), Log(board))


def connect():
    """One connection: up, then (after some time) an online status, then the link drops."""
    up.step()
    assert up.state == "online", up.last_error
    board.clock.sleep_ms(5000)
    up.publish_status()
    up.step()
    peer.down = True
    up.step()
    peer.down = False
    board.clock.sleep_ms(70000)


def statuses(items):
    """The verified status payloads among (topic, message) pairs."""
    return [json.loads(jws.verify(cfg.key, m, "nabd-status+jws", kid=cfg.kid)) for t, m in items
            if t.endswith("/status")]
