"""``nabd-gateway observatory report|push``: the observatory's daily device counts.

``report --from D --to D [--json|--csv]`` prints the counts (suppressed cells shown as ``-``);
``push [--day D]`` queues one day's counts (default: yesterday, UTC) in the outbox for the
forwarder to deliver to ``[observatory] endpoint``; a day already queued is not queued again.
"""
from __future__ import annotations

import datetime as dt
import sys

from nabd_cli import EXIT_DEVICE, EXIT_USAGE, CommandError, emit_json


def register(sub) -> None:
    p = sub.add_parser("observatory", help="observatory feed: device counts per facility and region")
    osub = p.add_subparsers(dest="observatory_command", metavar="ACTION")
    r = osub.add_parser("report", help="print daily counts for a date range")
    r.add_argument("--config", required=True, help="gateway configuration file (TOML)")
    r.add_argument("--from", dest="date_from", required=True, metavar="YYYY-MM-DD")
    r.add_argument("--to", dest="date_to", required=True, metavar="YYYY-MM-DD")
    fmt = r.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="machine-readable output")
    fmt.add_argument("--csv", action="store_true", help="CSV output")
    r.set_defaults(func=_report)
    q = osub.add_parser("push", help="queue one day's counts for the observatory endpoint")
    q.add_argument("--config", required=True, help="gateway configuration file (TOML)")
    q.add_argument("--day", metavar="YYYY-MM-DD", help="default: yesterday (UTC)")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=_push)
    p.set_defaults(func=lambda a: (p.print_help(), EXIT_USAGE)[1])


def _open(path: str):
    from gateway import config as gconfig

    try:
        cfg = gconfig.load(path)
    except gconfig.ConfigError as e:
        raise CommandError(str(e), EXIT_USAGE) from None
    try:
        db = cfg.database_handle()
        db.migrate()
    except Exception as e:
        raise CommandError(f"database {cfg.database.url.split('@')[-1]}: {e}", EXIT_DEVICE) from None
    return cfg, db


def _report(args) -> int:
    from gateway import observatory

    cfg, db = _open(args.config)
    try:
        report = observatory.device_counts(db, args.date_from, args.date_to, cfg.observatory.suppress_below)
    except observatory.ObservatoryError as e:
        raise CommandError(str(e), EXIT_USAGE) from None
    if args.json:
        emit_json(report)
    elif args.csv:
        sys.stdout.write(observatory.to_csv(report))
    else:
        sys.stdout.write(observatory.to_text(report))
    return 0


def _push(args) -> int:
    from gateway import observatory

    cfg, db = _open(args.config)
    try:
        day = dt.date.fromisoformat(args.day) if args.day else dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)
    except ValueError:
        raise CommandError("--day must be YYYY-MM-DD", EXIT_USAGE) from None
    queued = observatory.enqueue_daily_push(db, day, cfg.observatory.suppress_below)
    if args.json:
        emit_json({"day": day.isoformat(), "queued": queued})
    else:
        print(f"{day}: {'queued' if queued else 'already queued'}")
    return 0
