"""Stand-in for the ESP32 port's ``machine``: records what the board makes (``calls``) and keeps
pin levels (``levels``) the test can set."""

calls = []
levels = {}


class Pin:
    IN = 1
    OUT = 3
    PULL_UP = 2

    def __init__(self, id, mode=-1, pull=-1, value=None):
        self.id = id
        calls.append(("Pin", id, mode, pull, value))
        if value is not None:
            levels[id] = value

    def value(self, v=None):
        if v is None:
            return levels.get(self.id, 1)
        levels[self.id] = v


class I2C:
    def __init__(self, id, scl=None, sda=None, freq=400000):
        calls.append(("I2C", id, scl.id, sda.id, freq))

    def readfrom_mem_into(self, addr, memaddr, buf, addrsize=8):
        raise OSError(19)      # ENODEV: nothing answers on this stand-in bus


class PWM:
    def __init__(self, pin, freq=0, duty_u16=0):
        self.f = freq
        self.d = duty_u16
        calls.append(("PWM", pin.id, freq, duty_u16))

    def freq(self, f):
        self.f = f

    def duty_u16(self, d):
        self.d = d


class WDT:
    made = []

    def __init__(self, timeout=5000):
        self.timeout = timeout
        self.feeds = 0
        WDT.made.append(self)

    def feed(self):
        self.feeds += 1


def unique_id():
    return b"\x24\x0a\xc4\x01\x02\x03"


def reset():
    raise SystemExit("reset")
