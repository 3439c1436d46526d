"""``nabd flash``: write a MicroPython firmware image to an ESP32 through its ROM bootloader.

    nabd flash --port PORT IMAGE.bin [--no-stub] [--baud 460800] [--json]

Through esptool's Python API (``esptool.cmds``): detect the chip (it must be an ESP32), check the
image (an ESP32 application image, written at 0x1000 like MicroPython's ``ESP32_GENERIC-*.bin``,
or a merged image from 0x0), erase (the whole chip with esptool's stub; with ``--no-stub`` the
ROM erases the sectors it writes), write (compressed), verify (MD5 of the flash against the image)
and reset. A virtual bootloader (``nabd sim bootloader``) is driven with ``--no-stub`` and without
reset lines automatically. Exit 0; 2 usage; 3 device (absent, busy, not an ESP32, stopped
answering); 4 the image is not an ESP32 image.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

from host.cli import add_common
from nabd_cli import EXIT_DATA, EXIT_DEVICE, EXIT_OK, EXIT_USAGE, CommandError, emit_json

APP_OFFSET = 0x1000          # where an ESP32 image that starts with its bootloader goes


def check_image(path: Path) -> tuple[int, bytes, str]:
    """(flash offset, bytes, description) of an ESP32 image; CommandError (exit 4) otherwise."""
    from esptool.bin_image import LoadFirmwareImage

    try:
        data = path.read_bytes()
    except OSError as e:
        raise CommandError(f"{path}: {e.strerror or e}", EXIT_DATA) from None
    if len(data) >= 0x1001 and data[:0x1000] == b"\xff" * 0x1000 and data[0x1000] == 0xE9:
        offset, body = 0x0, data[0x1000:]
    elif data[:1] == b"\xe9":
        offset, body = APP_OFFSET, data
    else:
        raise CommandError(f"{path} is not an ESP32 firmware image (no 0xE9 image header at 0 or 0x1000): "
                           "use a MicroPython build for ESP32 (docs/technician.md)", EXIT_DATA)
    try:
        f = io.BytesIO(body)
        f.name = str(path)
        img = LoadFirmwareImage("esp32", f)
        img.verify()
        # esptool's loader reads the checksum and the SHA-256 digest but leaves judging them to us
        if img.checksum != img.calculate_checksum():
            raise ValueError("segment checksum mismatch")
        if getattr(img, "append_digest", False) and img.stored_digest != img.calc_digest:
            raise ValueError("SHA-256 digest mismatch")
    except Exception as e:  # noqa: BLE001 - esptool raises FatalError and struct errors alike
        raise CommandError(f"{path} is not a valid ESP32 image ({e}): the file is corrupt or truncated; "
                           "download it again", EXIT_DATA) from None
    if getattr(img, "chip_id", 0) not in (0, None):
        raise CommandError(f"{path} is an image for another chip (chip id {img.chip_id}), not the ESP32", EXIT_DATA)
    return offset, data, f"{len(img.segments)} segments, entry 0x{img.entrypoint:08x}"


def flash(port: str, image: Path, no_stub: bool = False, baud: int = 460800, say=print) -> dict:
    from esptool import cmds
    from esptool.util import FatalError

    from host import virtual_ports

    offset, data, desc = check_image(image)
    if not port:
        raise CommandError("give --port PORT (see `nabd ports`)", EXIT_USAGE)
    if not os.path.exists(port):
        raise CommandError(f"no serial port {port}: plug the board in, then `nabd ports`", EXIT_DEVICE)
    entry = virtual_ports.lookup(port)
    virtual = bool(entry and entry.get("kind") == "virtual bootloader")
    if entry and entry.get("kind") == "virtual device":
        raise CommandError(f"{port} is a virtual device running MicroPython, not a bootloader: flash "
                           "`nabd sim bootloader`'s port", EXIT_DEVICE)
    no_stub = no_stub or virtual
    mode = "no-reset" if virtual else "default-reset"
    try:
        esp = cmds.detect_chip(port, 115200, mode, connect_attempts=2)
    except FatalError as e:
        text = str(e)
        if "lock" in text.lower() or "busy" in text.lower():
            raise CommandError(f"{port} is in use by another program: close it, then retry", EXIT_DEVICE) from None
        raise CommandError(f"no ESP32 bootloader answers on {port}: hold BOOT, press RESET, release BOOT, and "
                           "retry (is it the board's port? `nabd ports`)", EXIT_DEVICE) from None
    except OSError as e:
        raise CommandError(f"cannot open {port}: {e.strerror or e}", EXIT_DEVICE) from None
    try:
        if esp.CHIP_NAME != "ESP32":
            raise CommandError(f"{port} is an {esp.CHIP_NAME}, not an ESP32: this firmware is for the ESP32",
                               EXIT_DEVICE)
        say(f"ESP32 on {port}: {esp.get_chip_description()}, MAC {':'.join(f'{b:02x}' for b in esp.read_mac())}")
        if not no_stub:
            esp = esp.run_stub()
        if not virtual and baud != 115200:
            esp.change_baud(baud)
        cmds.attach_flash(esp)
        if not no_stub:
            say("erasing the flash")
            cmds.erase_flash(esp)
        say(f"writing {image.name} ({len(data)} bytes, {desc}) at 0x{offset:x}")
        cmds.write_flash(esp, [(offset, data)], flash_size="keep", compress=True)
        cmds.verify_flash(esp, [(offset, data)])
        md5 = esp.flash_md5sum(offset, len(data))
        if not virtual:
            cmds.reset_chip(esp, "hard-reset")
    except FatalError as e:
        raise CommandError(f"flashing failed on {port}: {e}; nothing runs from a half-written image: run "
                           "`nabd flash` again", EXIT_DEVICE) from None
    except (OSError, Exception) as e:
        if isinstance(e, CommandError):
            raise
        raise CommandError(f"the ESP32 on {port} stopped answering ({e}): check the cable, then run `nabd flash` "
                           "again", EXIT_DEVICE) from None
    finally:
        try:
            esp._port.close()
        except Exception:  # noqa: BLE001
            pass
    return {"ok": True, "port": port, "image": str(image), "offset": offset, "size": len(data), "md5": md5,
            "stub": not no_stub}


def cmd_flash(args) -> int:
    out = flash(args.port, Path(args.image), args.no_stub, args.baud, say=(lambda s: None) if args.json else print)
    if args.json:
        emit_json(out)
    else:
        print(f"flashed and verified: {out['size']} bytes at 0x{out['offset']:x} (MD5 {out['md5']})")
    return EXIT_OK


def register(sub) -> None:
    p = sub.add_parser("flash", help="write a MicroPython firmware image to an ESP32 (esptool), verified",
                       description="Detect the ESP32 on the port, check the image, erase, write, verify and "
                       "reset, through esptool's Python API.")
    add_common(p)
    p.add_argument("image", help="ESP32 firmware image (.bin) written at 0x1000, or a merged image from 0x0")
    p.add_argument("--no-stub", action="store_true", help="talk to the ROM bootloader only (no flasher stub)")
    p.add_argument("--baud", type=int, default=460800, help="baud rate while writing (default 460800)")
    p.set_defaults(func=cmd_flash)
