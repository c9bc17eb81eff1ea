"""Console sign-in sessions: held server-side in memory, each with an expiry and its own CSRF token.

Held in memory rather than signed into the cookie: signing out (or a restart) really ends a session,
there is no signing key to manage or rotate, and one process serves the console. The cookie holds only
a random key; the store of sessions is keyed by its SHA-256, so a lookup never compares the key itself.
Each session also has a short public id for the audit log, which is not the cookie and not the token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

COOKIE = "sorahook_session"


@dataclass
class Session:
    id: str  # public: named in audit log lines
    csrf: str
    expires_at: float
    flashes: list[tuple[str, str]] = field(default_factory=list)  # (level, text) shown once

    def flash(self, text: str, level: str = "ok") -> None:
        self.flashes.append((level, text))

    def take_flashes(self) -> list[tuple[str, str]]:
        out, self.flashes = self.flashes, []
        return out

    def csrf_ok(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.csrf.encode())


class Sessions:
    """Sign-in sessions by cookie key; an expired one is gone the first time it is looked up."""

    def __init__(self, token: str, ttl: float, now: Callable[[], float]) -> None:
        self._token = token.encode()
        self.ttl = ttl
        self._now = now
        self._by_digest: dict[str, Session] = {}

    def token_ok(self, given: str) -> bool:
        """Constant-time comparison with the admin token."""
        return hmac.compare_digest(given.strip().encode(), self._token)

    def create(self) -> tuple[str, Session]:
        """A new session and the cookie key that names it."""
        now = self._now()
        for digest in [d for d, s in self._by_digest.items() if s.expires_at <= now]:
            del self._by_digest[digest]
        key = secrets.token_urlsafe(32)
        session = Session(
            id=f"ses_{secrets.token_hex(6)}", csrf=secrets.token_urlsafe(32), expires_at=now + self.ttl
        )
        self._by_digest[_digest(key)] = session
        return key, session

    def get(self, key: str | None) -> Session | None:
        if not key:
            return None
        digest = _digest(key)
        session = self._by_digest.get(digest)
        if session is None:
            return None
        if session.expires_at <= self._now():
            del self._by_digest[digest]
            return None
        return session

    def end(self, key: str | None) -> None:
        if key:
            self._by_digest.pop(_digest(key), None)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
