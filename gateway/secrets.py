"""Device signing keys at rest: AES-256-GCM under the key-encryption key (KEK).

Stored blob = 12-byte random nonce || ciphertext+tag. The associated data binds a blob to its row
(``"{device_id}/{key_version}"``), so a blob copied onto another device or version fails to decrypt.
A decrypted key lives in a ``DeviceKey`` whose ``repr``/``str`` never show the bytes.
"""
from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32


class KeyDecryptError(Exception):
    """A stored key does not decrypt under this KEK (wrong KEK, or a tampered or moved row)."""


class DeviceKey:
    """A device's HMAC key in memory. Never printed: repr and str are redacted."""

    __slots__ = ("device_id", "version", "_key")

    def __init__(self, device_id: str, version: int, key: bytes):
        self.device_id = device_id
        self.version = int(version)
        self._key = bytes(key)

    @property
    def secret(self) -> bytes:
        return self._key

    def __repr__(self) -> str:
        return f"DeviceKey({self.device_id!r}, version={self.version}, key=<redacted>)"

    __str__ = __repr__

    def __reduce__(self):  # never pickled into logs, queues or caches by accident
        raise TypeError("DeviceKey is not picklable")


def _aad(device_id: str, version: int) -> bytes:
    return f"{device_id}/{int(version)}".encode()


def parse_key_hex(text: str) -> bytes:
    """A signing key given as hex on the command line: exactly 32 bytes."""
    t = (text or "").strip().lower()
    try:
        key = bytes.fromhex(t)
    except ValueError:
        raise ValueError("the key must be hexadecimal") from None
    if len(key) != KEY_BYTES:
        raise ValueError(f"the key must be {KEY_BYTES} bytes ({2 * KEY_BYTES} hex digits), got {len(key)}")
    return key


def encrypt_key(kek: bytes, device_id: str, version: int, key: bytes) -> bytes:
    if len(kek) != 32:
        raise ValueError("the KEK must be 32 bytes")
    nonce = os.urandom(12)
    return nonce + AESGCM(kek).encrypt(nonce, bytes(key), _aad(device_id, version))


def decrypt_key(kek: bytes, device_id: str, version: int, blob: bytes) -> DeviceKey:
    blob = bytes(blob)
    if len(blob) < 12 + 16:
        raise KeyDecryptError(f"stored key for {device_id}/{version} is truncated")
    try:
        key = AESGCM(kek).decrypt(blob[:12], blob[12:], _aad(device_id, version))
    except InvalidTag:
        raise KeyDecryptError(f"stored key for {device_id}/{version} does not decrypt with this KEK") from None
    return DeviceKey(device_id, version, key)


def new_kek() -> bytes:
    return os.urandom(32)
