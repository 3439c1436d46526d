"""``nabd ports``: the serial ports a device can be on.

    nabd ports [--json]

Lists the host's serial ports (pyserial's ``list_ports``) with USB VID:PID and description, and
marks the USB-serial bridges ESP32 boards carry (Silicon Labs CP210x, WCH CH34x/CH910x, FTDI) and
the ESP32-S2/S3/C3 native USB (Espressif, VID 303A), then the virtual devices and virtual
bootloaders running on this machine (``host/virtual_ports.py``: a registry folder,
``$NABD_VIRTUAL_PORTS``). Exit 0, also when there is no port (then it says what to check).
"""
from __future__ import annotations

from host.cli import EXIT_OK, add_common, emit_json

# (VID, PID or None for any) -> the chip, as technicians know it
BRIDGES = {
    (0x10C4, 0xEA60): "CP210x", (0x10C4, 0xEA70): "CP2105", (0x10C4, 0xEA71): "CP2108",
    (0x1A86, 0x7523): "CH340", (0x1A86, 0x7522): "CH340", (0x1A86, 0x5523): "CH341",
    (0x1A86, 0x55D3): "CH343", (0x1A86, 0x55D4): "CH9102",
    (0x0403, 0x6001): "FTDI FT232R", (0x0403, 0x6010): "FTDI FT2232", (0x0403, 0x6011): "FTDI FT4232",
    (0x0403, 0x6014): "FTDI FT232H", (0x0403, 0x6015): "FTDI FT231X",
    (0x303A, 0x1001): "ESP32-S3/C3 native USB (USB-Serial/JTAG)", (0x303A, 0x0002): "ESP32-S2 native USB",
    (0x303A, 0x4001): "ESP32-S2/S3 native USB (MicroPython TinyUSB)",
}


def bridge(vid: int | None, pid: int | None) -> str | None:
    """The ESP32 USB bridge this VID:PID is, or None."""
    if vid is None:
        return None
    if (vid, pid) in BRIDGES:
        return BRIDGES[(vid, pid)]
    if vid == 0x303A:
        return "Espressif native USB"
    return None


def list_ports() -> list[dict]:
    from serial.tools import list_ports as lp

    from host import virtual_ports

    out = []
    for p in sorted(lp.comports(), key=lambda p: p.device):
        vid, pid = p.vid, p.pid
        out.append({"port": p.device, "kind": "usb" if vid is not None else "serial",
                    "vid_pid": f"{vid:04X}:{pid:04X}" if vid is not None else None,
                    "description": p.description if p.description and p.description != "n/a" else "",
                    "serial_number": p.serial_number, "esp32_bridge": bridge(vid, pid)})
    for e in virtual_ports.entries():
        out.append({"port": e["port"], "kind": e["kind"], "vid_pid": None, "description": e.get("description", ""),
                    "serial_number": None, "esp32_bridge": None, "pid": e["pid"]})
    return out


def cmd_ports(args) -> int:
    ports = list_ports()
    if args.json:
        emit_json({"ok": True, "ports": ports})
        return EXIT_OK
    if not ports:
        print("no serial ports: plug the board in with a data (not charge-only) USB cable; "
              "`dmesg | tail` shows whether the host saw it")
        return EXIT_OK
    w = max(len(p["port"]) for p in ports)
    for p in ports:
        mark = "*" if p["esp32_bridge"] or p["kind"].startswith("virtual") else " "
        what = p["esp32_bridge"] or p["kind"]
        vp = p["vid_pid"] or "-"
        desc = f"  {p['description']}" if p["description"] else ""
        print(f"{mark} {p['port']:<{w}}  {vp:<9}  {what}{desc}")
    if any(p["esp32_bridge"] for p in ports):
        print("* marks the usual ESP32 USB bridges and virtual ports")
    return EXIT_OK


def register(sub) -> None:
    p = sub.add_parser("ports", help="list serial ports, marking ESP32 USB bridges and virtual devices",
                       description="List the serial ports a device can be on, with USB VID:PID, marking "
                       "the USB-serial bridges ESP32 boards carry and the virtual devices running here.")
    add_common(p, port=False)
    p.set_defaults(func=cmd_ports)
