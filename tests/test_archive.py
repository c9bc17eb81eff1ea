"""Archiving finished videos: assets on disk with their checksum, video.archived, ranges, expiry, kill -9."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import standardwebhooks
from prometheus_client.parser import text_string_to_metric_families

from service.api.assets import Unsatisfiable, parse_range
from service.archive import Archiver
from service.clock import ManualClock
from service.config import ConfigError, load_settings, new_webhook_secret
from service.domain import Observation
from service.emulator import Emulator, EmulatorConfig
from service.emulator.assets import CONTENT
from service.metrics import Metrics
from service.openai_client import OpenAIClient
from service.storage import LocalStorage
from service.store.sqlite import SqliteStore
from tests.subscriber import Subscriber
from tests.support import auth, emulated_service, free_port, get_job, live_server, wait_until

pytestmark = pytest.mark.anyio


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def _wait_assets(client: httpx.AsyncClient, job_id: str, *variants: str, timeout: float = 20) -> Any:
    async def check() -> dict[str, Any] | None:
        job = await get_job(client, job_id)
        assets = (job["result"] or {}).get("assets") or {}
        return job if all(v in assets for v in variants) else None

    return await wait_until(check, timeout=timeout, interval=0.05)


async def _metric(client: httpx.AsyncClient, name: str, **labels: str) -> float:
    text = (await client.get("/metrics")).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def _content_calls(emulator: Emulator) -> int:
    return sum(1 for method, path in emulator.calls if method == "GET" and path.endswith("/content"))


# --- end to end with the emulator ---------------------------------------------------------------------------


async def test_completed_video_assets_land_on_disk_with_their_checksum_and_video_archived_is_sent(
    tmp_path: Path,
) -> None:
    subscriber = Subscriber()
    async with (
        live_server(subscriber.app()) as sub_url,
        emulated_service(tmp_path) as (url, _emulator, _settings),
        httpx.AsyncClient(base_url=url) as client,
    ):
        created = await client.post(
            "/v1/subscriptions", json={"url": f"{sub_url}/hooks", "event_types": ["video.*"]}, headers=auth()
        )
        secret = created.json()["secret"]
        job = (await client.post("/v1/jobs", json={"prompt": "keep me"}, headers=auth())).json()
        done = await _wait_assets(client, job["id"], "video", "thumbnail")

        assets = done["result"]["assets"]
        assert set(assets) == {"video", "thumbnail"}, "spritesheet is not in the default variants"
        for variant, name in (("video", "video.mp4"), ("thumbnail", "thumbnail.jpg")):
            expected = CONTENT[variant][0]
            path = tmp_path / "archive" / job["id"] / name
            assert path.read_bytes() == expected
            asset = assets[variant]
            assert set(asset) == {"size", "sha256", "stored_at", "uri"}
            assert asset["sha256"] == sha256(expected) and asset["size"] == len(expected)
            assert asset["uri"] == path.resolve().as_uri() and isinstance(asset["stored_at"], int)
        assert not [p for p in (tmp_path / "archive").rglob("*") if p.name.startswith(".")], (
            "no temp file left"
        )

        async def archived_event() -> Any:
            return [r for r in subscriber.on("/hooks") if r.event["type"] == "video.archived"]

        [received] = await wait_until(archived_event)
        standardwebhooks.Webhook(secret).verify(received.body, received.headers)
        data = received.event["data"]
        assert data["id"] == job["id"] and data["result"]["assets"] == assets
        types = [r.event["type"] for r in subscriber.on("/hooks")]
        assert types.index("video.completed") < types.index("video.archived")
        assert types.count("video.archived") == 1

        events = (await client.get(f"/v1/jobs/{job['id']}/events", headers=auth())).json()["data"]
        assert ("emitted", "video.archived", "archiver") in [
            (e["direction"], e["type"], e["source"]) for e in events
        ]
        assert done["sequence"] == 2, "archiving is not a state change"

        total = len(CONTENT["video"][0]) + len(CONTENT["thumbnail"][0])
        assert await _metric(client, "sorahook_archive_bytes_total") == total
        assert await _metric(client, "sorahook_archive_lag_seconds_count") == 2
        assert await _metric(client, "sorahook_archive_failures_total") == 0


async def test_archived_copy_is_served_with_ranges_etag_and_outlives_openai_expiry(tmp_path: Path) -> None:
    video = CONTENT["video"][0]
    size = len(video)
    async with (
        emulated_service(tmp_path, emulator_options={"asset_ttl": 2.0}) as (url, emulator, _settings),
        httpx.AsyncClient(base_url=url) as client,
    ):
        job = (await client.post("/v1/jobs", json={"prompt": "ranges"}, headers=auth())).json()
        done = await _wait_assets(client, job["id"], "video", "thumbnail")
        etag = f'"{done["result"]["assets"]["video"]["sha256"]}"'
        content = f"/v1/jobs/{job['id']}/content"

        # Past OpenAI's expiry (a variant that is not archived is gone), the archived copy is still served,
        # and OpenAI is not asked again.
        async def expired_at_openai() -> bool:
            response = await client.get(f"{content}?variant=spritesheet", headers=auth())
            return response.status_code == 410 and response.json()["error"]["code"] == "content_expired"

        await wait_until(expired_at_openai, timeout=15, interval=0.2)
        calls = _content_calls(emulator)

        whole = await client.get(content, headers=auth())
        assert whole.status_code == 200 and whole.content == video
        assert whole.headers["content-length"] == str(size) and whole.headers["etag"] == etag
        assert whole.headers["accept-ranges"] == "bytes" and whole.headers["content-type"] == "video/mp4"

        async def ranged(value: str, **extra: str) -> httpx.Response:
            return await client.get(content, headers={**auth(), "range": value, **extra})

        first = await ranged("bytes=0-9")
        assert first.status_code == 206 and first.content == video[:10]
        assert (
            first.headers["content-range"] == f"bytes 0-9/{size}" and first.headers["content-length"] == "10"
        )
        middle = await ranged(f"bytes=100-{size + 500}")
        assert middle.status_code == 206 and middle.content == video[100:]
        assert middle.headers["content-range"] == f"bytes 100-{size - 1}/{size}"
        tail = await ranged("bytes=-7")
        assert tail.status_code == 206 and tail.content == video[-7:]
        open_ended = await ranged("bytes=1000-")
        assert open_ended.status_code == 206 and open_ended.content == video[1000:]
        outside = await ranged(f"bytes={size}-")
        assert outside.status_code == 416 and outside.headers["content-range"] == f"bytes */{size}"
        assert outside.json()["error"]["code"] == "range_not_satisfiable"
        several = await ranged("bytes=0-1,5-6")
        assert several.status_code == 200 and several.content == video
        stale = await ranged("bytes=0-9", **{"if-range": '"not-the-etag"'})
        assert stale.status_code == 200 and stale.content == video

        cached = await client.get(content, headers={**auth(), "if-none-match": etag})
        assert cached.status_code == 304 and cached.content == b"" and cached.headers["etag"] == etag
        changed = await client.get(content, headers={**auth(), "if-none-match": '"other"'})
        assert changed.status_code == 200

        thumb = await client.get(f"{content}?variant=thumbnail", headers=auth())
        assert thumb.status_code == 200 and thumb.content == CONTENT["thumbnail"][0]
        assert _content_calls(emulator) == calls, "archived assets are served without asking OpenAI"


async def test_expired_asset_ends_archive_failed_without_endless_retries(tmp_path: Path) -> None:
    subscriber = Subscriber()
    async with (
        live_server(subscriber.app()) as sub_url,
        emulated_service(tmp_path, emulator_options={"asset_ttl": 0.0}) as (url, emulator, _settings),
        httpx.AsyncClient(base_url=url) as client,
    ):
        await client.post("/v1/subscriptions", json={"url": f"{sub_url}/hooks"}, headers=auth())
        job = (await client.post("/v1/jobs", json={"prompt": "too late"}, headers=auth())).json()
        done = await _wait_assets(client, job["id"], "video", "thumbnail")
        for variant in ("video", "thumbnail"):
            asset = done["result"]["assets"][variant]
            assert asset["status"] == "archive_failed" and "expired" in asset["error"]
        calls = _content_calls(emulator)
        assert calls <= 2, "one download attempt per variant, no retries"
        await asyncio.sleep(1.5)
        assert _content_calls(emulator) == calls, "no retry after giving up"

        async def failed_event() -> Any:
            return [r for r in subscriber.on("/hooks") if r.event["type"] == "video.archive_failed"]

        [event] = await wait_until(failed_event)
        assert event.event["data"]["result"]["assets"] == done["result"]["assets"]
        assert not [r for r in subscriber.on("/hooks") if r.event["type"] == "video.archived"]
        assert await _metric(client, "sorahook_archive_failures_total", reason="expired") == 2
        gone = await client.get(f"/v1/jobs/{job['id']}/content", headers=auth())
        assert gone.status_code == 410


async def test_a_video_first_heard_of_by_webhook_is_archived(tmp_path: Path) -> None:
    async with (
        emulated_service(tmp_path) as (url, _emulator, _settings),
        httpx.AsyncClient(base_url=url) as client,
    ):
        made = (await client.post(f"{url}/_emulator/v1/videos", json={"prompt": "made elsewhere"})).json()

        async def known() -> Any:
            response = await client.get(f"/v1/jobs/{made['id']}", headers=auth())
            return response.json() if response.status_code == 200 else None

        job = await wait_until(known, timeout=15)
        assert job["origin"] == "webhook"
        done = await _wait_assets(client, job["id"], "video", "thumbnail")
        assert done["result"]["assets"]["video"]["sha256"] == sha256(CONTENT["video"][0])


async def test_a_video_completed_by_reconciliation_is_archived(tmp_path: Path) -> None:
    async with (
        emulated_service(
            tmp_path, emulator_options={"drop_rate": 1.0}, reconcile_interval=0.2, reconcile_after=0.3
        ) as (url, _emulator, _settings),
        httpx.AsyncClient(base_url=url) as client,
    ):
        job = (await client.post("/v1/jobs", json={"prompt": "no webhook"}, headers=auth())).json()
        done = await _wait_assets(client, job["id"], "video", "thumbnail", timeout=30)
        assert done["result"]["assets"]["thumbnail"]["sha256"] == sha256(CONTENT["thumbnail"][0])
        events = (await client.get(f"/v1/jobs/{job['id']}/events", headers=auth())).json()["data"]
        assert ("video.completed", "reconcile") in [(e["type"], e["source"]) for e in events]


async def test_archiving_can_be_turned_off(tmp_path: Path) -> None:
    async with (
        emulated_service(tmp_path, archive=False) as (url, _emulator, _settings),
        httpx.AsyncClient(base_url=url) as client,
    ):
        job = (await client.post("/v1/jobs", json={"prompt": "no copy"}, headers=auth())).json()

        async def enriched() -> Any:
            current = await get_job(client, job["id"])
            return current if current["status"] == "completed" and current["result"] else None

        done = await wait_until(enriched, timeout=15)
        await asyncio.sleep(0.3)
        assert "assets" not in (await get_job(client, done["id"]))["result"]
        assert not (tmp_path / "archive").exists()


# --- the worker, step by step, with a manual clock -------------------------------------------------------------


class Rig:
    def __init__(
        self, store: SqliteStore, emulator: Emulator, openai: OpenAIClient, clock: ManualClock, root: Path
    ):
        self.store, self.emulator, self.openai, self.clock = store, emulator, openai, clock
        self.storage = LocalStorage(root)
        self.metrics = Metrics()

    def archiver(self, **options: Any) -> Archiver:
        return Archiver(
            store=self.store,
            openai=self.openai,
            storage=self.storage,
            clock=self.clock,
            metrics=self.metrics,
            **options,
        )

    async def completed_video(self, *, expires_at: float | None = None) -> str:
        """A video completed at the emulator and, in the store, a job that saw it complete."""
        video = await self.openai.create_video(
            prompt="rig", model="sora-2", seconds="4", size="720x1280", idempotency_key=None
        )
        self.clock.advance(self.emulator.config.duration + 0.1)
        job, _ = await self.store.track_job(
            kind="video", resource_id=video["id"], callback_url=None, metadata={}
        )
        result = {"expires_at": expires_at} if expires_at is not None else None
        await self.store.apply_observation(job.id, Observation(status="completed", result=result), "webhook")
        return job.id


@pytest.fixture
async def rig(tmp_path: Path) -> Any:
    clock = ManualClock(start=float(int(time.time())))
    emulator = Emulator(EmulatorConfig(duration=1.0, asset_ttl=600.0), clock=clock)
    store = await SqliteStore.open(tmp_path / "db.sqlite", clock=clock)
    await store.configure_archive(("video", "thumbnail"))

    async def no_sleep(_: float) -> None:
        return None

    openai = OpenAIClient(
        base_url="http://emulator/v1",
        api_key=None,
        metrics=Metrics(),
        transport=httpx.ASGITransport(app=emulator.app),
        max_retries=0,
        sleep=no_sleep,
    )
    try:
        yield Rig(store, emulator, openai, clock, tmp_path / "archive")
    finally:
        await openai.aclose()
        await store.aclose()
        await emulator.aclose()


async def test_an_asset_already_past_expires_at_fails_without_a_download(rig: Rig) -> None:
    job_id = await rig.completed_video(expires_at=rig.clock.now() - 1)
    assert await rig.archiver().run_once() == 2
    assert _content_calls(rig.emulator) == 0
    archives = await rig.store.list_archives(job_id)
    assert [(a.status, a.attempts) for a in archives] == [("archive_failed", 1)] * 2
    job = await rig.store.get_job(job_id)
    assert job is not None and job.result is not None
    assert job.result["assets"]["video"]["status"] == "archive_failed"
    assert await rig.archiver().run_once() == 0, "nothing is due again"


async def test_transient_failures_are_retried_with_backoff_then_stored(rig: Rig) -> None:
    job_id = await rig.completed_video()
    job = await rig.store.get_job(job_id)
    assert job is not None
    rig.emulator.inject_fault(503, count=2, path_prefix=f"/v1/videos/{job.resource_id}/content")
    archiver = rig.archiver(backoff_base=10.0)
    assert await archiver.run_once() == 2  # both variants meet a 503
    pending = await rig.store.list_archives(job_id)
    assert {a.status for a in pending} == {"pending"} and all(a.error for a in pending)
    assert await archiver.run_once() == 0, "backing off"
    rig.clock.advance(11.0)
    assert await archiver.run_once() == 2
    stored = await rig.store.list_archives(job_id)
    assert [(a.variant, a.status, a.attempts) for a in stored] == [
        ("thumbnail", "stored", 2),
        ("video", "stored", 2),
    ]
    assert rig.metrics.archive_bytes._value.get() == len(CONTENT["video"][0]) + len(CONTENT["thumbnail"][0])


async def test_not_ready_answers_are_retried_briefly_then_refused(rig: Rig) -> None:
    job_id = await rig.completed_video()
    job = await rig.store.get_job(job_id)
    assert job is not None
    rig.emulator.inject_fault(409, count=100, path_prefix=f"/v1/videos/{job.resource_id}/content")
    archiver = rig.archiver(not_ready_attempts=3, backoff_base=1.0)
    for _ in range(3):
        rig.clock.advance(60.0)
        await archiver.run_once()
    failed = await rig.store.list_archives(job_id)
    assert [(a.status, a.attempts) for a in failed] == [("archive_failed", 3)] * 2
    assert "refused" in (failed[0].error or "")


async def test_a_gone_video_fails_at_once(rig: Rig) -> None:
    job_id = await rig.completed_video()
    job = await rig.store.get_job(job_id)
    assert job is not None and job.resource_id is not None
    await rig.openai.delete_video(job.resource_id)
    await rig.archiver().run_once()
    assert {a.status for a in await rig.store.list_archives(job_id)} == {"archive_failed"}
    assert rig.metrics.archive_failures.labels(reason="not_found")._value.get() == 2


async def test_a_short_body_is_not_stored(rig: Rig, tmp_path: Path) -> None:
    """A body that ends before its Content-Length is discarded and retried; nothing appears under the key."""
    job_id = await rig.completed_video()

    class Truncating(httpx.AsyncBaseTransport):
        def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
            self.inner = inner

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await self.inner.handle_async_request(request)
            if not request.url.path.endswith("/content"):
                return response
            body = await response.aread()
            headers = dict(response.headers)
            return httpx.Response(response.status_code, headers=headers, content=body[: len(body) // 2])

    openai = OpenAIClient(
        base_url="http://emulator/v1",
        api_key=None,
        metrics=Metrics(),
        transport=Truncating(httpx.ASGITransport(app=rig.emulator.app)),
        max_retries=0,
    )
    try:
        archiver = Archiver(
            store=rig.store, openai=openai, storage=rig.storage, clock=rig.clock, metrics=rig.metrics
        )
        await archiver.run_once()
    finally:
        await openai.aclose()
    archives = await rig.store.list_archives(job_id)
    assert {a.status for a in archives} == {"pending"}
    assert all("ended at" in (a.error or "") for a in archives)
    assert not list(rig.storage.root.rglob("*.*")), "neither the final name nor a temp file"


# --- local storage ----------------------------------------------------------------------------------------------


async def test_local_writer_renames_only_on_commit_and_cleans_up_on_abort(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "archive")
    final = tmp_path / "archive" / "job_1" / "video.mp4"
    with pytest.raises(RuntimeError):
        async with storage.open_writer("job_1/video.mp4") as writer:
            await writer.write(b"x" * 3_000_000)
            assert not final.exists()
            raise RuntimeError("the download broke")
    assert not final.exists() and list(final.parent.iterdir()) == []
    async with storage.open_writer("job_1/video.mp4") as writer:
        for _ in range(3):
            await writer.write(b"abc" * 500_000)
        assert not final.exists()
        await writer.commit()
    assert final.read_bytes() == b"abc" * 1_500_000
    assert (await storage.stat("job_1/video.mp4")).size == 4_500_000  # type: ignore[union-attr]
    assert await storage.stat("job_1/thumbnail.jpg") is None
    parts = [chunk async for chunk in storage.open_reader("job_1/video.mp4", 1, 7)]
    assert b"".join(parts) == b"bcabcab"


async def test_stale_temp_files_are_removed_at_start(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "archive")
    (tmp_path / "archive" / "job_1").mkdir(parents=True)
    stale = tmp_path / "archive" / "job_1" / ".video.mp4.abc123.tmp"
    stale.write_bytes(b"half")
    kept = tmp_path / "archive" / "job_1" / "thumbnail.jpg"
    kept.write_bytes(b"whole")
    await storage.prepare()
    assert not stale.exists() and kept.exists()


@pytest.mark.parametrize("key", ["", "/abs", "../up", "job/../x", "job/.hidden", "job//x"])
async def test_storage_keys_cannot_escape_the_root(tmp_path: Path, key: str) -> None:
    from service.storage import StorageError

    with pytest.raises(StorageError):
        LocalStorage(tmp_path).path(key)


# --- ranges and configuration ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-9", (0, 9)),
        ("bytes=5-", (5, 99)),
        ("bytes=-10", (90, 99)),
        ("bytes=-500", (0, 99)),
        ("bytes=90-200", (90, 99)),
        ("BYTES=1-1", (1, 1)),
        ("bytes=0-1,3-4", None),
        ("items=0-1", None),
        ("bytes=9-3", None),
        ("bytes=x-3", None),
        ("bytes=-", None),
    ],
)
def test_parse_range(header: str, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=150-160", "bytes=-0"])
def test_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(header, 100)


def test_archive_settings_defaults_and_errors_name_the_variable() -> None:
    base = {"SORAHOOK_DATABASE_URL": "sqlite:///tmp/x.db"}
    settings = load_settings(base)
    assert settings.archive and settings.archive_variants == ("video", "thumbnail")
    assert settings.archive_storage == "local" and settings.s3_bucket is None
    s3 = load_settings(
        {
            **base,
            "SORAHOOK_ARCHIVE_STORAGE": "s3",
            "SORAHOOK_S3_BUCKET": "videos",
            "SORAHOOK_S3_PREFIX": "/sora/",
            "SORAHOOK_S3_ENDPOINT_URL": "http://127.0.0.1:9000",
            "SORAHOOK_S3_REGION": "auto",
            "SORAHOOK_ARCHIVE_VARIANTS": "video,spritesheet",
        }
    )
    assert (s3.s3_bucket, s3.s3_prefix, s3.s3_region) == ("videos", "sora/", "auto")
    assert s3.archive_variants == ("video", "spritesheet")
    for name, value in [
        ("SORAHOOK_ARCHIVE", "maybe"),
        ("SORAHOOK_ARCHIVE_VARIANTS", "video,poster"),
        ("SORAHOOK_ARCHIVE_STORAGE", "ftp"),
        ("SORAHOOK_S3_ENDPOINT_URL", "minio:9000"),
        ("SORAHOOK_S3_BUCKET", "a"),
    ]:
        with pytest.raises(ConfigError, match=name):
            load_settings({**base, name: value})
    with pytest.raises(ConfigError, match="SORAHOOK_S3_BUCKET"):
        load_settings({**base, "SORAHOOK_ARCHIVE_STORAGE": "s3"})


async def test_emulator_serves_a_large_slow_video_when_asked() -> None:
    emulator = Emulator(EmulatorConfig(duration=0.0, content_size=300_000, content_delay=0.01))
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=emulator.app), base_url="http://e"
        ) as c:
            video = (await c.post("/v1/videos", json={"prompt": "big"})).json()
            response = await c.get(f"/v1/videos/{video['id']}/content")
            assert response.status_code == 200 and len(response.content) == 300_000
            assert response.headers["content-length"] == "300000"
            assert response.content == emulator.asset("video")[0]
            assert response.content.startswith(CONTENT["video"][0])
            thumb = await c.get(f"/v1/videos/{video['id']}/content?variant=thumbnail")
            assert thumb.content == CONTENT["thumbnail"][0]
    finally:
        await emulator.aclose()
    with pytest.raises(ValueError, match="content_size"):
        EmulatorConfig(content_size=0)


# --- a real process killed in the middle of an archive -------------------------------------------------------------


@pytest.mark.slow
async def test_kill_9_mid_archive_leaves_no_final_file_and_the_archive_completes_after_restart(
    tmp_path: Path, service_process: Any
) -> None:
    secret = new_webhook_secret()
    port = free_port()
    # An emulator of its own (it must outlive the killed service): a 4 MiB video sent 64 KiB per 50 ms.
    emulator = Emulator(
        EmulatorConfig(
            webhook_url=f"http://127.0.0.1:{port}/webhooks/openai",
            webhook_secret=secret,
            duration=0.2,
            content_size=4 * 1024 * 1024,
            content_delay=0.05,
        )
    )
    expected = emulator.asset("video")[0]
    data_dir = tmp_path / "data"
    async with live_server(emulator.app) as emulator_url:
        env = {
            "SORAHOOK_DATABASE_URL": f"sqlite:///{data_dir / 'sorahook.db'}",
            "SORAHOOK_ADMIN_TOKEN": "test-admin-token",
            "SORAHOOK_LOG_FORMAT": "console",
            "OPENAI_API_KEY": "sk-test",
            "OPENAI_BASE_URL": f"{emulator_url}/v1",
            "OPENAI_WEBHOOK_SECRET": secret,
            "SORAHOOK_ARCHIVE_VARIANTS": "video",
        }
        svc = service_process(env, port=port)
        await asyncio.to_thread(svc.start)
        async with httpx.AsyncClient(base_url=svc.url, timeout=10) as client:
            job = (await client.post("/v1/jobs", json={"prompt": "big one"}, headers=auth())).json()
            folder = data_dir / "archive" / job["id"]
            final = folder / "video.mp4"

            async def streaming() -> list[Path]:
                temps = [p for p in folder.glob(".*.tmp") if p.stat().st_size > 0] if folder.exists() else []
                return temps

            temps = await wait_until(streaming, timeout=20)
            await asyncio.to_thread(svc.stop, signal.SIGKILL)
            assert not final.exists(), "a crash never leaves a half file under the real name"
            assert all(0 < t.stat().st_size < len(expected) for t in temps)

            emulator.config = replace(emulator.config, content_delay=0.0)
            await asyncio.to_thread(svc.start)
            done = await _wait_assets(client, job["id"], "video", timeout=30)
            asset = done["result"]["assets"]["video"]
            assert asset["sha256"] == sha256(expected) and asset["size"] == len(expected)
            assert final.read_bytes() == expected
            assert [p.name for p in folder.iterdir()] == ["video.mp4"], "the stale temp file was removed"
            part = await client.get(
                f"/v1/jobs/{job['id']}/content", headers={**auth(), "range": "bytes=1048576-1048675"}
            )
            assert part.status_code == 206 and part.content == expected[1048576:1048676]
            await asyncio.to_thread(svc.stop, signal.SIGTERM)
    assert final.exists()
