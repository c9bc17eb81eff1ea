"""Settings: one frozen dataclass built from the environment by one function; every error names its variable."""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

DEFAULT_RETRY_SCHEDULE = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)


class ConfigError(Exception):
    """A setting is wrong; the message is one line that names the variable."""


@dataclass(frozen=True)
class Settings:
    database_path: Path
    openai_api_keys: tuple[str, ...] = ()
    openai_base_url: str = "https://api.openai.com/v1"
    webhook_secrets: tuple[str, ...] = ()
    admin_token: str | None = None
    webhook_tolerance: int = 300
    max_body_bytes: int = 1_048_576
    retry_schedule: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE
    delivery_timeout: float = 10.0
    allow_private_targets: bool = False
    callback_secret: str | None = None
    reconcile_interval: float = 30.0
    reconcile_after: float = 120.0
    log_format: str = "json"
    log_level: str = "info"
    models: tuple[str, ...] = ("sora-2", "sora-2-pro")
    disable_after: float = 5 * 86400.0
    delivery_concurrency: int = 64
    per_subscription_concurrency: int = 8
    emulator: bool = False
    retention: float = 30 * 86400.0
    secret_key: bytes | None = None

    @property
    def data_dir(self) -> Path:
        return self.database_path.parent


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not value >= minimum or value != value or value == float("inf"):
        raise ConfigError(f"{name} must be a finite number >= {minimum}, got {raw!r}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _list(raw: str) -> tuple[str, ...]:
    return tuple(part for part in raw.replace(",", " ").split() if part)


def check_webhook_secret(name: str, secret: str) -> str:
    """A `whsec_` secret must carry non-empty base64 after the prefix."""
    if not secret.startswith("whsec_"):
        raise ConfigError(f"{name} must hold secrets starting with 'whsec_'")
    try:
        key = base64.b64decode(secret[len("whsec_") :] + "==", validate=False)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{name} holds a secret whose part after 'whsec_' is not base64") from None
    if not key:
        raise ConfigError(f"{name} holds an empty secret")
    return secret


def parse_database_url(url: str) -> Path:
    name = "SORAHOOK_DATABASE_URL"
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        raise ConfigError(f"{name}: PostgreSQL is not supported yet; use sqlite:///PATH")
    if not url.startswith("sqlite:///"):
        raise ConfigError(f"{name} must look like sqlite:///PATH, got {url!r}")
    path = url[len("sqlite:///") :]
    if not path:
        raise ConfigError(f"{name} has no path after sqlite:///")
    return Path(path)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from the environment (or a given mapping); raise ConfigError on the first bad value."""
    env = os.environ if env is None else env
    database_path = parse_database_url(
        env.get("SORAHOOK_DATABASE_URL", "").strip() or "sqlite:///data/sorahook.db"
    )

    base_url = env.get("OPENAI_BASE_URL", "").strip() or "https://api.openai.com/v1"
    if not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"OPENAI_BASE_URL must be an http(s) URL, got {base_url!r}")

    webhook_secrets = _list(env.get("OPENAI_WEBHOOK_SECRET", ""))
    for secret in webhook_secrets:
        check_webhook_secret("OPENAI_WEBHOOK_SECRET", secret)

    raw_schedule = env.get("SORAHOOK_RETRY_SCHEDULE", "").strip()
    schedule: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE
    if raw_schedule:
        try:
            schedule = tuple(float(part) for part in _list(raw_schedule))
        except ValueError:
            raise ConfigError(
                f"SORAHOOK_RETRY_SCHEDULE must be comma-separated seconds, got {raw_schedule!r}"
            ) from None
        if not schedule or any(not (0 <= s < float("inf")) for s in schedule):
            raise ConfigError("SORAHOOK_RETRY_SCHEDULE must hold at least one delay, each >= 0")

    callback_secret = env.get("SORAHOOK_CALLBACK_SECRET", "").strip() or None
    if callback_secret:
        check_webhook_secret("SORAHOOK_CALLBACK_SECRET", callback_secret)

    admin_token = env.get("SORAHOOK_ADMIN_TOKEN", "").strip() or None
    if admin_token is not None and len(admin_token) < 8:
        raise ConfigError("SORAHOOK_ADMIN_TOKEN must be at least 8 characters")

    log_format = env.get("SORAHOOK_LOG_FORMAT", "").strip().lower() or "json"
    if log_format not in ("json", "console"):
        raise ConfigError(f"SORAHOOK_LOG_FORMAT must be json or console, got {log_format!r}")
    log_level = env.get("SORAHOOK_LOG_LEVEL", "").strip().lower() or "info"
    if log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"SORAHOOK_LOG_LEVEL must be debug, info, warning or error, got {log_level!r}")

    models = _list(env.get("SORAHOOK_MODELS", "")) or ("sora-2", "sora-2-pro")

    secret_key: bytes | None = None
    raw_key = env.get("SORAHOOK_SECRET_KEY", "").strip()
    if raw_key:
        try:
            secret_key = base64.urlsafe_b64decode(raw_key + "=" * (-len(raw_key) % 4))
        except (binascii.Error, ValueError):
            secret_key = b""
        if len(secret_key) != 32:
            raise ConfigError("SORAHOOK_SECRET_KEY must be 32 bytes in URL-safe base64 (44 characters)")

    return Settings(
        database_path=database_path,
        openai_api_keys=_list(env.get("OPENAI_API_KEY", "")),
        openai_base_url=base_url.rstrip("/"),
        webhook_secrets=webhook_secrets,
        admin_token=admin_token,
        webhook_tolerance=_int(env, "SORAHOOK_WEBHOOK_TOLERANCE", 300, minimum=1),
        max_body_bytes=_int(env, "SORAHOOK_MAX_BODY_BYTES", 1_048_576, minimum=1024),
        retry_schedule=schedule,
        delivery_timeout=_float(env, "SORAHOOK_DELIVERY_TIMEOUT", 10.0, minimum=0.001),
        allow_private_targets=_bool(env, "SORAHOOK_ALLOW_PRIVATE_TARGETS", False),
        callback_secret=callback_secret,
        reconcile_interval=_float(env, "SORAHOOK_RECONCILE_INTERVAL", 30.0, minimum=0.01),
        reconcile_after=_float(env, "SORAHOOK_RECONCILE_AFTER", 120.0),
        log_format=log_format,
        log_level=log_level,
        models=models,
        disable_after=_float(env, "SORAHOOK_DISABLE_AFTER", 5 * 86400.0, minimum=1.0),
        delivery_concurrency=_int(env, "SORAHOOK_DELIVERY_CONCURRENCY", 64, minimum=1),
        per_subscription_concurrency=_int(env, "SORAHOOK_SUBSCRIPTION_CONCURRENCY", 8, minimum=1),
        emulator=_bool(env, "SORAHOOK_EMULATOR", False),
        retention=_float(env, "SORAHOOK_RETENTION_DAYS", 30.0, minimum=0.001) * 86400.0,
        secret_key=secret_key,
    )


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def _stored(path: Path, make: str) -> str:
    """Read a generated value from the data dir, or write `make` there (owner-only) and return it."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(make + "\n")
    return make


def with_generated_secrets(settings: Settings) -> tuple[Settings, list[str]]:
    """Fill the admin token, callback secret and (emulator mode) webhook secret from the data dir.

    Returns the completed settings and the names of values generated on this start.
    """
    generated: list[str] = []
    data_dir = settings.data_dir
    admin_token = settings.admin_token
    if admin_token is None:
        path = data_dir / "admin_token"
        if not path.exists():
            generated.append("SORAHOOK_ADMIN_TOKEN")
        admin_token = _stored(path, "sk_sorahook_" + secrets.token_urlsafe(24))
    callback_secret = settings.callback_secret
    if callback_secret is None:
        path = data_dir / "callback_secret"
        if not path.exists():
            generated.append("SORAHOOK_CALLBACK_SECRET")
        callback_secret = _stored(path, new_webhook_secret())
    secret_key = settings.secret_key
    if secret_key is None:
        path = data_dir / "secret_key"
        secret_key = base64.urlsafe_b64decode(
            _stored(path, base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
        )
    webhook_secrets = settings.webhook_secrets
    if not webhook_secrets and settings.emulator:
        path = data_dir / "emulator_webhook_secret"
        webhook_secrets = (_stored(path, new_webhook_secret()),)
    if not webhook_secrets:
        raise ConfigError("OPENAI_WEBHOOK_SECRET is required (one or more whsec_… secrets) unless --emulator")
    return (
        replace(
            settings,
            admin_token=admin_token,
            callback_secret=callback_secret,
            webhook_secrets=webhook_secrets,
        ),
        generated,
    )
