"""A nabd device on a serial port, for the technician's commands: one code path for a board on
``/dev/ttyUSB0`` and a virtual device on ``/dev/pts/N``.

It speaks MicroPython's raw REPL through mpremote's ``SerialTransport`` (the library mpremote
itself uses), opens the port exclusively (a second tool on the same port is refused at once, not
interleaved), and turns every way the conversation can fail into a ``CommandError`` with a
one-line message that says what to do and exit code 3 (device/connection):

- port absent                  "no serial port P: plug the device in, then `nabd ports`"
- port busy                    "P is in use by another program (...): close it, then retry"
- no MicroPython REPL          "P does not answer as MicroPython: ... `nabd flash`"
- MicroPython without nabd     "P runs MicroPython but not the nabd firmware: `nabd deploy`"
- stopped answering            "the device on P stopped answering: ..."

    with Device(port) as dev:
        info = dev.call("firmware.version", "VERSION")      # any expression, result as JSON
        dev.exec("print(1)")
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import time

from nabd_cli import EXIT_DEVICE, EXIT_USAGE, CommandError

MARK = "\x1e"   # separates a JSON result from anything the firmware printed before it


class DeviceError(CommandError):
    """The device or the connection to it failed (exit code 3)."""

    def __init__(self, message: str):
        super().__init__(message, EXIT_DEVICE)


class FirmwareError(DeviceError):
    """Code raised an exception on the device; ``type`` is the exception's name."""

    def __init__(self, message: str, type_: str, traceback: str):
        super().__init__(message)
        self.type = type_
        self.traceback = traceback


def open_transport(port: str, timeout: float | None = None):
    """mpremote's SerialTransport on ``port`` (exclusive), or DeviceError naming the problem."""
    import serial
    from mpremote.transport_serial import SerialTransport

    if not port:
        raise CommandError("give --port PORT (see `nabd ports`)", EXIT_USAGE)
    if not port.startswith(("socket://", "rfc2217://", "loop://")) and not os.path.exists(port):
        raise DeviceError(f"no serial port {port}: plug the device in (or start it), then `nabd ports` lists the ports")
    try:
        t = SerialTransport.__new__(SerialTransport)
        t.in_raw_repl = False
        t.use_raw_paste = True
        t.device_name = port
        t.mounted = False
        t.serial = serial.serial_for_url(port, do_not_open=True, baudrate=115200, timeout=timeout,
                                         interCharTimeout=1, exclusive=True)
        t.serial.open()
        t.is_pty = SerialTransport._is_pty_device(port)
    except (serial.SerialException, OSError) as e:
        text = str(e)
        if "lock" in text.lower() or "busy" in text.lower() or "Errno 16" in text:
            raise DeviceError(f"{port} is in use by another program (a terminal, mpremote, another nabd): "
                              "close it, then retry") from None
        if "Errno 2" in text:
            raise DeviceError(f"no serial port {port}: plug the device in, then `nabd ports`") from None
        if "Errno 13" in text:
            raise DeviceError(f"no permission to open {port}: add yourself to the dialout group "
                              "(sudo adduser $USER dialout, then log in again)") from None
        raise DeviceError(f"cannot open {port}: {text}") from None
    return t


class Device:
    """A raw-REPL session with the device on ``port``. ``nabd=True`` (default) also checks that
    the nabd firmware is on it (``firmware.version`` imports) and reads ``VERSION``."""

    def __init__(self, port: str, timeout: float = 10.0, nabd: bool = True):
        self.port = port
        self.timeout = timeout
        self.check_nabd = nabd
        self.t = None
        self.version: str | None = None

    # --- session ----------------------------------------------------------------------------
    def __enter__(self) -> Device:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        self.t = open_transport(self.port, timeout=1.0)   # no read blocks for ever
        self.enter_raw()
        if self.check_nabd:
            self.require_nabd()

    def enter_raw(self, timeout: float = 5.0) -> None:
        """Interrupt whatever runs and enter the raw REPL (no soft reset)."""
        s = self.t.serial
        s.write(b"\r\x03")
        time.sleep(0.05)
        s.reset_input_buffer()
        s.write(b"\r\x01")
        # the prompt ">" is left unread: mpremote's exec reads it first
        got = self.t.read_until(1, b"raw REPL; CTRL-B to exit\r\n", timeout=1.0, timeout_overall=timeout)
        if got.endswith(b"raw REPL; CTRL-B to exit\r\n"):
            self.t.in_raw_repl = True
            return
        if b"\r\x01" in got or got.startswith(b"\r\x03") or b"\x03\r\x01" in got:
            raise DeviceError(f"{self.port} echoes what it is sent: that is not an ESP32 running MicroPython "
                              "(check the port with `nabd ports`)")
        if not got:
            raise DeviceError(f"{self.port} does not answer as MicroPython: if it is an ESP32 in its ROM bootloader "
                              f"press RESET; if it has no MicroPython yet, `nabd flash --port {self.port} IMAGE.bin`")
        raise DeviceError(f"{self.port} does not speak MicroPython's REPL (got {got[-40:]!r}): is it an ESP32 "
                          f"with MicroPython? (`nabd flash --port {self.port} IMAGE.bin`)")

    def require_nabd(self) -> None:
        try:
            self.version = self.call("__import__('firmware.version').version.VERSION")
        except FirmwareError as e:
            if e.type == "ImportError" or e.type == "AttributeError":
                raise DeviceError(f"{self.port} runs MicroPython but not the nabd firmware: "
                                  f"`nabd deploy --port {self.port}` installs it") from None
            raise

    def close(self) -> None:
        if self.t is not None:
            try:
                self.t.serial.write(b"\r\x02")      # back to the friendly REPL (no flush: tcdrain
                # would wait for ever on a device that stopped reading)
            except Exception:  # noqa: BLE001 - closing a port that is gone
                pass
            try:
                self.t.serial.close()
            except Exception:  # noqa: BLE001
                pass
            self.t = None

    # --- code on the device -----------------------------------------------------------------
    def exec(self, code: str, timeout: float | None = None, consumer=None) -> bytes:
        """Run ``code``; its stdout (bytes). FirmwareError on an exception on the device,
        DeviceError when the device stops answering (no byte for ``timeout`` s)."""
        from mpremote.transport import TransportError

        tmo = self.timeout if timeout is None else timeout
        sink = io.StringIO()
        try:
            with contextlib.redirect_stdout(sink):      # mpremote prints raw bytes on some failures
                self.t.exec_raw_no_follow(code)
                out, err = self.t.follow(tmo, consumer)
        except TransportError:
            raise DeviceError(f"the device on {self.port} stopped answering: check the cable (or restart the "
                              "virtual device), then run the command again") from None
        except OSError as e:
            raise DeviceError(f"{self.port} went away ({e.strerror or e}): plug it back in and run the command "
                              "again") from None
        if err:
            text = err.decode("utf-8", "replace")
            last = text.strip().splitlines()[-1] if text.strip() else "error"
            type_ = last.split(":", 1)[0].strip()
            raise FirmwareError(f"on the device: {last}", type_, text)
        return out

    def call(self, expr: str, setup: str = "", timeout: float | None = None):
        """Evaluate ``expr`` (after running ``setup``) on the device; its value through JSON."""
        out = self.exec(f"{setup}\nimport json as _j\nprint({MARK!r} + _j.dumps({expr}))\n", timeout)
        text = out.decode("utf-8", "replace")
        if MARK not in text:
            raise DeviceError(f"the device on {self.port} answered without a result: {text[-80:]!r}")
        return json.loads(text.rsplit(MARK, 1)[1].splitlines()[0])

    def read_file(self, path: str) -> bytes | None:
        """The file's bytes, or None when it does not exist."""
        r = self.call(f"_rd({path!r})", setup=(
            "import binascii\n"
            "def _rd(p):\n"
            " try:\n"
            "  f = open(p, 'rb')\n"
            " except OSError:\n"
            "  return None\n"
            " with f:\n"
            "  return binascii.b2a_base64(f.read()).decode().strip()\n"))
        if r is None:
            return None
        import base64

        return base64.b64decode(r)

    def write_file_atomic(self, path: str, data: bytes, chunk: int = 512) -> None:
        """Write ``path`` through ``path.tmp`` and a rename: the old file or the new one, never a
        half one (the device may lose power or the cable between any two chunks)."""
        import base64

        tmp = path + ".tmp"
        self.exec(f"import binascii\n_f = open({tmp!r}, 'wb')\n")
        try:
            for i in range(0, len(data), chunk):
                b64 = base64.b64encode(data[i:i + chunk]).decode()
                self.exec(f"_f.write(binascii.a2b_base64(b{b64!r}))\n")
            self.exec(f"_f.close()\nimport os\nos.rename({tmp!r}, {path!r})\n")
        except FirmwareError:
            self.exec(f"import os\ntry:\n _f.close()\nexcept Exception:\n pass\ntry:\n os.remove({tmp!r})\n"
                      "except OSError:\n pass\n")
            raise

    def soft_reset(self, timeout: float = 20.0) -> None:
        """Ctrl-D in the raw REPL: a soft reboot; back in the raw REPL afterwards."""
        s = self.t.serial
        s.write(b"\x04")
        got = self.t.read_until(1, b"soft reboot\r\n", timeout=timeout, timeout_overall=timeout)
        if not got.endswith(b"soft reboot\r\n"):
            raise DeviceError(f"the device on {self.port} did not soft-reboot: press RESET, then retry")
        got = self.t.read_until(1, b"raw REPL; CTRL-B to exit\r\n", timeout=timeout, timeout_overall=timeout)
        if not got.endswith(b"raw REPL; CTRL-B to exit\r\n"):
            raise DeviceError(f"the device on {self.port} did not come back after a soft reboot: press RESET, "
                              "then retry")
