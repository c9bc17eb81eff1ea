"""`sorahook listen`: the README walk-through against real processes, and the listener's own behaviour."""

from __future__ import annotations

import asyncio
import io
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from service.cli import main
from service.config import new_webhook_secret
from service.listen import ListenOptions, describe_event, listen
from tests.support import ROOT, auth, free_port, signed_webhook

# Settings a developer's shell might carry that would change what the walk-through does.
_STRIPPED = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_WEBHOOK_SECRET",
    "SORAHOOK_ADMIN_TOKEN",
    "SORAHOOK_ALLOW_PRIVATE_TARGETS",
    "SORAHOOK_URL",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)


class Lines:
    """A child process's output read line by line on a thread, so a test can wait for a line with a limit."""

    def __init__(self, stream: IO[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, *needles: str, timeout: float = 30.0) -> str:
        for line in self.seen:
            if all(n in line for n in needles):
                return line
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line with {needles} in:\n" + "\n".join(self.seen)) from None
            if line is None:
                raise AssertionError(f"output ended without {needles}:\n" + "\n".join(self.seen))
            self.seen.append(line)
            if all(n in line for n in needles):
                return line

    def rest(self) -> list[str]:
        while (line := self._queue.get(timeout=10)) is not None:
            self.seen.append(line)
        return self.seen


@pytest.mark.slow
def test_the_readme_walk_through_runs_against_real_processes(tmp_path: Path, service_process: Any) -> None:
    # `make run` (no key: emulator mode), then `sorahook listen --subscribe` in a second terminal, then a job
    # created with curl; everything on loopback, nothing needs a network. The admin token is not given to
    # listen: it reads the one the service generated in its data directory, as a new user's would.
    env = {
        "SORAHOOK_DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'sorahook.db'}",
        "SORAHOOK_EMULATOR_DURATION": "0.5",
        "SORAHOOK_LOG_FORMAT": "console",
    }
    svc = service_process(env, emulator=True)
    for name in _STRIPPED:
        svc.env.pop(name, None)
    svc.start()
    assert "loopback subscriber URLs" in svc.log.read_text()  # the start-up log says loopback is allowed
    token = (tmp_path / "data" / "admin_token").read_text().strip()

    listen_env = {**svc.env, "SORAHOOK_URL": svc.url}
    port = free_port()
    command = [sys.executable, "-m", "service", "listen", "--subscribe", "--port", str(port)]
    proc = subprocess.Popen(
        [*command, "--event-types", "video.*"],
        cwd=ROOT,
        env=listen_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out = Lines(proc.stdout)  # type: ignore[arg-type]
        ready = out.wait_for("Subscribed", f"127.0.0.1:{port}")
        sub_id = ready.split()[1]
        assert sub_id.startswith("sub_")
        headers = auth(token)
        created = httpx.post(
            f"{svc.url}/v1/jobs",
            json={"prompt": "a red fox in the snow", "seconds": 4, "metadata": {"client": "demo"}},
            headers={**headers, "Idempotency-Key": "my-first-video"},
        )
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        queued = out.wait_for("video.queued", job_id, "queued", "verified")
        completed = out.wait_for("video.completed", job_id, "completed", "verified")
        assert queued.split()[0].count(":") == 2 and completed.split()[-1].startswith("evt_")
        assert not [line for line in out.seen if "REJECTED" in line]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        lines = out.rest()
        assert any(line.startswith(f"Deleted subscription {sub_id}") for line in lines), lines
        gone = httpx.get(f"{svc.url}/v1/subscriptions/{sub_id}", headers=headers)
        assert gone.status_code == 404
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    svc.stop()


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SORAHOOK_TEST_NO_NETWORK") == "1", reason="already inside the namespace")
def test_the_walk_through_needs_no_network() -> None:
    # The same walk-through inside a new network namespace that has nothing but loopback (no DNS, no route
    # out), where unprivileged namespaces are available.
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if (
        unshare is None
        or ip is None
        or subprocess.run([unshare, "-rn", "true"], capture_output=True).returncode
    ):
        pytest.skip("unprivileged network namespaces (unshare -rn) are not available here")
    test = "tests/test_listen.py::test_the_readme_walk_through_runs_against_real_processes"
    script = f"{ip} link set lo up && {sys.executable} -m pytest -rA {test}"
    done = subprocess.run(
        [unshare, "-rn", "sh", "-c", script],
        cwd=ROOT,
        env={**os.environ, "SORAHOOK_TEST_NO_NETWORK": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "PASSED" in done.stdout and "1 passed" in done.stdout


@pytest.mark.slow
def test_sigterm_deletes_the_subscription_too(tmp_path: Path, service_process: Any) -> None:
    env = {
        "SORAHOOK_DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'sorahook.db'}",
        "SORAHOOK_ADMIN_TOKEN": "test-admin-token",
        "SORAHOOK_LOG_FORMAT": "console",
    }
    svc = service_process(env, emulator=True)
    svc.env.pop("SORAHOOK_ALLOW_PRIVATE_TARGETS", None)
    svc.start()
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "listen", "--subscribe", "--port", str(free_port())],
        cwd=ROOT,
        env={**svc.env, "SORAHOOK_URL": svc.url},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out = Lines(proc.stdout)  # type: ignore[arg-type]
        sub_id = out.wait_for("Subscribed").split()[1]
        test = httpx.post(f"{svc.url}/v1/subscriptions/{sub_id}/test", headers=auth())
        assert test.status_code in (200, 202), test.text
        out.wait_for("sorahook.test", "verified")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert httpx.get(f"{svc.url}/v1/subscriptions", headers=auth()).json()["data"] == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    svc.stop()


# --- the listener in-process ---


@pytest.mark.anyio
async def test_with_a_secret_it_verifies_prints_and_answers_401_to_what_does_not_verify() -> None:
    secret = new_webhook_secret()
    port = free_port()
    out = io.StringIO()
    stop = asyncio.Event()
    task = asyncio.create_task(listen(ListenOptions(port=port, secret=secret), {}, out, stop))
    url = f"http://127.0.0.1:{port}/anything"
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            if "Listening on" in out.getvalue():
                break
            await asyncio.sleep(0.02)
        body, headers = signed_webhook(secret, "video.completed", "video_1")
        ok = await client.post(url, content=body, headers=headers)
        assert ok.status_code == 200
        wrong_body, wrong = signed_webhook(new_webhook_secret(), "video.failed", "video_2")
        refused = await client.post(url, content=wrong_body, headers=wrong)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_signature"
        bare = await client.post(url, content=b"{}")
        assert bare.status_code == 401 and bare.json()["error"]["code"] == "missing_headers"
    stop.set()
    assert await task == 0
    lines = out.getvalue().splitlines()
    assert (
        lines[0] == f"Listening on http://127.0.0.1:{port}/, verifying with the given secret (Ctrl-C stops)"
    )
    assert "video.completed" in lines[1] and "video_1" in lines[1] and lines[1].split()[-2] == "verified"
    assert "REJECTED  invalid_signature" in lines[2] and lines[2].endswith("-> 401")
    assert "REJECTED  missing_headers" in lines[3]
    assert len(lines) == 4


def test_one_line_per_event_names_type_job_status_and_verified() -> None:
    body = (
        b'{"id":"evt_1","object":"event","type":"video.completed","created_at":1,'
        b'"data":{"id":"job_abc","status":"completed"}}'
    )
    line = describe_event(body, time.time())
    assert line.split()[1:] == ["video.completed", "job_abc", "completed", "verified", "evt_1"]
    assert "not a JSON event" in describe_event(b"[1]", 0.0)


# --- one clear line when it cannot start ---


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["listen", *args])
    captured = capsys.readouterr()
    return code, captured.err


def test_without_subscribe_or_secret_it_says_what_to_give(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _main(capsys, "--port", str(free_port()))
    assert code == 2 and "--subscribe" in err and "--secret" in err and len(err.strip().splitlines()) == 1


def test_a_bad_secret_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _main(capsys, "--secret", "nope", "--port", str(free_port()))
    assert code == 2 and "--secret" in err and len(err.strip().splitlines()) == 1


def test_an_unreachable_service_is_one_line_naming_sorahook_url(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SORAHOOK_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("SORAHOOK_ADMIN_TOKEN", "test-admin-token")
    code, err = _main(capsys, "--subscribe", "--port", str(free_port()))
    assert code == 1 and "SORAHOOK_URL" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_missing_token_names_the_variable_and_the_file(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("SORAHOOK_ADMIN_TOKEN", raising=False)
    monkeypatch.setenv("SORAHOOK_DATABASE_URL", f"sqlite:///{tmp_path / 'nowhere' / 'db.sqlite'}")
    code, err = _main(capsys, "--subscribe", "--port", str(free_port()))
    assert code == 2 and "SORAHOOK_ADMIN_TOKEN" in err and "admin_token" in err


def test_a_port_in_use_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, err = _main(capsys, "--secret", new_webhook_secret(), "--port", str(port))
    assert code == 1 and f"127.0.0.1:{port}" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("url", ["http://[::1", "ftp://127.0.0.1:8000", "127.0.0.1:8000", "http://"])
def test_a_malformed_sorahook_url_is_one_line_naming_it(
    url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SORAHOOK_URL", url)
    monkeypatch.setenv("SORAHOOK_ADMIN_TOKEN", "test-admin-token")
    code, err = _main(capsys, "--subscribe", "--port", str(free_port()))
    assert code == 2 and "SORAHOOK_URL" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("token", ["tökén-123456", "abc\x01defghij"])
def test_an_admin_token_no_header_can_carry_is_one_line_naming_it(
    token: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SORAHOOK_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("SORAHOOK_ADMIN_TOKEN", token)
    code, err = _main(capsys, "--subscribe", "--port", str(free_port()))
    assert code == 2 and "SORAHOOK_ADMIN_TOKEN" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
