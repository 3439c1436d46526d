"""gateway.verify: every rejection reason, the protocol's order, duplicate vs replay, ranges, skew."""
from __future__ import annotations

import hashlib
import os

import pytest

from gateway import jws
from gateway.keys import KeyRecord
from gateway.secrets import DeviceKey
from gateway.verify import MAX_BYTES, REASONS, STATUS_ONLY, verify
from tests.support.generator import reading, sign_reading

DEV, KEY = "nabd-a1b2c3d4e5f6", bytes(range(32))
NOW = 1_795_430_400
TOPIC = f"nabd/v1/dev/{DEV}/reading"


def keys(d, v, revoked=False):
    if d == DEV and v == 1:
        return KeyRecord(DeviceKey(DEV, 1, KEY), revoked, "key revoked" if revoked else "")
    return None


def judge(raw, topic=TOPIC, seen=None, key_fn=keys):
    seen = seen or {}
    return verify(raw, topic, key_fn, lambda d, s: seen.get((d, s)), NOW)


def msg(seq=1, **kw):
    kw.setdefault("ts", NOW - 10)
    return sign_reading(KEY, f"{DEV}/1", reading(DEV, seq, **kw))


def with_payload(payload: dict, key=KEY, kid=f"{DEV}/1", typ=jws.TYP_READING) -> bytes:
    return jws.sign(key, typ, kid, payload)


def test_valid_reading_is_accepted_with_its_digest():
    raw = msg(7)
    v = judge(raw)
    assert v.kind == "accept" and v.seq == 7 and v.device == DEV and v.key_version == 1
    assert v.sha256 == hashlib.sha256(raw).hexdigest()
    assert v.payload["obs"][0]["code"] == "temp"


def test_irregular_rhythm_flag_is_accepted_and_unknown_flags_are_not():
    v = judge(msg(8, flags=["irregular", "tachycardia"]))
    assert v.kind == "accept" and v.payload["flags"] == ["irregular", "tachycardia"]
    v = judge(msg(9, flags=["arrhythmia"]))
    assert (v.kind, v.reason) == ("reject", "invalid") and "flags" in v.detail


@pytest.mark.parametrize("raw,detail", [
    (b"", "parts"), (b"a.b", "parts"), (b"a.b.c.d", "parts"),
    (b"eyJ=.e30.AAAA", "base64url"),                       # padding
    (b"ey+J.e30.AAAA", "base64url"),                       # outside the URL-safe alphabet
])
def test_shape_errors_are_malformed(raw, detail):
    v = judge(raw)
    assert (v.kind, v.reason) == ("reject", "malformed") and detail in v.detail


def test_header_must_be_exactly_alg_kid_typ_with_hs256():
    p = reading(DEV, 1, ts=NOW)
    for header in ({"alg": "none", "kid": f"{DEV}/1", "typ": jws.TYP_READING},
                   {"alg": "HS256", "kid": f"{DEV}/1", "typ": jws.TYP_CMD},
                   {"alg": "HS256", "kid": f"{DEV}/1", "typ": jws.TYP_READING, "x": 1},
                   {"alg": "HS256", "kid": DEV, "typ": jws.TYP_READING}):
        si = jws.b64url(jws.dumps(header)) + b"." + jws.b64url(jws.dumps(p))
        v = judge(si + b"." + jws.b64url(jws.mac(KEY, si)))
        assert v.reason == "malformed", header


def test_payload_must_be_a_json_object_without_duplicates_or_nan():
    h = jws.b64url(jws.dumps({"alg": "HS256", "kid": f"{DEV}/1", "typ": jws.TYP_READING}))
    for body in (b"[1]", b'{"a":1,"a":2}', b'{"a":NaN}', b"\xff\xfe"):
        si = h + b"." + jws.b64url(body)
        v = judge(si + b"." + jws.b64url(jws.mac(KEY, si)))
        assert v.reason == "malformed", body


def test_one_strict_parser_for_readings_statuses_and_acks():
    """jws.parse_compact is the gateway's only JWS parser: a header accepted (and cached) as one
    kind is refused as another, and jws.verify (the generator's acks) is as strict as readings."""
    raw = msg(1)
    assert judge(raw).kind == "accept"   # its header is now in the parser's cache
    with pytest.raises(jws.Malformed, match="typ 'nabd-reading\\+jws' is not nabd-status\\+jws"):
        jws.parse_compact(raw, jws.TYP_STATUS)
    ack = jws.sign(KEY, jws.TYP_ACK, f"{DEV}/1", {"v": 1, "dev": DEV, "seqs": [1], "ts": NOW})
    assert jws.verify(KEY, ack, jws.TYP_ACK)["seqs"] == [1]
    with pytest.raises(ValueError, match="bad signature"):
        jws.verify(os.urandom(32), ack, jws.TYP_ACK)
    h = jws.b64url(jws.dumps({"alg": "HS256", "kid": f"{DEV}/1", "typ": jws.TYP_ACK}))
    for body, why in ((b'{"seqs":[1],"seqs":[2]}', "duplicate JSON member 'seqs'"), (b'{"ts":NaN}', "NaN")):
        si = h + b"." + jws.b64url(body)
        with pytest.raises(jws.Malformed, match=why):
            jws.verify(KEY, si + b"." + jws.b64url(jws.mac(KEY, si)), jws.TYP_ACK)
    a64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    odd = a64[a64.index(ack[-1]) ^ 1:][:1]   # sets an unused low bit of the 43-character MAC
    with pytest.raises(jws.Malformed, match="non-canonical"):
        jws.verify(KEY, ack[:-1] + odd, jws.TYP_ACK)
    with pytest.raises(jws.Malformed, match="kid 'nabd' is not device/key_version"):
        jws.parse_compact(jws.sign(KEY, jws.TYP_ACK, "nabd", {"v": 1}), jws.TYP_ACK)


def test_oversized_is_checked_first():
    assert judge(b"x" * (MAX_BYTES + 1)).reason == "oversized"
    raw = msg(1, patient="p-" + "a" * 60)
    assert len(raw) <= MAX_BYTES and judge(raw).kind == "accept"


def test_unknown_device_and_unknown_key_version():
    other = sign_reading(KEY, "nabd-ffffffffffff/1", reading("nabd-ffffffffffff", 1, ts=NOW))
    assert judge(other, topic="nabd/v1/dev/nabd-ffffffffffff/reading").reason == "unknown_device"
    assert judge(sign_reading(KEY, f"{DEV}/2", reading(DEV, 1, ts=NOW))).reason == "unknown_device"


def test_revoked_key_is_rejected_before_the_signature():
    v = judge(msg(1), key_fn=lambda d, k: keys(d, k, revoked=True))
    assert v.reason == "revoked"


def test_bad_signature_constant_time_and_any_flipped_bit():
    assert judge(sign_reading(os.urandom(32), f"{DEV}/1", reading(DEV, 1, ts=NOW))).reason == "bad_signature"
    raw = bytearray(msg(1))
    h, p, s = bytes(raw).split(b".")
    tampered = h + b"." + jws.b64url(jws.b64url_decode(p).replace(b'"hr","value":72', b'"hr","value":73')) + b"." + s
    assert judge(tampered).reason == "bad_signature"


def test_topic_kid_and_dev_must_agree():
    assert judge(msg(1), topic="nabd/v1/dev/nabd-other000/reading").reason == "topic_mismatch"
    assert judge(msg(1), topic=f"nabd/v1/dev/{DEV}/status").reason == "topic_mismatch"
    p = reading("nabd-other000", 1, ts=NOW)          # signed by DEV's key, claims another dev
    assert judge(with_payload(p)).reason == "topic_mismatch"


def test_duplicate_same_bytes_versus_replay_other_bytes():
    raw = msg(5)
    digest = hashlib.sha256(raw).hexdigest()
    assert judge(raw, seen={(DEV, 5): digest}).kind == "duplicate"
    other = msg(5, values={"hr": 80})
    v = judge(other, seen={(DEV, 5): digest})
    assert (v.kind, v.reason) == ("reject", "replay")


def test_replay_check_comes_before_value_checks():
    bad = msg(5, values={"temp": 99})
    assert judge(bad).reason == "invalid"
    assert judge(bad, seen={(DEV, 5): "0" * 64}).reason == "replay"


@pytest.mark.parametrize("code,ok,bad", [
    ("temp", [25.0, 36.9, 45.0], [24.9, 45.1]),
    ("spo2", [50, 100], [49, 101]),
    ("hr", [25, 250], [24, 251]),
    ("pi", [0.02, 20], [0.019, 20.5]),
])
def test_physiological_ranges(code, ok, bad):
    for value in ok:
        assert judge(msg(1, codes=(code,), values={code: value})).kind == "accept", (code, value)
    for value in bad:
        v = judge(msg(1, codes=(code,), values={code: value}))
        assert v.reason == "invalid" and "outside" in v.detail, (code, value)


@pytest.mark.parametrize("mutate", [
    lambda p: p.update(v=2), lambda p: p.pop("fw"), lambda p: p.update(extra=1),
    lambda p: p.update(seq=0), lambda p: p.update(seq=True), lambda p: p.update(ts="now"),
    lambda p: p.update(ts_ok=1), lambda p: p.update(obs=[]), lambda p: p.update(obs=p["obs"] * 2),
    lambda p: p["obs"][0].update(unit="degF"), lambda p: p["obs"][0].update(value=True),
    lambda p: p["obs"][0].update(q=1.5), lambda p: p["obs"][0].update(code="bp"),
    lambda p: p.update(patient="Mohammed Alaoui"), lambda p: p.update(flags=["panic"]),
    lambda p: p.update(cal={"id": "c", "date": "2026-13-40"}), lambda p: p.update(site="ear"),
])
def test_schema_violations_are_invalid(mutate):
    p = reading(DEV, 3, ts=NOW)
    mutate(p)
    assert judge(with_payload(p)).reason == "invalid"


def test_future_skew_300_s_and_unsynced_clock_accepted():
    assert judge(msg(1, ts=NOW + 300)).kind == "accept"
    v = judge(msg(1, ts=NOW + 301))
    assert v.reason == "future_ts"
    # ts_ok false: ts is seconds since boot, never judged against the wall clock
    v = judge(msg(1, ts=NOW + 10**6, ts_ok=False))
    assert v.kind == "accept" and v.payload["ts_ok"] is False


def test_every_reason_is_reachable():
    seen = set()
    seen.add(judge(b"x" * 3000).reason)
    seen.add(judge(b"x").reason)
    seen.add(judge(sign_reading(KEY, "nabd-zzz/1", reading("nabd-zzz", 1))).reason)
    seen.add(judge(msg(1), key_fn=lambda d, k: keys(d, k, True)).reason)
    seen.add(judge(sign_reading(os.urandom(32), f"{DEV}/1", reading(DEV, 1))).reason)
    seen.add(judge(msg(1), topic="nabd/v1/dev/x/reading").reason)
    seen.add(judge(msg(1), seen={(DEV, 1): "0" * 64}).reason)
    seen.add(judge(msg(1, values={"spo2": 20})).reason)
    seen.add(judge(msg(1, ts=NOW + 9999)).reason)
    assert seen == set(REASONS) - set(STATUS_ONLY)   # stale_status: tests/gateway/test_status_cmd.py


def _b64url_decode_by_reencoding(part: bytes) -> bytes:
    """The definition: unpadded URL-safe base64 whose re-encoding is the same text."""
    import base64
    import re

    if not re.fullmatch(rb"[A-Za-z0-9_-]*", part) or len(part) % 4 == 1:
        raise ValueError("not unpadded base64url")
    data = base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4))
    if base64.urlsafe_b64encode(data).rstrip(b"=") != part:
        raise ValueError("non-canonical base64url")
    return data


def test_b64url_decode_accepts_exactly_the_canonical_texts():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/=\n ."

    def same(part: bytes) -> None:
        try:
            want = _b64url_decode_by_reencoding(part)
        except ValueError:
            want = None
        try:
            got = jws.b64url_decode(part)
        except ValueError:
            got = None
        assert got == want, part

    @settings(max_examples=3000, deadline=None)
    @given(st.binary(max_size=12) | st.lists(st.sampled_from(alphabet), max_size=12).map(bytes))
    def texts(part):
        same(part)

    @settings(max_examples=1000, deadline=None)
    @given(st.binary(max_size=40))
    def round_trip(data):
        assert jws.b64url_decode(jws.b64url(data)) == data

    texts()
    round_trip()
    for part in (b"QQ", b"QR", b"QUE", b"QUF", b"QUE\n", b"QQ==", b"", b"Q"):
        same(part)


def test_json_objects_parse_the_same_with_or_without_surrounding_whitespace():
    """jws.json_object scans a text that is exactly one value directly and hands anything else to
    the full decoder: whitespace around the object is accepted as before, trailing data, nested
    duplicates and NaN are still refused with the same messages."""
    assert jws.json_object(b'{"a":[1,{"b":2}]}', "payload") == {"a": [1, {"b": 2}]}
    assert jws.json_object(b' \n{"a":1}\t ', "payload") == {"a": 1}
    for body, why in ((b'{"a":1} x', "not UTF-8 JSON"), (b'{"a":1}{"a":1}', "not UTF-8 JSON"),
                      (b'{"a":{"b":1,"b":2}}', "duplicate JSON member 'b'"), (b' {"a":NaN}', "NaN"),
                      (b"", "not UTF-8 JSON"), (b"  ", "not UTF-8 JSON"), (b'"a"', "not a JSON object"),
                      (b'[{"a":1}]', "not a JSON object")):
        with pytest.raises(jws.Malformed, match=why):
            jws.json_object(body, "payload")


def test_topic_devices_are_judged_per_kind_and_cached_without_confusion():
    from gateway.verify import topic_device

    for _ in range(2):   # the second time from the cache
        assert topic_device(TOPIC) == DEV
        assert topic_device(TOPIC, "status") is None
        assert topic_device(f"nabd/v1/dev/{DEV}/status", "status") == DEV
        assert topic_device(f"nabd/v1/dev/{DEV}/status") is None
        assert topic_device(f"nabd/v1/dev/{DEV}/ack") is None
        assert topic_device("nabd/v1/dev/" + "x" * 5000 + "/reading") == "x" * 5000
        assert topic_device(None) is None
        assert topic_device("") is None


def test_signed_headers_are_cached_per_kid_and_kind():
    """jws.sign keeps the encoded header of each (kid, typ): an ack and a command for the same kid,
    and the same kind for two kids, each carry their own header and verify only as their kind."""
    body = {"v": 1, "dev": DEV, "seqs": [1], "ts": NOW}
    for _ in range(2):
        ack = jws.sign(KEY, jws.TYP_ACK, f"{DEV}/1", body)
        cmd = jws.sign(KEY, jws.TYP_CMD, f"{DEV}/1", body)
        other = jws.sign(KEY, jws.TYP_ACK, f"{DEV}/2", body)
        assert jws.verify(KEY, ack, jws.TYP_ACK) == body == jws.verify(KEY, cmd, jws.TYP_CMD)
        with pytest.raises(jws.Malformed):
            jws.parse_compact(ack, jws.TYP_CMD)
        assert jws.parse_compact(other, jws.TYP_ACK).kid_version == 2
        h = jws.b64url(jws.dumps({"alg": "HS256", "kid": f"{DEV}/1", "typ": jws.TYP_ACK}))
        assert ack.split(b".")[0] == h
        assert ack.split(b".")[1] == jws.b64url(b'{"v":1,"dev":"nabd-a1b2c3d4e5f6","seqs":[1],"ts":1795430400}')


def test_mac_states_per_key_give_the_standard_hmac(monkeypatch):
    """jws.mac copies a per-key HMAC state: every key, alternating and past the cache's bound,
    gives HMAC-SHA-256 as hmac.new computes it, and a forged signature still fails verification."""
    import hmac as std

    monkeypatch.setattr(jws, "_MAC_STATES_MAX", 3)
    keys_ = [os.urandom(32) for _ in range(7)]
    for r in range(3):
        for i, k in enumerate(keys_):
            data = b"%d.%d" % (r, i) * (i + 1)
            assert jws.mac(k, data) == std.new(k, data, hashlib.sha256).digest()
    assert len(jws._MAC_STATES) <= 3
    assert judge(msg(1)).kind == "accept"
    assert judge(sign_reading(os.urandom(32), f"{DEV}/1", reading(DEV, 2, ts=NOW - 10))).reason == "bad_signature"


def test_fw_texts_are_checked_whatever_was_accepted_before():
    """check_values keeps fw texts that passed: a good one passes again, and any other value,
    of any JSON type, is still judged (an unhashable list or object is refused, not raised on)."""
    from gateway.verify import check_values

    good = reading(DEV, 1, ts=NOW - 10)
    for _ in range(2):
        assert check_values(dict(good, fw="1.2.3-rc1"), NOW) is None
    for bad in (["1.2.3-rc1"], {"v": "1.2.3-rc1"}, 123, None, True, "=1.2.3", "1.2.3-rc1\n", " 1.2.3", ""):
        assert check_values(dict(good, fw=bad), NOW) == ("invalid", "fw is not a version " + r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,31}$"), bad
