"""The provisioning file: ``config.json`` on the device's flash (``board.storage_root``).

    {"device_id": "nabd-240ac4000001",          # ^[a-z0-9][a-z0-9-]{2,39}$, MQTT user + client id
     "key": "<64 hex digits>", "key_version": 1,  # the 32-byte HMAC signing key, never logged
     "mqtt_password": "...",                      # broker password (a different secret)
     "broker": "mqtts://gw.example:8883",         # or mqtt://host:port
     "tls_server_name": "gw.example",             # optional; default the broker host
     "ca": "-----BEGIN CERTIFICATE-----...",      # PEM, required for mqtts://
     "client_cert": null, "client_key": null,     # optional PEM client certificate and key
     "wifi": {"ssid": "clinic", "psk": "..."},
     "facility": "MA-01-cs-azrou",
     "calibration": {"id": "cal-2026-11-02", "date": "2026-11-02", "due": "2027-11-02",
                     "temp_gain": 1.0, "temp_offset_c": 0.0, "spo2": [110.0, -25.0, 0.0]},
     "settings": {},                              # kept by the app: "patient", "report_pi",
                                                  # "temp_site_offset_c" (firmware/app.py)
     "production": false}                         # optional; true: REPL locked, crash -> reset

``load(board)`` returns a ``Config`` (attributes below) or raises ``ConfigError`` naming the
field; ``save(board, data)`` validates then writes atomically (``config.json.tmp`` + rename);
``create_identity(board, broker=...)`` gives the virtual device a fresh identity (device id
``nabd-`` + MAC hex, random 32-byte key and broker password from ``board.urandom``) when no
``config.json`` exists, and loads the existing one otherwise.

``Config`` attributes: ``device_id``, ``key`` (bytes), ``key_version``, ``kid``
(``"{device}/{version}"``), ``mqtt_password``, ``broker``, ``host``, ``port``, ``tls`` (None or
the dict ``board.network.open`` takes), ``wifi_ssid``, ``wifi_psk``, ``facility``,
``calibration`` (dict or None), ``settings`` (dict), ``production`` (bool), ``data`` (the whole validated dict, which
holds the key: never log it), ``topic(kind)``. ``repr(config)`` shows no secrets.
"""
import binascii
import json
import os

NAME = "config.json"


class ConfigError(ValueError):
    """config.json is missing or invalid; the message names the field."""


def _path(board):
    return board.storage_root + "/" + NAME


def valid_device_id(s):
    if not isinstance(s, str) or not 3 <= len(s) <= 40:
        return False
    for i in range(len(s)):
        c = s[i]
        if not (("a" <= c <= "z") or ("0" <= c <= "9") or (c == "-" and i > 0)):
            return False
    return True


def valid_cal_id(s):
    """The protocol's safe set for ``cal.id`` (docs/protocol.md): ^[0-9A-Za-z][0-9A-Za-z._-]{0,63}$,
    so the gateway never has to quarantine this device's readings for it."""
    if not isinstance(s, str) or not 1 <= len(s) <= 64:
        return False
    for i in range(len(s)):
        c = s[i]
        if not (("a" <= c <= "z") or ("A" <= c <= "Z") or ("0" <= c <= "9") or (i > 0 and c in "._-")):
            return False
    return True


def _valid_date(s):
    if not isinstance(s, str) or len(s) != 10 or s[4] != "-" or s[7] != "-":
        return False
    try:
        y, m, d = int(s[:4]), int(s[5:7]), int(s[8:])
    except ValueError:
        return False
    return 2000 <= y <= 2099 and 1 <= m <= 12 and 1 <= d <= 31


def _num(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def parse_broker(url):
    """(tls: bool, host, port) of ``mqtt://host:port`` or ``mqtts://host:port``."""
    if not isinstance(url, str):
        raise ConfigError("broker: expected a URL string like mqtt://host:1883")
    if url.startswith("mqtts://"):
        tls, rest, port = True, url[8:], 8883
    elif url.startswith("mqtt://"):
        tls, rest, port = False, url[7:], 1883
    else:
        raise ConfigError("broker: URL must start with mqtt:// or mqtts://, got " + repr(url))
    rest = rest.rstrip("/")
    if ":" in rest:
        host, p = rest.rsplit(":", 1)
        try:
            port = int(p)
        except ValueError:
            raise ConfigError("broker: bad port " + repr(p))
    else:
        host = rest
    if not host or "/" in host or not 0 < port < 65536:
        raise ConfigError("broker: bad host or port in " + repr(url))
    return tls, host, port


class Config:
    def __init__(self, data):
        self.data = data
        self.device_id = data["device_id"]
        self.key = binascii.unhexlify(data["key"])
        self.key_version = data["key_version"]
        self.kid = self.device_id + "/" + str(self.key_version)
        self.mqtt_password = data["mqtt_password"]
        self.broker = data["broker"]
        tls, self.host, self.port = parse_broker(self.broker)
        self.tls = None
        if tls:
            enc = lambda v: v.encode() if isinstance(v, str) else v  # noqa: E731
            self.tls = {"ca": enc(data["ca"]), "cert": enc(data.get("client_cert")),
                        "key": enc(data.get("client_key")),
                        "server_hostname": data.get("tls_server_name") or self.host}
        wifi = data.get("wifi") or {}
        self.wifi_ssid = wifi.get("ssid")
        self.wifi_psk = wifi.get("psk")
        self.facility = data.get("facility")
        self.calibration = data.get("calibration")
        self.settings = data.get("settings") or {}
        self.production = data.get("production", False) is True

    def topic(self, kind):
        """``nabd/v1/dev/{device}/{kind}`` for kind in reading, status, ack, cmd."""
        return "nabd/v1/dev/" + self.device_id + "/" + kind

    def __repr__(self):
        return "<Config %s kid=%s broker=%s>" % (self.device_id, self.kid, self.broker)


def validate(data):
    """Raise ConfigError unless ``data`` (dict) is a valid configuration."""
    if not isinstance(data, dict):
        raise ConfigError("config.json must hold a JSON object")
    for k in ("device_id", "key", "key_version", "mqtt_password", "broker"):
        if k not in data:
            raise ConfigError("missing field " + repr(k))
    if not valid_device_id(data["device_id"]):
        raise ConfigError("device_id: must match ^[a-z0-9][a-z0-9-]{2,39}$")
    key = data["key"]
    if not isinstance(key, str) or len(key) != 64:
        raise ConfigError("key: must be 64 hex digits (32 bytes)")
    try:
        binascii.unhexlify(key)
    except ValueError:
        raise ConfigError("key: not hexadecimal")
    kv = data["key_version"]
    if not isinstance(kv, int) or isinstance(kv, bool) or kv < 1:
        raise ConfigError("key_version: must be an integer >= 1")
    pw = data["mqtt_password"]
    if not isinstance(pw, str) or not 8 <= len(pw) <= 128:
        raise ConfigError("mqtt_password: must be a string of 8..128 characters")
    tls = parse_broker(data["broker"])[0]
    for k in ("ca", "client_cert", "client_key"):
        v = data.get(k)
        if v is not None and (not isinstance(v, str) or "-----BEGIN" not in v):
            raise ConfigError(k + ": must be PEM text or null")
    if tls and not data.get("ca"):
        raise ConfigError("ca: an mqtts:// broker needs the CA certificate (PEM) to verify the server")
    if data.get("client_key") and not data.get("client_cert"):
        raise ConfigError("client_key without client_cert")
    wifi = data.get("wifi")
    if wifi is not None:
        if not isinstance(wifi, dict) or not isinstance(wifi.get("ssid"), str):
            raise ConfigError("wifi: expected {\"ssid\": str, \"psk\": str}")
        if not isinstance(wifi.get("psk", ""), str):
            raise ConfigError("wifi.psk: must be a string")
    fac = data.get("facility")
    if fac is not None and not isinstance(fac, str):
        raise ConfigError("facility: must be a string")
    cal = data.get("calibration")
    if cal is not None:
        if not isinstance(cal, dict):
            raise ConfigError("calibration: must be an object or null")
        if not valid_cal_id(cal.get("id")):
            raise ConfigError("calibration.id: must match ^[0-9A-Za-z][0-9A-Za-z._-]{0,63}$")
        for k in ("date", "due"):
            if k in cal and cal[k] is not None and not _valid_date(cal[k]):
                raise ConfigError("calibration." + k + ": must be YYYY-MM-DD")
        if not _valid_date(cal.get("date")):
            raise ConfigError("calibration.date: must be YYYY-MM-DD")
        for k in ("temp_gain", "temp_offset_c"):
            if k in cal and not _num(cal[k]):
                raise ConfigError("calibration." + k + ": must be a number")
        if "spo2" in cal:
            s = cal["spo2"]
            if not isinstance(s, list) or not 2 <= len(s) <= 3 or not all(_num(x) for x in s):
                raise ConfigError("calibration.spo2: must be a list of 2 or 3 numbers")
    st = data.get("settings")
    if st is not None and not isinstance(st, dict):
        raise ConfigError("settings: must be an object")
    if not isinstance(data.get("production", False), bool):
        raise ConfigError("production: must be true or false")


def load(board):
    """The validated ``Config`` from ``config.json``; ConfigError when missing or invalid."""
    try:
        with open(_path(board)) as f:
            text = f.read()
    except OSError:
        raise ConfigError("no " + NAME + " on flash (" + _path(board) + "): provision the device")
    try:
        data = json.loads(text)
    except ValueError:
        raise ConfigError(NAME + " is not valid JSON")
    validate(data)
    return Config(data)


def exists(board):
    try:
        os.stat(_path(board))
        return True
    except OSError:
        return False


def save(board, data):
    """Validate ``data`` and write it atomically (temp file, then rename)."""
    validate(data)
    path = _path(board)
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(data))
    except Exception:
        try:  # a part-written temp file (flash full): free its space, config.json is untouched
            os.remove(tmp)
        except OSError:
            pass
        raise
    sync = getattr(os, "sync", None)
    if sync is not None:
        sync()
    try:
        os.rename(tmp, path)
    except OSError:  # a filesystem whose rename does not replace
        try:
            os.remove(path)
        except OSError:
            pass
        os.rename(tmp, path)
    return Config(data)


def create_identity(board, broker="mqtt://127.0.0.1:1883", facility="sim", wifi=None, ca=None):
    """Load ``config.json``, or make and save a fresh identity when there is none."""
    if exists(board):
        return load(board)
    mac = binascii.hexlify(board.unique_id()).decode()
    data = {
        "device_id": "nabd-" + mac,
        "key": binascii.hexlify(board.urandom(32)).decode(),
        "key_version": 1,
        "mqtt_password": binascii.hexlify(board.urandom(16)).decode(),
        "broker": broker,
        "ca": ca,
        "client_cert": None,
        "client_key": None,
        "wifi": wifi or {"ssid": "nabd-sim", "psk": ""},
        "facility": facility,
        "calibration": None,
        "settings": {},
    }
    return save(board, data)
