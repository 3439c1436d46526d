"""``nabd-gateway devices add|list|revoke|rotate-key --config FILE``: the device registry.

- ``add ID --key HEX --facility F --region MA-xx [--key-version N]``: register a device and its
  signing key (encrypted at rest with the KEK; the key is never printed or audited).
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

import json

from gateway import admin
from gateway.commands._common import EXIT_DATA, EXIT_USAGE, CommandError, actor, add_config, kek, open_config
from gateway.secrets import parse_key_hex


def _key(text: str) -> bytes:
    try:
        return parse_key_hex(text)
    except ValueError as e:
        raise CommandError(f"--key: {e}", EXIT_USAGE) from None


def _admin(fn, *a, **kw):
    try:
        return fn(*a, **kw)
    except admin.AdminError as e:
        raise CommandError(str(e), EXIT_USAGE if e.bad_argument else EXIT_DATA) from None


def cmd_add(args) -> int:
    cfg, db = open_config(args)
    key = _key(args.key)
    _admin(admin.add_device, db, kek(cfg), args.id, key, args.facility, args.region, args.key_version, actor())
    _out(args, {"ok": True, "id": args.id, "key_version": args.key_version}, f"added {args.id} (key version {args.key_version})")
    return 0


def cmd_list(args) -> int:
    _, db = open_config(args)
    rows = admin.list_devices(db)
    if args.json:
        print(json.dumps(rows, separators=(",", ":")))
        return 0
    cols = ("id", "facility", "region", "status", "state", "key_version", "fw", "cal_due", "last_seen_at",
            "readings", "outbox", "drops")
    table = [cols] + [tuple("" if r[c] is None else str(r[c]) for c in cols) for r in rows]
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
    cfg, db = open_config(args)
    key = _key(args.key)
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

    a = s.add_parser("add", help="register a device and its signing key")
    add_config(a)
    a.add_argument("id")
    a.add_argument("--key", required=True, help="signing key, 64 hex digits (32 bytes)")
    a.add_argument("--facility", required=True)
    a.add_argument("--region", required=True, help="ISO 3166-2 region MA-01..MA-12")
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
    k.add_argument("--key", required=True, help="new signing key, 64 hex digits")
    k.add_argument("--grace-hours", type=float, default=None,
                   help="how long the old version stays valid (default [security] key_grace_hours)")
    k.add_argument("--json", action="store_true")
    k.set_defaults(func=cmd_rotate)

    from gateway.commands_out import register_cli  # `devices command ID ...`: signed commands to a device

    register_cli(s)
