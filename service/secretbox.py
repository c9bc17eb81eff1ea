"""Secrets at rest: subscription signing secrets are sealed with AES-GCM under a key kept outside the database.

A leaked copy of the SQLite file alone does not reveal them. The key comes from SORAHOOK_SECRET_KEY or
is generated into the data dir (mode 0600). Each sealed value is bound (AES-GCM associated data) to the
subscription it belongs to, so a sealed secret copied into another row does not open there. Opening a
sealed value is cached, so the delivery path pays for it once per secret, not once per delivery.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_PREFIX = "sealed:v2:"  # associated data: the owner's id
_LEGACY_PREFIX = "sealed:v1:"  # associated data: a constant; opened only to be sealed again
_LEGACY_AD = b"sorahook-secret"


class SealError(ValueError):
    """A stored value does not open with this key for this owner (wrong key, or moved from another row)."""


def _ad(owner: str) -> bytes:
    return b"sorahook-secret:" + owner.encode()


class SecretBox:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the secret key must be 32 bytes")
        self._aead = AESGCM(key)
        self.open = functools.lru_cache(maxsize=4096)(self._open)

    def seal(self, value: str, owner: str) -> str:
        """`value` sealed for `owner` (a subscription id): it opens only with the same owner."""
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, value.encode(), _ad(owner))
        return _PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def _open(self, value: str, owner: str) -> str:
        """The secret sealed in `value` for `owner`; SealError for anything else (plaintext included)."""
        if not value.startswith(_PREFIX):
            raise SealError("the stored secret is not sealed")
        return self._decrypt(value[len(_PREFIX) :], _ad(owner))

    def reseal(self, value: str, owner: str) -> str:
        """A value stored before secrets were bound to their owner (plaintext, or sealed:v1) sealed anew.

        Used once, when the store opens: after that every row holds a `sealed:v2:` value.
        """
        if value.startswith(_PREFIX):
            self._open(value, owner)  # already current: it must open where it is
            return value
        if value.startswith(_LEGACY_PREFIX):
            value = self._decrypt(value[len(_LEGACY_PREFIX) :], _LEGACY_AD)
        return self.seal(value, owner)

    def _decrypt(self, encoded: str, ad: bytes) -> str:
        try:
            raw = base64.urlsafe_b64decode(encoded)
            return self._aead.decrypt(raw[:12], raw[12:], ad).decode()
        except (InvalidTag, binascii.Error, ValueError):
            raise SealError("the stored secret does not open with this key for this subscription") from None
