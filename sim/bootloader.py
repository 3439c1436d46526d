"""The virtual ESP32 ROM bootloader: a pseudo-terminal speaking the serial protocol the ESP32's ROM
speaks in download mode, for esptool (run with ``--no-stub``: the ROM's own commands) and
``nabd flash``. The flash is a file (``--flash FILE``, ``--size 4MB``), erased bytes 0xFF.

    nabd sim bootloader --flash flash.bin --size 4MB [--json]
    esptool --chip esp32 --port /dev/pts/N --before no-reset --no-stub write-flash 0x1000 image.bin

Protocol (esptool's ``loader.py`` and Espressif's "Serial Protocol" page): SLIP frames (0xC0
delimited, 0xDB 0xDC / 0xDB 0xDD escapes); a request is ``00 op len16 checksum32 data``, a response
``01 op len16 value32 data status``: the ESP32 ROM's status is 4 bytes (status, error, 2 reserved).
Commands: SYNC (answered 8 times, as the ROM does), READ_REG / WRITE_REG (a register file: the chip
magic at 0x40001000, the eFuse words with the MAC, the SPI controller registers through which
esptool reads the flash's JEDEC id), SPI_ATTACH, SPI_SET_PARAMS, CHANGE_BAUDRATE (accepted: a pty
has no baud rate), FLASH_BEGIN (erases the region, as the ROM does) / FLASH_DATA (checksum
checked) / FLASH_END, FLASH_DEFL_BEGIN / DATA / END (zlib stream), SPI_FLASH_MD5, READ_FLASH_SLOW,
MEM_BEGIN / MEM_DATA / MEM_END (accepted and discarded: no code runs here). Any other command is
refused the way the ROM refuses it (status 1, error 0x05), so esptool's stub upload is refused
(use ``--no-stub``).

The flash file is written through after every FLASH_END / DEFL_END and on exit.
"""
from __future__ import annotations

import hashlib
import os
import struct
import termios
import tty
import zlib
from pathlib import Path

SIZES = {"1MB": 1 << 20, "2MB": 2 << 20, "4MB": 4 << 20, "8MB": 8 << 20, "16MB": 16 << 20}
FLASH_ID = {1 << 20: 0x1440EF, 2 << 20: 0x1540EF, 4 << 20: 0x1640EF, 8 << 20: 0x1740EF, 16 << 20: 0x1840EF}

CHIP_MAGIC = 0x00F01D83            # ESP32
MAGIC_REG = 0x40001000
EFUSE = 0x3FF5A000
SPI_BASE = 0x3FF42000              # SPI1, the flash's controller
SPI_CMD, SPI_USR2, SPI_W0 = SPI_BASE, SPI_BASE + 0x24, SPI_BASE + 0x80
SPI_USR_BIT = 1 << 18

OP = {"FLASH_BEGIN": 0x02, "FLASH_DATA": 0x03, "FLASH_END": 0x04, "MEM_BEGIN": 0x05, "MEM_END": 0x06,
      "MEM_DATA": 0x07, "SYNC": 0x08, "WRITE_REG": 0x09, "READ_REG": 0x0A, "SPI_SET_PARAMS": 0x0B,
      "SPI_ATTACH": 0x0D, "READ_FLASH_SLOW": 0x0E, "CHANGE_BAUDRATE": 0x0F, "FLASH_DEFL_BEGIN": 0x10,
      "FLASH_DEFL_DATA": 0x11, "FLASH_DEFL_END": 0x12, "SPI_FLASH_MD5": 0x13}
CHECKSUM_MAGIC = 0xEF
SECTOR = 4096


class Refused(Exception):
    """The ROM answers status 1 with this error code."""

    def __init__(self, code: int = 0x05):
        super().__init__(code)
        self.code = code


def slip_encode(pkt: bytes) -> bytes:
    return b"\xc0" + pkt.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc") + b"\xc0"


def checksum(data: bytes) -> int:
    c = CHECKSUM_MAGIC
    for b in data:
        c ^= b
    return c


class Bootloader:
    """The ROM's state: the flash image, the register file, a download in progress."""

    def __init__(self, flash_file: Path, size: int, mac: bytes = b"\x24\x0a\xc4\x00\x00\x01"):
        self.path = Path(flash_file)
        self.size = size
        if self.path.exists():
            data = bytearray(self.path.read_bytes())
            if len(data) < size:
                data += b"\xff" * (size - len(data))
            self.flash = data[:size]
        else:
            self.flash = bytearray(b"\xff" * size)
        # the chip magic; UART0 CLKDIV of a 40 MHz crystal at 115200 Bd (esptool estimates the crystal)
        self.regs = {MAGIC_REG: CHIP_MAGIC, 0x3FF40014: 347}
        # eFuse: MAC in words 1 and 2 (esptool's ESP32ROM.read_mac), the rest 0 (ESP32-D0WD v1)
        self.regs[EFUSE + 4] = struct.unpack(">I", mac[2:6])[0]
        self.regs[EFUSE + 8] = struct.unpack(">H", mac[0:2])[0]
        self.download = None        # (offset, erase size, seq expected, deflate object or None)
        self.dirty = False

    # --- flash -------------------------------------------------------------------------------
    def save(self) -> None:
        if self.dirty:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_bytes(self.flash)
            os.replace(tmp, self.path)
            self.dirty = False

    def _erase(self, offset: int, size: int) -> None:
        start = offset - offset % SECTOR
        end = min(self.size, -(-(offset + size) // SECTOR) * SECTOR)
        if offset + size > self.size:
            raise Refused(0x06)    # beyond the chip: the ROM's "invalid argument"-like failure
        self.flash[start:end] = b"\xff" * (end - start)
        self.dirty = True

    def _write(self, data: bytes) -> None:
        off, _, _, _ = self.download
        if off + len(data) > self.size:
            raise Refused(0x06)
        self.flash[off:off + len(data)] = data
        self.download = (off + len(data),) + self.download[1:]
        self.dirty = True

    # --- commands ------------------------------------------------------------------------------
    def handle(self, op: int, data: bytes, chk: int) -> tuple[int, bytes]:
        """(value, response data before the status bytes); Refused for a refusal."""
        if op == OP["SYNC"]:
            return 0x20120707, b""
        if op == OP["READ_REG"]:
            (addr,) = struct.unpack("<I", data[:4])
            return self.regs.get(addr, 0), b""
        if op == OP["WRITE_REG"]:
            for i in range(0, len(data) - 15, 16):
                addr, value, mask, _delay = struct.unpack("<IIII", data[i:i + 16])
                old = self.regs.get(addr, 0)
                self.regs[addr] = (old & ~mask) | (value & mask) if mask != 0xFFFFFFFF else value
                if addr == SPI_CMD and value & SPI_USR_BIT:
                    self._spi_command()
            return 0, b""
        if op in (OP["SPI_ATTACH"], OP["SPI_SET_PARAMS"], OP["CHANGE_BAUDRATE"], OP["MEM_END"]):
            return 0, b""
        if op in (OP["MEM_BEGIN"], OP["MEM_DATA"]):
            raise Refused(0x05)    # no code runs on the virtual ROM: esptool's stub is refused
        if op in (OP["FLASH_BEGIN"], OP["FLASH_DEFL_BEGIN"]):
            erase, _blocks, _blksz, offset = struct.unpack("<IIII", data[:16])
            self._erase(offset, erase)
            self.download = (offset, erase, 0, zlib.decompressobj() if op == OP["FLASH_DEFL_BEGIN"] else None)
            return 0, b""
        if op in (OP["FLASH_DATA"], OP["FLASH_DEFL_DATA"]):
            if self.download is None:
                raise Refused(0x07)
            size, seq, _, _ = struct.unpack("<IIII", data[:16])
            payload = data[16:16 + size]
            if len(payload) != size or checksum(payload) != chk:
                raise Refused(0x07)                     # the ROM's "bad data checksum"
            off, erase, want, dec = self.download
            if seq != want:
                raise Refused(0x07)
            self.download = (off, erase, want + 1, dec)
            if dec is not None:
                try:
                    payload = dec.decompress(payload)
                except zlib.error:
                    raise Refused(0x09) from None       # the ROM's inflate error
            self._write(payload)
            return 0, b""
        if op in (OP["FLASH_END"], OP["FLASH_DEFL_END"]):
            self.download = None
            self.save()
            return 0, b""
        if op == OP["SPI_FLASH_MD5"]:
            addr, size, _, _ = struct.unpack("<IIII", data[:16])
            if addr + size > self.size:
                raise Refused(0x06)
            return 0, hashlib.md5(self.flash[addr:addr + size]).hexdigest().encode()
        if op == OP["READ_FLASH_SLOW"]:
            addr, size = struct.unpack("<II", data[:8])
            if addr + size > self.size or size > 64:
                raise Refused(0x06)
            # the ROM always answers a 64-byte buffer, whatever was asked
            return 0, bytes(self.flash[addr:addr + size]).ljust(64, b"\xff")
        raise Refused(0x05)

    def _spi_command(self) -> None:
        """esptool's run_spiflash_command: the command byte in USR2's low bits; RDID answers the
        JEDEC id of a flash of this size in W0; the busy bit clears at once."""
        cmd = self.regs.get(SPI_USR2, 0) & 0xFF
        self.regs[SPI_W0] = FLASH_ID.get(self.size, 0x1640EF) if cmd == 0x9F else 0
        self.regs[SPI_CMD] = 0


def frames(buf: bytearray):
    """Complete SLIP frames removed from ``buf`` (decoded)."""
    while True:
        start = buf.find(b"\xc0")
        if start < 0:
            buf.clear()
            return
        end = buf.find(b"\xc0", start + 1)
        if end < 0:
            del buf[:start]
            return
        raw = bytes(buf[start + 1:end])
        del buf[:end]                         # keep the closing C0: it may open the next frame
        if raw:
            yield raw.replace(b"\xdb\xdc", b"\xc0").replace(b"\xdb\xdd", b"\xdb")


def response(op: int, value: int, data: bytes, status: int = 0, error: int = 0) -> bytes:
    body = data + bytes((status, error, 0, 0))
    return slip_encode(struct.pack("<BBHI", 1, op, len(body), value) + body)


class VirtualBootloader:
    """The ROM behind a pty: ``start()`` returns the port, ``serve()`` answers until ``stop()``."""

    def __init__(self, flash_file: Path, size: int):
        self.rom = Bootloader(flash_file, size)
        self._master = self._slave = -1
        self.port: str | None = None
        self._stop = False

    def start(self) -> str:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave, termios.TCSANOW)
        self.port = os.ttyname(self._slave)
        return self.port

    def stop(self) -> None:
        self._stop = True

    def serve(self) -> None:
        import select

        buf = bytearray()
        try:
            while not self._stop:
                try:
                    r, _, _ = select.select([self._master], [], [], 0.2)
                except InterruptedError:
                    continue
                if not r:
                    continue
                try:
                    buf += os.read(self._master, 65536)
                except OSError:
                    continue
                for frame in frames(buf):
                    self._answer(frame)
        finally:
            self.rom.save()
            for fd in (self._master, self._slave):
                os.close(fd)

    def _answer(self, frame: bytes) -> None:
        if len(frame) < 8 or frame[0] != 0:
            return                                   # not a request: the ROM ignores it
        _, op, size, chk = struct.unpack("<BBHI", frame[:8])
        data = frame[8:8 + size]
        try:
            value, out = self.rom.handle(op, data, chk)
            pkt = response(op, value, out)
        except Refused as e:
            pkt = response(op, 0, b"", 1, e.code)
        n = 8 if op == OP["SYNC"] else 1             # the ROM answers SYNC several times
        for _ in range(n):
            os.write(self._master, pkt)


def cmd_bootloader(args) -> int:
    """``nabd sim bootloader``: serve until SIGTERM/SIGINT."""
    import signal

    from host import virtual_ports
    from host.cli import EXIT_OK, EXIT_USAGE, CommandError, emit_json

    size = SIZES.get(args.size.upper())
    if size is None:
        raise CommandError(f"--size: one of {', '.join(SIZES)}", EXIT_USAGE)
    flash = Path(args.flash)
    if flash.exists() and flash.stat().st_size > size:
        raise CommandError(f"--flash {flash} holds {flash.stat().st_size} bytes, more than --size {args.size}",
                           EXIT_USAGE)
    vb = VirtualBootloader(flash, size)
    port = vb.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: vb.stop())
    entry = virtual_ports.register(port, "virtual bootloader", f"nabd sim bootloader --flash {flash} (ESP32 ROM)",
                                   flash=str(flash.resolve()))
    if args.json:
        emit_json({"port": port, "pid": os.getpid(), "flash": str(flash.resolve()), "size": size})
    else:
        print(f"virtual ESP32 ROM bootloader on {port} (flash {flash.resolve()}, {args.size}); "
              "SIGTERM or Ctrl-C stops it", flush=True)
    try:
        vb.serve()
    finally:
        virtual_ports.unregister(entry)
    return EXIT_OK


def add_parser(sub) -> None:
    """Register ``nabd sim bootloader`` on the ``sim`` subcommand's subparsers."""
    from host.cli import add_common

    b = sub.add_parser("bootloader", help="a virtual ESP32 ROM bootloader on a pty (esptool --no-stub, nabd flash)",
                       description="A pseudo-terminal speaking the ESP32 ROM's serial download protocol (SLIP, "
                       "SYNC, READ_REG, SPI_ATTACH, FLASH_BEGIN/DATA/END and the compressed variants, SPI_FLASH_MD5, "
                       "READ_FLASH_SLOW), keeping the flash in a file.")
    add_common(b, port=False)
    b.add_argument("--flash", required=True, help="file holding the flash contents (created erased)")
    b.add_argument("--size", default="4MB", help="flash size: 1MB, 2MB, 4MB (default), 8MB, 16MB")
    b.set_defaults(func=cmd_bootloader)
