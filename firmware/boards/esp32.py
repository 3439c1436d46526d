"""The reference ESP32 board (ESP32-DevKitC, ESP32-WROOM-32E): the board contract of
``firmware/boards/__init__.py`` on real hardware.

The only firmware module that imports ``machine``, ``network`` and ``ntptime``. Pins come from
``firmware/boards/pins.py`` (shared with the simulated board; deploy it with the firmware). Runs on the
device only: ``Esp32Board()`` makes the I2C bus at 100 kHz, the inputs and the buzzer; the
watchdog starts at the first ``wdt_feed()`` (so a technician's REPL session is not reset by a dog
nobody feeds); Wi-Fi only when ``network.connect_wifi`` is called.

Time: MicroPython on the ESP32 counts ``time.time()`` from 2000-01-01, so ``unix_time()`` adds
946684800 (checked at run time with ``time.gmtime(0)``), and only once the RTC has been set by
NTP (``sync_time()``): before that the RTC counts from boot and the answer is ``None``.
"""
import gc
import os
import socket
import ssl
import time

import machine
import micropython
import network

from firmware.boards import pins
from firmware.drivers import lis3dh
from firmware.errors import EHOSTUNREACH_IDF

_EPOCH_2000 = 946684800   # seconds from 1970-01-01 to 2000-01-01
_WIFI_TIMEOUT_MS = 15000
_WDT_TIMEOUT_MS = 30000


def epoch_offset(year0):
    """Seconds to add to ``time.time()`` for Unix time, given the year of ``time.gmtime(0)``:
    the ESP32 port counts from 2000, some ports from 1970."""
    if year0 == 2000:
        return _EPOCH_2000
    if year0 == 1970:
        return 0
    raise ValueError("unknown epoch %d" % year0)


class Esp32Clock:
    """MicroPython's ``time`` ticks plus the NTP-synced wall clock."""

    def __init__(self):
        self._synced = False
        self._epoch_offset = epoch_offset(time.gmtime(0)[0])
        self.ntp_host = "pool.ntp.org"

    def ticks_ms(self):
        return time.ticks_ms()

    def ticks_us(self):
        return time.ticks_us()

    def ticks_diff(self, a, b):
        return time.ticks_diff(a, b)

    def ticks_add(self, t, d):
        return time.ticks_add(t, d)

    def sleep_ms(self, ms):
        time.sleep_ms(ms)

    def sleep_us(self, us):
        time.sleep_us(us)

    def unix_time(self):
        """Unix seconds UTC, or None while NTP never succeeded since boot."""
        if not self._synced:
            return None
        return int(time.time()) + self._epoch_offset

    def sync_time(self):
        """Set the RTC from NTP; True on success (needs Wi-Fi)."""
        import ntptime

        ntptime.host = self.ntp_host
        try:
            ntptime.settime()
        except (OSError, OverflowError, IndexError):
            return False
        self._synced = True
        return True


class ActiveLowInput:
    """A button to GND with the internal pull-up: ``value()`` is 1 while pressed."""

    def __init__(self, pin_id):
        self.id = pin_id
        self._pin = machine.Pin(pin_id, machine.Pin.IN, machine.Pin.PULL_UP)

    def value(self):
        return 0 if self._pin.value() else 1


class PwmBuzzer:
    """A passive piezo on an LEDC PWM channel: ``on(freq_hz)`` plays a square wave, ``off()``."""

    def __init__(self, pin_id):
        self.id = pin_id
        self._pwm = machine.PWM(machine.Pin(pin_id, machine.Pin.OUT), freq=2000, duty_u16=0)
        self.freq = 0

    def on(self, freq_hz=2000):
        if not 20 <= freq_hz <= 20000:
            raise ValueError("buzzer frequency must be 20..20000 Hz")
        self._pwm.freq(freq_hz)
        self._pwm.duty_u16(32768)
        self.freq = freq_hz

    def off(self):
        self._pwm.duty_u16(0)
        self.freq = 0

    def is_on(self):
        return self.freq != 0


class _Stream:
    """A socket, TLS-wrapped or not, with the stream methods of the contract; ``settimeout``
    goes to the TCP socket underneath (TLS reads block on it)."""

    def __init__(self, stream, sock):
        self._s = stream
        self._sock = sock

    def read(self, n=-1):
        return self._s.read(n) if n is not None and n >= 0 else self._s.read()

    def readinto(self, buf, nbytes=None):
        return self._s.readinto(buf) if nbytes is None else self._s.readinto(buf, nbytes)

    def write(self, buf):
        return self._s.write(buf)

    def settimeout(self, s):
        self._sock.settimeout(s)

    def setblocking(self, flag):
        self._sock.setblocking(flag)

    def close(self):
        try:
            self._s.close()
        finally:
            if self._s is not self._sock:
                self._sock.close()


class Esp32Network:
    """Wi-Fi station and TCP/TLS streams."""

    def __init__(self, clock):
        self._clock = clock
        self._wlan = network.WLAN(network.STA_IF)

    def connect_wifi(self, ssid, psk):
        """Join ``ssid``; waits up to 15 s. Returns True once connected."""
        w = self._wlan
        w.active(True)
        if w.isconnected():
            return True
        w.connect(ssid, psk)
        c = self._clock
        t0 = c.ticks_ms()
        while not w.isconnected():
            if c.ticks_diff(c.ticks_ms(), t0) > _WIFI_TIMEOUT_MS:
                w.disconnect()
                return False
            c.sleep_ms(100)
        return True

    def isconnected(self):
        return self._wlan.isconnected()

    def rssi(self):
        if not self._wlan.isconnected():
            return None
        try:
            return self._wlan.status("rssi")
        except (OSError, ValueError):
            return None

    def disconnect(self):
        self._wlan.disconnect()

    def open(self, host, port, tls=None, timeout_ms=5000):
        """A stream to ``host:port``; with ``tls`` ({"ca", "cert", "key", "server_hostname"}) the
        server certificate is verified against ``ca`` (CERT_REQUIRED, host name checked) and the
        client presents ``cert``/``key`` when given."""
        if not self._wlan.isconnected():
            raise OSError(EHOSTUNREACH_IDF, "Wi-Fi not connected")
        addr = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0][-1]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout_ms / 1000)
            sock.connect(addr)
            if tls is None:
                return _Stream(sock, sock)
            ca = tls.get("ca")
            if not ca:
                raise ValueError("tls needs a CA certificate to verify the server")
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            # MicroPython's ssl has verify_mode; the ESP32 stubs omit it
            ctx.verify_mode = ssl.CERT_REQUIRED  # type: ignore[attr-defined]
            ctx.load_verify_locations(cadata=ca)
            if tls.get("cert"):
                ctx.load_cert_chain(tls["cert"], tls.get("key"))
            ss = ctx.wrap_socket(sock, server_hostname=tls.get("server_hostname") or host)
            return _Stream(ss, sock)
        except Exception:
            sock.close()
            raise


class Esp32Board:
    """The reference board; attributes as in ``firmware/boards/__init__.py``."""

    name = "esp32"

    def __init__(self, wdt_timeout_ms=_WDT_TIMEOUT_MS):
        self.clock = Esp32Clock()
        self.i2c = machine.I2C(pins.I2C_ID, scl=machine.Pin(pins.SCL), sda=machine.Pin(pins.SDA),
                               freq=pins.I2C_FREQ)
        # the optional accelerometer: probed once (an I2C error here only means it is not fitted)
        self.accel = lis3dh.probe(self.i2c)
        self.button = ActiveLowInput(pins.BUTTON)
        # open-drain INT, active low: the raw level is the contract's (0 while pending)
        self.max_int = machine.Pin(pins.MAX_INT, machine.Pin.IN, machine.Pin.PULL_UP)
        self.buzzer = PwmBuzzer(pins.BUZZER)
        self.storage_root = ""
        self.network = Esp32Network(self.clock)
        self._wdt_timeout_ms = wdt_timeout_ms
        self._wdt = None

    def wdt_feed(self):
        """Feed the watchdog, starting it on the first call (it cannot be stopped once started)."""
        if self._wdt is None:
            self._wdt = machine.WDT(timeout=self._wdt_timeout_ms)
        self._wdt.feed()

    def mlx_wake(self):
        """Wake the MLX90614 from sleep: SCL high, SDA low for 40 ms (datasheet >= 33 ms), then
        the I2C bus again. The part then needs ~250 ms (``MLX90614.wait_ready()``)."""
        machine.Pin(pins.SCL, machine.Pin.OUT, value=1)
        sda = machine.Pin(pins.SDA, machine.Pin.OUT, value=0)
        time.sleep_ms(40)
        sda.value(1)
        self.i2c = machine.I2C(pins.I2C_ID, scl=machine.Pin(pins.SCL), sda=machine.Pin(pins.SDA),
                               freq=pins.I2C_FREQ)

    def unique_id(self):
        return machine.unique_id()

    def urandom(self, n):
        return os.urandom(n)

    def free_heap(self):
        return gc.mem_free()

    def reset(self):
        machine.reset()

    def lock_repl(self):
        """Ctrl-C (0x03) on the USB serial port stops interrupting the program, so nobody with a
        cable breaks into the REPL (and reads config.json) while the application runs; a crash
        resets instead of falling to the prompt (firmware/main.py). The REPL stays reachable only
        on a build without it on the UART (docs/operations.md)."""
        micropython.kbd_intr(-1)
