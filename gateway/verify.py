"""Verification of one reading message, in the order of docs/protocol.md.

``verify(raw, topic, keys, seen, now) -> Verdict`` is pure: the two database look-ups come in as
callables, so the batch writer can answer them from one query per batch (and from readings
accepted earlier in the same batch), and unit tests from dicts.

  keys(device_id, key_version) -> KeyRecord | None
  seen(device_id, seq)         -> sha256 hex of the stored reading's bytes | None

Order: 1 size, shape; 2 device and key (unknown / revoked); 3 HMAC (constant time);
4 topic/kid/dev agreement; 5 duplicate (same bytes) or replay (other bytes) on (dev, seq);
6 values (schema, units, ranges, future skew). Only then may anything be stored.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Any, Callable

from gateway import jws
from gateway.keys import KeyRecord

MAX_BYTES = 2048
FUTURE_SKEW_S = 300
# every quarantine reason (the quarantine table's CHECK constraint, migrations 0001 and 0005);
# STATUS_ONLY are given to device status messages only (gateway/status.py), never to a reading
REASONS = ("oversized", "malformed", "unknown_device", "revoked", "bad_signature", "topic_mismatch",
           "replay", "invalid", "future_ts", "stale_status")
STATUS_ONLY = ("stale_status",)

DEVICE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{2,39}$")
PATIENT_RE = re.compile(r"^[A-Za-z0-9_-]{4,64}$")
_TOPIC_RE = re.compile(r"^nabd/v1/dev/([^/]+)/(reading|status)$")
_TYP = {"reading": jws.TYP_READING, "status": jws.TYP_STATUS}
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# Free text from devices is stored and shown again (devices list, observatory CSV, FHIR Device):
# only these safe sets pass (docs/protocol.md), so no control or bidi character, no formula
# sign in first place, no markup reaches an administrator's terminal or a spreadsheet.
FW_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,31}$")
CAL_ID_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,63}$")

# code -> (unit, low, high)
RANGES = {"temp": ("Cel", 25.0, 45.0), "spo2": ("%", 50, 100), "hr": ("/min", 25, 250), "pi": ("%", 0.02, 20)}
SITES = ("forehead", "finger", "forehead+finger")
OBS_SITES = ("forehead", "finger")
FLAGS = ("fever", "hypothermia", "low_spo2", "tachycardia", "bradycardia", "stale", "irregular")
_REQUIRED = ("v", "dev", "seq", "ts", "ts_ok", "up", "fw", "cal", "site", "obs", "flags")
_ALLOWED = frozenset(_REQUIRED + ("patient",))
_OBS_KEYS = frozenset(("code", "value", "unit", "q", "site"))
_OBS_REQUIRED = frozenset(("code", "value", "unit", "q"))
_REQUIRED_SET = frozenset(_REQUIRED)
_MAX_INT = 2**53


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: str                       # 'accept' | 'duplicate' | 'reject'
    reason: str = ""                # a REASONS member when rejected
    detail: str = ""
    device: str | None = None       # the device it concerns (a hint only when rejected early)
    seq: int | None = None
    key_version: int | None = None
    sha256: str = ""
    payload: dict | None = None     # the verified payload when accepted

    @property
    def ok(self) -> bool:
        return self.kind != "reject"


def reject(reason: str, detail: str, device: str | None = None, **kw: Any) -> Verdict:
    assert reason in REASONS, reason
    return Verdict("reject", reason, detail, device, **kw)


# topic -> (device, kind) or None: a device publishes on the same two topics every time (bounded:
# short topics only, cleared when full)
_TOPICS: dict[str, tuple[str, str] | None] = {}
_TOPICS_MAX = 16384


def topic_device(topic: str, kind: str = "reading") -> str | None:
    """The device a ``reading`` or ``status`` topic names (None for any other topic)."""
    try:
        got = _TOPICS[topic]
    except (KeyError, TypeError):  # TypeError: None or another unhashable topic
        m = _TOPIC_RE.match(topic or "")
        got = (m.group(1), m.group(2)) if m else None
        if isinstance(topic, str) and len(topic) <= 80:  # a device's topic is at most 57 characters
            if len(_TOPICS) >= _TOPICS_MAX:
                _TOPICS.clear()
            _TOPICS[topic] = got
    return got[0] if got is not None and got[1] == kind else None


def parse(raw: bytes, topic: str = "", kind: str = "reading") -> jws.Compact | Verdict:
    """Step 1 for a ``reading`` or ``status`` message: size, then shape (``jws.parse_compact``).
    Returns the parsed token, or a reject Verdict (oversized / malformed) with the topic's device
    as a hint."""
    if len(raw) > MAX_BYTES:
        return reject("oversized", f"{len(raw)} bytes > {MAX_BYTES}", topic_device(topic, kind))
    try:
        return jws.parse_compact(raw, _TYP[kind])
    except jws.Malformed as e:
        return reject("malformed", str(e), topic_device(topic, kind))


def authenticate(p: jws.Compact, topic: str, keys: Callable[[str, int], KeyRecord | None],
                 kind: str = "reading") -> Verdict | None:
    """Steps 2 to 4: the kid's key is known and in force, the HMAC verifies (constant time, over
    the exact bytes received), and topic, kid and payload name the same device. A reject Verdict,
    or None when the message is authentic."""
    dev, ver = p.kid_device, p.kid_version
    # 2 device and key
    rec = keys(dev, ver)
    if rec is None:
        return reject("unknown_device", f"no device/key {dev}/{ver}", dev)
    if rec.revoked:
        return reject("revoked", rec.why or f"key {dev}/{ver} revoked", dev)
    # 3 signature
    if not hmac.compare_digest(jws.mac(rec.key.secret, p.signing_input), p.signature):
        return reject("bad_signature", f"HMAC does not verify under {dev}/{ver}", dev)
    # 4 agreement
    tdev = topic_device(topic, kind)
    pdev = p.payload.get("dev")
    if not (tdev == dev == pdev):
        return reject("topic_mismatch", f"topic device {tdev!r}, kid device {dev!r}, payload dev {pdev!r}", dev)
    return None


# Key tuples (in the order received) of payloads, obs items, (cal id, cal date) pairs and fw
# texts that passed their checks: a device sends the same shapes every time, so the set comparisons and
# regular expressions run once per shape instead of once per message. A tuple of a dict's keys
# has no repeats, so an equal tuple means an equal key set. Bounded: cleared when full.
_GOOD_PAYLOAD_KEYS: set[tuple] = set()
_GOOD_OBS_KEYS: set[tuple] = set()
_GOOD_CALS: set[tuple] = set()
_GOOD_FWS: set[str] = set()
_GOOD_MAX = 4096


def _remember(good: set, item: tuple) -> None:
    if len(good) >= _GOOD_MAX:
        good.clear()
    good.add(item)


def check_values(p: dict, now: float, skew: int = FUTURE_SKEW_S) -> tuple[str, str] | None:
    """Step 6: (reason, detail) when the payload's values are wrong, else None. ``p`` comes from
    the JSON parser, so its numbers are exactly int or float and its booleans bool (the type
    tests below rely on it: ``type(x) is int`` is "an integer, not a boolean")."""
    shape = tuple(p)
    if shape not in _GOOD_PAYLOAD_KEYS:
        keys = p.keys()
        if not keys >= _REQUIRED_SET:
            return "invalid", f"missing field(s) {[k for k in _REQUIRED if k not in p]}"
        if not keys <= _ALLOWED:
            return "invalid", f"unknown field(s) {sorted(set(p) - _ALLOWED)}"
        _remember(_GOOD_PAYLOAD_KEYS, shape)
    v = p["v"]
    if v != 1 or type(v) is not int:
        return "invalid", f"protocol version {v!r}, expected 1"
    ts = p["ts"]
    if type(ts) is not int or not 0 <= ts < _MAX_INT:
        return "invalid", "ts is not a non-negative integer"
    if type(p["ts_ok"]) is not bool:
        return "invalid", "ts_ok is not a boolean"
    up = p["up"]
    if type(up) is not int or not 0 <= up < _MAX_INT:
        return "invalid", "up is not a non-negative integer"
    fw = p["fw"]
    if type(fw) is not str or fw not in _GOOD_FWS:
        if not isinstance(fw, str) or not FW_RE.fullmatch(fw):
            return "invalid", f"fw is not a version {FW_RE.pattern}"
        _remember(_GOOD_FWS, fw)
    cal = p["cal"]
    if cal is not None:
        known = (cal.get("id"), cal.get("date")) if type(cal) is dict and len(cal) == 2 else None
        if known is None or type(known[0]) is not str or type(known[1]) is not str or known not in _GOOD_CALS:
            if not isinstance(cal, dict) or set(cal) != {"id", "date"} or not isinstance(cal["id"], str) \
                    or not CAL_ID_RE.fullmatch(cal["id"]) or not isinstance(cal["date"], str) \
                    or not _DATE_RE.match(cal["date"]):
                return "invalid", f"cal is not null or {{id {CAL_ID_RE.pattern}, date YYYY-MM-DD}}"
            try:
                dt.date.fromisoformat(cal["date"])
            except ValueError:
                return "invalid", f"cal.date {cal['date']!r} is not a date"
            _remember(_GOOD_CALS, (cal["id"], cal["date"]))
    if "patient" in p and (not isinstance(p["patient"], str) or not PATIENT_RE.match(p["patient"])):
        return "invalid", "patient is not a token ^[A-Za-z0-9_-]{4,64}$"
    if p["site"] not in SITES:
        return "invalid", f"site {p['site']!r} not in {SITES}"
    flags = p["flags"]
    if not isinstance(flags, list):
        return "invalid", f"flags must be a list of {FLAGS}"
    for f in flags:
        if type(f) is not str or f not in FLAGS:
            return "invalid", f"flags must be a list of {FLAGS}"
    obs = p["obs"]
    if not isinstance(obs, list) or not 1 <= len(obs) <= 4:
        return "invalid", "obs must be a list of 1 to 4 items"
    codes = set()
    for o in obs:
        if type(o) is not dict:
            return "invalid", "an obs item is not {code, value, unit, q[, site]}"
        shape = tuple(o)
        if shape not in _GOOD_OBS_KEYS:
            if not _OBS_REQUIRED <= o.keys() or not o.keys() <= _OBS_KEYS:
                return "invalid", "an obs item is not {code, value, unit, q[, site]}"
            _remember(_GOOD_OBS_KEYS, shape)
        code = o["code"]
        if code not in RANGES:
            return "invalid", f"obs code {code!r} not in {tuple(RANGES)}"
        if code in codes:
            return "invalid", f"obs code {code!r} appears twice"
        codes.add(code)
        unit, lo, hi = RANGES[code]
        if o["unit"] != unit:
            return "invalid", f"{code}: unit {o['unit']!r}, expected {unit!r}"
        v = o["value"]
        if type(v) is not float and type(v) is not int:
            return "invalid", f"{code}: value is not a number"
        if not lo <= v <= hi:
            return "invalid", f"{code}: value {v} outside {lo}..{hi} {unit}"
        q = o["q"]
        if (type(q) is not float and type(q) is not int) or not 0 <= q <= 1:
            return "invalid", f"{code}: q is not a number in 0..1"
        if "site" in o and o["site"] not in OBS_SITES:
            return "invalid", f"{code}: site {o['site']!r} not in {OBS_SITES}"
    if p["ts_ok"] and ts > now + skew:
        return "future_ts", f"ts {ts} is {ts - now:.0f} s in the future (> {skew} s)"
    return None


# A synced ts before these is not a time of measurement (a clock set wrong, or a forged date):
# quarantined invalid, never filed at that date (docs/protocol.md). The floor is before any nabd
# device existed; the tolerance covers readings a device took before it was registered at this
# gateway (stock, installation, weeks offline).
TS_FLOOR = 1735689600                    # 2025-01-01T00:00:00Z
REGISTRATION_TOLERANCE_S = 30 * 86400


def check_time(p: dict, registered_at: float | None) -> tuple[str, str] | None:
    """A synced ``ts`` before TS_FLOOR, or before registration minus the tolerance: (reason, detail)."""
    if not p.get("ts_ok"):
        return None  # unsynced: filed at receipt time already
    ts = p["ts"]
    if ts < TS_FLOOR:
        return "invalid", f"ts {ts} is before {TS_FLOOR} (2025-01-01), the earliest date accepted"
    if registered_at is not None and ts < registered_at - REGISTRATION_TOLERANCE_S:
        return "invalid", (f"ts {ts} is {(registered_at - ts) / 86400:.0f} days before the device was registered "
                           f"(tolerance {REGISTRATION_TOLERANCE_S // 86400} days)")
    return None


def verify(raw: bytes, topic: str, keys: Callable[[str, int], KeyRecord | None],
           seen: Callable[[str, int], str | None], now: float, skew: int = FUTURE_SKEW_S,
           parsed: jws.Compact | Verdict | None = None, digest: str = "") -> Verdict:
    """The verdict on one message (``parsed``: the result of ``parse`` when already computed;
    ``digest``: the hex SHA-256 of ``raw`` when the caller took it already, in the gateway the
    network process, which has CPU to spare)."""
    p = parsed if parsed is not None else parse(raw, topic)
    if isinstance(p, Verdict):
        return p
    bad = authenticate(p, topic, keys)
    if bad is not None:
        return bad
    dev, ver = p.kid_device, p.kid_version
    # 5 duplicate / replay on (dev, seq)
    seq = p.payload.get("seq")
    if type(seq) is not int or not 1 <= seq < 2**63:  # from the JSON parser: exactly int, never bool
        return reject("invalid", "seq is not an integer >= 1", dev)
    if not digest:
        digest = hashlib.sha256(raw).hexdigest()
    prior = seen(dev, seq)
    if prior is not None:
        if hmac.compare_digest(prior, digest):
            return Verdict("duplicate", device=dev, seq=seq, key_version=ver, sha256=digest)
        return reject("replay", f"seq {seq} already stored with other bytes", dev, seq=seq, key_version=ver)
    # 6 values
    bad = check_values(p.payload, now, skew)
    if bad:
        return reject(bad[0], bad[1], dev, seq=seq, key_version=ver, sha256=digest)
    # positional: keyword arguments made this (once per reading) twice as slow
    return Verdict("accept", "", "", dev, seq, ver, digest, p.payload)
