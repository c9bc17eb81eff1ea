"""Real processes: the command line, restarts on the same SQLite file, kill -9 during pending submissions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.config import new_webhook_secret
from tests.support import ROOT, auth, free_port, signed_webhook

pytestmark = pytest.mark.slow


def _run(args: list[str], env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _offline_env(tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A webhook secret and an environment whose OpenAI is unreachable (port 9): only webhooks move jobs."""
    secret = new_webhook_secret()
    env = _env(
        tmp_path,
        OPENAI_WEBHOOK_SECRET=secret,
        OPENAI_API_KEY="sk-test",
        OPENAI_BASE_URL="http://127.0.0.1:9/v1",
    )
    return secret, env


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "SORAHOOK_DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'sorahook.db'}",
        "SORAHOOK_ADMIN_TOKEN": "test-admin-token",
        "SORAHOOK_ALLOW_PRIVATE_TARGETS": "true",
        "SORAHOOK_LOG_FORMAT": "console",
        **extra,
    }


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SORAHOOK_WEBHOOK_TOLERANCE", "soon"),
        ("SORAHOOK_RETRY_SCHEDULE", "1,x"),
        ("SORAHOOK_DATABASE_URL", "mysql://db"),
        ("OPENAI_WEBHOOK_SECRET", "not-a-secret"),
        ("SORAHOOK_ALLOW_PRIVATE_TARGETS", "10.0.0.0/33"),
        ("SORAHOOK_LOG_FORMAT", "xml"),
        ("SORAHOOK_DELIVERY_TIMEOUT", "-1"),
    ],
)
def test_bad_setting_stops_start_up_with_one_line_naming_it(tmp_path: Path, name: str, value: str) -> None:
    env = _env(tmp_path, OPENAI_WEBHOOK_SECRET=new_webhook_secret(), OPENAI_API_KEY="sk-test")
    env[name] = value
    result = _run(["serve", "--port", str(free_port())], env)
    assert result.returncode == 2
    lines = [line for line in result.stderr.strip().splitlines() if line]
    assert len(lines) == 1 and name in lines[0] and "Traceback" not in result.stderr


def test_missing_webhook_secret_is_one_clear_line(tmp_path: Path) -> None:
    result = _run(["serve", "--port", str(free_port())], _env(tmp_path, OPENAI_API_KEY="sk-test"))
    assert (
        result.returncode == 2
        and "OPENAI_WEBHOOK_SECRET" in result.stderr
        and "Traceback" not in result.stderr
    )


def test_migrate_applies_once(tmp_path: Path) -> None:
    env = _env(tmp_path)
    first = _run(["migrate"], env)
    assert first.returncode == 0 and "applied migrations 1" in first.stdout
    second = _run(["migrate"], env)
    assert second.returncode == 0 and "up to date" in second.stdout


def test_send_test_webhook_reaches_a_running_service(tmp_path: Path, service_process: Any) -> None:
    secret, env = _offline_env(tmp_path)
    svc = service_process(env)
    svc.start()
    result = _run(
        [
            "send-test-webhook",
            "--url",
            f"{svc.url}/webhooks/openai",
            "--secret",
            secret,
            "--video-id",
            "video_cli",
        ],
        env,
    )
    assert result.returncode == 0 and "accepted" in result.stdout
    job = httpx.get(f"{svc.url}/v1/jobs/video_cli", headers=auth()).json()
    assert job["status"] == "completed" and job["origin"] == "webhook"
    wrong = _run(
        ["send-test-webhook", "--url", f"{svc.url}/webhooks/openai", "--secret", new_webhook_secret()], env
    )
    assert wrong.returncode == 1 and "invalid_signature" in wrong.stdout
    bad = _run(["send-test-webhook", "--url", f"{svc.url}/webhooks/openai", "--secret", "nope"], env)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_restart_keeps_every_accepted_webhook(tmp_path: Path, service_process: Any) -> None:
    secret, env = _offline_env(tmp_path)
    first = service_process(env)
    first.start()
    accepted = []
    with httpx.Client(base_url=first.url) as client:
        for i in range(40):
            body, headers = signed_webhook(secret, "video.completed", f"video_r{i}")
            response = client.post("/webhooks/openai", content=body, headers=headers)
            assert response.status_code == 200
            accepted.append(f"video_r{i}")
    assert first.stop(signal.SIGTERM) == 0
    second = service_process(env, port=first.port)
    second.start()
    with httpx.Client(base_url=second.url) as client:
        for resource_id in accepted:
            job = client.get(f"/v1/jobs/{resource_id}", headers=auth()).json()
            assert job["status"] == "completed"
        # A redelivery after the restart is still recognised as a duplicate.
        body, headers = signed_webhook(secret, "video.completed", "video_r0", webhook_id="wh_fixed")
        assert client.post("/webhooks/openai", content=body, headers=headers).json() == {"status": "accepted"}
    second.stop()


def test_jobs_pending_at_a_crash_are_submitted_exactly_once_after_restart(
    tmp_path: Path, service_process: Any
) -> None:
    secret = new_webhook_secret()
    port, emulator_port = free_port(), free_port()
    env = _env(
        tmp_path,
        OPENAI_WEBHOOK_SECRET=secret,
        OPENAI_API_KEY="sk-test",
        OPENAI_BASE_URL=f"http://127.0.0.1:{emulator_port}/v1",  # nothing listens yet: submissions fail
    )
    first = service_process(env, port=port)
    first.start()
    with httpx.Client(base_url=first.url) as client:
        ids = [
            client.post("/v1/jobs", json={"prompt": f"crash {i}"}, headers=auth()).json()["id"]
            for i in range(12)
        ]
    first.stop(signal.SIGKILL)

    emulator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service",
            "emulator",
            "--port",
            str(emulator_port),
            "--duration",
            "0.5",
            "--webhook-url",
            f"http://127.0.0.1:{port}/webhooks/openai",
            "--webhook-secret",
            secret,
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        second = service_process(env, port=port)
        second.start()
        deadline = time.monotonic() + 30
        with httpx.Client(base_url=second.url) as client:
            while time.monotonic() < deadline:
                jobs = [client.get(f"/v1/jobs/{i}", headers=auth()).json() for i in ids]
                if all(j["status"] == "completed" for j in jobs):
                    break
                time.sleep(0.2)
            assert all(j["status"] == "completed" for j in jobs), [j["status"] for j in jobs]
        calls = httpx.get(f"http://127.0.0.1:{emulator_port}/_control/calls").json()["calls"]
        videos = httpx.get(f"http://127.0.0.1:{emulator_port}/v1/videos?limit=100").json()["data"]
        assert len(videos) == len(ids)
        assert len({j["resource_id"] for j in jobs}) == len(ids)
        assert sum(1 for method, path in calls if method == "POST" and path == "/v1/videos") == len(ids)
        second.stop()
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)


class _Recorder:
    """A threaded HTTP subscriber outside the service process, recording the webhook-ids it gets."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        seen: list[str] = []
        self.seen = seen

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                self.rfile.read(length)
                seen.append(self.headers.get("webhook-id", ""))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_kill_during_a_burst_of_deliveries_loses_no_event(tmp_path: Path, service_process: Any) -> None:
    secret, env = _offline_env(tmp_path)
    recorders = [_Recorder(), _Recorder()]
    first = service_process(env)
    first.start()
    try:
        with httpx.Client(base_url=first.url) as client:
            for rec in recorders:
                assert (
                    client.post("/v1/subscriptions", json={"url": rec.url}, headers=auth()).status_code == 201
                )
            for i in range(150):
                body, headers = signed_webhook(secret, "video.completed", f"video_k{i}")
                assert client.post("/webhooks/openai", content=body, headers=headers).status_code == 200
        first.stop(signal.SIGKILL)
        second = service_process(env, port=first.port)
        second.start()
        with httpx.Client(base_url=second.url) as client:
            events = set()
            for i in range(150):
                job = client.get(f"/v1/jobs/video_k{i}", headers=auth()).json()
                timeline = client.get(f"/v1/jobs/{job['id']}/events", headers=auth()).json()["data"]
                events |= {e["id"] for e in timeline if e["direction"] == "emitted"}
        assert len(events) == 150
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(events <= set(r.seen) for r in recorders):
            time.sleep(0.1)
        for rec in recorders:
            assert events <= set(rec.seen)  # at least once, each
        second.stop()
    finally:
        for rec in recorders:
            rec.close()


def _blast(url: str, secret: str, prefix: str, acknowledged: list[str], stop: Any) -> None:
    """Send signed webhooks for new resources until told to stop or the server goes away."""
    with httpx.Client(base_url=url, timeout=5) as client:
        i = 0
        while not stop.is_set():
            resource = f"{prefix}_{i}"
            body, headers = signed_webhook(secret, "video.completed", resource)
            try:
                response = client.post("/webhooks/openai", content=body, headers=headers)
            except httpx.HTTPError:
                return  # the server stopped listening
            if response.status_code == 200:
                acknowledged.append(resource)
            i += 1


def test_sigterm_during_a_burst_loses_nothing_acknowledged(tmp_path: Path, service_process: Any) -> None:
    import threading

    secret, env = _offline_env(tmp_path)
    recorder = _Recorder()
    first = service_process(env)
    first.start()
    acknowledged: list[str] = []
    stop = threading.Event()

    try:
        with httpx.Client(base_url=first.url) as client:
            assert (
                client.post("/v1/subscriptions", json={"url": recorder.url}, headers=auth()).status_code
                == 201
            )
        threads = [
            threading.Thread(target=_blast, args=(first.url, secret, f"video_t{w}", acknowledged, stop))
            for w in range(4)
        ]
        for t in threads:
            t.start()
        while len(acknowledged) < 200:
            time.sleep(0.01)
        assert first.stop(signal.SIGTERM) == 0  # a clean, bounded shutdown in the middle of the burst
        stop.set()
        for t in threads:
            t.join()
        second = service_process(env, port=first.port)
        second.start()
        with httpx.Client(base_url=second.url) as client:
            for resource in acknowledged:
                assert client.get(f"/v1/jobs/{resource}", headers=auth()).status_code == 200, resource
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                backlog = client.get("/v1/deliveries", params={"status": "pending"}, headers=auth()).json()[
                    "data"
                ]
                failed = client.get("/v1/deliveries", params={"status": "failed"}, headers=auth()).json()[
                    "data"
                ]
                if not backlog and not failed and len(set(recorder.seen)) >= len(acknowledged):
                    break
                time.sleep(0.1)
        assert len(set(recorder.seen)) >= len(acknowledged)
        second.stop()
    finally:
        stop.set()
        recorder.close()


def test_kill_9_during_a_burst_of_webhooks_keeps_every_acknowledged_one(
    tmp_path: Path, service_process: Any
) -> None:
    import sqlite3
    import threading

    secret, env = _offline_env(tmp_path)
    first = service_process(env)
    first.start()
    acknowledged: list[str] = []
    stop = threading.Event()

    threads = [
        threading.Thread(target=_blast, args=(first.url, secret, f"video_k9_{w}", acknowledged, stop))
        for w in range(4)
    ]
    for t in threads:
        t.start()
    while len(acknowledged) < 300:
        time.sleep(0.01)
    first.stop(signal.SIGKILL)
    stop.set()
    for t in threads:
        t.join()
    db = tmp_path / "data" / "sorahook.db"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {row[0] for row in conn.execute("SELECT resource_id FROM jobs")}
    assert set(acknowledged) <= stored
    second = service_process(env, port=first.port)
    second.start()
    with httpx.Client(base_url=second.url) as client:
        assert client.get(f"/v1/jobs/{acknowledged[-1]}", headers=auth()).json()["status"] == "completed"
    second.stop()
