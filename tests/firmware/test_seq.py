"""firmware/seq.py on the MicroPython VM: seq numbers strictly increase across reboots, also when
a power cut tears the write of a block reservation at any byte."""
from __future__ import annotations

import random

# the shared test board (tests/firmware/_commsboard.py) on /flash
SETUP = """
from firmware import seq as S
from tests.firmware._commsboard import CommsBoard
board = CommsBoard('/flash')
"""


def test_monotonic_across_reboots(vm):
    vm.exec(SETUP)
    rnd = random.Random(1)
    plan = [rnd.choice([0, 1, 2, 5, 63, 64, 65, 130]) for _ in range(25)]
    got = vm.eval(
        "(lambda plan: [[c.next() for _ in range(k)] for k, c in ((k, S.SeqCounter(board)) for k in plan)])("
        + repr(plan) + ")")
    flat = [n for boot in got for n in boot]
    assert flat[0] == 1
    assert all(b > a for a, b in zip(flat, flat[1:], strict=False)), "seq went backwards or repeated"
    # each reboot skips at most the unused rest of one block
    assert flat[-1] <= sum(plan) + len(plan) * vm.eval("S.BLOCK")
    # one flash write per BLOCK numbers, not one per number
    vm.exec("c = S.SeqCounter(board)\nw = [0]\nold = c._store.set\n"
            "def counting(v):\n    w[0] += 1\n    old(v)\nc._store.set = counting\n"
            "for _ in range(640):\n    c.next()\n")
    assert vm.eval("w[0]") == 10


def test_torn_reservation_never_goes_back(vm):
    """A power cut while the reservation is written: every prefix of the slot file (and garbage)
    leaves a counter that still starts above every number already handed out."""
    vm.exec(SETUP)
    vm.exec("c = S.SeqCounter(board)\nissued = [c.next() for _ in range(S.BLOCK * 3 + 5)]\n")
    last = vm.eval("issued[-1]")
    # the next reservation would overwrite the slot with the older value
    vm.exec("st = c._store\nold_slot = 0 if (st._slots[0] is None or (st._slots[1] is not None and "
            "st._slots[0] <= st._slots[1])) else 1\nnew_bytes = S._encode(c._limit + S.BLOCK)\n"
            "keep = [open(p, 'rb').read() if p else b'' for p in st._paths]\n")
    n = vm.eval("len(new_bytes)")
    for cut in list(range(0, n + 1)) + [-1]:
        vm.exec(
            "for p, k in zip(st._paths, keep):\n    f = open(p, 'wb'); f.write(k); f.close()\n"
            "f = open(st._paths[old_slot], 'wb')\n"
            + ("f.write(b'\\xff\\x00garbage 1234')\n" if cut < 0 else f"f.write(new_bytes[:{cut}])\n")
            + "f.close()\nc2 = S.SeqCounter(board)\nfirst = c2.next()\n")
        assert vm.eval("first") > last, f"torn at {cut} bytes: seq reused"


def test_slot_checksum_and_refusal_to_go_back(vm):
    vm.exec(SETUP)
    vm.exec("p = S.PersistedInt(board, 'cmdn')\np.set(5)\np.set(9)\n"
            "def back():\n    try:\n        p.set(3)\n        return 'accepted'\n    except ValueError:\n        return 'refused'\n")
    assert vm.eval("back()") == "refused"
    assert vm.eval("S.PersistedInt(board, 'cmdn').value") == 9
    # a flipped digit in the newest slot fails its CRC: the older slot's value is used, not garbage
    vm.exec("d = open('/flash/cmdn.b', 'rb').read()\nf = open('/flash/cmdn.b', 'wb')\n"
            "f.write(b'8' + d[1:])\nf.close()\n")
    assert vm.eval("S.PersistedInt(board, 'cmdn').value") == 5
    assert vm.eval("[S._decode(b''), S._decode(b'12 zz\\n'), S._decode(S._encode(12345))]") == [None, None, 12345]


def test_floor_from_outbox(vm):
    vm.exec(SETUP)
    assert vm.eval("S.SeqCounter(board, floor=500).next()") == 501
    assert vm.eval("S.SeqCounter(board).next()") >= 502
