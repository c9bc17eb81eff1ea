"""The command line a new user meets: help and version, where serve listens, typos in the environment, logs,
what `make run` and `make test` install, and the s3 extra."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.cli import build_parser, main
from service.config import ConfigError, EnvReader, load_settings, new_webhook_secret
from service.logs import ConsoleFormatter, JsonFormatter
from tests.support import ROOT, free_port


def _run(args: list[str], env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "SORAHOOK_DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'sorahook.db'}",
        "SORAHOOK_ADMIN_TOKEN": "test-admin-token",
        "SORAHOOK_LOG_FORMAT": "console",
        "OPENAI_WEBHOOK_SECRET": new_webhook_secret(),
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        **extra,
    }


# --- help and version ------------------------------------------------------------------------------------


def _subcommands() -> dict[str, Any]:
    parser = build_parser()
    [commands] = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return dict(commands.choices)  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_each_commands_help_gives_every_option_a_line_with_its_default(command: str) -> None:
    parser = _subcommands()[command]
    text = re.sub(r"\s+", " ", parser.format_help().split("options:", 1)[1])
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        flag = action.option_strings[-1]
        entry = text.split(f" {flag}", 1)
        assert len(entry) == 2, f"{command} {flag} is not in the help"
        described = entry[1].split(" --", 1)[0]
        assert "default" in described or "(required)" in described, f"{command} {flag}: {described!r}"


def test_top_level_help_lists_the_commands_and_version_is_printed() -> None:
    result = _run(["--help"], {})
    assert result.returncode == 0
    for command in _subcommands():
        assert command in result.stdout
    assert "--version" in result.stdout
    version = _run(["--version"], {})
    assert version.returncode == 0 and re.fullmatch(r"sorahook \S+\n", version.stdout)


def test_serve_help_names_the_env_defaults() -> None:
    result = _run(["serve", "--help"], {})
    assert result.returncode == 0
    assert "SORAHOOK_HOST" in result.stdout and "127.0.0.1" in result.stdout
    assert "SORAHOOK_PORT" in result.stdout and "8000" in result.stdout


# --- where serve listens ---------------------------------------------------------------------------------


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "service", *args],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=out,
        )


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise AssertionError(f"not healthy: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_serve_listens_where_sorahook_host_and_port_say_and_flags_override_them(tmp_path: Path) -> None:
    env_port, flag_port = free_port(), free_port()
    env = _env(tmp_path, SORAHOOK_HOST="127.0.0.1", SORAHOOK_PORT=str(env_port))
    log = tmp_path / "serve.log"
    proc = _start(["serve"], env, log)
    try:
        _wait_healthy(f"http://127.0.0.1:{env_port}", proc, log)
        assert f"url=http://127.0.0.1:{env_port}" in log.read_text()  # the console log keeps the URL
    finally:
        _stop(proc)
    proc = _start(["serve", "--port", str(flag_port)], env, log)
    try:
        _wait_healthy(f"http://127.0.0.1:{flag_port}", proc, log)
    finally:
        _stop(proc)


@pytest.mark.slow
def test_a_taken_port_is_one_clear_line_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run(["serve", "--emulator"], _env(tmp_path, SORAHOOK_PORT=str(port)))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"127.0.0.1:{port}" in lines[0] and "SORAHOOK_PORT" in lines[0] and "--port" in lines[0]
    assert "sorahook ready" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SORAHOOK_PORT", "eighty"),
        ("SORAHOOK_PORT", "70000"),
        ("SORAHOOK_HOST", "local host"),
        ("SORAHOOK_MAX_CONNECTIONS", "0"),
        ("SORAHOOK_HEADER_TIMEOUT", "soon"),
        ("SORAHOOK_BODY_TIMEOUT", "-1"),
        ("SORAHOOK_MAX_HEADER_BYTES", "12"),
    ],
)
def test_bad_server_settings_name_their_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings({name: value})


@pytest.mark.parametrize("token", ["tökén-123456", "abc\x01defghij", "line\nbreak-token"])
def test_an_admin_token_no_http_header_can_carry_is_refused_at_start(token: str) -> None:
    # Sent as `Authorization: Bearer …`, such a token could never match: refuse it with one line.
    with pytest.raises(ConfigError, match="SORAHOOK_ADMIN_TOKEN"):
        load_settings({"SORAHOOK_ADMIN_TOKEN": token})


def test_a_bracketed_ipv6_host_is_read_as_the_address() -> None:
    # [::1] is how a URL spells it; the listening socket wants ::1.
    assert load_settings({"SORAHOOK_HOST": "[::1]"}).host == "::1"
    assert build_parser().parse_args(["serve", "--host", "[::1]"]).host == "::1"


def test_server_settings_defaults_follow_the_contract() -> None:
    settings = load_settings({})
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.max_connections == 2048 and settings.max_header_bytes == 65536
    assert settings.header_timeout == 10.0 and settings.body_timeout == 10.0


# --- unknown SORAHOOK_* variables ------------------------------------------------------------------------


def test_unknown_variables_are_named_with_the_closest_known_one() -> None:
    env = EnvReader(
        {
            "SORAHOOK_RETRY_SCHEDUEL": "1,2",
            "SORAHOOK_PROT": "8001",
            "SORAHOOK_ZZZ": "1",
            "SORAHOOK_PORT": "8002",
            "SORAHOOK_URL": "http://127.0.0.1:8000",
            "OTHER": "x",
        }
    )
    load_settings(env)
    assert env.unknown(also_known=["SORAHOOK_URL"]) == [
        ("SORAHOOK_PROT", "SORAHOOK_PORT"),
        ("SORAHOOK_RETRY_SCHEDUEL", "SORAHOOK_RETRY_SCHEDULE"),
        ("SORAHOOK_ZZZ", None),
    ]


@pytest.mark.slow
def test_a_typo_in_the_environment_is_a_warning_at_start(tmp_path: Path) -> None:
    result = _run(["migrate"], _env(tmp_path, SORAHOOK_DELIVERY_TIMEUOT="3", SORAHOOK_URL="http://x"))
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stderr.splitlines() if "not a sorahook setting" in line]
    assert "SORAHOOK_DELIVERY_TIMEUOT" in line and "did you mean SORAHOOK_DELIVERY_TIMEOUT?" in line
    assert "SORAHOOK_URL" not in result.stderr  # read by `sorahook listen`, not a typo


# --- logs ------------------------------------------------------------------------------------------------


def _record(**extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("sorahook", logging.INFO, __file__, 1, "listening", (), None)
    record.__dict__.update(extra)
    return record


def test_the_console_format_keeps_every_structured_field_of_the_json_format() -> None:
    extra = {"url": "http://127.0.0.1:8000", "job_id": "job_1", "reason": "a b", "count": 3, "empty": ""}
    record = _record(**extra)
    line = ConsoleFormatter().format(record)
    for key in json.loads(JsonFormatter().format(record)):
        if key not in ("ts", "level", "logger", "msg"):
            assert f" {key}=" in line, key
    assert "listening job_id=job_1 url=http://127.0.0.1:8000" in line  # ids first
    assert 'reason="a b"' in line and "count=3" in line and 'empty=""' in line


def test_the_console_format_keeps_the_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("sorahook", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert "ValueError: boom" in ConsoleFormatter().format(record)


# --- the s3 extra ----------------------------------------------------------------------------------------

S3_ENV = {"SORAHOOK_ARCHIVE_STORAGE": "s3", "SORAHOOK_S3_BUCKET": "videos"}


def test_s3_storage_without_the_s3_extra_stops_start_up_with_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings(S3_ENV).archive_storage == "s3"  # installed here (the dev extras include it)
    monkeypatch.setitem(sys.modules, "aiobotocore", None)  # what an install without the extra looks like
    with pytest.raises(ConfigError, match=r"SORAHOOK_ARCHIVE_STORAGE=s3 .*sorahook\[s3\]"):
        load_settings(S3_ENV)
    assert load_settings({**S3_ENV, "SORAHOOK_ARCHIVE": "false"}).archive is False  # not archiving: no need


@pytest.mark.slow
def test_serve_with_s3_and_no_extra_is_one_clear_line(tmp_path: Path) -> None:
    code = "import sys; sys.modules['aiobotocore'] = None; from service.cli import main; sys.exit(main())"
    result = subprocess.run(
        [sys.executable, "-c", code, "serve", "--port", str(free_port())],
        cwd=ROOT,
        env={**os.environ, **_env(tmp_path, **S3_ENV)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "sorahook[s3]" in lines[0] and "Traceback" not in result.stderr


# --- make run / make test --------------------------------------------------------------------------------


def _make(*args: str, **env: str) -> str:
    result = subprocess.run(
        ["make", "-n", "-B", *args],
        cwd=ROOT,
        env={**{k: v for k, v in os.environ.items() if k not in ("HOST", "PORT")}, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_make_run_installs_the_runtime_only_and_make_test_the_dev_extras() -> None:
    run = _make("run")
    assert re.search(r"pip install .*-e \.(\s|$)", run) and "[dev]" not in run
    test = _make("test")
    assert "'.[dev]'" in test and "pytest" in test


def test_make_run_passes_host_and_port_from_its_command_line_only() -> None:
    assert "--host 0.0.0.0 --port 8001" in _make("run", "PORT=8001", "HOST=0.0.0.0")
    # PORT or HOST exported by a shell or platform for something else do not move the service
    from_env = _make("run", PORT="3000", HOST="box.example")
    assert "--port" not in from_env and "--host" not in from_env


def test_make_screenshots_installs_what_it_runs_with_first() -> None:
    # bench.screenshots drives Chromium through playwright, one of the dev extras.
    shots = _make("screenshots")
    assert "'.[dev]'" in shots and "bench.screenshots" in shots


@pytest.mark.parametrize("url", ["http://[::1", "http://127.0.0.1:99999/webhooks/openai"])
def test_send_test_webhook_to_a_malformed_url_is_one_line(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["send-test-webhook", "--url", url, "--secret", new_webhook_secret()])
    err = capsys.readouterr().err
    assert code == 2 and url in err and len(err.strip().splitlines()) == 1


def test_emulator_with_a_malformed_webhook_url_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "emulator",
        "--port",
        "0",
        "--webhook-url",
        "http://[::1",
        "--webhook-secret",
        new_webhook_secret(),
    ]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and "--webhook-url" in err and len(err.strip().splitlines()) == 1
