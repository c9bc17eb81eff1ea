"""Standard Webhooks verify and sign, wrapped so that no header or body can turn into anything but a verdict."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Literal

Verdict = Literal["ok", "missing_headers", "invalid_signature", "timestamp_out_of_tolerance"]

_TIMESTAMP = re.compile(r"^[0-9]{1,10}$")  # up to year 2286: larger values cannot be a real send time
_MAX_ID_LEN = 256
_DIGEST_LEN = 32  # HMAC-SHA256
_SECRET_PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    """The HMAC key a Standard Webhooks secret stands for: the base64 after the optional `whsec_` prefix.

    Decoded the way the Standard Webhooks libraries decode it (missing padding tolerated, characters
    outside the alphabet skipped), so a signature made here verifies with theirs. An empty key is refused.
    """
    encoded = secret.removeprefix(_SECRET_PREFIX)
    key = base64.b64decode(encoded + "==", validate=False)
    if not key:
        raise ValueError("a webhook secret may not be empty")
    return key


@dataclass(frozen=True)
class Verification:
    verdict: Verdict
    message: str = ""


class Verifier:
    """Verifies webhook-id / webhook-timestamp / webhook-signature against one or more secrets (rotation).

    `standardwebhooks.Webhook.verify` raises ValueError / binascii.Error on malformed signature entries,
    UnicodeDecodeError on non-UTF-8 bodies and has a fixed 5-minute tolerance, so the headers are parsed
    here and the signature is the scheme's own: HMAC-SHA256 over "{id}.{timestamp}.{body}" keyed with
    `secret_key(secret)`. tests/test_signing.py holds it equal to the library's.
    """

    def __init__(self, secrets: tuple[str, ...] | list[str], tolerance: int) -> None:
        self._keyed = [_keyed(secret_key(secret)) for secret in secrets]
        self._tolerance = tolerance

    def verify(
        self, body: bytes, msg_id: str | None, timestamp: str | None, signature: str | None, now: float
    ) -> Verification:
        """Headers, then the timestamp, then the signature (the Standard Webhooks libraries' order): a stale
        message is reported stale whatever its signature holds."""
        if not msg_id or not timestamp or not signature:
            return Verification(
                "missing_headers", "webhook-id, webhook-timestamp and webhook-signature are required"
            )
        if len(msg_id) > _MAX_ID_LEN or not msg_id.isprintable():
            return Verification(
                "invalid_signature", f"webhook-id must be 1 to {_MAX_ID_LEN} printable UTF-8 characters"
            )
        if not _TIMESTAMP.match(timestamp.strip()):
            return Verification("invalid_signature", "webhook-timestamp is not a Unix time in seconds")
        ts = int(timestamp.strip())
        if abs(now - ts) > self._tolerance:
            return Verification(
                "timestamp_out_of_tolerance", f"webhook-timestamp is more than {self._tolerance}s from now"
            )
        candidates, problem = _parse_signatures(signature)
        if not candidates:
            return Verification("invalid_signature", problem)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return Verification(
                "invalid_signature", "body is not UTF-8, so it cannot carry a valid signature"
            )
        matched = False
        for keyed in self._keyed:
            expected = _digest(keyed, msg_id, ts, text)
            for candidate in candidates:
                matched = matched or hmac.compare_digest(expected, candidate)
            if matched:
                break
        if not matched:
            return Verification("invalid_signature", "no signature matches any configured secret")
        return Verification("ok")


def _keyed(key: bytes) -> hmac.HMAC:
    """HMAC-SHA256 keyed once; `.copy()` per message, which skips the digest lookup and key setup that
    OpenSSL 3's one-shot `hmac.digest` pays on every call."""
    return hmac.new(key, digestmod=hashlib.sha256)


def _digest(keyed: hmac.HMAC, msg_id: str, timestamp: int, body: str) -> bytes:
    """The Standard Webhooks signature bytes: HMAC-SHA256 over "{id}.{timestamp}.{body}"."""
    mac = keyed.copy()
    mac.update(f"{msg_id}.{timestamp}.{body}".encode())
    return mac.digest()


def _parse_signatures(header: str) -> tuple[list[bytes], str]:
    """The well-formed `v1,<base64 of 32 bytes>` entries, and (when there are none) what is wrong."""
    found: list[bytes] = []
    malformed = 0
    for entry in header.split(" "):
        version, sep, value = entry.partition(",")
        if version != "v1":
            continue  # another scheme's entry (e.g. v1a): not ours to judge
        try:  # strict: only the base64 alphabet and proper padding (b64decode's validate, in C)
            digest = binascii.a2b_base64(value, strict_mode=True) if sep and "," not in value else b""
        except (binascii.Error, ValueError):
            digest = b""
        if len(digest) == _DIGEST_LEN:
            found.append(digest)
        else:
            malformed += 1
    if found:
        return found, ""
    if malformed:
        return found, "webhook-signature is malformed: a v1 entry must be 'v1,' and 32 bytes in base64"
    return found, "webhook-signature holds no v1 entry (expected 'v1,<base64>')"


class Signer:
    """Signs outgoing deliveries; several secrets (during rotation) give several `v1,` entries.

    The signature is the one `standardwebhooks.Webhook.sign` makes (HMAC-SHA256 over
    "{id}.{timestamp}.{body}" keyed with `secret_key(secret)`), computed without
    building a datetime per call, from an HMAC keyed once per secret (a copy per message).
    tests/test_signing.py holds it equal to the library's own `sign` and checks it with its `verify`.
    """

    def __init__(self) -> None:
        self._keyed: dict[str, hmac.HMAC] = {}

    def _key(self, secret: str) -> hmac.HMAC:
        keyed = self._keyed.get(secret)
        if keyed is None:
            keyed = self._keyed[secret] = _keyed(secret_key(secret))
        return keyed

    def sign(self, msg_id: str, timestamp: int, body: str, secret: str) -> str:
        """One `v1,<base64>` entry, as `Webhook(secret).sign(msg_id, <timestamp as datetime>, body)`."""
        return "v1," + base64.b64encode(_digest(self._key(secret), msg_id, timestamp, body)).decode("ascii")

    def headers(self, msg_id: str, timestamp: int, body: str, secrets: list[str]) -> dict[str, str]:
        signature = " ".join(self.sign(msg_id, timestamp, body, secret) for secret in secrets)
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature,
            "content-type": "application/json",
        }
