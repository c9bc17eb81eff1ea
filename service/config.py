"""Settings: one frozen dataclass built from the environment by one function; every error names its variable."""

from __future__ import annotations

import base64
import binascii
import difflib
import importlib.util
import os
import secrets
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypedDict

from service.models import DEFAULT_MODEL_TABLE, ModelsFileError, ModelTable, load_models_file
from service.pricing import DEFAULT_PRICE_TABLE, PriceError, PriceTable, load_price_file
from service.ssrf import ALLOW_LOOPBACK, ALLOW_NONE, ALLOW_VARIABLE, PrivateTargets

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
    allow_private_targets: PrivateTargets = ALLOW_NONE
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
    emulator_duration: float = 10.0
    retention: float = 30 * 86400.0
    secret_key: bytes | None = None
    prices: PriceTable = DEFAULT_PRICE_TABLE
    quota_key: str = "client"
    quota_concurrent: int | None = None
    quota_per_hour: int | None = None
    quota_daily_usd: float | None = None
    moderation: bool = False
    progress_interval: float = 0.0  # 0 = no progress polling
    progress_step: int = 25
    # issue 9: archiving finished videos' assets
    archive: bool = True
    archive_variants: tuple[str, ...] = ("video", "thumbnail")
    archive_storage: str = "local"  # local | s3
    s3_bucket: str | None = None
    s3_prefix: str = ""
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    # where `serve` listens, and the HTTP server's limits on clients (service/server.py)
    host: str = "127.0.0.1"
    port: int = 8000
    max_connections: int = 2048
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    max_header_bytes: int = 65536
    # the model table (SORAHOOK_MODELS_FILE) and how patient the OpenAI client is
    model_table: ModelTable = DEFAULT_MODEL_TABLE
    openai_timeout: float = 30.0
    openai_max_retries: int = 3
    # the operator console (service/ui): how long a signed-in session lasts
    ui_session_ttl: float = 8 * 3600.0

    # PostgreSQL (SORAHOOK_DATABASE_URL=postgresql://…): the store's URL, and this process's pool and limits.
    # `database_path` then only places the data dir (generated secrets, local archive), `data/` by default.
    postgres_url: str | None = None
    db_pool_size: int = 10
    db_statement_timeout: float = 30.0
    workers: int = 1  # `serve` processes sharing the port (SORAHOOK_WORKERS, serve --workers)

    @property
    def data_dir(self) -> Path:
        return self.database_path.parent

    @property
    def database_url(self) -> str:
        """The store's URL as `open_store` takes it (SORAHOOK_DATABASE_URL, normalised)."""
        return self.postgres_url or f"sqlite:///{self.database_path}"

    @property
    def database_name(self) -> str:
        """The store as a log line may show it: a SQLite path, or PostgreSQL's host and database (no password)."""
        if self.postgres_url is None:
            return str(self.database_path)
        parts = urllib.parse.urlsplit(self.postgres_url)
        return f"postgresql://{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"


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


def _limit(env: Mapping[str, str], name: str) -> int | None:
    """An optional whole-number limit: unset means no limit."""
    return _int(env, name, 0) if env.get(name, "").strip() else None


def _list(raw: str) -> tuple[str, ...]:
    return tuple(part for part in raw.replace(",", " ").split() if part)


def private_targets(env: Mapping[str, str], *, emulator: bool) -> PrivateTargets:
    """SORAHOOK_ALLOW_PRIVATE_TARGETS; unset, emulator mode allows loopback (a local subscriber) and nothing else."""
    raw = env.get(ALLOW_VARIABLE, "").strip()
    if not raw:
        return ALLOW_LOOPBACK if emulator else ALLOW_NONE
    try:
        return PrivateTargets.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{ALLOW_VARIABLE} {exc}") from None


def is_header_safe(value: str) -> bool:
    """Printable ASCII only: what an `Authorization` header can carry and compare byte for byte."""
    return all(" " <= ch <= "~" for ch in value)


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


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def check_postgres_url(url: str) -> str:
    """A PostgreSQL URL asyncpg can use, or ConfigError naming what is wrong (never echoing a password)."""
    name = "SORAHOOK_DATABASE_URL"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise ConfigError(f"{name} is not a valid postgresql://USER:PASS@HOST:PORT/DB URL") from None
    if not parts.path.strip("/"):
        raise ConfigError(f"{name} names no database (postgresql://USER:PASS@HOST:PORT/DB)")
    return url


def data_dir_of(url: str) -> Path:
    """Where generated secrets live for this store: beside a SQLite file, else `data/`."""
    return Path("data") if is_postgres_url(url) else parse_database_url(url).parent


def parse_database_url(url: str) -> Path:
    """The file of a `sqlite:///PATH` URL (ConfigError for anything else but a PostgreSQL URL's)."""
    name = "SORAHOOK_DATABASE_URL"
    if not url.startswith("sqlite:///"):
        raise ConfigError(
            f"{name} must look like sqlite:///PATH or postgresql://USER:PASS@HOST:PORT/DB, got {url!r}"
        )
    path = url[len("sqlite:///") :]
    if not path:
        raise ConfigError(f"{name} has no path after sqlite:///")
    return Path(path)


ARCHIVE_VARIANTS = ("video", "thumbnail", "spritesheet")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


class _ArchiveSettings(TypedDict):
    archive: bool
    archive_variants: tuple[str, ...]
    archive_storage: str
    s3_bucket: str | None
    s3_prefix: str
    s3_endpoint_url: str | None
    s3_region: str | None


def archive_settings(env: Mapping[str, str]) -> _ArchiveSettings:
    """SORAHOOK_ARCHIVE* and SORAHOOK_S3_*: where finished videos' assets are copied (issue 9)."""
    variants = _list(env.get("SORAHOOK_ARCHIVE_VARIANTS", "")) or ("video", "thumbnail")
    for variant in variants:
        if variant not in ARCHIVE_VARIANTS:
            raise ConfigError(
                f"SORAHOOK_ARCHIVE_VARIANTS must list some of {', '.join(ARCHIVE_VARIANTS)}, got {variant!r}"
            )
    storage = env.get("SORAHOOK_ARCHIVE_STORAGE", "").strip().lower() or "local"
    if storage not in ("local", "s3"):
        raise ConfigError(f"SORAHOOK_ARCHIVE_STORAGE must be local or s3, got {storage!r}")
    archive = _bool(env, "SORAHOOK_ARCHIVE", True)
    bucket = env.get("SORAHOOK_S3_BUCKET", "").strip() or None
    if archive and storage == "s3" and bucket is None:
        raise ConfigError("SORAHOOK_S3_BUCKET is required when SORAHOOK_ARCHIVE_STORAGE=s3")
    if archive and storage == "s3" and not _installed("aiobotocore"):
        raise ConfigError(
            "SORAHOOK_ARCHIVE_STORAGE=s3 needs the s3 extra, which is not installed: pip install 'sorahook[s3]'"
        )
    if bucket is not None and not (3 <= len(bucket) <= 63 and all(c.isalnum() or c in ".-_" for c in bucket)):
        raise ConfigError(
            f"SORAHOOK_S3_BUCKET must be a bucket name (3 to 63 letters, digits, . - _), got {bucket!r}"
        )
    prefix = env.get("SORAHOOK_S3_PREFIX", "").strip().strip("/")
    endpoint = env.get("SORAHOOK_S3_ENDPOINT_URL", "").strip() or None
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"SORAHOOK_S3_ENDPOINT_URL must be an http(s) URL, got {endpoint!r}")
    return {
        "archive": archive,
        "archive_variants": tuple(dict.fromkeys(variants)),
        "archive_storage": storage,
        "s3_bucket": bucket,
        "s3_prefix": f"{prefix}/" if prefix else "",
        "s3_endpoint_url": endpoint,
        "s3_region": env.get("SORAHOOK_S3_REGION", "").strip() or None,
    }


class _ServerSettings(TypedDict):
    host: str
    port: int
    max_connections: int
    header_timeout: float
    body_timeout: float
    max_header_bytes: int


def listen_host(host: str) -> str:
    """An address to listen on; `[::1]`, as a URL spells an IPv6 address, is read as `::1`."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def server_settings(env: Mapping[str, str]) -> _ServerSettings:
    """SORAHOOK_HOST/PORT and the HTTP server's limits on slow, large and numerous clients."""
    host = listen_host(env.get("SORAHOOK_HOST", "").strip() or "127.0.0.1")
    if any(c.isspace() or c in "/?#" for c in host):
        raise ConfigError(f"SORAHOOK_HOST must be an address or host name, got {host!r}")
    port = _int(env, "SORAHOOK_PORT", 8000)
    if port > 65535:
        raise ConfigError(f"SORAHOOK_PORT must be a port number (0-65535), got {port}")
    return {
        "host": host,
        "port": port,
        "max_connections": _int(env, "SORAHOOK_MAX_CONNECTIONS", 2048, minimum=1),
        "header_timeout": _float(env, "SORAHOOK_HEADER_TIMEOUT", 10.0, minimum=0.001),
        "body_timeout": _float(env, "SORAHOOK_BODY_TIMEOUT", 10.0, minimum=0.001),
        "max_header_bytes": _int(env, "SORAHOOK_MAX_HEADER_BYTES", 65536, minimum=1024),
    }


class EnvReader(Mapping[str, str]):
    """The environment, remembering which names were read: any SORAHOOK_* name never read is unknown."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self.read: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.read.add(name)
        return self._env[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._env)

    def __len__(self) -> int:
        return len(self._env)

    def unknown(
        self, prefix: str = "SORAHOOK_", also_known: Iterable[str] = ()
    ) -> list[tuple[str, str | None]]:
        """Each `prefix` variable set but never read, with the closest name that is read (or None)."""
        known = self.read | set(also_known)
        # compared without the prefix they all share, which would make any two names look alike
        tails = {name[len(prefix) :]: name for name in known if name.startswith(prefix)}
        unknown = sorted(name for name in self._env if name.startswith(prefix) and name not in known)
        return [
            (
                name,
                next((tails[t] for t in difflib.get_close_matches(name[len(prefix) :], tails, 1, 0.6)), None),
            )
            for name in unknown
        ]


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from the environment (or a given mapping); raise ConfigError on the first bad value."""
    env = os.environ if env is None else env
    database_url = env.get("SORAHOOK_DATABASE_URL", "").strip() or "sqlite:///data/sorahook.db"
    postgres_url = check_postgres_url(database_url) if is_postgres_url(database_url) else None
    database_path = Path("data/sorahook.db") if postgres_url else parse_database_url(database_url)
    workers = _int(env, "SORAHOOK_WORKERS", 1, minimum=1)
    if workers > 1 and postgres_url is None:
        raise ConfigError(
            f"SORAHOOK_WORKERS={workers} needs PostgreSQL: one SQLite file has one writer process"
            " (set SORAHOOK_DATABASE_URL=postgresql://…, or run one worker)"
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
    if admin_token is not None and not is_header_safe(admin_token):
        raise ConfigError("SORAHOOK_ADMIN_TOKEN must be printable ASCII (it is sent in an HTTP header)")

    log_format = env.get("SORAHOOK_LOG_FORMAT", "").strip().lower() or "json"
    if log_format not in ("json", "console"):
        raise ConfigError(f"SORAHOOK_LOG_FORMAT must be json or console, got {log_format!r}")
    log_level = env.get("SORAHOOK_LOG_LEVEL", "").strip().lower() or "info"
    if log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"SORAHOOK_LOG_LEVEL must be debug, info, warning or error, got {log_level!r}")

    model_table = DEFAULT_MODEL_TABLE
    models_file = env.get("SORAHOOK_MODELS_FILE", "").strip()
    if models_file:
        try:
            model_table = load_models_file(Path(models_file))
        except ModelsFileError as exc:
            raise ConfigError(f"SORAHOOK_MODELS_FILE {models_file!r} {exc}") from None
    models = _list(env.get("SORAHOOK_MODELS", "")) or model_table.names

    secret_key: bytes | None = None
    raw_key = env.get("SORAHOOK_SECRET_KEY", "").strip()
    if raw_key:
        try:
            secret_key = base64.urlsafe_b64decode(raw_key + "=" * (-len(raw_key) % 4))
        except (binascii.Error, ValueError):
            secret_key = b""
        if len(secret_key) != 32:
            raise ConfigError("SORAHOOK_SECRET_KEY must be 32 bytes in URL-safe base64 (44 characters)")

    prices = (
        DEFAULT_PRICE_TABLE
        if model_table is DEFAULT_MODEL_TABLE
        else PriceTable.from_mapping(model_table.prices())
    )
    prices_file = env.get("SORAHOOK_PRICES_FILE", "").strip()
    if prices_file:
        try:
            prices = load_price_file(Path(prices_file), model_table.prices())
        except PriceError as exc:
            raise ConfigError(f"SORAHOOK_PRICES_FILE {prices_file!r} {exc}") from None
    quota_key = env.get("SORAHOOK_QUOTA_KEY", "").strip() or "client"
    if len(quota_key) > 64 or '"' in quota_key:
        raise ConfigError("SORAHOOK_QUOTA_KEY must be a metadata key of 1 to 64 characters, without '\"'")
    daily_usd: float | None = None
    raw_usd = env.get("SORAHOOK_QUOTA_DAILY_USD", "").strip()
    if raw_usd:
        try:
            daily_usd = float(raw_usd)
        except ValueError:
            daily_usd = -1.0
        if not 0 <= daily_usd < float("inf"):
            raise ConfigError(
                f"SORAHOOK_QUOTA_DAILY_USD must be a number of US dollars >= 0, got {raw_usd!r}"
            )
    if env.get("SORAHOOK_PROGRESS_STEP", "").strip() and _int(env, "SORAHOOK_PROGRESS_STEP", 25) > 100:
        raise ConfigError("SORAHOOK_PROGRESS_STEP must be between 1 and 100 (progress points)")

    return Settings(
        database_path=database_path,
        postgres_url=postgres_url,
        db_pool_size=_int(env, "SORAHOOK_DB_POOL_SIZE", 10, minimum=1),
        db_statement_timeout=_float(env, "SORAHOOK_DB_STATEMENT_TIMEOUT", 30.0, minimum=0.001),
        workers=workers,
        openai_api_keys=_list(env.get("OPENAI_API_KEY", "")),
        openai_base_url=base_url.rstrip("/"),
        webhook_secrets=webhook_secrets,
        admin_token=admin_token,
        webhook_tolerance=_int(env, "SORAHOOK_WEBHOOK_TOLERANCE", 300, minimum=1),
        max_body_bytes=_int(env, "SORAHOOK_MAX_BODY_BYTES", 1_048_576, minimum=1024),
        retry_schedule=schedule,
        delivery_timeout=_float(env, "SORAHOOK_DELIVERY_TIMEOUT", 10.0, minimum=0.001),
        allow_private_targets=private_targets(env, emulator=_bool(env, "SORAHOOK_EMULATOR", False)),
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
        emulator_duration=_float(env, "SORAHOOK_EMULATOR_DURATION", 10.0, minimum=0.001),
        retention=_float(env, "SORAHOOK_RETENTION_DAYS", 30.0, minimum=0.001) * 86400.0,
        secret_key=secret_key,
        prices=prices,
        quota_key=quota_key,
        quota_concurrent=_limit(env, "SORAHOOK_QUOTA_CONCURRENT"),
        quota_per_hour=_limit(env, "SORAHOOK_QUOTA_PER_HOUR"),
        quota_daily_usd=daily_usd,
        moderation=_bool(env, "SORAHOOK_MODERATION", False),
        progress_interval=_float(env, "SORAHOOK_PROGRESS_INTERVAL", 0.0),
        progress_step=_int(env, "SORAHOOK_PROGRESS_STEP", 25, minimum=1),
        ui_session_ttl=_float(env, "SORAHOOK_UI_SESSION_TTL", 8 * 3600.0, minimum=1.0),
        **archive_settings(env),
        **server_settings(env),
        model_table=model_table,
        openai_timeout=_float(env, "SORAHOOK_OPENAI_TIMEOUT", 30.0, minimum=0.001),
        openai_max_retries=_int(env, "SORAHOOK_OPENAI_MAX_RETRIES", 3),
    )


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def _stored(path: Path, make: str) -> str:
    """Read a generated value from the data dir, or write `make` there (owner-only) and return it."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # the data dir: owner-only when made here
    # Written beside the final name and linked into place: when several processes start at once (replicas
    # on one data dir), exactly one link wins and the others read the value it wrote, whole.
    part = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(make + "\n")
    try:
        os.link(part, path)
    except FileExistsError:
        return path.read_text().strip()
    finally:
        part.unlink()
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
        stored = _stored(path, base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
        try:
            secret_key = base64.urlsafe_b64decode(stored + "=" * (-len(stored) % 4))
        except (binascii.Error, ValueError):
            secret_key = b""
        if len(secret_key) != 32:
            raise ConfigError(f"{path} must hold 32 bytes in URL-safe base64 (SORAHOOK_SECRET_KEY's form)")
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
            secret_key=secret_key,  # subscription secrets are sealed in every mode, never plaintext
        ),
        generated,
    )
