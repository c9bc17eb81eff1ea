"""Serving an archived asset over HTTP: Content-Length, a SHA-256 ETag, If-None-Match and single byte ranges."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from service.errors import ApiError
from service.store.records import Job

if TYPE_CHECKING:
    from service.storage import Storage
    from service.store.protocol import Store

log = logging.getLogger("sorahook.api.assets")

_DIGITS = re.compile(r"[0-9]+")


class Unsatisfiable(Exception):
    """The range lies wholly outside the asset (416)."""


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """One `bytes=a-b`, `a-` or `-n` range as inclusive (start, end); None means serve the whole asset.

    Per RFC 9110 a server may ignore a Range it does not support: several ranges, other units and malformed
    values get the whole asset (200). A well-formed range that misses the asset raises Unsatisfiable.
    """
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first or last) or not _DIGITS.fullmatch(first + last):
        return None
    if not first:  # the last n bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - suffix), size - 1
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise Unsatisfiable
    return start, min(int(last) if last else size - 1, size - 1)


def _etag_matches(header: str, etag: str) -> bool:
    candidates = [part.strip() for part in header.split(",")]
    return "*" in candidates or any(c.removeprefix("W/") == etag for c in candidates)


async def serve_archived(
    request: Request, store: Store, storage: Storage, job: Job, variant: str
) -> Response | None:
    """The archived copy of `variant`, or None when there is none to serve (not stored, or gone from storage)."""
    record = await store.get_archive(job.id, variant)
    if record is None or record.status != "stored" or record.key is None or record.sha256 is None:
        return None
    found = await storage.stat(record.key)
    if found is None:
        log.warning("archived asset missing from storage", extra={"job_id": job.id, "variant": variant})
        return None
    size, key = found.size, record.key
    extension = "." + key.rsplit(".", 1)[-1] if "." in key.rsplit("/", 1)[-1] else ""
    etag = f'"{record.sha256}"'
    headers = {
        "etag": etag,
        "accept-ranges": "bytes",
        "content-disposition": f'inline; filename="{job.id}-{variant}{extension}"',
    }
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None and _etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    media_type = record.content_type or "application/octet-stream"
    span: tuple[int, int] | None = None
    range_header = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if range_header and (if_range is None or if_range.strip() == etag):
        try:
            span = parse_range(range_header, size)
        except Unsatisfiable:
            raise ApiError(
                416,
                "range_not_satisfiable",
                f"the range {range_header!r} lies outside the asset's {size} bytes",
                headers={"content-range": f"bytes */{size}", **headers},
            ) from None
    if span is None:
        headers["content-length"] = str(size)
        return StreamingResponse(storage.open_reader(key), headers=headers, media_type=media_type)
    start, end = span
    headers["content-range"] = f"bytes {start}-{end}/{size}"
    headers["content-length"] = str(end - start + 1)
    return StreamingResponse(
        storage.open_reader(key, start, end), status_code=206, headers=headers, media_type=media_type
    )
