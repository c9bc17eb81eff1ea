"""The jobs routes: create, track, read, list, cancel, timeline and content."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from pydantic_core import ErrorDetails
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from service.api.assets import serve_archived
from service.api.common import Late, UrlCheck, json_object, list_page
from service.api.schemas import (
    MAX_BATCH,
    MAX_METADATA_KEY,
    MAX_PROMPT,
    CreateJobBatchRequest,
    CreateJobRequest,
    ListJobsQuery,
    TrackJobRequest,
    common_message,
    limit_message,
    parse,
    query,
)
from service.clock import Clock
from service.config import Settings
from service.domain import KINDS, STATUSES, Kind, Observation, is_terminal, kind_for_resource_id
from service.domain.quotas import NewJob, QuotaExceeded, Quotas
from service.errors import ApiError, OpenAIError, PermanentOpenAIError
from service.metrics import Metrics
from service.models import DEFAULT_MODEL_TABLE, ModelTable, refusal
from service.store.records import IdempotencyKeyReused, Job

if TYPE_CHECKING:
    from service.openai_client import OpenAIClient
    from service.storage import Storage
    from service.store.protocol import Store

log = logging.getLogger("sorahook.api.jobs")

VARIANTS = ("video", "thumbnail", "spritesheet")
MAX_IDEMPOTENCY_KEY = 255
METADATA_PREFIX = "metadata."


def _field_error(param: str, message: str) -> ApiError:
    return ApiError(422, "invalid_field", message, param=param)


def fingerprint(body: Any) -> str:
    """SHA-256 of the body's canonical JSON (sorted keys, no spaces): key order and spacing do not count."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def _create_message(
    body: dict[str, Any], models: tuple[str, ...], table: ModelTable
) -> Callable[[ErrorDetails], str]:
    """The words for a bad POST /v1/jobs field; seconds and size name what the requested model allows."""

    def message(error: ErrorDetails) -> str:
        common = common_message(error)
        if common is not None:
            return common
        field = str(error["loc"][0])
        model = body.get("model", models[0])
        spec = table.spec(model if isinstance(model, str) else models[0])
        if field == "prompt" and error["type"] == "string_too_long":
            return f"prompt must be at most {MAX_PROMPT} characters"
        if field == "model":
            return f"model must be one of {', '.join(models)} (SORAHOOK_MODELS)"
        if field == "seconds":
            return f"seconds must be a string or a whole number; {spec.name} allows {', '.join(spec.seconds)}"
        if field == "size":
            return f"size must be a string like {spec.default_size}"
        return "prompt is required and must be a non-empty string"

    return message


def _list_message(error: ErrorDetails) -> str:
    field = str(error["loc"][0])
    if field == "status":
        return f"status must be one of {', '.join(STATUSES)}"
    if field == "kind":
        return f"kind must be one of {', '.join(KINDS)}"
    if field == "order":
        return "order must be asc or desc"
    return limit_message(error) or f"{field} must be a job id"


def _track_message(error: ErrorDetails) -> str:
    field = str(error["loc"][0])
    if field == "kind":
        return f"kind must be one of {', '.join(KINDS)}"
    return common_message(error) or "resource_id is required: the id OpenAI gave the resource"


def validate_create(
    body: dict[str, Any], models: tuple[str, ...], table: ModelTable = DEFAULT_MODEL_TABLE
) -> CreateJobRequest:
    """The video request: the model's checks, then the model table's (a refused combination names what the
    model allows). Absent model, seconds and size take the table's defaults."""
    req = parse(CreateJobRequest, body, _create_message(body, models, table))
    given = req.model_fields_set
    model = req.model if "model" in given else models[0]
    if model not in models:
        raise _field_error("model", f"model must be one of {', '.join(models)} (SORAHOOK_MODELS)")
    spec = table.spec(model)
    seconds = str(req.seconds) if "seconds" in given else spec.default_seconds
    size = req.size if "size" in given else spec.default_size
    refused = refusal(spec, seconds, size)
    if refused is not None:
        raise _field_error(*refused)
    return req.model_copy(update={"model": model, "seconds": seconds, "size": size})


class JobsApi:
    """The /v1/jobs routes, given exactly what they use."""

    def __init__(
        self,
        *,
        store: Late[Store],
        openai: Late[OpenAIClient],
        storage: Late[Storage],
        settings: Settings,
        metrics: Metrics,
        clock: Clock,
        urls: UrlCheck,
    ) -> None:
        self.store = store
        self.openai = openai
        self.storage = storage
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.urls = urls

    async def _job_or_404(self, key: str) -> Job:
        job = await self.store.get().get_job(key)
        if job is None:
            raise ApiError(404, "not_found", f"no job with id or resource id {key!r}")
        return job

    async def _new_job(self, body: dict[str, Any]) -> NewJob:
        """Validate one job request (raising a 422 ApiError naming the field) and price it."""
        settings = self.settings
        req = validate_create(body, settings.models, settings.model_table)
        callback_url = await self.urls(req.callback_url)
        metadata = req.metadata or {}
        seconds = str(req.seconds)
        return NewJob(
            request={"model": req.model, "prompt": req.prompt, "seconds": seconds, "size": req.size},
            callback_url=callback_url,
            metadata=metadata,
            client=metadata.get(settings.quota_key),
            estimated_cost_usd=settings.prices.estimate(req.model, req.size, seconds),
        )

    async def _store_new(
        self, request: Request, specs: list[NewJob], *, batch: bool, body: dict[str, Any]
    ) -> tuple[list[Job], dict[str, str]]:
        """Store the jobs under the quotas; a quota refusal is a 429 naming the limit, with Retry-After."""
        key = request.headers.get("idempotency-key")
        if key is not None and (not key or len(key) > MAX_IDEMPOTENCY_KEY):
            raise ApiError(
                422, "invalid_header", "Idempotency-Key must be 1 to 255 characters", param="Idempotency-Key"
            )
        s = self.settings
        try:
            jobs, created = await self.store.get().create_api_jobs(
                specs,
                quotas=Quotas(s.quota_concurrent, s.quota_per_hour, s.quota_daily_usd),
                idempotency_key=key,
                batch=batch,
                request_hash=fingerprint(body) if key is not None else None,
            )
        except IdempotencyKeyReused as exc:
            raise ApiError(
                422,
                "idempotency_key_reused",
                f"Idempotency-Key {exc.key!r} was already used with a different request body "
                f"(it made {', '.join(exc.job_ids)}); send the same body to get that answer again, "
                "or use a new key for a new request",
                param="Idempotency-Key",
            ) from None
        except QuotaExceeded as exc:
            retry_after = str(max(1, math.ceil(exc.retry_after)))
            raise ApiError(
                429, "quota_exceeded", exc.message, param=exc.param, headers={"Retry-After": retry_after}
            ) from None
        if not created:
            return jobs, {"Idempotent-Replayed": "true"}
        for job in jobs:
            self.metrics.count_created("video", (job.request or {}).get("model"), job.estimated_cost_usd)
        return jobs, {}

    async def create(self, request: Request) -> Response:
        body = await json_object(request)
        spec = await self._new_job(body)
        jobs, headers = await self._store_new(request, [spec], batch=False, body=body)
        return JSONResponse(jobs[0].to_api(), status_code=202, headers=headers)

    async def create_batch(self, request: Request) -> Response:
        """Up to MAX_BATCH jobs in one transaction: every item valid, or a 422 listing each bad one."""
        body = await json_object(request)
        items = parse(
            CreateJobBatchRequest,
            body,
            lambda _: f"jobs must be an array of 1 to {MAX_BATCH} job requests",
        ).jobs

        async def check(index: int, item: Any) -> NewJob | dict[str, Any]:
            if not isinstance(item, dict):
                return {"index": index, "param": None, "message": "each job must be a JSON object"}
            try:
                return await self._new_job(item)
            except ApiError as exc:
                return {"index": index, "param": exc.param, "message": exc.message}

        checked = await asyncio.gather(*(check(i, item) for i, item in enumerate(items)))
        errors = [c for c in checked if isinstance(c, dict)]
        if errors:
            message = f"{len(errors)} of {len(items)} jobs are invalid; no job was created"
            return JSONResponse(
                {"error": {"code": "invalid_batch", "message": message, "param": "jobs", "errors": errors}},
                status_code=422,
            )
        specs = [c for c in checked if isinstance(c, NewJob)]
        jobs, headers = await self._store_new(request, specs, batch=True, body=body)
        return JSONResponse(
            {"object": "list", "data": [j.to_api() for j in jobs]}, status_code=202, headers=headers
        )

    async def track(self, request: Request) -> Response:
        req = parse(TrackJobRequest, await json_object(request), _track_message)
        resource_id = req.resource_id
        kind: Kind | None = req.kind or kind_for_resource_id(resource_id)
        if kind is None:
            raise _field_error("kind", "kind is required when resource_id has no known prefix")
        callback_url = await self.urls(req.callback_url)
        metadata = req.metadata or {}
        job, created = await self.store.get().track_job(
            kind=kind, resource_id=resource_id, callback_url=callback_url, metadata=metadata
        )
        if created:
            self.metrics.count_created(kind, None, None)
        return JSONResponse(job.to_api(), status_code=201 if created else 200)

    async def get(self, request: Request) -> Response:
        job = await self._job_or_404(request.path_params["job_id"])
        return JSONResponse(job.to_api())

    async def list(self, request: Request) -> Response:
        q = request.query_params
        metadata: tuple[str, str] | None = None
        for name in q:
            if name.startswith(METADATA_PREFIX):
                key = name[len(METADATA_PREFIX) :]
                if not key or len(key) > MAX_METADATA_KEY:
                    raise ApiError(
                        422,
                        "invalid_parameter",
                        f"a metadata filter is metadata.<key>=<value> with a key of 1 to {MAX_METADATA_KEY} "
                        "characters",
                        param=name,
                    )
                values = q.getlist(name)
                if metadata is not None or len(values) > 1:
                    raise ApiError(
                        422, "invalid_parameter", "filter by one metadata key and value at most", param=name
                    )
                metadata = (key, values[0])
            elif name not in ListJobsQuery.model_fields:
                raise ApiError(
                    400,
                    "unknown_parameter",
                    f"unknown query parameter {name!r}; GET /v1/jobs takes "
                    f"{', '.join(ListJobsQuery.model_fields)} and metadata.<key>",
                    param=name,
                )
        args = query(ListJobsQuery, q, _list_message)
        jobs, has_more = await self.store.get().list_jobs(
            status=args.status,
            kind=args.kind,
            limit=args.limit,
            after=args.after,
            before=args.before,
            order=args.order,
            metadata=metadata,
        )
        return JSONResponse(list_page([j.to_api() for j in jobs], has_more))

    async def events(self, request: Request) -> Response:
        job = await self._job_or_404(request.path_params["job_id"])
        events = await self.store.get().job_events(job.id)
        return JSONResponse({"object": "list", "data": [e.to_api() for e in events], "has_more": False})

    async def cancel(self, request: Request) -> Response:
        job = await self._job_or_404(request.path_params["job_id"])
        if is_terminal(job.status):
            raise ApiError(409, "job_terminal", f"job is already {job.status}")
        if job.status != "pending":
            if job.kind != "video":
                raise ApiError(409, "cancel_not_supported", f"sorahook cannot cancel a {job.kind} at OpenAI")
            if job.resource_id:
                try:
                    await self.openai.get().delete_video(job.resource_id)
                except PermanentOpenAIError as exc:
                    if exc.status != 404:
                        raise ApiError(
                            502, "openai_error", f"OpenAI refused the delete: {exc.message}"
                        ) from None
                except OpenAIError as exc:
                    raise ApiError(502, "openai_error", f"OpenAI failed: {exc.message}") from None
        updated = await self.store.get().apply_observation(
            job.id, Observation(status="cancelled"), source="api"
        )
        if updated is None:
            raise ApiError(404, "not_found", "job disappeared")
        if updated.status != "cancelled":
            raise ApiError(409, "job_terminal", f"job became {updated.status} first")
        return JSONResponse(updated.to_api())

    async def content(self, request: Request) -> Response:
        job = await self._job_or_404(request.path_params["job_id"])
        variant = request.query_params.get("variant", "video")
        if variant not in VARIANTS:
            raise ApiError(
                422, "invalid_parameter", f"variant must be one of {', '.join(VARIANTS)}", param="variant"
            )
        if job.kind != "video":
            raise ApiError(409, "no_content", "only video jobs have content")
        if job.status != "completed" or not job.resource_id:
            raise ApiError(
                409, "job_not_completed", f"the video is {job.status}; content exists once it is completed"
            )
        archived = await serve_archived(request, self.store.get(), self.storage.get(), job, variant)
        if archived is not None:
            return archived
        expires_at = (job.result or {}).get("expires_at")
        if isinstance(expires_at, (int, float)) and self.clock.now() >= expires_at:
            raise ApiError(
                410,
                "content_expired",
                "OpenAI no longer serves this video's assets (expires_at passed) and there is no archived copy",
            )
        stream = self.openai.get().download_content(job.resource_id, variant)
        try:
            upstream = await stream.__aenter__()
        except PermanentOpenAIError as exc:
            if exc.status in (404, 410):
                raise ApiError(
                    410, "content_expired", f"OpenAI no longer serves this asset: {exc.message}"
                ) from None
            raise ApiError(502, "openai_error", f"OpenAI refused the download: {exc.message}") from None
        except OpenAIError as exc:
            raise ApiError(502, "openai_error", f"OpenAI failed: {exc.message}") from None

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.aiter_bytes(65536):
                    yield chunk
            finally:
                await stream.__aexit__(None, None, None)

        headers = {}
        for name in ("content-length", "content-type"):
            if name in upstream.headers:
                headers[name] = upstream.headers[name]
        headers["content-disposition"] = f'inline; filename="{job.id}-{variant}"'
        return StreamingResponse(body(), headers=headers, media_type=upstream.headers.get("content-type"))
