"""Sensitive personal data (phone, identity numbers) encrypted at rest: AES-256-GCM.

Stored form: `pii1.<key id>.<base64url(nonce || ciphertext+tag)>`. The key id (the first 8
bytes of SHA-256 of the key, hex) is kept beside the ciphertext so keys can rotate: new
writes use BMM_DATA_KEY, reads find the right key among it and BMM_DATA_KEYS_RETIRED.
The associated data binds a value to its record and field (e.g. `account:<id>:phone`),
so a ciphertext copied onto another record or field does not decrypt.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
from collections.abc import Iterable
from typing import Annotated, Any

import msgspec

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from server.core.errors import ApiError

log = logging.getLogger(__name__)
PREFIX = "pii1"
NONCE_BYTES = 12


def parse_key(raw: str) -> bytes:
    """BMM_DATA_KEY: base64 (standard or url-safe) of exactly 32 random bytes."""
    try:
        key = base64.b64decode(raw.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("BMM_DATA_KEY must be base64 of 32 bytes") from exc
    if len(key) != 32:
        raise ValueError(f"BMM_DATA_KEY must be base64 of 32 bytes (got {len(key)})")
    return key


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:16]


class DataCipher:
    def __init__(self, current: str, retired: Iterable[str] = ()) -> None:
        key = parse_key(current)
        self.current_id = key_id(key)
        self._keys = {key_id(k): AESGCM(k) for k in map(parse_key, retired)}
        self._keys[self.current_id] = AESGCM(key)

    def encrypt(self, plaintext: str, context: str) -> str:
        nonce = os.urandom(NONCE_BYTES)  # random 96-bit nonce: fine far below 2^32 writes/key
        sealed = self._keys[self.current_id].encrypt(nonce, plaintext.encode(), context.encode())
        return f"{PREFIX}.{self.current_id}.{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def decrypt(self, stored: str, context: str) -> str:
        try:
            prefix, kid, body = stored.split(".", 2)
            blob = base64.urlsafe_b64decode(body)
        except (ValueError, binascii.Error) as exc:
            raise ValueError("not an encrypted value") from exc
        if prefix != PREFIX:
            raise ValueError("not an encrypted value")
        aead = self._keys.get(kid)
        if aead is None:
            raise KeyError(f"data key {kid} is not configured (BMM_DATA_KEYS_RETIRED?)")
        try:
            return aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], context.encode()).decode()
        except InvalidTag as exc:
            raise ValueError("encrypted value does not belong here or was altered") from exc

    def needs_rotation(self, stored: str) -> bool:
        return not stored.startswith(f"{PREFIX}.{self.current_id}.")


_CIPHERS: dict[tuple[str, tuple[str, ...]], DataCipher] = {}


def cipher(current: str, retired: tuple[str, ...] = ()) -> DataCipher:
    """The cipher for these settings (built once: key parsing is per process, not per call)."""
    if not current:
        raise ApiError(503, "no_data_key",
                       "personal data cannot be stored: the server has no data key")
    found = _CIPHERS.get((current, retired))
    if found is None:
        found = _CIPHERS[(current, retired)] = DataCipher(current, retired)
    return found


# --- what the API modules use ----------------------------------------------------------

Phone = Annotated[str, msgspec.Meta(min_length=6, max_length=24, pattern=r"^\+?[0-9][0-9 ()-]{4,22}$",
                                     description="a phone number, e.g. +91 98765 43210")]
IdNumber = Annotated[str, msgspec.Meta(min_length=4, max_length=32, pattern=r"^[A-Za-z0-9-]+$",
                                        description="an identity document number")]


def normalise_phone(phone: str) -> str:
    return "".join(ch for ch in phone if ch.isdigit() or ch == "+")


def settings_cipher(settings: Any) -> DataCipher:
    return cipher(settings.data_key, tuple(settings.data_keys_retired))


def seal(settings: Any, value: str | None, context: str) -> str | None:
    return None if value is None else settings_cipher(settings).encrypt(value, context)


def unseal(settings: Any, stored: str | None, context: str) -> str | None:
    """The plaintext, or None when there is none (or the key that sealed it is gone:
    logged, never a 500 for the owner's page)."""
    if not stored:
        return None
    try:
        return settings_cipher(settings).decrypt(stored, context)
    except (ValueError, KeyError) as exc:
        log.warning("cannot decrypt %s: %s", context, exc)
        return None


def mask(value: str | None) -> str | None:
    """Enough to recognise one's own number, not enough to use it."""
    if not value:
        return None
    return "•" * max(len(value) - 3, 0) + value[-3:]


def booking_context(booking_id: str, field: str) -> str:
    return f"booking:{booking_id}:{field}"


def seal_booking_phone(settings: Any, phone: str | None, booking_id: str) -> str | None:
    """A checkout's contact phone, encrypted and bound to its booking."""
    if not phone:
        return None
    return seal(settings, normalise_phone(phone), booking_context(booking_id, "phone"))


def seal_booking_id_number(settings: Any, number: str | None, booking_id: str) -> str | None:
    if not number:
        return None
    return seal(settings, number.upper(), booking_context(booking_id, "id_number"))


def masked_booking_field(settings: Any, stored: str | None, booking_id: str,
                         field: str) -> str | None:
    return mask(unseal(settings, stored, booking_context(booking_id, field)))
