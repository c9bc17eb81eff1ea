"""Robustness round 2 (the receiver's, the emulator's and the secrets' side): each finding, proved."""

from __future__ import annotations

import base64
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.clock import ManualClock
from service.config import load_settings, with_generated_secrets
from service.secretbox import SealError, SecretBox
from service.store.sqlite import SqliteStore
from tests.support import auth

pytestmark = pytest.mark.anyio

KEY = b"s" * 32


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- subscription secrets sealed by default -------------------------------------------------------------


def test_generated_secret_key_reaches_the_settings(tmp_path: Path) -> None:
    env = {
        "SORAHOOK_DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'sorahook.db'}",
        "OPENAI_WEBHOOK_SECRET": "whsec_" + base64.b64encode(b"x" * 24).decode(),
    }
    settings, _ = with_generated_secrets(load_settings(env))
    stored = (tmp_path / "data" / "secret_key").read_text().strip()
    assert settings.secret_key == base64.urlsafe_b64decode(stored)
    assert len(settings.secret_key) == 32
    assert _mode(tmp_path / "data") == 0o700
    assert _mode(tmp_path / "data" / "secret_key") == 0o600
    again, _ = with_generated_secrets(load_settings(env))
    assert again.secret_key == settings.secret_key  # the same key on every start


def test_a_damaged_secret_key_file_is_one_clear_error(tmp_path: Path) -> None:
    from service.config import ConfigError

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "secret_key").write_text("tooshort\n")
    env = {
        "SORAHOOK_DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'sorahook.db'}",
        "OPENAI_WEBHOOK_SECRET": "whsec_" + base64.b64encode(b"x" * 24).decode(),
    }
    with pytest.raises(ConfigError, match="secret_key"):
        with_generated_secrets(load_settings(env))


@pytest.mark.slow
def test_a_default_service_stores_subscription_secrets_sealed(tmp_path: Path, service_process: Any) -> None:
    """No SORAHOOK_SECRET_KEY anywhere: the database still never holds the secret the API returned."""
    env = {
        "SORAHOOK_DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'sorahook.db'}",
        "SORAHOOK_ADMIN_TOKEN": "test-admin-token",
        "SORAHOOK_ALLOW_PRIVATE_TARGETS": "true",
        "SORAHOOK_LOG_FORMAT": "console",
    }
    assert "SORAHOOK_SECRET_KEY" not in os.environ
    svc = service_process(env, emulator=True)
    svc.start()
    created = httpx.post(
        f"{svc.url}/v1/subscriptions", headers=auth(), json={"url": "http://127.0.0.1:9/hook"}
    ).json()
    secret = created["secret"]
    assert secret.startswith("whsec_")
    assert httpx.get(f"{svc.url}/v1/subscriptions/{created['id']}", headers=auth()).json()["secret"] == secret
    db = tmp_path / "data" / "sorahook.db"
    stored = sqlite3.connect(db).execute("SELECT secret FROM subscriptions").fetchone()[0]
    assert stored != secret and secret not in stored and stored.startswith("sealed:v2:")
    assert _mode(tmp_path / "data") == 0o700
    for name in ("sorahook.db", "sorahook.db-wal", "sorahook.db-shm"):
        assert _mode(tmp_path / "data" / name) == 0o600, name
    svc.stop()


async def _subscribe(store: SqliteStore, secret: str = "whsec_AAAA") -> str:
    sub = await store.create_subscription(
        url="http://sub.example/hook", event_types=None, description=None, secret=secret, ordered=False
    )
    return sub.id


async def test_plaintext_and_unbound_rows_are_sealed_when_the_store_opens(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    store = await SqliteStore.open(path, clock=ManualClock())  # no box: rows written as an old version did
    plain = await _subscribe(store, "whsec_cGxhaW4=")
    old = await _subscribe(store, "whsec_b2xk")
    await store.aclose()
    # A row sealed the way earlier versions did (AES-GCM, a constant as associated data).
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(12)
    legacy = (
        "sealed:v1:"
        + base64.urlsafe_b64encode(
            nonce + AESGCM(KEY).encrypt(nonce, b"whsec_b2xk", b"sorahook-secret")
        ).decode()
    )
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE subscriptions SET secret = ? WHERE id = ?", (legacy, old))

    store = await SqliteStore.open(path, clock=ManualClock(), box=SecretBox(KEY))
    try:
        assert (await store.get_subscription(plain)).secret == "whsec_cGxhaW4="  # type: ignore[union-attr]
        assert (await store.get_subscription(old)).secret == "whsec_b2xk"  # type: ignore[union-attr]
    finally:
        await store.aclose()
    rows = dict(sqlite3.connect(path).execute("SELECT id, secret FROM subscriptions").fetchall())
    assert all(value.startswith("sealed:v2:") for value in rows.values())
    assert "whsec_cGxhaW4=" not in rows[plain]


async def test_a_sealed_secret_moved_to_another_row_does_not_open(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    store = await SqliteStore.open(path, clock=ManualClock(), box=SecretBox(KEY))
    try:
        victim = await _subscribe(store, "whsec_dmljdGlt")
        thief = await _subscribe(store, "whsec_dGhpZWY=")
        with sqlite3.connect(path) as conn:
            sealed = conn.execute("SELECT secret FROM subscriptions WHERE id = ?", (victim,)).fetchone()[0]
            conn.execute("UPDATE subscriptions SET secret = ? WHERE id = ?", (sealed, thief))
        assert (await store.get_subscription(thief)).secret == ""  # type: ignore[union-attr]
        assert (await store.get_subscription(victim)).secret == "whsec_dmljdGlt"  # type: ignore[union-attr]
        assert await store.enqueue_test(thief) is not None
        claimed = await store.claim_deliveries(10, 30.0)
        assert claimed == []  # never signed with the other row's secret, never sent unsigned
        delivery = (
            sqlite3.connect(path)
            .execute("SELECT status, last_error FROM deliveries WHERE subscription_id = ?", (thief,))
            .fetchone()
        )
        assert delivery[0] == "dead" and "SORAHOOK_SECRET_KEY" in delivery[1]
    finally:
        await store.aclose()


def test_secretbox_binds_the_owner() -> None:
    box = SecretBox(KEY)
    sealed = box.seal("whsec_x", "sub_a")
    assert box.open(sealed, "sub_a") == "whsec_x"
    with pytest.raises(SealError):
        box.open(sealed, "sub_b")
    with pytest.raises(SealError):
        box.open("whsec_x", "sub_a")  # plaintext is not accepted once the store has sealed every row
    with pytest.raises(SealError):
        SecretBox(b"o" * 32).open(sealed, "sub_a")


async def test_an_existing_world_readable_database_is_narrowed(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    sqlite3.connect(path).close()
    path.chmod(0o644)
    store = await SqliteStore.open(path, clock=ManualClock(), box=SecretBox(KEY))
    await store.aclose()
    assert _mode(path) == 0o600
