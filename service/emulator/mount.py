"""The emulator as `serve --emulator` mounts it: behind the admin token, and a warning when it is exposed."""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import replace

from service.config import ConfigError, Settings
from service.emulator.app import Emulator, EmulatorConfig

log = logging.getLogger("sorahook.emulator")


def is_loopback(host: str) -> bool:
    """Whether listening on `host` keeps the server on this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def warn_if_exposed(host: str) -> None:
    if not is_loopback(host):
        log.warning(
            "emulator mode is listening on %s, a non-loopback address: other machines can reach the emulator"
            " (its routes need the admin token); listen on 127.0.0.1 unless you mean it",
            host,
            extra={"host": host},
        )


def mounted_emulator(settings: Settings, self_url: str, host: str) -> tuple[Emulator, Settings]:
    """The emulator to mount at /_emulator, and the settings that make sorahook its client.

    Its API (`/_emulator/v1/...`) takes the admin token as its API key (and any OPENAI_API_KEY), so a
    stranger cannot make it send validly signed webhooks into sorahook; the OpenAI SDK pointed at it passes
    the admin token as `api_key`. Its control routes (`/_emulator/_control/...`) need the admin token.
    """
    token = settings.admin_token
    if token is None:
        raise ConfigError("SORAHOOK_ADMIN_TOKEN must be resolved before the emulator is mounted")
    try:
        emulator = Emulator(
            EmulatorConfig(
                webhook_url=f"{self_url}/webhooks/openai",
                webhook_secret=settings.webhook_secrets[0],
                duration=settings.emulator_duration,
                api_keys=(token, *settings.openai_api_keys),
                control_token=token,
            )
        )
    except ValueError as exc:
        raise ConfigError(f"SORAHOOK_EMULATOR_DURATION: {exc}") from None
    if not settings.openai_api_keys:
        settings = replace(settings, openai_api_keys=(token,))
    warn_if_exposed(host)
    return emulator, settings
