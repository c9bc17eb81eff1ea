"""The command line: serve, migrate, emulator, listen, send-test-webhook."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import httpx
import uvicorn
from starlette.routing import BaseRoute, Mount

from service.config import (
    ConfigError,
    EnvReader,
    check_webhook_secret,
    listen_host,
    load_settings,
    private_targets,
    with_generated_secrets,
)
from service.logs import configure_logging, uvicorn_log_config
from service.server import (
    ListenError,
    Refusals,
    ServerLimits,
    bind_socket,
    fit_descriptor_limit,
    limited_protocol,
    memory_trimmer,
    refusal_counter,
)
from service.signing import Signer
from service.ssrf import ALLOW_LOOPBACK, ALLOW_NONE, ALLOW_VARIABLE, PrivateTargets

log = logging.getLogger("sorahook")

# SORAHOOK_* names that commands other than `serve` read (`listen` finds the service with SORAHOOK_URL):
# set in a shell for those, they are not typos.
ENV_READ_ELSEWHERE = ("SORAHOOK_URL",)


def version() -> str:
    try:
        return importlib.metadata.version("sorahook")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


class _HelpFormatter(argparse.HelpFormatter):
    """One line per option that ends with its default (flags are off unless given)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or "default" in text or action.default is argparse.SUPPRESS:
            return text
        if action.required:
            return f"{text} (required)".strip()
        if action.nargs == 0:
            return f"{text} (default: off)".strip() if action.default is False else text
        if action.default is None:
            return f"{text} (default: none)".strip()
        return f"{text} (default: %(default)s)".strip()


class _Parser(argparse.ArgumentParser):
    """Every (sub)command's parser shows defaults: subparsers are made with the parent's class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port number (0-65535)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sorahook",
        description="A dependable relay for OpenAI webhooks. Settings come from SORAHOOK_* environment"
        " variables (see the README); `sorahook COMMAND --help` shows each command's options.",
    )
    parser.add_argument("--version", action="version", version=f"sorahook {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the service")
    serve.add_argument(
        "--host",
        type=listen_host,
        default=None,
        help="address to listen on (default: SORAHOOK_HOST, else 127.0.0.1)",
    )
    serve.add_argument(
        "--port", type=_port, default=None, help="port to listen on (default: SORAHOOK_PORT, else 8000)"
    )
    serve.add_argument(
        "--emulator",
        action="store_true",
        help="mount the Videos API emulator and use it as OpenAI (or SORAHOOK_EMULATOR=true)",
    )

    commands.add_parser("migrate", help="apply database migrations and exit")

    emulator = commands.add_parser("emulator", help="run the OpenAI Videos API emulator on its own")
    emulator.add_argument("--host", default="127.0.0.1", help="address to listen on")
    emulator.add_argument("--port", type=_port, default=8001, help="port to listen on")
    emulator.add_argument(
        "--webhook-url", required=True, metavar="URL", help="where the emulator sends its webhooks"
    )
    emulator.add_argument(
        "--webhook-secret", required=True, metavar="WHSEC", help="the whsec_… secret it signs them with"
    )
    emulator.add_argument(
        "--duration",
        type=_positive,
        default=10.0,
        metavar="S",
        help="seconds from a video's creation to its end",
    )
    emulator.add_argument(
        "--failure-rate", type=_rate, default=0.0, metavar="F", help="share of videos that fail, 0..1"
    )
    emulator.add_argument(
        "--drop-rate", type=_rate, default=0.0, metavar="F", help="share of webhooks never sent, 0..1"
    )
    emulator.add_argument(
        "--duplicate-rate", type=_rate, default=0.0, metavar="F", help="share of webhooks sent twice, 0..1"
    )
    emulator.add_argument(
        "--error-rate", type=_rate, default=0.0, metavar="F", help="share of API calls answered 429/5xx, 0..1"
    )

    listen = commands.add_parser(
        "listen",
        help="a local subscriber that verifies and prints events (SORAHOOK_URL, SORAHOOK_ADMIN_TOKEN)",
    )
    listen.add_argument("--port", type=_port, default=9000, help="port on 127.0.0.1 (default: 9000)")
    listen.add_argument(
        "--subscribe", action="store_true", help="subscribe through the admin API; Ctrl-C deletes it"
    )
    listen.add_argument(
        "--event-types",
        action="append",
        default=[],
        metavar="TYPES",
        help="event types to subscribe to, e.g. video.* (comma-separated or repeated; default all)",
    )
    listen.add_argument(
        "--secret",
        default=None,
        metavar="WHSEC",
        help="whsec_… to verify with when not subscribing (default: none)",
    )

    send = commands.add_parser("send-test-webhook", help="sign and send one OpenAI-style event")
    send.add_argument(
        "--url", required=True, metavar="URL", help="the receiver, e.g. http://127.0.0.1:8000/webhooks/openai"
    )
    send.add_argument("--secret", required=True, metavar="WHSEC", help="the whsec_… secret to sign with")
    send.add_argument("--type", default="video.completed", metavar="TYPE", help="the event type")
    send.add_argument(
        "--video-id", default=None, metavar="ID", help="data.id of the event (default: a new video_… id)"
    )
    return parser


def check_http_url(option: str, value: str) -> None:
    """An option's http(s) URL, parsed now: a malformed one is one line, not a traceback later."""
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, ValueError):
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(f"{option} must be an http(s) URL, got {value!r}")


def _fail(message: str) -> int:
    print(f"sorahook: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return serve(args)
        if args.command == "migrate":
            return migrate()
        if args.command == "emulator":
            return run_emulator(args)
        if args.command == "send-test-webhook":
            return send_test_webhook(args)
        if args.command == "listen":
            return run_listen(args)
    except (ConfigError, ListenError) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130
    return 2


def serve(args: argparse.Namespace) -> int:
    from service.app import create_app
    from service.emulator.mount import mounted_emulator

    env = EnvReader(os.environ)
    settings = load_settings(env)
    configure_logging(settings.log_format, settings.log_level)
    emulator_mode = bool(args.emulator or settings.emulator)
    if not emulator_mode and not settings.openai_api_keys and "api.openai.com" in settings.openai_base_url:
        raise ConfigError(
            "OPENAI_API_KEY is not set: set it, or pass --emulator to use the built-in emulator"
        )
    host = settings.host if args.host is None else args.host
    # Bound before anything starts: a taken address is one line, never a "ready" followed by an error.
    sock = bind_socket(host, settings.port if args.port is None else args.port)
    port = int(sock.getsockname()[1])
    _warn_unknown_env(env)
    self_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    self_url = f"http://[{self_host}]:{port}" if ":" in self_host else f"http://{self_host}:{port}"
    if emulator_mode:
        settings = replace(
            settings,
            emulator=True,
            openai_base_url=f"{self_url}/_emulator/v1",
            allow_private_targets=private_targets(os.environ, emulator=True),
        )
    settings, generated = with_generated_secrets(settings)
    extra_routes: list[BaseRoute] = []
    background: list[Callable[[], Awaitable[None]]] = []
    if emulator_mode:
        emulator, settings = mounted_emulator(settings, self_url, host)
        extra_routes.append(Mount("/_emulator", app=emulator.app))
        background.append(emulator.run)  # the mounted app's own lifespan does not run under Mount
        log.info(
            "emulator mode: no OpenAI key needed; videos are made by the built-in emulator",
            extra={"openai_base_url": settings.openai_base_url},
        )
        log.info("webhook secret for the emulator: %s", settings.webhook_secrets[0])
    _log_private_targets(settings.allow_private_targets, emulator_mode)
    # Printed once, on the start that generated it: never a token the operator supplied, never every start.
    if "SORAHOOK_ADMIN_TOKEN" in generated:
        log.info("admin token (Authorization: Bearer …): %s", settings.admin_token)
        log.info("the admin token was generated and saved in %s", settings.data_dir / "admin_token")
    app = create_app(settings, extra_routes=extra_routes, background=background)
    limits = fit_descriptor_limit(
        ServerLimits(
            max_connections=settings.max_connections,
            header_timeout=settings.header_timeout,
            body_timeout=settings.body_timeout,
            max_header_bytes=settings.max_header_bytes,
        )
    )
    refusals = Refusals(
        refusal_counter(app.state.runtime.metrics.connections_refused), after_burst=memory_trimmer()
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=limited_protocol(limits, refusals),
        log_config=uvicorn_log_config(settings.log_level),
        timeout_graceful_shutdown=10,
        server_header=False,
    )
    log.info("listening", extra={"url": self_url})
    # uvicorn shuts down gracefully on SIGTERM and then re-raises the signal to the previous handler;
    # a no-op handler there lets a clean shutdown end with exit status 0 (what systemd and k8s expect).
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def _warn_unknown_env(env: EnvReader) -> None:
    for name, closest in env.unknown(also_known=ENV_READ_ELSEWHERE):
        hint = f"; did you mean {closest}?" if closest else ""
        log.warning("%s is not a sorahook setting and is ignored%s", name, hint, extra={"variable": name})


def _log_private_targets(policy: PrivateTargets, emulator_mode: bool) -> None:
    """Say at start which non-public subscriber addresses this process will deliver to."""
    if emulator_mode and policy is ALLOW_LOOPBACK:  # the default, not a value someone set
        log.info(
            "emulator mode: loopback subscriber URLs (127.0.0.0/8, ::1, localhost) are allowed;"
            " private networks are not (set %s to change this)",
            ALLOW_VARIABLE,
        )
    elif policy is not ALLOW_NONE:
        log.info("subscriber URLs may use non-public addresses: %s (%s)", policy.describe(), ALLOW_VARIABLE)


def migrate() -> int:
    from service.store import migrate_store

    env = EnvReader(os.environ)
    settings = load_settings(env)
    configure_logging(settings.log_format, settings.log_level)
    _warn_unknown_env(env)
    applied = asyncio.run(migrate_store(settings.database_url, time.time()))
    if applied:
        print(f"applied migrations {', '.join(map(str, applied))} to {settings.database_name}")
    else:
        print(f"{settings.database_name} is up to date")
    return 0


def run_emulator(args: argparse.Namespace) -> int:
    from service.emulator import Emulator, EmulatorConfig
    from service.emulator.mount import warn_if_exposed

    check_webhook_secret("--webhook-secret", args.webhook_secret)
    check_http_url("--webhook-url", args.webhook_url)
    configure_logging("console", "info")
    try:
        config = EmulatorConfig(
            webhook_url=args.webhook_url,
            webhook_secret=args.webhook_secret,
            duration=args.duration,
            failure_rate=args.failure_rate,
            drop_rate=args.drop_rate,
            duplicate_rate=args.duplicate_rate,
            error_rate=args.error_rate,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    warn_if_exposed(args.host)
    emulator = Emulator(config)
    log.info("emulator: OpenAI Videos API at http://%s:%s/v1", args.host, args.port)
    uvicorn.run(emulator.app, host=args.host, port=args.port, log_config=uvicorn_log_config())
    return 0


def run_listen(args: argparse.Namespace) -> int:
    from service.listen import ListenOptions, run

    event_types = tuple(t for item in args.event_types for t in item.replace(",", " ").split())
    options = ListenOptions(
        port=args.port, subscribe=args.subscribe, event_types=event_types, secret=args.secret
    )
    return run(options, sys.stdout, sys.stderr)


def send_test_webhook(args: argparse.Namespace) -> int:
    check_webhook_secret("--secret", args.secret)
    check_http_url("--url", args.url)
    now = int(time.time())
    resource_id = args.video_id or f"video_{secrets.token_hex(12)}"
    event: dict[str, Any] = {
        "id": f"evt_{secrets.token_hex(12)}",
        "object": "event",
        "created_at": now,
        "type": args.type,
        "data": {"id": resource_id},
    }
    body = json.dumps(event, separators=(",", ":"))
    headers = Signer().headers(f"wh_{secrets.token_hex(12)}", now, body, [args.secret])
    try:
        response = httpx.post(args.url, content=body.encode(), headers=headers, timeout=10.0)
    except httpx.HTTPError as exc:
        return _fail(f"could not send to {args.url}: {exc}")
    print(f"{response.status_code} {response.text.strip()}")
    return 0 if response.is_success else 1
