"""``nabd info``: what a nabd device says about itself.

    nabd info --port PORT [--json]

Device id, firmware version, calibration (id, date, due date), outbox depth (readings not yet
acknowledged by the gateway) and drops, free heap (bytes, after a garbage collection, with the
firmware's modules loaded), and the last warnings and errors of its log. Secrets in
``config.json`` are never read off the device. Exit 0, or 3 when the device cannot be reached or
does not run nabd.
"""
from __future__ import annotations

import datetime as dt

from host.cli import EXIT_OK, add_common, emit_json

# Runs on the device (MicroPython): one JSON object, nothing secret in it.
DEVICE_INFO = """
import gc, binascii
from firmware.boards import current
from firmware import config, version
_b = current()
_o = {'fw': version.VERSION, 'uid': binascii.hexlify(_b.unique_id()).decode(), 'config_error': None,
      'device_id': None, 'key_version': None, 'facility': None, 'broker': None, 'calibration': None,
      'wifi_ssid': None}
try:
    _c = config.load(_b)
    _o.update(device_id=_c.device_id, key_version=_c.key_version, facility=_c.facility, broker=_c.broker,
              calibration=_c.calibration, wifi_ssid=_c.wifi_ssid)
    del _c
except config.ConfigError as e:
    _o['config_error'] = str(e)
try:
    from firmware.outbox import Outbox
    _x = Outbox(_b)
    _o['outbox'] = _x.depth
    _o['drops'] = _x.drops
    del _x
except Exception as e:
    _o['outbox'] = None
    _o['outbox_error'] = repr(e)
try:
    from firmware.log import Log
    _o['last_errors'] = [l for l in Log(_b).lines() if ' ERROR ' in l or ' WARN ' in l][-5:]
except Exception as e:
    _o['last_errors'] = ['log unreadable: ' + repr(e)]
gc.collect()
_o['free_heap'] = gc.mem_free()
"""


def read_info(dev) -> dict:
    """The info dict of an open ``host.device.Device``."""
    info = dev.call("_o", setup=DEVICE_INFO, timeout=20)
    cal = info.get("calibration") or {}
    due = cal.get("due")
    info["calibration_overdue"] = bool(due) and due < dt.date.today().isoformat()
    info["port"] = dev.port
    return info


def cmd_info(args) -> int:
    from host.device import Device

    with Device(args.port) as dev:
        info = read_info(dev)
    if args.json:
        emit_json({"ok": True, **info})
        return EXIT_OK
    cal = info.get("calibration")
    print(f"device      {info['device_id'] or 'not provisioned'}"
          + (f" (key version {info['key_version']})" if info["key_version"] else "")
          + (f"  [{info['config_error']}]" if info["config_error"] else ""))
    print(f"board       {info['uid']}  on {info['port']}")
    print(f"firmware    {info['fw']}")
    if info["facility"]:
        print(f"facility    {info['facility']}; broker {info['broker']}; Wi-Fi {info['wifi_ssid'] or '-'}")
    if cal:
        print(f"calibration {cal.get('id')} of {cal.get('date')}, due {cal.get('due') or '-'}"
              + ("  OVERDUE: calibrate again (`nabd calibrate`)" if info["calibration_overdue"] else ""))
    else:
        print("calibration none: the maker's default curves (`nabd calibrate temp|spo2`)")
    print(f"outbox      {info['outbox']} readings waiting, {info.get('drops', 0)} dropped")
    print(f"free heap   {info['free_heap']} bytes")
    errs = info.get("last_errors") or []
    print("last errors " + ("none" if not errs else ""))
    for line in errs:
        print(f"  {line}")
    return EXIT_OK


def register(sub) -> None:
    p = sub.add_parser("info", help="device id, firmware, calibration, outbox, free heap, last errors",
                       description="What a nabd device says about itself: device id, firmware version, "
                       "calibration, readings waiting in its outbox, free memory and the last errors in its log. "
                       "Exit 3 when the device cannot be reached or does not run nabd.")
    add_common(p)
    p.set_defaults(func=cmd_info)
