"""JWS compact serialisation (RFC 7515) with HS256, for MicroPython and CPython.

MicroPython's core has ``hashlib.sha256`` but no ``hmac``: HMAC-SHA-256 (RFC 2104) is built here
on ``hashlib.sha256``. The wire format is ``docs/protocol.md``::

    token = jws.sign(key, "nabd-a1b2c3d4e5f6/1", "nabd-reading+jws", b'{"v":1,...}')
    payload = jws.verify(key, token, "nabd-ack+jws", kid="nabd-a1b2c3d4e5f6/1")  # bytes

``sign`` returns bytes; the header is exactly ``{"alg":"HS256","kid":KID,"typ":TYP}``.
``verify`` raises ``JWSError`` whose ``reason`` is one of ``oversized``, ``malformed``,
``bad_header``, ``bad_alg``, ``wrong_typ``, ``wrong_kid``, ``bad_signature``; it checks the
HMAC over the exact bytes received (no JSON re-serialisation) in constant time, and never looks at
the payload before the signature is good. The key is 32 bytes (any length works, RFC 2104).
"""
import hashlib
import json

from micropython import const

MAX_TOKEN = const(2048)  # bytes, the whole message (protocol.md)
_BLOCK = const(64)       # SHA-256 block size, bytes


class JWSError(ValueError):
    """A token was rejected; ``reason`` is a short machine-readable word."""

    def __init__(self, reason, detail=""):
        super().__init__(reason + (": " + detail if detail else ""))
        self.reason = reason


# --- HMAC-SHA-256 (RFC 2104) ----------------------------------------------------------------

def _pads(key):
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    ipad = bytearray(_BLOCK)
    opad = bytearray(_BLOCK)
    for i in range(_BLOCK):
        b = key[i] if i < len(key) else 0
        ipad[i] = b ^ 0x36
        opad[i] = b ^ 0x5C
    return ipad, opad


def hmac_sha256(key, msg):
    """HMAC-SHA-256 of ``msg`` (bytes-like) under ``key`` (bytes); 32 bytes."""
    ipad, opad = _pads(key)
    h = hashlib.sha256(ipad)
    h.update(msg)
    inner = h.digest()
    h = hashlib.sha256(opad)
    h.update(inner)
    return h.digest()


def compare_digest(a, b):
    """Constant-time equality of two byte strings (time depends only on the lengths)."""
    n = len(a)
    r = 0 if n == len(b) else 1
    if r:
        b = a  # still do the same amount of work
    for i in range(n):
        r |= a[i] ^ b[i]
    return r == 0


# --- base64url without padding (RFC 7515 section 2) ------------------------------------------

_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def b64url_encode(data):
    """base64url of ``data`` without padding or newline, as bytes.

    Written out rather than ``binascii.b2a_base64`` + replace: one output buffer of the exact
    size, the same code on every port (where ``binascii`` is micropython-lib's pure-Python module,
    as in the WebAssembly VM, its b2a_base64 churns the heap quadratically)."""
    n = len(data)
    out = bytearray((n * 4 + 2) // 3)
    a = _ALPHABET
    full = n - n % 3
    i = 0
    j = 0
    while i < full:
        v = (data[i] << 16) | (data[i + 1] << 8) | data[i + 2]
        out[j] = a[v >> 18]
        out[j + 1] = a[(v >> 12) & 63]
        out[j + 2] = a[(v >> 6) & 63]
        out[j + 3] = a[v & 63]
        i += 3
        j += 4
    if n - full:
        v = data[i] << 16
        if n - full == 2:
            v |= data[i + 1] << 8
            out[j + 2] = a[(v >> 6) & 63]
        out[j] = a[v >> 18]
        out[j + 1] = a[(v >> 12) & 63]
    return bytes(out)


def _val(c):
    """6-bit value of a base64url character code, or -1."""
    if 65 <= c <= 90:
        return c - 65
    if 97 <= c <= 122:
        return c - 71
    if 48 <= c <= 57:
        return c + 4
    if c == 45:
        return 62
    if c == 95:
        return 63
    return -1


def b64url_decode(s):
    """Strict base64url decode: only the URL-safe alphabet, no padding, canonical trailing bits.
    Raises ``JWSError("malformed")`` otherwise."""
    if isinstance(s, str):
        s = s.encode()
    n = len(s)
    if n % 4 == 1:
        raise JWSError("malformed", "base64url length")
    out = bytearray(n * 3 // 4)
    acc = 0
    bits = 0
    j = 0
    for c in s:
        v = _val(c)
        if v < 0:
            raise JWSError("malformed", "base64url alphabet")
        acc = ((acc << 6) | v) & 0xFFFF
        bits += 6
        if bits >= 8:
            bits -= 8
            out[j] = (acc >> bits) & 0xFF
            j += 1
    if acc & ((1 << bits) - 1):  # non-zero unused bits: not the canonical encoding
        raise JWSError("malformed", "base64url trailing bits")
    return bytes(out)


# --- JWS --------------------------------------------------------------------------------------

def _header(kid, typ):
    for v in (kid, typ):
        if not isinstance(v, str) or not v or '"' in v or "\\" in v:
            raise ValueError("kid and typ must be non-empty strings without quotes or backslashes")
    return ('{"alg":"HS256","kid":"' + kid + '","typ":"' + typ + '"}').encode()


def sign(key, kid, typ, payload):
    """JWS compact token (bytes) of ``payload`` (bytes, UTF-8 JSON) under ``key`` (bytes)."""
    if isinstance(payload, str):
        payload = payload.encode()
    head = b64url_encode(_header(kid, typ)) + b"." + b64url_encode(payload)
    tok = head + b"." + b64url_encode(hmac_sha256(key, head))
    if len(tok) > MAX_TOKEN:
        raise ValueError("signed message is %d bytes, the limit is %d" % (len(tok), MAX_TOKEN))
    return tok


def verify(key, token, typ, kid=None):
    """Check ``token`` (bytes or str) and return its payload bytes.

    ``typ`` must match exactly; ``kid`` too when given. Raises ``JWSError``."""
    if isinstance(token, str):
        token = token.encode()
    token = bytes(token)
    if len(token) > MAX_TOKEN:
        raise JWSError("oversized")
    parts = token.split(b".")
    if len(parts) != 3 or not parts[0] or not parts[1] or not parts[2]:
        raise JWSError("malformed", "not three parts")
    try:
        hdr = json.loads(b64url_decode(parts[0]))
    except JWSError:
        raise
    except Exception:
        raise JWSError("malformed", "header is not JSON")
    if not isinstance(hdr, dict) or len(hdr) != 3 or "alg" not in hdr or "kid" not in hdr or "typ" not in hdr:
        raise JWSError("bad_header")
    if hdr["alg"] != "HS256":
        raise JWSError("bad_alg", str(hdr["alg"]))
    if hdr["typ"] != typ:
        raise JWSError("wrong_typ", str(hdr["typ"]))
    if kid is not None and hdr["kid"] != kid:
        raise JWSError("wrong_kid", str(hdr["kid"]))
    sig = b64url_decode(parts[2])
    mac = hmac_sha256(key, token[:len(parts[0]) + 1 + len(parts[1])])
    if not compare_digest(mac, sig):
        raise JWSError("bad_signature")
    return b64url_decode(parts[1])


def unverified_header(token):
    """The decoded header of a token, NOT verified (for diagnostics only)."""
    if isinstance(token, str):
        token = token.encode()
    return json.loads(b64url_decode(bytes(token).split(b".")[0]))
