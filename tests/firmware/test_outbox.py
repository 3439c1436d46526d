"""firmware/outbox.py on the MicroPython VM: append/ack/order, reopen, compaction, capacity and
drops, and recovery from a record torn by a power cut at every byte."""
from __future__ import annotations

from pathlib import Path

# the shared test board and seq-derived readings, run in the VM (tests/firmware/_outboxdev.py)
SETUP = Path(__file__).with_name("_outboxdev.py").read_text()


def test_append_pending_ack_in_order(vm):
    vm.exec(SETUP + "box = O.Outbox(board)\nfill(box, 1, 11)\n")
    assert vm.eval("check(box)") == [[s, True] for s in range(1, 11)]
    assert vm.eval("[s for s, _ in box.pending(after=4, limit=3)]") == [5, 6, 7]
    assert vm.eval("box.ack([2, 3, 99, 3, 'x'])") == 2  # unknown, repeated and junk seqs ignored
    assert vm.eval("[box.depth, box.seqs(), box.max_seq]") == [8, [1, 4, 5, 6, 7, 8, 9, 10], 10]
    assert vm.eval("box.ack([2, 3])") == 0  # a replayed ack is harmless
    # seq must grow: an old or repeated seq is refused
    vm.exec("def bad(s):\n    try:\n        box.append(s, b'x')\n        return 'accepted'\n"
            "    except ValueError:\n        return 'refused'\n")
    assert vm.eval("[bad(10), bad(3)]") == ["refused", "refused"]
    # reopened (reboot): the same pending records, the same highest seq
    vm.exec("box = O.Outbox(board)\n")
    assert vm.eval("[box.seqs(), box.max_seq, box.recovered]") == [[1, 4, 5, 6, 7, 8, 9, 10], 10, 0]
    assert vm.eval("all(ok for _, ok in check(box))")


def test_compaction_keeps_pending_and_counters(vm):
    vm.exec(SETUP + "box = O.Outbox(board, capacity=2000)\nfill(box, 1, 601)\nbig = box.size\n")
    vm.exec("box.ack(list(range(1, 581)))\n")
    size, depth = vm.eval("[box.size, box.depth]")
    assert depth == 20
    assert size < vm.eval("big") // 4, "acked prefix was not compacted away"
    vm.exec("box = O.Outbox(board)\n")
    assert vm.eval("[box.seqs(), box.max_seq]") == [list(range(581, 601)), 600]
    assert vm.eval("all(ok for _, ok in check(box))")
    # everything acked and compacted: the highest seq survives (for the seq counter's floor)
    vm.exec("box.ack(list(range(581, 601)))\nbox._compact()\nbox = O.Outbox(board)\n")
    assert vm.eval("[box.depth, box.max_seq, box.size]") == [0, 600, 18]


def test_capacity_drops_oldest_and_counts(vm):
    vm.exec(SETUP + "box = O.Outbox(board, capacity=5)\nfill(box, 1, 9)\n")
    assert vm.eval("[box.seqs(), box.drops]") == [[4, 5, 6, 7, 8], 3]
    vm.exec("box = O.Outbox(board, capacity=5)\n")
    assert vm.eval("[box.seqs(), box.drops]") == [[4, 5, 6, 7, 8], 3]
    vm.exec("box._compact()\nbox = O.Outbox(board, capacity=5)\nfill(box, 9, 10)\n")
    assert vm.eval("[box.seqs(), box.drops]") == [[5, 6, 7, 8, 9], 4]
    assert vm.eval("O.Outbox(board, capacity=5).drops") == 4


def test_default_capacity_holds_a_thousand_readings(vm):
    vm.exec(SETUP + "box = O.Outbox(board)\nfor s in range(1, 1002):\n    box.append(s, b'r%d' % s)\n")
    assert vm.eval("[box.capacity >= 1000, box.depth, box.drops, box.seqs()[0]]") == [True, 1000, 1, 2]


def test_torn_tail_recovered_at_every_byte(vm):
    """A power cut in the middle of an append: reopening keeps every earlier record intact and
    drops only the torn one, whatever the number of bytes that reached flash."""
    vm.exec(SETUP + "box = O.Outbox(board)\nfill(box, 1, 6)\nbox.ack([2])\n"
            "good = open(box.path, 'rb').read()\nrec = O._record(82, 6, msg(6))\nack = O._record(65, 3, b'')\n")
    n = vm.eval("len(rec)")
    cuts = [("rec", c) for c in range(1, n)] + [("ack", c) for c in range(1, 14)]
    for kind, cut in cuts:
        vm.exec(f"f = open(box.path, 'wb')\nf.write(good + {kind}[:{cut}])\nf.close()\nb2 = O.Outbox(board)\n")
        assert vm.eval("[b2.seqs(), b2.recovered, all(ok for _, ok in check(b2))]") == [[1, 3, 4, 5], cut, True], (kind, cut)
    # after recovery the outbox works normally and the next record is not lost
    vm.exec("b2.append(6, msg(6))\nb3 = O.Outbox(board)\n")
    assert vm.eval("[b3.seqs(), b3.recovered]") == [[1, 3, 4, 5, 6], 0]
    # a flipped byte in the last record's data fails its CRC: only that record goes
    vm.exec("d = bytearray(open(box.path, 'rb').read())\nd[-2] ^= 0xFF\n"
            "f = open(box.path, 'wb')\nf.write(d)\nf.close()\nb4 = O.Outbox(board)\n")
    assert vm.eval("b4.seqs()") == [1, 3, 4, 5]


def test_interrupted_compaction(vm):
    """Power cut during a compaction: before the rename the old file is intact (temp ignored);
    between remove and rename the temp file is complete and is taken."""
    vm.exec(SETUP + "box = O.Outbox(board)\nfill(box, 1, 6)\nbox.ack([1])\n"
            "f = open(box._tmp, 'wb')\nf.write(b'NB partial')\nf.close()\n")
    assert vm.eval("O.Outbox(board).seqs()") == [2, 3, 4, 5]
    vm.exec("b = O.Outbox(board)\nimport os\nold = os.rename\n"
            "os.rename = lambda a, c: None\nb._compact()\nos.rename = old\nos.remove(b.path)\n")
    assert vm.eval("O.Outbox(board).seqs()") == [2, 3, 4, 5]


def test_bytes_per_reading(vm):
    vm.exec(SETUP + "box = O.Outbox(board)\nfor s in range(1, 11):\n    box.append(s, b'x' * 600)\n")
    assert vm.eval("box.bytes_per_reading") == 600 + 2 * 14
