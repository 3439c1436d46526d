"""``nabd-gateway serve --config FILE [--client-id ID] [--no-api]``

Runs the ingest (gateway/ingest.py), the HTTP API (gateway/web/, in a child process of its own:
nothing on the HTTP side can delay ingest and acks) and the forwarder (gateway/forward.py) when a FHIR server or an observatory
endpoint is configured; with an observatory endpoint, the daily counts are queued each day
(gateway/observatory.py DailyPush). SIGTERM / SIGINT: stop taking messages, drain the queue (commit + ack),
stop the threads, exit 0. Logs go to stderr and never contain keys, tokens or payloads. A database
that is unreachable at start (PostgreSQL down or restarting) is waited for; a wrong password or
database name exits 3 at once.
"""
from __future__ import annotations

import importlib.util
import logging
import signal
import threading
import time

from gateway.commands._common import add_config, kek, open_config
from nabd_cli import EXIT_DEVICE, CommandError, os_reason, why_unreachable

log = logging.getLogger("nabd.gateway")


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def run(args) -> int:
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg, db = _open_waiting(args)
    kek(cfg)  # fail now with a clear message if the KEK is missing
    bc = cfg.broker
    logging.getLogger("nabd.gateway.mqtt").setLevel(logging.WARNING)
    logging.getLogger("nabd.gateway.mqtt").addFilter(_Outage(bc.url))
    from gateway.ingest import Ingest

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    # Start-up errors are one line naming the address and what to do; nothing is left half-started.
    api = forwarder = None
    if not args.no_api:
        from gateway.web.server import ApiProcess

        try:  # bound here, before anything runs: a taken port is a clear error, not a half-started gateway
            api = ApiProcess(args.config, cfg)
        except OSError as e:
            raise CommandError(f"cannot listen on {cfg.api.listen} for the API ({os_reason(e)}): stop what "
                               f"uses that port, or change [api] listen in {args.config}", EXIT_DEVICE) from None
    why = why_unreachable(bc.host, bc.port)
    if why:
        _stop(api)
        raise CommandError(f"cannot reach the broker at {bc.url} ({why}): start it, or correct [broker] url "
                           f"in {args.config}", EXIT_DEVICE)
    ingest = Ingest(cfg, db, client_id=args.client_id)
    try:
        ingest.start()
    except OSError as e:
        _stop(api)
        raise CommandError(f"cannot connect to the broker at {bc.url} ({os_reason(e)}): check [broker] in "
                           f"{args.config}", EXIT_DEVICE) from None
    end = time.monotonic() + CONNECT_WAIT_S
    while not ingest.connected.wait(0.05) and ingest.refused is None and time.monotonic() < end:
        pass
    if ingest.refused is not None:
        ingest.stop(timeout=2)
        _stop(api)
        raise CommandError(f"the broker at {bc.url} refused the gateway ({ingest.refused}): check [broker] "
                           f"username and password_file in {args.config} and the broker's password file",
                           EXIT_DEVICE)
    if api is not None:
        api.start()
        log.info("API listening on %s (links to %s), process %d", cfg.api.listen, api.url, api.proc.pid)
    if _has("gateway.forward") and (cfg.fhir_forward.enabled or cfg.observatory.endpoint):
        from gateway.forward import Forwarder

        forwarder = Forwarder(cfg, db).start()
        log.info("forwarder started")
    daily = None
    if cfg.observatory.endpoint:
        from gateway.observatory import DailyPush

        oc = cfg.observatory
        daily = DailyPush(db, oc.suppress_below, oc.push_delay_hours, oc.push_catch_up_days).start()
    log.info("gateway serving (client id %s, database %s)", ingest.client_id, db.dialect)
    while not stop.wait(0.5):
        pass
    log.info("stopping: draining %d queued message(s)", ingest.queue.qsize())
    ingest.stop()
    if daily is not None:
        daily.stop()
    if forwarder is not None:
        forwarder.stop()
    _stop(api)
    log.info("stopped; %d reading(s) committed in this run", ingest.committed)
    return 0


CONNECT_WAIT_S = 10.0  # for the broker's answer to the first CONNECT before serving anyway
# libpq's words for a database that is not there *yet* (down, restarting, a standby not yet
# promoted): serve waits for it. Anything else (a wrong password, no such database) exits 3 at once.
_DB_TRANSIENT = ("Connection refused", "the database system is", "timeout expired", "server closed the connection",
                 "No route to host", "Network is unreachable", "read-only", "hot standby")


def _open_waiting(args):
    """``open_config``, waiting while the database is unreachable (PostgreSQL restarting, failing
    over, not started yet after a reboot): a gateway started during an outage waits for its end
    instead of exiting and being restarted over and over. Logged once when the wait begins, once a
    minute while it lasts, once when it ends."""
    from gateway.worker import MAX_RETRY_S, OUTAGE_REMIND_S

    since = last = None
    delay = 0.1
    while True:
        try:
            out = open_config(args)
        except CommandError as e:
            if e.code != EXIT_DEVICE or not any(w in str(e) for w in _DB_TRANSIENT):
                raise
            now = time.monotonic()
            if since is None:
                since = last = now
                log.warning("%s; waiting for it (retrying every %g s at most)", e, MAX_RETRY_S)
            elif now - last >= OUTAGE_REMIND_S:
                last = now
                log.warning("database still unreachable after %.0f s; waiting for it", now - since)
            time.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_S)
            continue
        if since is not None:
            log.info("database reachable after %.1f s", time.monotonic() - since)
        return out


def _stop(api) -> None:
    if api is not None:
        api.stop()


class _Outage(logging.Filter):
    """While the broker is down, paho logs "Client is not connected ..." at every retry, without
    the broker's address: one warning naming it instead, at most once a minute."""

    def __init__(self, url: str):
        super().__init__()
        self.url = url
        self.last = -1e9

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Client is not connected"):
            return True
        now = time.monotonic()
        if now - self.last < 60.0:
            return False
        self.last = now
        record.msg, record.args, record.levelno, record.levelname = (
            "broker at %s unreachable; retrying every few seconds", (self.url,), logging.WARNING, "WARNING")
        return True


def register(sub) -> None:
    p = sub.add_parser("serve", help="run the gateway: ingest, API, forwarder")
    add_config(p)
    p.add_argument("--client-id", default=None, help="MQTT client id (default [broker] client_id)")
    p.add_argument("--no-api", action="store_true", help="do not start the HTTP API")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument("--json", action="store_true", help="a start-up error as JSON on stdout (logs stay on stderr)")
    p.set_defaults(func=run)
