"""JWS compact serialisation with HS256, as docs/protocol.md specifies (RFC 7515, no padding).

Used by the gateway to sign acknowledgements and commands, and by the test generator to sign
readings; verification of readings lives in gateway/verify.py (which checks the exact bytes).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re

_B64URL = re.compile(rb"^[A-Za-z0-9_-]*$")

TYP_READING = "nabd-reading+jws"
TYP_STATUS = "nabd-status+jws"
TYP_ACK = "nabd-ack+jws"
TYP_CMD = "nabd-cmd+jws"


def b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def b64url_decode(part: bytes) -> bytes:
    """Strict: URL-safe alphabet, no padding, canonical (re-encoding gives the same text)."""
    if not _B64URL.match(part) or len(part) % 4 == 1:
        raise ValueError("not unpadded base64url")
    data = base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4))
    if b64url(data) != part:
        raise ValueError("non-canonical base64url")
    return data


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
