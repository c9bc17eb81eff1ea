"""Secrets at rest: subscription signing secrets are sealed with AES-GCM under a key kept outside the database.

A leaked copy of the SQLite file alone does not reveal them. The key comes from SORAHOOK_SECRET_KEY or
is generated into the data dir (mode 0600). Opening a sealed value is cached, so the delivery path pays
for it once per secret, not once per delivery.
"""

from __future__ import annotations

import base64
import functools
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_PREFIX = "sealed:v1:"


class SecretBox:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the secret key must be 32 bytes")
        self._aead = AESGCM(key)
        self.open = functools.lru_cache(maxsize=4096)(self._open)

    def seal(self, value: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, value.encode(), b"sorahook-secret")
        return _PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def _open(self, value: str) -> str:
        if not value.startswith(_PREFIX):
            return value  # stored before sealing existed
        raw = base64.urlsafe_b64decode(value[len(_PREFIX) :])
        return self._aead.decrypt(raw[:12], raw[12:], b"sorahook-secret").decode()
