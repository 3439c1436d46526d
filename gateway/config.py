"""The gateway's one configuration file (TOML), loaded into dataclasses and validated.

``load(path) -> Config``. Every section is optional except what a command needs; unknown sections
or keys are errors (a typo must not silently fall back to a default). Relative file paths in the
file (``security.kek_file``, ``broker.password_file``, a ``sqlite:///relative.db`` URL) are resolved
against the folder of the configuration file.

Secrets are never stored in clear in this file: the admin token only as its SHA-256
(``api.token_sha256``); the key-encryption key (KEK) in a separate 0600 file named by
``security.kek_file``, or in the environment variable ``NABD_KEK`` (64 hex digits), which wins.
"""
from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REGIONS = tuple(f"MA-{i:02d}" for i in range(1, 13))


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or invalid; the message names the key."""


@dataclass
class BrokerConfig:
    url: str = "mqtt://127.0.0.1:1883"
    client_id: str = ""            # default: the username, else nabd-gateway-<hostname>; fixed so the session survives restarts
    username: str = ""
    password_file: str = ""        # a file holding the broker password (never in this file)
    # `devices command` publishes under a user of its own (it may only write commands): under the
    # site broker's use_username_as_clientid, connecting as the serve process' user would take over
    # that process' session. Empty: the gateway user (brokers that do not bind client ids).
    command_username: str = ""
    command_password_file: str = ""
    ca_file: str = ""              # TLS: CA that signed the broker's certificate (mqtts:// URLs)
    keepalive: int = 30
    session_expiry_s: int = 86400  # the broker keeps our subscription and unacked messages this long

    @property
    def host(self) -> str:
        return _split_url(self.url)[1]

    @property
    def port(self) -> int:
        return _split_url(self.url)[2]

    @property
    def tls(self) -> bool:
        return _split_url(self.url)[0] == "mqtts"

    def password(self) -> str | None:
        if not self.password_file:
            return None
        return Path(self.password_file).read_text().strip()

    def command_credentials(self) -> tuple[str, str | None]:
        """(username, password) for `devices command`: its own user when configured."""
        if self.command_username:
            pw = Path(self.command_password_file).read_text().strip() if self.command_password_file else None
            return self.command_username, pw
        return self.username, self.password()


@dataclass
class DatabaseConfig:
    url: str = "sqlite:///nabd-gateway.db"


@dataclass
class IngestConfig:
    batch_max: int = 1024          # messages per transaction at most (a backlog drains in big ones)
    batch_ms: int = 5              # a batch waits at most this long after its first message
    queue_max: int = 4096          # bounded hand-off between the network thread and the writer
    receive_maximum: int = 4096    # MQTT 5: unacked messages the broker may have in flight to us
    future_skew_s: int = 300


@dataclass
class ApiConfig:
    listen: str = "127.0.0.1:8080"
    token_sha256: str = ""
    metrics_open: bool = False     # serve /metrics without the bearer token
    # Links in responses (Bundle.link, fullUrl) are built from this, never from the Host header.
    # Default: the listen address (https:// with TLS); required when listening on every interface.
    public_url: str = ""
    tls_cert: str = ""             # PEM certificate (chain) and key: the API speaks HTTPS when both are set
    tls_key: str = ""
    allow_plaintext: bool = False  # plain HTTP on a non-loopback address (only behind a TLS proxy)
    max_connections: int = 256     # open connections at most; past it new requests get 503
    header_timeout_s: float = 10.0  # a request's line and headers must arrive within this
    keepalive_s: float = 5.0       # an idle kept-alive connection is closed after this
    backlog: int = 1024            # listen(2) backlog


@dataclass
class FhirForwardConfig:
    enabled: bool = False
    url: str = ""
    token: str = ""
    batch: int = 50
    timeout_s: float = 15.0
    backoff_base_s: float = 2.0
    backoff_cap_s: float = 600.0


@dataclass
class ObservatoryConfig:
    endpoint: str = ""
    suppress_below: int = 5
    push_delay_hours: float = 6.0  # a finished UTC day is queued this long after midnight (late readings)
    push_catch_up_days: int = 7    # days missed while the gateway was down, queued at most this far back
    facilities: dict[str, str] = field(default_factory=dict)   # facility -> region


@dataclass
class QuarantineConfig:
    """Limits of the quarantine (gateway/quarantine.py)."""
    per_device_per_min: int = 60   # rejected messages kept with their bytes, per device and minute
    max_mb: float = 256.0          # bytes of rejected messages kept at most (oldest rows deleted first)
    retention_days: int = 30       # rows older than this are deleted


@dataclass
class SecurityConfig:
    kek_file: str = ""
    key_grace_hours: float = 72.0  # after rotate-key, the old key version stays valid this long

    def kek(self) -> bytes:
        """The 32-byte key-encryption key: ``NABD_KEK`` (hex) if set, else ``kek_file``."""
        env = os.environ.get("NABD_KEK")
        if env:
            return _kek_from_hex(env.strip(), "NABD_KEK")
        if not self.kek_file:
            raise ConfigError("no key-encryption key: set security.kek_file or the NABD_KEK environment variable")
        p = Path(self.kek_file)
        try:
            text = p.read_text().strip()
        except OSError as e:
            raise ConfigError(f"security.kek_file {p}: {e.strerror} (restore it from your backup, or set "
                              "NABD_KEK; a new key cannot read the stored device keys)") from None
        return _kek_from_hex(text, str(p))


@dataclass
class ConsoleConfig:
    """Console sessions and login rate limiting (gateway/web/auth.py), in seconds and counts."""
    session_idle_s: int = 1800       # a session unused this long ends
    session_max_s: int = 43200       # and every session ends this long after its login
    login_window_s: int = 900        # failed logins are counted over this window
    login_max_failures: int = 5      # per user name in the window, then refused until it slides
    client_max_failures: int = 20    # per client address in the window
    # the site's clock for the pages' times: Morocco's legal time (UTC+1, UTC+0 during Ramadan, as the
    # IANA database records each year's decree); any IANA zone name
    timezone: str = "Africa/Casablanca"


@dataclass
class Config:
    path: Path | None = None
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    fhir_forward: FhirForwardConfig = field(default_factory=FhirForwardConfig)
    observatory: ObservatoryConfig = field(default_factory=ObservatoryConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    quarantine: QuarantineConfig = field(default_factory=QuarantineConfig)

    def database_handle(self):
        from gateway.db import Database

        return Database(self.database.url)


_SECTIONS = {f.name: f.type for f in dataclasses.fields(Config) if f.name != "path"}
_CLASSES = {
    "broker": BrokerConfig, "database": DatabaseConfig, "ingest": IngestConfig, "api": ApiConfig,
    "fhir_forward": FhirForwardConfig, "observatory": ObservatoryConfig, "security": SecurityConfig,
    "console": ConsoleConfig, "quarantine": QuarantineConfig,
}


def _kek_from_hex(text: str, where: str) -> bytes:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raise ConfigError(f"{where}: the key-encryption key must be 64 hex digits (32 bytes)")
    return bytes.fromhex(text)


def _split_url(url: str) -> tuple[str, str, int]:
    m = re.fullmatch(r"(mqtts?)://([^:/]+)(?::(\d+))?/?", url)
    if not m:
        raise ConfigError(f"broker.url {url!r}: expected mqtt://host[:port] or mqtts://host[:port]")
    scheme, host, port = m.group(1), m.group(2), m.group(3)
    return scheme, host, int(port) if port else (8883 if scheme == "mqtts" else 1883)


def _check_type(section: str, key: str, value: Any, default: Any) -> Any:
    want = type(default)
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if want is bool and not isinstance(value, bool):
        raise ConfigError(f"[{section}] {key}: expected true or false, got {value!r}")
    if want is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"[{section}] {key}: expected an integer, got {value!r}")
    if want in (str, dict, float) and not isinstance(value, want):
        raise ConfigError(f"[{section}] {key}: expected {want.__name__}, got {value!r}")
    return value


def _resolve(base: Path, p: str) -> str:
    if not p:
        return p
    q = Path(p).expanduser()
    return str(q if q.is_absolute() else (base / q))


def from_dict(data: dict, path: Path | None = None) -> Config:
    """Build and validate a Config from parsed TOML (``path`` anchors relative file names)."""
    cfg = Config(path=path)
    unknown = set(data) - set(_SECTIONS)
    if unknown:
        raise ConfigError(f"unknown section(s) {sorted(unknown)}; known: {sorted(_SECTIONS)}")
    for name, cls in _CLASSES.items():
        raw = data.get(name, {})
        if not isinstance(raw, dict):
            raise ConfigError(f"[{name}] must be a table")
        defaults = cls()
        names = {f.name for f in dataclasses.fields(cls)}
        bad = set(raw) - names
        if bad:
            raise ConfigError(f"[{name}] unknown key(s) {sorted(bad)}; known: {sorted(names)}")
        values = {k: _check_type(name, k, v, getattr(defaults, k)) for k, v in raw.items()}
        setattr(cfg, name, cls(**values))
    _validate(cfg)
    if path is not None:
        base = path.resolve().parent
        cfg.security.kek_file = _resolve(base, cfg.security.kek_file)
        cfg.broker.password_file = _resolve(base, cfg.broker.password_file)
        cfg.broker.command_password_file = _resolve(base, cfg.broker.command_password_file)
        cfg.broker.ca_file = _resolve(base, cfg.broker.ca_file)
        cfg.api.tls_cert = _resolve(base, cfg.api.tls_cert)
        cfg.api.tls_key = _resolve(base, cfg.api.tls_key)
        url = cfg.database.url
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and url != "sqlite:///:memory:":
            cfg.database.url = "sqlite:///" + _resolve(base, url[len("sqlite:///"):])
    return cfg


def _validate(cfg: Config) -> None:
    _split_url(cfg.broker.url)
    if not re.fullmatch(r"(sqlite:///.+|postgres(ql)?://.+)", cfg.database.url):
        raise ConfigError(f"database.url {cfg.database.url!r}: expected sqlite:///PATH or postgresql://...")
    if not re.fullmatch(r"[^\s]+:\d{1,5}", cfg.api.listen):
        raise ConfigError(f"api.listen {cfg.api.listen!r}: expected HOST:PORT")
    _validate_api(cfg.api)
    if cfg.api.token_sha256 and not re.fullmatch(r"[0-9a-f]{64}", cfg.api.token_sha256):
        raise ConfigError("api.token_sha256: expected the 64 lowercase hex digits of a SHA-256")
    ing = cfg.ingest
    for k in ("batch_max", "queue_max", "receive_maximum"):
        if getattr(ing, k) < 1:
            raise ConfigError(f"[ingest] {k} must be at least 1")
    if ing.batch_ms < 0:
        raise ConfigError("[ingest] batch_ms must be >= 0")
    if ing.receive_maximum > 65535:
        raise ConfigError("[ingest] receive_maximum is at most 65535 (MQTT 5)")
    if cfg.fhir_forward.enabled and not cfg.fhir_forward.url:
        raise ConfigError("[fhir_forward] enabled = true needs a url")
    for fac, reg in cfg.observatory.facilities.items():
        if reg not in REGIONS:
            raise ConfigError(f"[observatory.facilities] {fac} = {reg!r}: region must be one of MA-01..MA-12")
    qc = cfg.quarantine
    if qc.per_device_per_min < 1 or qc.max_mb <= 0 or qc.retention_days < 1:
        raise ConfigError("[quarantine] per_device_per_min, max_mb and retention_days must be positive")
    if cfg.observatory.suppress_below < 0:
        raise ConfigError("[observatory] suppress_below must be >= 0")
    if not 0 <= cfg.observatory.push_delay_hours <= 72:
        raise ConfigError("[observatory] push_delay_hours must be within 0..72")
    if not 1 <= cfg.observatory.push_catch_up_days <= 366:
        raise ConfigError("[observatory] push_catch_up_days must be within 1..366")
    for k in ("session_idle_s", "session_max_s", "login_window_s", "login_max_failures", "client_max_failures"):
        if getattr(cfg.console, k) < 1:
            raise ConfigError(f"[console] {k} must be at least 1")
    try:
        zoneinfo.ZoneInfo(cfg.console.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"[console] timezone {cfg.console.timezone!r}: not an IANA zone name "
                          f"(e.g. Africa/Casablanca, UTC)") from None


_LOOPBACK = re.compile(r"(127(\.\d{1,3}){3}|::1|localhost)")


def is_loopback(host: str) -> bool:
    return bool(_LOOPBACK.fullmatch(host.strip("[]")))


def _validate_api(api: ApiConfig) -> None:
    host = api.listen.rpartition(":")[0].strip("[]")
    if bool(api.tls_cert) != bool(api.tls_key):
        raise ConfigError("[api] tls_cert and tls_key go together (both set for HTTPS, neither for HTTP)")
    if not is_loopback(host) and not api.tls_cert and not api.allow_plaintext:
        raise ConfigError(f"[api] listen {api.listen!r} is not a loopback address: set tls_cert and tls_key, "
                          "or allow_plaintext = true behind a TLS-terminating proxy")
    if api.public_url:
        if not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~\-/]*)?", api.public_url):
            raise ConfigError(f"[api] public_url {api.public_url!r}: expected http(s)://host[:port][/path]")
    elif host in ("0.0.0.0", "::", ""):
        raise ConfigError("[api] public_url is required when listen is every interface (the links the API "
                          "returns must name the address clients use)")
    if not 1 <= api.max_connections <= 100000:
        raise ConfigError("[api] max_connections must be within 1..100000")
    if not 0.1 <= api.header_timeout_s <= 300 or not 0.1 <= api.keepalive_s <= 300:
        raise ConfigError("[api] header_timeout_s and keepalive_s must be within 0.1..300 s")
    if not 16 <= api.backlog <= 65535:
        raise ConfigError("[api] backlog must be within 16..65535")


def load(path: str | os.PathLike) -> Config:
    """Read and validate the TOML configuration at ``path``; raises ConfigError with a clear message."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"configuration file {p} not found (create one with `nabd-gateway init --config {p}`)") from None
    except OSError as e:
        raise ConfigError(f"configuration file {p}: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"configuration file {p} is not valid TOML: {e}") from None
    return from_dict(data, p)
