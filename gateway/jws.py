"""JWS compact serialisation with HS256, as docs/protocol.md specifies (RFC 7515, no padding).

The gateway's one JWS parser (``parse_compact``: strict, for readings, statuses and acks alike)
and its signer (``sign``: acknowledgements and commands; the test generator signs readings with it).
What a payload must hold is the caller's check (gateway/verify.py, gateway/status.py).
"""
from __future__ import annotations

import binascii
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any

KID_RE = re.compile(r"^([a-z0-9][a-z0-9-]{2,39})/([1-9][0-9]{0,8})$")  # device/key_version

TYP_READING = "nabd-reading+jws"
TYP_STATUS = "nabd-status+jws"
TYP_ACK = "nabd-ack+jws"
TYP_CMD = "nabd-cmd+jws"
MAC_BYTES = 32  # HMAC-SHA-256


class Malformed(ValueError):
    """Not a compact JWS of the expected kind; the message says why, in one line."""


def b64url(data: bytes) -> bytes:
    return binascii.b2a_base64(data, newline=False).translate(_TO_URL).rstrip(b"=")


_TO_URL = bytes.maketrans(b"+/", b"-_")
_PAD = (b"", b"", b"==", b"=")
_UNUSED_BITS = (0, 0, 0x0F, 0x03)  # by length % 4: low bits of the last character that carry nothing
_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_INDEX = {c: i for i, c in enumerate(_ALPHABET)}
# base64url -> standard base64, every byte outside the URL-safe alphabet (the standard "+" and "/"
# and "=" included) -> "!", which a2b_base64's strict mode refuses: one C pass checks the alphabet
# and maps it (a regular expression over the part cost as much as the decoding)
_TO_STD = bytes(b if b in _ALPHABET else 33 for b in range(256)).translate(bytes.maketrans(b"-_", b"+/"))


def b64url_decode(part: bytes) -> bytes:
    """Strict: URL-safe alphabet, no padding, canonical (re-encoding gives the same text: the
    unused low bits of a partial last group are zero). On every reading's path, so it checks the
    last character's bits instead of re-encoding. Raises ValueError (binascii.Error is one)."""
    r = len(part) % 4
    if r == 1:
        raise ValueError("not unpadded base64url")
    if r and _INDEX.get(part[-1], 0) & _UNUSED_BITS[r]:
        raise ValueError("non-canonical base64url")
    return binascii.a2b_base64(part.translate(_TO_STD) + _PAD[r], strict_mode=True)


try:
    from _hashlib import hmac_new as _hmac_new  # OpenSSL's HMAC object (what hmac.new wraps)
except ImportError:  # a Python built without OpenSSL
    _hmac_new = hmac.new

# HMAC-SHA-256 state after the key, by key: a message's MAC copies it instead of setting the key up
# again (one-shot hmac.digest did that for every message: 1.8 -> 1.3 us for a reading). Bounded:
# cleared when full. Holds what the key ring holds already (gateway/keys.py keeps decrypted keys).
_MAC_STATES: dict[bytes, Any] = {}
_MAC_STATES_MAX = 16384


def mac(key: bytes, signing_input: bytes) -> bytes:
    """HMAC-SHA-256 of ``signing_input`` under ``key`` (32 bytes)."""
    state = _MAC_STATES.get(key)
    if state is None:
        if len(_MAC_STATES) >= _MAC_STATES_MAX:
            _MAC_STATES.clear()
        state = _MAC_STATES[key] = _hmac_new(key, digestmod="sha256")
    h = state.copy()
    h.update(signing_input)
    return h.digest()


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)  # json.dumps made one per call


def dumps(obj) -> bytes:
    return _ENCODER.encode(obj).encode()


# b64url of the header by (kid, typ): the gateway signs an ack per device and batch (bounded: cleared when full)
_SIGN_HEADERS: dict[tuple[str, str], bytes] = {}


def sign(key: bytes, typ: str, kid: str, payload: dict) -> bytes:
    """A compact JWS: header with exactly alg, kid, typ; payload serialised compactly."""
    return sign_bytes(key, typ, kid, dumps(payload))


def sign_bytes(key: bytes, typ: str, kid: str, payload: bytes) -> bytes:
    """``sign`` of a payload serialised already (compact UTF-8 JSON of an object, as ``dumps``
    gives: the store writes its acks' fixed shape itself)."""
    header = _SIGN_HEADERS.get((kid, typ))
    if header is None:
        if len(_SIGN_HEADERS) >= _HEADER_CACHE_MAX:
            _SIGN_HEADERS.clear()
        header = _SIGN_HEADERS[(kid, typ)] = b64url(dumps({"alg": "HS256", "kid": kid, "typ": typ}))
    signing_input = header + b"." + b64url(payload)
    return signing_input + b"." + b64url(mac(key, signing_input))


# --- parsing ---------------------------------------------------------------------------------------

def _unique_pairs(pairs: list) -> dict:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen = set()
        for k, _ in pairs:
            if k in seen:
                raise Malformed(f"duplicate JSON member {k!r}")
            seen.add(k)
    return d


def _no_constants(name: str):
    raise Malformed(f"JSON constant {name} is not allowed")


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_pairs, parse_constant=_no_constants)  # stateless
_SCAN = _DECODER.scan_once


def json_object(data: bytes, what: str) -> dict:
    """``data`` as a JSON object: UTF-8, no duplicate members, no NaN or Infinity. Raises Malformed."""
    try:
        text = data.decode("utf-8")
        try:
            # the C scanner directly: what decode() does for a text with no surrounding whitespace,
            # without its two regular-expression passes; anything else goes through decode()
            obj, end = _SCAN(text, 0)
        except StopIteration:
            end = -1
        if end != len(text):
            obj = _DECODER.decode(text)
    except Malformed as e:
        raise Malformed(f"{what}: {e}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise Malformed(f"{what} is not UTF-8 JSON ({type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise Malformed(f"{what} is not a JSON object")
    return obj


@dataclass(frozen=True, slots=True)
class Compact:
    """A parsed compact JWS. Nothing here is authenticated yet: the caller checks ``signature``
    against the key that ``kid_device``/``kid_version`` name."""
    signing_input: bytes   # header.payload, as received
    signature: bytes
    payload: dict
    kid_device: str
    kid_version: int


# A device sends the same header bytes in every message: the outcome of checking them is a pure
# function of those bytes, kept for headers that passed (bounded: cleared when full). The typ is
# kept too, so a header valid for one kind is still refused where another is expected.
_HEADER_CACHE: dict[bytes, tuple[str, str, int]] = {}
_HEADER_CACHE_MAX = 8192


def _check_header(part: bytes, typ: str) -> tuple[str, str, int]:
    """(typ, device, key_version) of a header not in the cache (or cached as another kind)."""
    header = json_object(b64url_decode(part), "header")
    if set(header) != {"alg", "kid", "typ"}:
        raise Malformed(f"header members {sorted(header)}, expected exactly alg, kid, typ")
    if header["alg"] != "HS256":
        raise Malformed(f"alg {header['alg']!r} is not HS256")
    if header["typ"] != typ:
        raise Malformed(f"typ {header['typ']!r} is not {typ}")
    k = header["kid"]
    m = KID_RE.match(k) if isinstance(k, str) else None
    if not m:
        raise Malformed(f"kid {k!r} is not device/key_version")
    if len(_HEADER_CACHE) >= _HEADER_CACHE_MAX:
        _HEADER_CACHE.clear()
    kid = _HEADER_CACHE[part] = (typ, m.group(1), int(m.group(2)))
    return kid


def parse_compact(raw: bytes, typ: str) -> Compact:
    """The gateway's only JWS parser, strict: three parts of unpadded, canonical base64url; a
    header of exactly ``alg`` HS256, ``kid`` "device/key_version" and ``typ`` equal to ``typ``;
    a payload that is a JSON object (UTF-8, no duplicate members, no NaN or Infinity); a 32-byte
    signature. Raises Malformed. Size limits are the caller's (they differ by message kind)."""
    parts = bytes(raw).split(b".")
    if len(parts) != 3:
        raise Malformed(f"{len(parts)} dot-separated parts, expected 3")
    try:
        kid = _HEADER_CACHE.get(parts[0])
        if kid is None or kid[0] != typ:  # (typ, device, key_version); the cache is the hot path
            kid = _check_header(parts[0], typ)
        payload = json_object(b64url_decode(parts[1]), "payload")
        signature = b64url_decode(parts[2])
    except Malformed:
        raise
    except ValueError as e:  # base64url
        raise Malformed(f"bad base64url part: {e}") from None
    if len(signature) != MAC_BYTES:
        raise Malformed(f"signature is {len(signature)} bytes, HS256 gives {MAC_BYTES}")
    return Compact(parts[0] + b"." + parts[1], signature, payload, kid[1], kid[2])


def verify(key: bytes, token: bytes, typ: str) -> dict:
    """The payload of a compact JWS of kind ``typ`` signed with ``key`` (``parse_compact``, then the
    MAC in constant time). Raises ValueError (Malformed for the shape)."""
    c = parse_compact(token, typ)
    if not hmac.compare_digest(mac(key, c.signing_input), c.signature):
        raise ValueError("bad signature")
    return c.payload
