"""HMAC-SHA-256 and JWS HS256 of firmware/jws.py on the real MicroPython VM, checked against
CPython's hmac/base64 and RFC 4231, and every rejection of ``verify``."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random

import pytest

from firmware import jws

# RFC 4231 section 4: (key, data, HMAC-SHA-256); case 5 is a truncated output, checked by prefix
RFC4231 = [
    (bytes([0x0B] * 20), b"Hi There",
     "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (b"Jefe", b"what do ya want for nothing?",
     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    (bytes([0xAA] * 20), bytes([0xDD] * 50),
     "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
    (bytes(range(1, 26)), bytes([0xCD] * 50),
     "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
    (bytes([0x0C] * 20), b"Test With Truncation", "a3b6167473100ee06e0c796c2955552b"),
    (bytes([0xAA] * 131), b"Test Using Larger Than Block-Size Key - Hash Key First",
     "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
    (bytes([0xAA] * 131),
     b"This is a test using a larger than block-size key and a larger than block-size data. "
     b"The key needs to be hashed before being used by the HMAC algorithm.",
     "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
]
KEY = bytes(range(32))
KID = "nabd-240ac4000001/1"


def _vm_load(vm):
    vm.exec("from firmware import jws\nimport binascii\nU = binascii.unhexlify\nH = binascii.hexlify")


def test_hmac_rfc4231_on_vm(vm):
    _vm_load(vm)
    for key, data, want in RFC4231:
        got = vm.eval(f"H(jws.hmac_sha256(U('{key.hex()}'), U('{data.hex()}'))).decode()")
        assert got.startswith(want), (key, data)
        assert hmac.new(key, data, hashlib.sha256).hexdigest().startswith(want)  # the vectors themselves


def test_hmac_random_vectors_match_cpython(vm):
    rnd = random.Random(4231)
    cases = []
    for _ in range(300):
        key = rnd.randbytes(rnd.choice([0, 1, 16, 31, 32, 33, 63, 64, 65, 100, 200]))
        msg = rnd.randbytes(rnd.randrange(0, 700))
        cases.append((key.hex(), msg.hex()))
    _vm_load(vm)
    vm.exec("CASES = " + json.dumps(cases))
    got = vm.eval("[H(jws.hmac_sha256(U(k), U(m))).decode() for k, m in CASES]")
    want = [hmac.new(bytes.fromhex(k), bytes.fromhex(m), hashlib.sha256).hexdigest() for k, m in cases]
    assert got == want
    # and the same module under CPython
    assert [jws.hmac_sha256(bytes.fromhex(k), bytes.fromhex(m)).hex() for k, m in cases[:50]] == want[:50]


def test_base64url_matches_cpython_and_is_strict(vm):
    rnd = random.Random(7515)
    blobs = [rnd.randbytes(n) for n in range(0, 70)]
    _vm_load(vm)
    vm.exec("B = " + json.dumps([b.hex() for b in blobs]))
    enc = vm.eval("[jws.b64url_encode(U(b)).decode() for b in B]")
    assert enc == [base64.urlsafe_b64encode(b).rstrip(b"=").decode() for b in blobs]
    dec = vm.eval("[H(jws.b64url_decode(e)).decode() for e in " + json.dumps(enc) + "]")
    assert dec == [b.hex() for b in blobs]
    vm.exec("def why(s):\n try:\n  jws.b64url_decode(s)\n  return 'accepted'\n"
            " except jws.JWSError as e:\n  return e.reason\n")
    bad = ["YWI=", "YW+I", "YW/I", "Y", "YWJ", "YW I", "YWJjZA==", "YR"]  # YWJ, YR: non-zero unused bits
    assert vm.eval("[why(s) for s in " + json.dumps(bad) + "]") == ["malformed"] * len(bad)
    assert vm.eval("H(jws.b64url_decode('YWI')).decode()") == b"ab".hex()


def _cpython_verify(token: bytes, key: bytes) -> tuple[dict, bytes]:
    h, p, s = token.split(b".")
    mac = hmac.new(key, h + b"." + p, hashlib.sha256).digest()
    assert hmac.compare_digest(base64.urlsafe_b64decode(s + b"=" * (-len(s) % 4)), mac)
    header = base64.urlsafe_b64decode(h + b"=" * (-len(h) % 4))
    return json.loads(header), base64.urlsafe_b64decode(p + b"=" * (-len(p) % 4))


def test_sign_on_vm_verifies_in_cpython(vm):
    _vm_load(vm)
    payload = b'{"v":1,"dev":"nabd-240ac4000001","seq":7}'
    tok = vm.eval(f"jws.sign(U('{KEY.hex()}'), '{KID}', 'nabd-reading+jws', U('{payload.hex()}')).decode()").encode()
    header_raw = base64.urlsafe_b64decode(tok.split(b".")[0] + b"==")
    assert header_raw == b'{"alg":"HS256","kid":"nabd-240ac4000001/1","typ":"nabd-reading+jws"}'
    header, body = _cpython_verify(tok, KEY)
    assert body == payload and header["typ"] == "nabd-reading+jws"
    assert b"=" not in tok
    # the VM verifies its own token and CPython's firmware module agrees byte for byte
    assert vm.eval(f"jws.verify(U('{KEY.hex()}'), {tok!r}, 'nabd-reading+jws', '{KID}').decode()") == payload.decode()
    assert jws.sign(KEY, KID, "nabd-reading+jws", payload) == tok


def _b64(b: bytes) -> bytes:
    return base64.urlsafe_b64encode(b).rstrip(b"=")


def _forge(header: bytes, payload: bytes, key: bytes = KEY) -> bytes:
    si = _b64(header) + b"." + _b64(payload)
    return si + b"." + _b64(hmac.new(key, si, hashlib.sha256).digest())


def rejection_cases() -> dict[str, tuple[bytes, str]]:
    good = jws.sign(KEY, KID, "nabd-ack+jws", b'{"v":1}')
    h, p, s = good.split(b".")
    hdr = b'{"alg":"HS256","kid":"%s","typ":"nabd-ack+jws"}' % KID.encode()
    flip = bytearray(s)
    flip[3] = ord("A") if flip[3] != ord("A") else ord("B")
    return {
        "bad signature": (h + b"." + p + b"." + bytes(flip), "bad_signature"),
        "other key": (_forge(hdr, b'{"v":1}', key=bytes(32)), "bad_signature"),
        "payload changed": (h + b"." + _b64(b'{"v":2}') + b"." + s, "bad_signature"),
        "wrong typ": (jws.sign(KEY, KID, "nabd-reading+jws", b'{"v":1}'), "wrong_typ"),
        "wrong kid": (jws.sign(KEY, "nabd-other/1", "nabd-ack+jws", b'{"v":1}'), "wrong_kid"),
        "alg none": (_b64(b'{"alg":"none","kid":"%s","typ":"nabd-ack+jws"}' % KID.encode()) + b"." + p + b".",
                     "malformed"),
        "alg none signed": (_forge(b'{"alg":"none","kid":"%s","typ":"nabd-ack+jws"}' % KID.encode(), b'{"v":1}'),
                            "bad_alg"),
        "alg HS512": (_forge(b'{"alg":"HS512","kid":"%s","typ":"nabd-ack+jws"}' % KID.encode(), b'{"v":1}'),
                      "bad_alg"),
        "extra header member": (_forge(b'{"alg":"HS256","kid":"%s","typ":"nabd-ack+jws","x":1}' % KID.encode(),
                                       b'{"v":1}'), "bad_header"),
        "padding": (h + b"." + p + b"." + s + b"=", "malformed"),
        "padded header": (base64.urlsafe_b64encode(hdr + b" ") + b"." + p + b"." + s, "malformed"),
        "standard alphabet": (h + b"." + p + b"." + s.replace(b"-", b"+").replace(b"_", b"/") + b"+/", "malformed"),
        "truncated signature": (h + b"." + p + b"." + _b64(base64.urlsafe_b64decode(s + b"=")[:31]), "bad_signature"),
        "truncated token": (good[: len(h) + 1 + len(p) // 2], "malformed"),
        "two parts": (h + b"." + p, "malformed"),
        "four parts": (good + b".x", "malformed"),
        "empty": (b"", "malformed"),
        "oversized": (good + b"A" * 2100, "oversized"),
        "header not json": (_b64(b"nope") + b"." + p + b"." + s, "malformed"),
    }


def test_every_rejection_on_vm(vm):
    cases = rejection_cases()
    _vm_load(vm)
    vm.exec(
        "def why(tok):\n"
        "    try:\n"
        f"        jws.verify(U('{KEY.hex()}'), tok, 'nabd-ack+jws', kid='{KID}')\n"
        "        return 'accepted'\n"
        "    except jws.JWSError as e:\n"
        "        return e.reason\n")
    vm.exec("CASES = " + json.dumps({k: v[0].decode("latin-1") for k, v in cases.items()}))
    got = vm.eval("dict((k, why(v.encode())) for k, v in CASES.items())")
    assert got == {k: v[1] for k, v in cases.items()}
    # CPython runs the same module with the same verdicts
    for name, (tok, reason) in cases.items():
        with pytest.raises(jws.JWSError) as ei:
            jws.verify(KEY, tok, "nabd-ack+jws", kid=KID)
        assert ei.value.reason == reason, name


def test_compare_digest_constant_time_semantics(vm):
    _vm_load(vm)
    assert vm.eval("[jws.compare_digest(b'abc', b'abc'), jws.compare_digest(b'abc', b'abd'), "
                   "jws.compare_digest(b'abc', b'ab'), jws.compare_digest(b'', b'')]") == [True, False, False, True]


def test_sign_refuses_oversized_and_bad_header_fields():
    with pytest.raises(ValueError):
        jws.sign(KEY, KID, "nabd-reading+jws", b"x" * 1600)
    with pytest.raises(ValueError):
        jws.sign(KEY, 'a"b', "nabd-reading+jws", b"{}")
