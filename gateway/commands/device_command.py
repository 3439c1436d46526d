"""``nabd-gateway devices command|status``: signed commands to a device (gateway/device_commands.py)
and the devices' latest status (gateway/status.py).

    nabd-gateway devices command ID assign-patient TOKEN|--clear  --config FILE [--json]
    nabd-gateway devices command ID identify [--seconds N]        --config FILE [--json]
    nabd-gateway devices command ID settings KEY=VALUE...         --config FILE [--json]
    (each also takes --ttl SECONDS, default 600, and --timeout SECONDS for the broker)
    nabd-gateway devices status [ID] --config FILE [--json]
"""
from __future__ import annotations

import argparse
import json

from gateway.config import ConfigError
from gateway.device_commands import (
    DEFAULT_TTL_S,
    SETTINGS,
    CommandRefused,
    PublishError,
    check_args,
    parse_setting,
    send_command,
)


def _common(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: accepted before or after the action without one level's default hiding the other's value
    p.add_argument("--config", default=argparse.SUPPRESS, help="gateway configuration file (TOML)")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the result as JSON")
    p.add_argument("--ttl", type=int, default=argparse.SUPPRESS,
                   help=f"seconds the command stays valid (exp = now + ttl; default {DEFAULT_TTL_S})")
    p.add_argument("--timeout", type=float, default=argparse.SUPPRESS,
                   help="seconds to wait for the broker (default 10)")


def _run(args) -> int:
    from gateway.commands._common import actor, kek, open_config
    from nabd_cli import EXIT_DATA, EXIT_DEVICE, EXIT_USAGE, CommandError

    if not getattr(args, "config", None):
        raise CommandError("--config FILE is required", EXIT_USAGE)
    try:
        if args.cmd_action == "assign-patient":
            if args.clear == (args.token is not None):
                raise CommandRefused("give a patient TOKEN or --clear (one of them)")
            cmd, cargs = "assign_patient", {"patient": None if args.clear else args.token}
        elif args.cmd_action == "identify":
            cmd, cargs = "identify", {"seconds": args.seconds}
        else:
            cmd, cargs = "settings", dict(parse_setting(t) for t in args.pairs)
        check_args(cmd, cargs)
    except CommandRefused as e:
        raise CommandError(str(e), EXIT_USAGE) from None
    cfg, db = open_config(args)
    try:
        cfg.broker.host  # noqa: B018 - validates the URL
    except ConfigError as e:
        raise CommandError(str(e), EXIT_USAGE) from None
    ttl = getattr(args, "ttl", DEFAULT_TTL_S)
    try:
        p = send_command(cfg, db, kek(cfg), args.id, cmd, cargs, actor(), ttl, getattr(args, "timeout", 10.0))
    except CommandRefused as e:
        raise CommandError(str(e), EXIT_DATA) from None
    except PublishError as e:
        raise CommandError(str(e), EXIT_DEVICE) from None
    out = {"ok": True, "id": p.device_id, "cmd": p.cmd, "args": p.args, "n": p.n, "exp": p.exp,
           "key_version": p.key_version, "topic": p.topic}
    if getattr(args, "json", False):
        print(json.dumps(out, separators=(",", ":")))
    else:
        print(f"sent {p.cmd} {json.dumps(p.args, separators=(',', ':'))} to {p.device_id} "
              f"(n={p.n}, expires in {ttl} s, key version {p.key_version})")
    return 0


def _run_status(args) -> int:
    from gateway.commands._common import open_config
    from gateway.status import latest

    _, db = open_config(args)
    found = latest(db, args.id)
    if args.json:
        print(json.dumps(found, separators=(",", ":")))
        return 0
    cols = ("device_id", "state", "fw", "rssi", "outbox", "drops", "errors", "cal_due", "received_at")
    table = [cols] + [tuple("" if r[c] is None else str(r[c]) for c in cols) for r in found]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return 0


def register_cli(devices_sub) -> None:
    """Add ``command`` and ``status`` to the ``devices`` subparsers (from gateway/commands/devices.py)."""
    from gateway.commands._common import add_config

    st = devices_sub.add_parser("status", help="the latest signed status of each device (or of ID)")
    add_config(st)
    st.add_argument("id", nargs="?", default=None)
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_run_status)

    c = devices_sub.add_parser("command", help="send a signed command to a device (assign-patient, identify, settings)")
    _common(c)
    c.add_argument("id", help="device id")
    s = c.add_subparsers(dest="cmd_action", metavar="COMMAND", required=True)

    a = s.add_parser("assign-patient", help="assign a patient token (or --clear) to the device's next readings")
    _common(a)
    a.add_argument("token", nargs="?", default=None, help="pseudonymous patient token ^[A-Za-z0-9_-]{4,64}$")
    a.add_argument("--clear", action="store_true", help="no patient from now on")
    a.set_defaults(func=_run)

    i = s.add_parser("identify", help="make the device beep and blink")
    _common(i)
    i.add_argument("--seconds", type=int, default=10, help="1..300 (default 10)")
    i.set_defaults(func=_run)

    st = s.add_parser("settings", help="change device settings: " + ", ".join(sorted(SETTINGS)))
    _common(st)
    st.add_argument("pairs", nargs="+", metavar="KEY=VALUE", help="VALUE as JSON (true, 0.3) or text")
    st.set_defaults(func=_run)
