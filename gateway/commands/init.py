"""``nabd-gateway init --config FILE [--db URL] [--broker URL] [--listen HOST:PORT] [--local-tls HOSTS]
[--json] [--force]``

Writes a commented configuration with fresh secrets:
- the admin (API) token: 32 random bytes, URL-safe; only its SHA-256 goes in the file, the token
  itself is printed once (``--json``: ``{"admin_token": ...}``) and never stored;
- the key-encryption key (KEK) that encrypts device keys at rest: 32 random bytes in hex, in a
  separate file ``<config>.kek`` created with 0600 permissions and referenced from the config
  (``NABD_KEK`` in the environment overrides it: keep the KEK off the disk where you can).
- with ``--local-tls``, the API's TLS certificate for those host names/addresses, signed by a
  one-off local CA (gateway/web/tls.py): ``api.crt``, ``api.key`` (0600) and ``api-ca.crt`` (what
  clients trust) beside the configuration, which then serves HTTPS.
Refuses to overwrite an existing configuration (or KEK file) unless ``--force``: a new KEK makes
every stored device key unreadable.
"""
from __future__ import annotations

import hashlib
import os
import secrets
import sys
from pathlib import Path

from gateway.config import ConfigError, from_dict
from nabd_cli import EXIT_USAGE, CommandError, add_json, emit_json

TEMPLATE = '''# nabd-gateway configuration (TOML), written by `nabd-gateway init`.
# Secrets are not in this file: the admin token is stored as its SHA-256 only, and the
# key-encryption key is in a separate 0600 file (or the NABD_KEK environment variable).

[broker]
# MQTT broker; mqtts://host:8883 for TLS (then set ca_file).
url = "{broker}"
# Fixed client id: the broker keeps this session (subscription + unacknowledged messages)
# across restarts. Give every gateway process sharing the subscription its own id. On the site
# broker (gateway/mosquitto/, use_username_as_clientid) the client id IS the username: leave
# client_id empty there and give every gateway process its own broker user.
client_id = "{client_id}"
# Gateway broker account (may read readings/status, write ack/cmd); the password lives in a file.
username = ""
password_file = ""
# `devices command` connects under its own user (write nabd/v1/dev/+/cmd only), so that it never
# takes over the serve process' session; empty: the account above.
command_username = ""
command_password_file = ""
ca_file = ""
keepalive = 30
session_expiry_s = 86400

[database]
# sqlite:///PATH (relative to this file) or postgresql://user@host:port/dbname
url = "{db}"

[ingest]
batch_max = 1024       # readings per transaction at most
batch_ms = 5           # wait at most this long after the first message for more
queue_max = 4096       # bounded hand-off network thread -> writer (full: the consumer slows down)
receive_maximum = 4096 # MQTT 5: unacknowledged messages the broker may send us at once
future_skew_s = 300    # readings further in the future than this (synced clock) are rejected

[api]
# A non-loopback address needs TLS (tls_cert + tls_key) or allow_plaintext = true (behind a TLS proxy).
listen = "{listen}"
# SHA-256 (hex) of the admin bearer token printed by `init`.
token_sha256 = "{token_sha256}"
metrics_open = false
# Base of the links the API returns (Bundle.link, fullUrl); never taken from the Host header.
# Empty: the listen address. Required when listening on every interface.
public_url = ""
tls_cert = "{tls_cert}"
tls_key = "{tls_key}"
allow_plaintext = false
max_connections = 256   # past it a new connection evicts the slowest-to-send one
header_timeout_s = 10.0 # a request must arrive whole within this
keepalive_s = 5.0       # idle kept-alive connections are closed after this
backlog = 1024

[fhir_forward]
# A national FHIR R4 server receiving transaction Bundles (retried until accepted).
enabled = false
url = ""
token = ""
timeout_s = 15.0
backoff_base_s = 2.0
backoff_cap_s = 600.0

[observatory]
# Daily device counts pushed here when set (by `serve`, through the outbox, retried until
# accepted); cells counting fewer patients are suppressed.
endpoint = ""
suppress_below = 5
# A finished UTC day is queued this many hours after midnight, so that devices offline at midnight
# deliver their stored readings first; days missed while the gateway was down are caught up.
push_delay_hours = 6.0
push_catch_up_days = 7

[quarantine]
# Rejected messages kept with (up to 4 KiB of) their bytes, per device and minute; past that they
# are only counted (`nabd-gateway quarantine list` shows the device as flooding).
per_device_per_min = 60
max_mb = 256.0         # bytes of rejected messages kept at most; the oldest go first
retention_days = 30

[security]
# 64 hex digits, file mode 0600; NABD_KEK in the environment takes precedence.
kek_file = "{kek_file}"
# After `devices rotate-key`, the old key version stays valid this long (readings in the device outbox).
key_grace_hours = 72.0
'''


def _write_private(path: Path, text: str, force: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def run(args) -> int:
    cfg_path = Path(args.config)
    kek_path = cfg_path.with_name(cfg_path.name + ".kek")
    for p in (cfg_path, kek_path):
        if p.exists() and not args.force:
            raise CommandError(f"{p} already exists; use --force to overwrite (a new key-encryption key "
                               "makes the stored device keys unreadable)", EXIT_USAGE)
    token = secrets.token_urlsafe(32)
    db = args.db or f"sqlite:///{cfg_path.stem}.db"
    hosts = [h.strip() for h in (args.local_tls or "").split(",") if h.strip()]
    if args.local_tls is not None and not hosts:
        raise CommandError("--local-tls needs host names or addresses, e.g. 127.0.0.1,localhost", EXIT_USAGE)
    text = TEMPLATE.format(broker=args.broker, client_id=f"nabd-gateway-{secrets.token_hex(4)}", db=db,
                           listen=args.listen, token_sha256=hashlib.sha256(token.encode()).hexdigest(),
                           kek_file=kek_path.name, tls_cert="api.crt" if hosts else "",
                           tls_key="api.key" if hosts else "")
    import tomllib

    try:
        from_dict(tomllib.loads(text), cfg_path)
    except ConfigError as e:
        raise CommandError(f"invalid option: {e}", EXIT_USAGE) from None
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    _write_private(kek_path, secrets.token_hex(32) + "\n", args.force)
    _write_private(cfg_path, text, args.force)
    out = {"admin_token": token, "config": str(cfg_path), "kek_file": str(kek_path)}
    if hosts:
        from gateway.web.tls import make_local_tls

        out["tls_ca"] = str(make_local_tls(cfg_path.parent, hosts)["ca"])
    if args.json:
        emit_json(out)
    else:
        print(f"wrote {cfg_path} and {kek_path} (0600)")
        if hosts:
            print(f"API TLS certificate for {', '.join(hosts)}; clients trust {out['tls_ca']}")
        print("admin token (shown once, store it safely):", file=sys.stderr)
        print(token)
    return 0


def register(sub) -> None:
    p = sub.add_parser("init", help="write a configuration with fresh secrets")
    p.add_argument("--config", required=True, help="configuration file to write")
    p.add_argument("--db", default=None, help="database URL (default sqlite:///<config name>.db beside it)")
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="broker URL mqtt[s]://host:port")
    p.add_argument("--listen", default="127.0.0.1:8080", help="API listen address HOST:PORT")
    p.add_argument("--local-tls", metavar="HOSTS", default=None,
                   help="serve the API over HTTPS with a certificate for HOSTS (comma-separated names, "
                        "addresses) from a one-off local CA (api.crt, api.key, api-ca.crt beside the configuration)")
    p.add_argument("--force", action="store_true", help="overwrite an existing configuration and KEK")
    add_json(p)
    p.set_defaults(func=run)
