"""JWS compact serialisation with HS256, as docs/protocol.md specifies (RFC 7515, no padding).

Used by the gateway to sign acknowledgements and commands, and by the test generator to sign
readings; verification of readings lives in gateway/verify.py (which checks the exact bytes).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re

_B64URL = re.compile(rb"[A-Za-z0-9_-]*")  # fullmatch: "$" would accept a trailing newline

TYP_READING = "nabd-reading+jws"
TYP_STATUS = "nabd-status+jws"
TYP_ACK = "nabd-ack+jws"
TYP_CMD = "nabd-cmd+jws"


def b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


_TO_STD = bytes.maketrans(b"-_", b"+/")
_PAD = (b"", b"", b"==", b"=")
_UNUSED_BITS = (0, 0, 0x0F, 0x03)  # by length % 4: low bits of the last character that carry nothing
_INDEX = {c: i for i, c in enumerate(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")}


def b64url_decode(part: bytes) -> bytes:
    """Strict: URL-safe alphabet, no padding, canonical (re-encoding gives the same text: the
    unused low bits of a partial last group are zero). On every reading's path, so it checks the
    last character's bits instead of re-encoding."""
    r = len(part) % 4
    if r == 1 or not _B64URL.fullmatch(part):
        raise ValueError("not unpadded base64url")
    if r and _INDEX[part[-1]] & _UNUSED_BITS[r]:
        raise ValueError("non-canonical base64url")
    return binascii.a2b_base64(part.translate(_TO_STD) + _PAD[r])


def mac(key: bytes, signing_input: bytes) -> bytes:
    return hmac.new(key, signing_input, hashlib.sha256).digest()


def dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def sign(key: bytes, typ: str, kid: str, payload: dict) -> bytes:
    """A compact JWS: header with exactly alg, kid, typ; payload serialised compactly."""
    header = dumps({"alg": "HS256", "kid": kid, "typ": typ})
    signing_input = b64url(header) + b"." + b64url(dumps(payload))
    return signing_input + b"." + b64url(mac(key, signing_input))


def verify(key: bytes, token: bytes, typ: str) -> dict:
    """Check a compact JWS of kind ``typ`` under ``key``; returns the payload. Raises ValueError."""
    parts = token.split(b".")
    if len(parts) != 3:
        raise ValueError("not three parts")
    header = json.loads(b64url_decode(parts[0]))
    if header.get("alg") != "HS256" or header.get("typ") != typ:
        raise ValueError("wrong alg or typ")
    if not hmac.compare_digest(mac(key, parts[0] + b"." + parts[1]), b64url_decode(parts[2])):
        raise ValueError("bad signature")
    return json.loads(b64url_decode(parts[1]))
