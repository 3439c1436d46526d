"""``nabd-gateway devices add|list|revoke|rotate-key --config FILE``: the device registry.

- ``add ID --key HEX --facility F --region MA-xx [--key-version N]``: register a device and its
  signing key (encrypted at rest with the KEK; the key is never printed or audited).
- ``add --from FILE [--broker-passwd PASSWD]``: import the registration file ``nabd provision
  --registration FILE`` wrote (``gateway/registration.py``): registers the device, or rotates its
  key when the file carries the next key version (a re-provisioned device); with
  ``--broker-passwd``, also puts the device's line in Mosquitto's password file (HUP the broker
  afterwards). No secret on the command line.
- ``list [--json]``: devices, status, online state (latest status message), current key version,
  calibration due, last seen, readings stored, readings waiting on the device and dropped by it.
- ``revoke ID``: the device and all its key versions stop being accepted at once; its later
  readings are quarantined as ``revoked``. Its stored readings stay.
- ``rotate-key ID --key HEX``: the new key becomes version N+1; the old version stays valid for
  ``[security] key_grace_hours`` (readings still in the device outbox were signed with it), then is
  revoked (``--grace-hours 0``: at once, for a compromised key). Acks are signed with the version
  that signed the reading.
Every action is written to the audit log with the acting user (``NABD_ADMIN`` or the login name).
"""
from __future__ import annotations

import getpass
import json
import sys
from pathlib import Path

from gateway import admin
from gateway.commands._common import (
    EXIT_DATA,
    EXIT_USAGE,
    CommandError,
    actor,
    add_config,
    kek,
    open_config,
    terminal_safe,
)
from gateway.secrets import parse_key_hex


def _key(text: str) -> bytes:
    try:
        return parse_key_hex(text)
    except ValueError as e:
        raise CommandError(f"--key: {e}", EXIT_USAGE) from None


ARGV_KEY_WARNING = ("warning: a key on the command line is visible to every user of this machine (ps, "
                    "/proc, shell history); give it on stdin (--key -), in a file (--key-file FILE) or at the prompt")


def _read_key(args) -> bytes:
    """The signing key from a file (--key-file), stdin (--key -), the prompt (a terminal and no
    --key), or, with a warning, the command line."""
    if getattr(args, "key_file", None):
        if args.key:
            raise CommandError("give --key or --key-file, not both", EXIT_USAGE)
        try:
            text = Path(args.key_file).read_text()
        except OSError as e:
            raise CommandError(f"--key-file {args.key_file}: {e.strerror}", EXIT_USAGE) from None
    elif args.key == "-":
        text = sys.stdin.readline()
    elif args.key:
        print(ARGV_KEY_WARNING, file=sys.stderr)
        text = args.key
    elif sys.stdin.isatty():
        text = getpass.getpass("signing key (64 hex digits, not echoed): ")
    else:
        raise CommandError("no key: give it on stdin (--key -), in a file (--key-file FILE) or at the prompt",
                           EXIT_USAGE)
    return _key(text)


def _admin(fn, *a, **kw):
    try:
        return fn(*a, **kw)
    except admin.AdminError as e:
        raise CommandError(str(e), EXIT_USAGE if e.bad_argument else EXIT_DATA) from None


def cmd_add(args) -> int:
    if args.from_file:
        return cmd_add_from(args)
    if not args.id or not args.facility or not args.region:
        raise CommandError("give ID --facility F --region MA-xx and the key (--key -, --key-file FILE or the "
                           "prompt), or --from FILE", EXIT_USAGE)
    key = _read_key(args)
    cfg, db = open_config(args)
    _admin(admin.add_device, db, kek(cfg), args.id, key, args.facility, args.region, args.key_version, actor())
    _out(args, {"ok": True, "id": args.id, "key_version": args.key_version}, f"added {args.id} (key version {args.key_version})")
    return 0


def cmd_add_from(args) -> int:
    from gateway import registration

    if args.id or args.key or args.key_file:
        raise CommandError("--from FILE takes the device id and key from the file: give neither ID nor --key",
                           EXIT_USAGE)
    try:
        reg = registration.read(args.from_file)
    except registration.RegistrationError as e:
        raise CommandError(str(e), EXIT_DATA) from None
    cfg, db = open_config(args)
    try:
        done = registration.apply(db, kek(cfg), reg, cfg.security.key_grace_hours, actor())
    except registration.RegistrationError as e:
        raise CommandError(f"refused: {e}", 1) from None
    if args.broker_passwd:
        try:
            registration.set_broker_password(args.broker_passwd, reg.broker_passwd)
        except OSError as e:
            raise CommandError(f"--broker-passwd {args.broker_passwd}: {e.strerror or e} (the device is registered; "
                               "add its broker password line by hand or run this again)", EXIT_DATA) from None
    text = (f"{'added' if done['action'] == 'added' else 'rotated the key of'} {reg.device_id} "
            f"(key version {done['key_version']}, {reg.facility}, {reg.region})")
    if args.broker_passwd:
        text += f"; broker password set in {args.broker_passwd}: reload the broker (kill -HUP $(pidof mosquitto))"
    else:
        text += "; broker password NOT set: rerun with --broker-passwd /etc/mosquitto/nabd/passwd"
    _out(args, {"ok": True, "id": reg.device_id, "action": done["action"], "key_version": done["key_version"],
                "broker_passwd_set": bool(args.broker_passwd)}, text + ". Delete the registration file now.")
    return 0


def cmd_list(args) -> int:
    _, db = open_config(args)
    rows = admin.list_devices(db)
    if args.json:
        print(json.dumps(rows, separators=(",", ":")))
        return 0
    cols = ("id", "facility", "region", "status", "state", "alert", "key_version", "fw", "cal_due", "last_seen_at",
            "readings", "outbox", "drops")
    table = [cols] + [tuple("" if r[c] is None else terminal_safe(r[c]) for c in cols) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_revoke(args) -> int:
    _, db = open_config(args)
    _admin(admin.revoke_device, db, args.id, actor())
    _out(args, {"ok": True, "id": args.id, "status": "revoked"}, f"revoked {args.id}")
    return 0


def cmd_rotate(args) -> int:
    key = _read_key(args)
    cfg, db = open_config(args)
    grace = cfg.security.key_grace_hours if args.grace_hours is None else args.grace_hours
    new = _admin(admin.rotate_key, db, kek(cfg), args.id, key, grace, actor())
    _out(args, {"ok": True, "id": args.id, "key_version": new, "old_valid_hours": grace},
         f"{args.id}: key version {new}; previous version valid for {grace:g} h more")
    return 0


def _out(args, obj: dict, text: str) -> None:
    print(json.dumps(obj, separators=(",", ":")) if getattr(args, "json", False) else text)


def register(sub) -> None:
    p = sub.add_parser("devices", help="register, list, revoke devices and rotate their keys")
    s = p.add_subparsers(dest="devices_cmd", metavar="ACTION", required=True)

    a = s.add_parser("add", help="register a device and its signing key (or import a registration file)")
    add_config(a)
    a.add_argument("id", nargs="?")
    a.add_argument("--key", metavar="-", help="'-': read the signing key (64 hex digits) from stdin; without "
                   "--key or --key-file it is asked at the prompt (a key given here is visible in ps: warned)")
    a.add_argument("--key-file", metavar="FILE", help="read the signing key (64 hex digits) from FILE")
    a.add_argument("--facility")
    a.add_argument("--region", help="ISO 3166-2 region MA-01..MA-12")
    a.add_argument("--from", dest="from_file", metavar="FILE",
                   help="registration file written by `nabd provision --registration FILE`")
    a.add_argument("--broker-passwd", metavar="PASSWD",
                   help="with --from: Mosquitto password file to put the device's line in")
    a.add_argument("--key-version", type=int, default=1)
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_add)

    ls = s.add_parser("list", help="list devices")
    add_config(ls)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)

    r = s.add_parser("revoke", help="revoke a device and all its keys")
    add_config(r)
    r.add_argument("id")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_revoke)

    k = s.add_parser("rotate-key", help="store a new key version")
    add_config(k)
    k.add_argument("id")
    k.add_argument("--key", metavar="-", help="'-': read the new signing key from stdin (default: the prompt)")
    k.add_argument("--key-file", metavar="FILE", help="read the new signing key from FILE")
    k.add_argument("--grace-hours", type=float, default=None,
                   help="how long the old version stays valid (default [security] key_grace_hours)")
    k.add_argument("--json", action="store_true")
    k.set_defaults(func=cmd_rotate)

    from gateway.commands.device_command import register_cli  # `devices command|status`

    register_cli(s)
