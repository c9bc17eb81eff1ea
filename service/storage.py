"""Where archived assets live: a small Storage protocol, a local directory and S3-compatible object storage."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

    from service.config import Settings

log = logging.getLogger("sorahook.storage")

READ_CHUNK = 256 * 1024
LOCAL_BUFFER = (
    1024 * 1024
)  # bytes gathered before one write in a worker thread (one hop per MiB, not per chunk)
S3_PART_SIZE = 8 * 1024 * 1024  # S3 wants parts of at least 5 MiB (the last excepted); one part is buffered
TEMP_SUFFIX = ".tmp"


class StorageError(Exception):
    """The storage failed to write, read or find an object (retried by the archiver)."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int


class Writer(Protocol):
    """One object being written: `write` the bytes in order, then `commit`; leaving without commit aborts."""

    async def write(self, chunk: bytes) -> None: ...

    async def commit(self) -> None: ...


class Storage(Protocol):
    """Archived assets by key (`<job_id>/<variant>.<ext>`); an object appears under its key whole or not at all."""

    def open_writer(
        self, key: str, content_type: str | None = None
    ) -> AbstractAsyncContextManager[Writer]: ...

    def open_reader(self, key: str, start: int | None = None, end: int | None = None) -> AsyncIterator[bytes]:
        """The bytes of `key` from `start` to `end` inclusive (both optional), in chunks."""
        ...

    async def stat(self, key: str) -> StoredObject | None: ...

    def uri(self, key: str) -> str: ...

    async def prepare(self) -> None:
        """Called once before the archiver starts: clear what a crashed writer left behind."""
        ...

    async def aclose(self) -> None: ...


# --- local directory -------------------------------------------------------------------------------------


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        raise StorageError(f"invalid storage key {key!r}")
    return key


class _LocalWriter:
    def __init__(self, final: Path) -> None:
        self.final = final
        self.temp = final.with_name(f".{final.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")
        self._fd: int | None = None
        self._buffer: list[bytes] = []
        self._buffered = 0
        self.committed = False

    def _open(self) -> None:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    def _write_all(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    async def _flush(self) -> None:
        if self._buffered:
            data = b"".join(self._buffer)
            self._buffer, self._buffered = [], 0
            await asyncio.to_thread(self._write_all, data)

    async def write(self, chunk: bytes) -> None:
        if self.committed:
            raise StorageError("write after commit")
        self._buffer.append(chunk)
        self._buffered += len(chunk)
        if self._buffered >= LOCAL_BUFFER:
            await self._flush()

    def _finish(self) -> None:
        assert self._fd is not None
        os.fsync(self._fd)  # the bytes are on disk before the name points at them
        os.close(self._fd)
        self._fd = None
        os.replace(self.temp, self.final)
        directory = os.open(self.final.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # and the rename itself survives a power cut
        finally:
            os.close(directory)

    async def commit(self) -> None:
        await self._flush()
        await asyncio.to_thread(self._finish)
        self.committed = True

    def _discard(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temp)


class LocalStorage:
    """Files under `<root>/<job_id>/<variant>.<ext>`, written to a temporary name, fsync'd, then renamed."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        return self.root / _check_key(key)

    @contextlib.asynccontextmanager
    async def open_writer(self, key: str, content_type: str | None = None) -> AsyncIterator[Writer]:
        writer = _LocalWriter(self.path(key))
        try:
            await asyncio.to_thread(writer._open)
        except OSError as exc:
            raise StorageError(f"cannot create {writer.temp}: {exc}") from exc
        try:
            yield writer
        except OSError as exc:
            raise StorageError(f"writing {writer.temp} failed: {exc}") from exc
        finally:
            if not writer.committed:
                await asyncio.to_thread(writer._discard)

    async def open_reader(
        self, key: str, start: int | None = None, end: int | None = None
    ) -> AsyncIterator[bytes]:
        path = self.path(key)
        try:
            handle = await asyncio.to_thread(path.open, "rb")
        except OSError as exc:
            raise StorageError(f"cannot open {path}: {exc}") from exc
        try:
            position = start or 0
            if position:
                await asyncio.to_thread(handle.seek, position)
            while end is None or position <= end:
                want = READ_CHUNK if end is None else min(READ_CHUNK, end - position + 1)
                chunk = await asyncio.to_thread(handle.read, want)
                if not chunk:
                    break
                position += len(chunk)
                yield chunk
        finally:
            await asyncio.to_thread(handle.close)

    async def stat(self, key: str) -> StoredObject | None:
        try:
            result = await asyncio.to_thread(os.stat, self.path(key))
        except FileNotFoundError:
            return None
        return StoredObject(key, result.st_size)

    def uri(self, key: str) -> str:
        return self.path(key).resolve().as_uri()

    async def prepare(self) -> None:
        """Remove temporary files a crash left behind (only this process writes here, and it has not started)."""

        def sweep() -> int:
            removed = 0
            if not self.root.exists():
                return 0
            for temp in self.root.rglob(f".*{TEMP_SUFFIX}"):
                with contextlib.suppress(FileNotFoundError):
                    temp.unlink()
                    removed += 1
            return removed

        removed = await asyncio.to_thread(sweep)
        if removed:
            log.info("removed %d unfinished archive files left by an earlier run", removed)

    async def aclose(self) -> None:
        return None


# --- S3-compatible object storage ----------------------------------------------------------------------------


def _client_error_code(exc: Exception) -> str:
    response: Any = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class _S3Writer:
    """Buffers one part at a time: a single PUT for a small object, a multipart upload for a large one."""

    def __init__(self, client: S3Client, bucket: str, key: str, content_type: str | None, part_size: int):
        self.client, self.bucket, self.key = client, bucket, key
        self.content_type = content_type or "application/octet-stream"
        self.part_size = part_size
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []
        self._buffer = bytearray()
        self.committed = False

    async def _upload_part(self) -> None:
        if self.upload_id is None:
            created = await self.client.create_multipart_upload(
                Bucket=self.bucket, Key=self.key, ContentType=self.content_type
            )
            self.upload_id = created["UploadId"]
        number = len(self.parts) + 1
        answer = await self.client.upload_part(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=bytes(self._buffer),
        )
        self.parts.append({"ETag": answer["ETag"], "PartNumber": number})
        self._buffer.clear()

    async def write(self, chunk: bytes) -> None:
        if self.committed:
            raise StorageError("write after commit")
        self._buffer += chunk
        if len(self._buffer) >= self.part_size:
            await self._upload_part()

    async def commit(self) -> None:
        if self.upload_id is None:
            await self.client.put_object(
                Bucket=self.bucket, Key=self.key, Body=bytes(self._buffer), ContentType=self.content_type
            )
        else:
            if self._buffer:
                await self._upload_part()
            await self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": self.parts},  # type: ignore[typeddict-item]
            )
        self._buffer.clear()
        self.committed = True

    async def abort(self) -> None:
        self._buffer.clear()
        if self.upload_id is not None and not self.committed:
            try:
                await self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=self.key, UploadId=self.upload_id
                )
            except Exception:  # the bucket's lifecycle rule for incomplete uploads is the backstop
                log.warning("could not abort multipart upload %s of %s", self.upload_id, self.key)


class S3Storage:
    """An S3 bucket (AWS, MinIO, R2, …) through aiobotocore; credentials come from the standard AWS sources."""

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        part_size: int = S3_PART_SIZE,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.region = region
        self.part_size = part_size
        self._stack = AsyncExitStack()
        self._client: S3Client | None = None
        self._lock = asyncio.Lock()

    async def client(self) -> S3Client:
        async with self._lock:
            if self._client is None:
                from aiobotocore.session import get_session

                creator = get_session().create_client(
                    "s3", region_name=self.region, endpoint_url=self.endpoint_url
                )
                self._client = await self._stack.enter_async_context(creator)
            return self._client

    def object_key(self, key: str) -> str:
        return self.prefix + _check_key(key)

    @contextlib.asynccontextmanager
    async def open_writer(self, key: str, content_type: str | None = None) -> AsyncIterator[Writer]:
        writer = _S3Writer(
            await self.client(), self.bucket, self.object_key(key), content_type, self.part_size
        )
        try:
            yield writer
        finally:
            if not writer.committed:
                await writer.abort()

    async def open_reader(
        self, key: str, start: int | None = None, end: int | None = None
    ) -> AsyncIterator[bytes]:
        client = await self.client()
        request: dict[str, Any] = {"Bucket": self.bucket, "Key": self.object_key(key)}
        if start is not None or end is not None:
            request["Range"] = f"bytes={start or 0}-{'' if end is None else end}"
        try:
            answer = await client.get_object(**request)
        except Exception as exc:
            raise StorageError(f"cannot read {self.uri(key)}: {exc}") from exc
        async with answer["Body"] as body:
            while chunk := await body.read(READ_CHUNK):
                yield chunk

    async def stat(self, key: str) -> StoredObject | None:
        client = await self.client()
        try:
            head = await client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except Exception as exc:
            if _client_error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise StorageError(f"cannot stat {self.uri(key)}: {exc}") from exc
        return StoredObject(key, int(head["ContentLength"]))

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.object_key(key)}"

    async def prepare(self) -> None:
        """Abort multipart uploads under our prefix that a crashed process left open (they are never visible)."""
        client = await self.client()
        try:
            listed = await client.list_multipart_uploads(Bucket=self.bucket, Prefix=self.prefix)
            for upload in listed.get("Uploads", []):
                await client.abort_multipart_upload(
                    Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
        except Exception as exc:  # not every S3-compatible service lists uploads; a lifecycle rule also works
            log.warning("could not clear unfinished multipart uploads: %s", exc)

    async def aclose(self) -> None:
        await self._stack.aclose()
        self._client = None


def storage_from_settings(settings: Settings) -> Storage:
    """The storage SORAHOOK_ARCHIVE_STORAGE names: `<data dir>/archive` (local) or the S3 bucket."""
    if settings.archive_storage == "s3":
        assert settings.s3_bucket is not None, "config checks SORAHOOK_S3_BUCKET"
        return S3Storage(
            bucket=settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
        )
    return LocalStorage(settings.data_dir / "archive")
