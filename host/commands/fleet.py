"""``nabd sim fleet``: many simulated devices against real brokers (``sim/fleet.py``).

    nabd sim fleet --devices N --interval S --broker URL [--broker URL2 ...] [--duration S]
                   [--clinics K] [--state DIR] [--gateway GATEWAY.toml [--broker-passwd PASSWD]]
                   [--register-only] [--drain S] [--produced FILE] [--procs P] [--json]

- Identities: device ``i`` of the fleet has its flash in ``DIR/dev-NNNNN`` (created when absent,
  kept across runs; a temporary folder when ``--state`` is not given). It belongs to clinic
  ``i % K`` (facility ``clinic-K``) and connects to the ``i % len(brokers)``-th ``--broker``.
- ``--gateway GATEWAY.toml``: every device not yet registered there is registered in bulk through
  the gateway's own registration path (``gateway.registration.apply_all``: the checks of ``nabd
  provision --gateway``, new devices in one transaction); ``--broker-passwd PASSWD`` puts all their broker password lines (hashed) in
  Mosquitto's password file in one atomic rewrite (one ``--broker-passwd`` per ``--broker``: each
  device's line in its own broker's file). The broker reads it at its next SIGHUP, so an
  operator registers with ``--register-only``, reloads the broker, then runs.
- Running: each device measures every ``--interval`` seconds (values from recorded results, no
  signal chain) for ``--duration`` seconds, then the links stay up until every reading is
  acknowledged by the gateway (signed ack) or ``--drain`` seconds passed. Once a second: connected
  devices, readings produced, acknowledged and waiting (a text line, or a JSON line with
  ``--json``); at the end a summary (the last line).
- ``--procs P``: the devices in P processes (device ``i`` in process ``i % P``), each with its own
  loop (one Python thread steps every device in turn: its pass grows with N); the per-second line
  and the summary are summed over them. The open-file limit is raised to the hard limit (one
  socket per device).
- Exit: 0 every reading acknowledged; 1 readings still waiting at the end (kept in the devices'
  outboxes for the next run); 3 no device could connect; 2 usage.
"""
from __future__ import annotations

import getpass
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from host.cli import add_common
from nabd_cli import EXIT_DEVICE, EXIT_FAIL, EXIT_OK, EXIT_USAGE, CommandError, emit_json


def register_fleet(fleet, gateway_toml: str, passwd: list[str] | None) -> dict:
    """Register the fleet's devices not yet known to the gateway; device ``i``'s broker password
    line goes to ``passwd[i % len(passwd)]``; returns counts."""
    from gateway import registration
    from host.commands.provision import open_gateway

    gw, db, kek = open_gateway(gateway_toml)
    actor = os.environ.get("NABD_ADMIN") or f"nabd sim fleet:{getpass.getuser()}"
    lines: list[list[str]] = [[] for _ in passwd or ()]
    regs = fleet.registrations()
    try:   # devices registered by an earlier run with this very key version are kept
        counts = registration.apply_all(db, kek, regs, gw.security.key_grace_hours, actor)
    except registration.RegistrationError as e:
        raise CommandError(f"refused by the gateway: {e}", EXIT_FAIL) from None
    for i, reg in enumerate(regs):
        if passwd:
            lines[i % len(passwd)].append(reg.broker_passwd)
    for path, new in zip(passwd or (), lines, strict=True):
        try:
            registration.set_broker_passwords(Path(path), new)
        except OSError as e:
            raise CommandError(f"--broker-passwd {path}: {e.strerror or e}", 4) from None
    return {**counts, "broker_passwd_set": bool(passwd)}


def cmd_fleet(args) -> int:
    from firmware import config as fwconfig
    from sim.fleet import make_fleet

    if args.devices < 1 or args.clinics < 1:
        raise CommandError("--devices and --clinics must be >= 1", EXIT_USAGE)
    if not 1 <= args.procs <= args.devices:
        raise CommandError("--procs must be within 1..--devices", EXIT_USAGE)
    if args.interval <= 0 or args.duration < 0 or args.drain < 0:
        raise CommandError("--interval must be > 0, --duration and --drain >= 0 (seconds)", EXIT_USAGE)
    if args.broker_passwd and not args.gateway:
        raise CommandError("--broker-passwd goes with --gateway GATEWAY.toml", EXIT_USAGE)
    if args.broker_passwd and len(args.broker_passwd) not in (1, len(args.broker)):
        raise CommandError("give one --broker-passwd, or one per --broker (each broker's password file)", EXIT_USAGE)
    if args.register_only and not (args.gateway and args.state):
        raise CommandError("--register-only needs --gateway and --state (the identities to run later)", EXIT_USAGE)
    for b in args.broker:
        try:
            fwconfig.parse_broker(b)
        except fwconfig.ConfigError as e:
            raise CommandError(f"--{e}", EXIT_USAGE) from None
    temp = None
    fleet = None
    state = Path(args.state) if args.state else Path(temp := tempfile.mkdtemp(prefix="nabd-fleet-"))
    try:
        fleet = make_fleet(state, args.devices, args.broker, clinics=args.clinics, procs=args.procs)
        reg = register_fleet(fleet, args.gateway, args.broker_passwd) if args.gateway else None
        if args.register_only:
            out = {"ok": True, "devices": args.devices, **reg}
            if args.json:
                emit_json(out)
            else:
                print(f"{reg['registered']} devices registered, {reg['already_registered']} already were"
                      + ("; reload the broker (kill -HUP) to load their passwords" if args.broker_passwd else ""))
            return EXIT_OK

        def report(c: dict) -> None:
            if args.json:
                print(json.dumps(c, separators=(",", ":")), flush=True)
            else:
                print(f"{c['t']:7.1f} s  connected {c['connected']}/{args.devices}  produced {c['produced']}  "
                      f"acked {c['acked']}  waiting {c['waiting']}", flush=True)

        summary = fleet.run(args.interval, args.duration, args.drain, report=report)
        if args.produced:
            fleet.write_produced(Path(args.produced))
        if summary["connects"] == 0:
            code = EXIT_DEVICE
        else:
            code = EXIT_OK if summary["waiting"] == 0 else EXIT_FAIL
        summary = {"ok": code == EXIT_OK, **({"registration": reg} if reg else {}), **summary, "exit": code}
        if args.json:
            emit_json(summary)
        else:
            print(f"{summary['readings_produced']} readings from {summary['devices']} devices, "
                  f"{summary['acked']} acknowledged, {summary['waiting']} waiting, {summary['drops']} dropped")
            if code == EXIT_DEVICE:
                print("nabd: no device could connect to " + ", ".join(args.broker), file=sys.stderr)
        return code
    finally:
        if fleet is not None:
            fleet.stop()
        if temp:
            shutil.rmtree(temp, ignore_errors=True)


def add_parser(sub) -> None:
    f = sub.add_parser("fleet", help="many simulated devices (the firmware's comms stack) against real brokers",
                       description="N device identities speaking the device protocol with the firmware's own "
                       "reading, JWS, seq, outbox and uplink modules, in one process or --procs processes.")
    add_common(f, port=False)
    f.add_argument("--devices", type=int, required=True, help="number of devices")
    f.add_argument("--interval", type=float, required=True, help="seconds between two readings of a device")
    f.add_argument("--broker", action="append", required=True,
                   help="mqtt://HOST:PORT; repeat for several clinic brokers (device i uses the i %% n-th)")
    f.add_argument("--duration", type=float, default=60.0, help="seconds of measuring (default 60)")
    f.add_argument("--clinics", type=int, default=1, help="clinics the devices are spread over (default 1)")
    f.add_argument("--state", default=None, help="folder of the devices' flash (kept; default a temporary one)")
    f.add_argument("--gateway", metavar="GATEWAY.toml", default=None,
                   help="register the devices at this gateway first (its database and key encryption key)")
    f.add_argument("--broker-passwd", metavar="PASSWD", action="append", default=None,
                   help="with --gateway: Mosquitto password file to put the devices' lines in (repeat: one "
                   "per --broker, in the same order)")
    f.add_argument("--register-only", action="store_true", help="register (needs --gateway, --state) and exit")
    f.add_argument("--drain", type=float, default=120.0,
                   help="seconds to wait for the last acknowledgements after --duration (default 120)")
    f.add_argument("--procs", type=int, default=1,
                   help="processes to run the devices in, each with its own loop (default 1)")
    f.add_argument("--produced", metavar="FILE", default=None,
                   help="write {device id: [seq produced in this run]} as JSON (for checks)")
    f.set_defaults(func=cmd_fleet)

