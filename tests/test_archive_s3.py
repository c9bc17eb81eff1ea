"""S3 storage against a real S3-compatible server on loopback (moto's standalone server), not a mocked client."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiobotocore.session import get_session
from moto.server import ThreadedMotoServer

from service.emulator.assets import CONTENT
from service.storage import S3Storage
from tests.support import auth, emulated_service, free_port, wait_until

pytestmark = pytest.mark.anyio

REGION = "us-east-1"
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server in a thread of this process, on a loopback port, for the module's tests."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials come from the standard AWS variables, as in production."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "sorahook-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sorahook-test-secret")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)


@pytest.fixture
async def bucket(s3_endpoint: str, aws_env: None) -> AsyncIterator[str]:
    name = f"sorahook-{secrets.token_hex(4)}"
    async with get_session().create_client("s3", region_name=REGION, endpoint_url=s3_endpoint) as client:
        await client.create_bucket(Bucket=name)
    yield name


async def _object(endpoint: str, bucket: str, key: str) -> bytes:
    async with get_session().create_client("s3", region_name=REGION, endpoint_url=endpoint) as client:
        answer = await client.get_object(Bucket=bucket, Key=key)
        async with answer["Body"] as body:
            return bytes(await body.read())


async def _uploads(endpoint: str, bucket: str) -> list[Any]:
    async with get_session().create_client("s3", region_name=REGION, endpoint_url=endpoint) as client:
        listed = await client.list_multipart_uploads(Bucket=bucket)
        return list(listed.get("Uploads", []))


async def test_a_large_object_goes_up_in_parts_and_reads_back_in_ranges(
    s3_endpoint: str, bucket: str
) -> None:
    storage = S3Storage(
        bucket=bucket, prefix="sora/", endpoint_url=s3_endpoint, region=REGION, part_size=5 * MIB
    )
    data = secrets.token_bytes(11 * MIB + 123)
    try:
        async with storage.open_writer("job_1/video.mp4", "video/mp4") as writer:
            for start in range(0, len(data), 256 * 1024):
                await writer.write(data[start : start + 256 * 1024])
            assert writer.upload_id is not None and len(writer.parts) == 2  # type: ignore[attr-defined]
            assert await storage.stat("job_1/video.mp4") is None, "invisible until committed"
            await writer.commit()
        assert await _object(s3_endpoint, bucket, "sora/job_1/video.mp4") == data
        found = await storage.stat("job_1/video.mp4")
        assert found is not None and found.size == len(data)
        assert storage.uri("job_1/video.mp4") == f"s3://{bucket}/sora/job_1/video.mp4"
        whole = b"".join([c async for c in storage.open_reader("job_1/video.mp4")])
        assert hashlib.sha256(whole).digest() == hashlib.sha256(data).digest()
        part = b"".join([c async for c in storage.open_reader("job_1/video.mp4", 6 * MIB, 6 * MIB + 99)])
        assert part == data[6 * MIB : 6 * MIB + 100]
        tail = b"".join([c async for c in storage.open_reader("job_1/video.mp4", len(data) - 10)])
        assert tail == data[-10:]
    finally:
        await storage.aclose()


async def test_a_small_object_is_one_put_and_an_abort_leaves_nothing(s3_endpoint: str, bucket: str) -> None:
    storage = S3Storage(bucket=bucket, endpoint_url=s3_endpoint, region=REGION, part_size=5 * MIB)
    try:
        async with storage.open_writer("job_2/thumbnail.jpg", "image/jpeg") as writer:
            await writer.write(b"jpeg bytes")
            await writer.commit()
        assert await _object(s3_endpoint, bucket, "job_2/thumbnail.jpg") == b"jpeg bytes"

        with pytest.raises(RuntimeError):
            async with storage.open_writer("job_2/video.mp4", "video/mp4") as writer:
                await writer.write(b"v" * (6 * MIB))  # one part uploaded, then the download breaks
                raise RuntimeError("the download broke")
        assert await storage.stat("job_2/video.mp4") is None
        assert await _uploads(s3_endpoint, bucket) == [], "the multipart upload was aborted"
    finally:
        await storage.aclose()


async def test_uploads_a_crash_left_open_are_aborted_at_start(s3_endpoint: str, bucket: str) -> None:
    async with get_session().create_client("s3", region_name=REGION, endpoint_url=s3_endpoint) as client:
        await client.create_multipart_upload(Bucket=bucket, Key="p/job_3/video.mp4")
        await client.create_multipart_upload(Bucket=bucket, Key="elsewhere/file")
    storage = S3Storage(bucket=bucket, prefix="p/", endpoint_url=s3_endpoint, region=REGION)
    try:
        await storage.prepare()
    finally:
        await storage.aclose()
    assert [u["Key"] for u in await _uploads(s3_endpoint, bucket)] == ["elsewhere/file"]


async def test_a_completed_video_is_archived_to_s3_and_served_from_there(
    tmp_path: Path, s3_endpoint: str, bucket: str
) -> None:
    overrides = {
        "archive_storage": "s3",
        "s3_bucket": bucket,
        "s3_prefix": "videos/",
        "s3_endpoint_url": s3_endpoint,
        "s3_region": REGION,
    }
    async with (
        emulated_service(tmp_path, **overrides) as (url, _emulator, _settings),
        httpx.AsyncClient(base_url=url) as client,
    ):
        job = (await client.post("/v1/jobs", json={"prompt": "to the bucket"}, headers=auth())).json()

        async def archived() -> Any:
            current = (await client.get(f"/v1/jobs/{job['id']}", headers=auth())).json()
            assets = (current["result"] or {}).get("assets") or {}
            return assets if {"video", "thumbnail"} <= set(assets) else None

        assets = await wait_until(archived, timeout=20)
        video = CONTENT["video"][0]
        assert assets["video"]["uri"] == f"s3://{bucket}/videos/{job['id']}/video.mp4"
        assert assets["video"]["sha256"] == hashlib.sha256(video).hexdigest()
        assert await _object(s3_endpoint, bucket, f"videos/{job['id']}/video.mp4") == video
        assert (
            await _object(s3_endpoint, bucket, f"videos/{job['id']}/thumbnail.jpg") == CONTENT["thumbnail"][0]
        )
        assert not (tmp_path / "archive").exists()

        content = f"/v1/jobs/{job['id']}/content"
        whole = await client.get(content, headers=auth())
        assert whole.status_code == 200 and whole.content == video
        assert whole.headers["etag"] == f'"{assets["video"]["sha256"]}"'
        part = await client.get(content, headers={**auth(), "range": "bytes=10-19"})
        assert part.status_code == 206 and part.content == video[10:20]
