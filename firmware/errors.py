"""Error numbers and the error type of the parts, in one place.

The ESP32 port numbers ``OSError`` the way newlib does (ESP-IDF), MicroPython's own code and the
Unix port the Linux way, so one condition can arrive under two numbers: a held I2C bus or a socket
read that timed out is ``ETIMEDOUT`` as 110 or as 116 depending on who raised it. Drivers and the
network code compare against the names here only.

Every driver's exception derives from ``PartError`` and the flash stores' from ``FlashError``;
each says which part it is about in ``source``, so the app reports an error against its part
without knowing every driver.
"""
from micropython import const

EAGAIN = const(11)            # a non-blocking socket with nothing to read (both numberings)
ENODEV = const(19)            # I2C: no ACK at the address
ETIMEDOUT = const(110)        # MicroPython's own and Linux's
ETIMEDOUT_IDF = const(116)    # newlib's, what the ESP32 port raises
EHOSTUNREACH_IDF = const(118) # newlib's: no network (Wi-Fi down)
EINPROGRESS_IDF = const(119)  # newlib's: a non-blocking socket operation still under way


def code(e):
    """The error number of an ``OSError`` (0 when it carries none)."""
    return e.args[0] if e.args else 0


def is_timeout(n):
    """True for either numbering of ETIMEDOUT."""
    return n == ETIMEDOUT or n == ETIMEDOUT_IDF


def bus_fault(n, nack="nack"):
    """The named fault of I2C error number ``n``: ``nack`` for no ACK (a driver may call it
    ``"absent"``), ``"stuck"`` for a held bus (timeout), ``"bus"`` for anything else."""
    if n == ENODEV:
        return nack
    if is_timeout(n):
        return "stuck"
    return "bus"


class PartError(Exception):
    """A part failed. ``source``: the part as the app reports it (each driver's subclass sets it);
    ``fault``: the named fault; ``errno``: the bus error number when there is one, else None."""

    source = "app"

    def __init__(self, fault, message, errno=None):
        super().__init__(message)
        self.fault = fault
        self.errno = errno

    @classmethod
    def from_bus(cls, e, what):
        """The error for the ``OSError`` ``e`` of an I2C transfer: ``"absent"`` when nothing
        ACKed at the address of ``what`` (the part as a person names it), else ``"bus"``."""
        n = code(e)
        if n == ENODEV:
            return cls("absent", cls.source + ": no ACK at the " + what + "'s address", n)
        return cls("bus", cls.source + ": I2C error " + str(n), n)


class FlashError(Exception):
    """Flash could not be written (full, I/O error); the outbox and the counters raise it."""

    source = "flash"
