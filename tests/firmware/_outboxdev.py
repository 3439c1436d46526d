"""In-VM helper of tests/firmware/test_outbox.py (exec'd in the MicroPython VM's ``__main__``):
the shared test board on /flash and readings whose content follows from their seq."""
from firmware import outbox as O  # noqa: F401  (the tests make outboxes as O.Outbox)
from tests.firmware._commsboard import CommsBoard

board = CommsBoard("/flash")


def msg(s):
    """The message of seq ``s`` (its length varies with s)."""
    return ("tok-%d-" % s).encode() + b"x" * (s % 50)


def fill(box, a, b):
    for s in range(a, b):
        box.append(s, msg(s))


def check(box):
    """[(seq, message intact)] for every pending record."""
    return [(s, m == msg(s)) for s, m in box.pending()]
