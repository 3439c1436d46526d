"""Boards: the one boundary between the firmware and hardware.

A board object gives the firmware everything it touches outside the interpreter. The ESP32
implementation (``firmware.boards.esp32``) is the only firmware module that imports ``machine``,
``network``, ``esp32`` or ``ntptime``; the simulated board (``sim.hardware.board``) implements the
same attributes on virtual parts. The contract, attribute by attribute:

``name``            ``"esp32"`` or ``"sim"``.
``i2c``             an object with the ``machine.I2C`` methods (``scan``, ``readfrom_mem_into``,
                    ``writeto_mem``, ``readfrom_into``, ``writeto``...), 100 kHz, shared by the
                    MLX90614 (0x5A), the MAX30102 (0x57), the SSD1306 OLED (0x3C) and the optional
                    LIS3DH accelerometer (0x18 or 0x19). Errors are
                    ``OSError`` with errno ``ENODEV`` (no ACK), ``EIO`` or ``ETIMEDOUT`` (bus held).
``clock``           ``ticks_ms()``, ``ticks_us()``, ``ticks_diff(a, b)``, ``ticks_add(t, d)``,
                    ``sleep_ms(ms)``, ``sleep_us(us)`` with MicroPython's ``time`` semantics;
                    ``unix_time()`` -> int Unix seconds UTC, or ``None`` while the clock was never
                    synced; ``sync_time()`` -> bool (NTP on the ESP32).
``accel``           the optional motion reference: a ``firmware.drivers.lis3dh.LIS3DH`` found on
                    the bus when the board was made (WHO_AM_I checked), or ``None`` when the board
                    has none; the firmware then measures exactly as without it.
``button``          ``value()`` -> 1 while pressed (the board hides the pin's polarity).
``max_int``         the MAX30102 interrupt pin, ``value()`` -> 0 while an interrupt is pending.
``buzzer``          ``on(freq_hz)``, ``off()``.
``storage_root``    path prefix of the flash filesystem (``""`` on the ESP32); firmware opens files
                    as ``board.storage_root + "/name"``.
``network``         ``connect_wifi(ssid, psk)`` -> bool, ``isconnected()``, ``rssi()`` -> dBm or None,
                    ``open(host, port, tls=None, timeout_ms=5000)`` -> a stream with ``read(n)``,
                    ``readinto(buf)``, ``write(buf)``, ``settimeout(s)``, ``close()``; ``tls`` is a
                    dict ``{"ca": bytes, "cert": bytes|None, "key": bytes|None, "server_hostname": str}``.
``wdt_feed()``      feeds the watchdog (no-op where there is none).
``unique_id()``     6 bytes (the ESP32's MAC).
``urandom(n)``      n bytes from the hardware RNG.
``free_heap()``     bytes free on the heap (``gc.mem_free()``).
``reset()``         hard reset.
``lock_repl()``     production devices (``config.json`` ``"production": true``): Ctrl-C no longer
                    interrupts the application, so the serial port does not reach the REPL while
                    it runs (docs/operations.md, "A production device").
"""

_current = None


def set_current(board):
    """Make ``board`` the one ``current()`` returns (the virtual device sets its SimBoard at boot)."""
    global _current
    _current = board


def current():
    """The board this interpreter runs on: the one given to ``set_current`` (the virtual device's
    simulated board), else the ESP32 board, made on the first call and kept (one I2C bus)."""
    global _current
    if _current is None:
        from firmware.boards.esp32 import Esp32Board

        _current = Esp32Board()
    return _current
