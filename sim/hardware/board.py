"""The simulated board: the reference ESP32 board's contract (``firmware/boards/__init__.py``) on
virtual parts, for the MicroPython VM and for CPython.

    board = SimBoard(scenario=PulseScenario(bpm=72), faults=["mlx90614:pec"])
    board.i2c            # VirtualI2C at 100 kHz: MLX90614 0x5A, MAX30102 0x57, SSD1306 0x3C
    board.accel          # None, or with SimBoard(accel=True) the LIS3DH driver (model at 0x18)
    board.button.press() # tests drive the inputs; board.buzzer.events records the outputs

Firmware time is the virtual clock's (``board.clock``): it advances only when the firmware sleeps
or talks on the bus. Faults are injected by name (``FAULTS``) into the sensor models.
"""
from micropython import const
import sys

from sim.hardware.clock import VirtualClock
from sim.hardware.i2c import VirtualI2C
from sim.hardware.ssd1306 import SSD1306Model

try:
    from firmware.boards import pins as _pins
except ImportError:  # pin map not yet in the tree: the reference board's values
    _pins = None

_ENETUNREACH = const(101)
_ETIMEDOUT = const(110)

FAULTS = ("mlx90614:pec", "mlx90614:nack", "mlx90614:error-flag", "mlx90614:stuck",
          "max30102:absent", "max30102:overflow", "max30102:swapped-leds")

MICROPYTHON = sys.implementation.name == "micropython"


def _pin(name, default):
    return getattr(_pins, name, default) if _pins is not None else default


class SimReset(Exception):
    """``board.reset()`` was called: the firmware asked for a hard reset."""


class SimPin:
    """A digital input driven by the test. ``value()`` is the logical level the board contract
    promises (the button: 1 while pressed; the polarity of the real pin is the board's business)."""

    def __init__(self, pin_id, level=0):
        self.id = pin_id
        self._level = level
        self.presses = 0

    def value(self):
        return self._level

    def press(self):
        if not self._level:
            self.presses += 1
        self._level = 1

    def release(self):
        self._level = 0


class SimIntPin:
    """The MAX30102's open-drain INT line: ``value()`` 0 while an enabled interrupt is pending."""

    def __init__(self, pin_id, model):
        self.id = pin_id
        self.model = model

    def value(self):
        return 0 if self.model.int_pending() else 1


class SimBuzzer:
    """Records what the firmware plays: ``events`` is a list of (ticks_ms, freq_hz), 0 = off;
    the last 200 are kept."""

    def __init__(self, pin_id, clock):
        self.id = pin_id
        self.clock = clock
        self.events = []
        self.freq = 0

    def _log(self, f):
        self.events.append((self.clock.ticks_ms(), f))
        if len(self.events) > 200:
            self.events.pop(0)

    def on(self, freq_hz=2000):
        if not 20 <= freq_hz <= 20000:
            raise ValueError("buzzer frequency must be 20..20000 Hz")
        self.freq = freq_hz
        self._log(freq_hz)

    def off(self):
        if self.freq:
            self.freq = 0
            self._log(0)

    def is_on(self):
        return self.freq != 0


class _SocketStream:
    """A CPython socket (TLS-wrapped or not) with the stream methods the firmware uses on
    MicroPython: ``read(n)`` blocks for n bytes (fewer only at EOF or on a timeout after some
    data), ``readinto(buf)``, ``write(buf)`` (all of it), ``settimeout(s)``, ``close()``."""

    def __init__(self, sock):
        self.sock = sock

    def _recv_into(self, mv):
        import socket
        try:
            return self.sock.recv_into(mv)
        except socket.timeout:
            return -1

    def readinto(self, buf, nbytes=None):
        mv = memoryview(buf)
        if nbytes is not None:
            mv = mv[:nbytes]
        got = 0
        while got < len(mv):
            n = self._recv_into(mv[got:])
            if n == 0:
                break
            if n < 0:
                if got:
                    break
                raise OSError(_ETIMEDOUT, "timed out")
            got += n
        return got

    def read(self, n=-1):
        if n is None or n < 0:
            chunks = []
            while True:
                b = self.sock.recv(4096)
                if not b:
                    return b"".join(chunks)
                chunks.append(b)
        buf = bytearray(n)
        got = self.readinto(buf)
        return bytes(buf[:got])

    def write(self, buf):
        self.sock.sendall(buf)
        return len(buf)

    def settimeout(self, s):
        self.sock.settimeout(s)

    def setblocking(self, flag):
        self.sock.setblocking(flag)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class SimNetwork:
    """Wi-Fi and sockets. Under CPython ``open`` makes real TCP (and TLS) connections; inside the
    MicroPython VM, which has no sockets, it raises ``OSError(ENETUNREACH)`` unless a test set
    ``stream_factory(host, port, tls, timeout_ms) -> stream``. ``wifi_up = False`` makes the access
    point unreachable (``connect_wifi`` fails, ``open`` raises)."""

    def __init__(self):
        self.wifi_up = True
        self.stream_factory = None
        self.connected = False
        self.ssid = None
        self.opened = 0

    def connect_wifi(self, ssid, psk):
        self.connected = bool(self.wifi_up)
        self.ssid = ssid if self.connected else None
        return self.connected

    def isconnected(self):
        return self.connected and self.wifi_up

    def rssi(self):
        return -60 if self.isconnected() else None

    def disconnect(self):
        self.connected = False

    def open(self, host, port, tls=None, timeout_ms=5000):
        if not self.isconnected():
            raise OSError(_ENETUNREACH, "Wi-Fi not connected")
        if self.stream_factory is not None:
            s = self.stream_factory(host, port, tls, timeout_ms)
            self.opened += 1
            return s
        try:
            import socket
        except ImportError:
            raise OSError(_ENETUNREACH, "no sockets in this interpreter")
        sock = socket.create_connection((host, port), timeout=timeout_ms / 1000)
        try:
            if tls is not None:
                sock = self._wrap_tls(sock, host, tls)
        except Exception:
            sock.close()
            raise
        self.opened += 1
        return _SocketStream(sock)

    @staticmethod
    def _wrap_tls(sock, host, tls):
        import os
        import ssl
        import tempfile

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        ca = tls.get("ca")
        if not ca:
            raise ValueError("tls needs a CA certificate to verify the server")
        ctx.load_verify_locations(cadata=ca.decode() if isinstance(ca, bytes) else ca)
        cert, key = tls.get("cert"), tls.get("key")
        if cert:
            # the ssl module loads client credentials from files only
            with tempfile.TemporaryDirectory() as d:
                cp, kp = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
                with open(cp, "wb") as f:
                    f.write(cert if isinstance(cert, bytes) else cert.encode())
                if key:
                    with open(kp, "wb") as f:
                        f.write(key if isinstance(key, bytes) else key.encode())
                ctx.load_cert_chain(cp, kp if key else None)
        return ctx.wrap_socket(sock, server_hostname=tls.get("server_hostname") or host)


def _makedirs(path):
    """``os.makedirs`` for MicroPython (whose ``os`` has only ``mkdir``)."""
    import os

    acc = []
    for name in path.split("/"):
        acc.append(name)
        if name:
            try:
                os.mkdir("/".join(acc))
            except OSError:
                pass  # exists (a real failure shows in the stat below)
    os.stat(path)


class SimBoard:
    """The reference board on virtual parts; see ``firmware/boards/__init__.py`` for the contract.

    ``scenario`` feeds both sensors (a ``PulseScenario()`` finger at 36.8 degC by default),
    ``faults`` names from ``FAULTS``, ``storage_root`` the flash folder (created), ``unix_time``
    the wall clock at start (None: never synced), ``seed`` the unit (MAC, RNG where the
    interpreter has none), ``mlx_offset_mc``/``mlx_gain_ppm`` the thermometer's unit errors.
    ``accel=True`` fits the optional LIS3DH accelerometer (0x18; the scenario's
    ``accel(t_us, out)`` moves it, else it lies still); ``board.accel`` is then its driver, found
    on the bus as the ESP32 board finds it, else None."""

    name = "sim"

    def __init__(self, scenario=None, faults=(), storage_root="/flash", unix_time=None, seed=1,
                 mlx_offset_mc=0, mlx_gain_ppm=0, accel=False):
        from sim.hardware.mlx90614 import MLX90614Model
        from sim.hardware.max30102 import MAX30102Model

        for f in faults:
            if f not in FAULTS:
                raise ValueError("unknown fault " + repr(f) + "; valid: " + ", ".join(FAULTS))
        if scenario is None:
            from sim.hardware.scenario import PulseScenario
            scenario = PulseScenario()
        self.scenario = scenario
        self.seed = seed
        self.clock = VirtualClock(unix_time)
        self.i2c = VirtualI2C(self.clock, _pin("I2C_FREQ", 100000))
        a_mlx, a_max, a_oled = _pin("ADDR_MLX90614", 0x5A), _pin("ADDR_MAX30102", 0x57), _pin("ADDR_SSD1306", 0x3C)
        self.mlx = self.i2c.attach(a_mlx, MLX90614Model(self.clock, scenario, a_mlx, mlx_offset_mc, mlx_gain_ppm))
        self.max = self.i2c.attach(a_max, MAX30102Model(self.clock, scenario, a_max))
        self.oled = self.i2c.attach(a_oled, SSD1306Model(addr=a_oled))
        self.lis = None
        if accel:
            from sim.hardware.lis3dh import LIS3DHModel
            a_acc = _pin("ADDR_LIS3DH", 0x18)
            self.lis = self.i2c.attach(a_acc, LIS3DHModel(self.clock, scenario, a_acc, seed=seed))
        from firmware.drivers.lis3dh import probe
        self.accel = probe(self.i2c)
        self.sda = _pin("SDA", 21)
        self.scl = _pin("SCL", 22)
        self.button = SimPin(_pin("BUTTON", 27))
        self.max_int = SimIntPin(_pin("MAX_INT", 19), self.max)
        self.buzzer = SimBuzzer(_pin("BUZZER", 25), self.clock)
        self.network = SimNetwork()
        self.storage_root = storage_root.rstrip("/") if storage_root not in ("", "/") else storage_root
        if self.storage_root not in ("", "/"):
            _makedirs(self.storage_root)
        self.wdt_feeds = 0
        self.resets = 0
        self.repl_locked = False      # lock_repl() called (production config)
        self.faults = []
        for f in faults:
            self.inject(f)
        self._rng = None

    def inject(self, fault, count=None):
        """Inject a named fault (``FAULTS``) into its model; ``count`` limits it to that many
        occurrences where the model supports it."""
        if fault not in FAULTS:
            raise ValueError("unknown fault " + repr(fault) + "; valid: " + ", ".join(FAULTS))
        part, name = fault.split(":")
        model = self.mlx if part == "mlx90614" else self.max
        if count is None:
            model.inject(name)
        else:
            model.inject(name, count)
        if fault not in self.faults:
            self.faults.append(fault)

    # --- the rest of the contract ---
    def mlx_wake(self):
        """Wake the MLX90614 from sleep as the ESP32 board does (SDA held low 40 ms); the part
        then needs ~250 ms before its first valid reading (``MLX90614.wait_ready()``)."""
        self.clock.sleep_ms(40)
        self.mlx.wake()

    def wdt_feed(self):
        self.wdt_feeds += 1

    def unique_id(self):
        """6 bytes like an ESP32 MAC: Espressif's OUI 24:0A:C4, then the seed."""
        s = self.seed & 0xFFFFFF
        return bytes((0x24, 0x0A, 0xC4, s >> 16, (s >> 8) & 0xFF, s & 0xFF))

    def urandom(self, n):
        import os
        if hasattr(os, "urandom"):
            return os.urandom(n)
        if self._rng is None:
            import random
            random.seed(self.seed)
            self._rng = random
        return bytes(self._rng.getrandbits(8) for _ in range(n))

    def free_heap(self):
        if MICROPYTHON:
            import gc
            return gc.mem_free()
        return 1 << 30

    def reset(self):
        self.resets += 1
        raise SimReset("hard reset requested")

    def lock_repl(self):
        """As the ESP32's (Ctrl-C no longer interrupts the program), recorded for tests: the
        simulator's own REPL stays usable."""
        self.repl_locked = True
