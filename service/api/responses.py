"""The /v1 response bodies as typed models: the shapes /openapi.json documents, written once.

The store's records build these bodies (`Job.to_api()` and the like); tests/test_openapi.py checks real
answers against the schemas generated from these models, so a record and its model cannot drift apart.
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from service.domain import ERROR_CATEGORIES, ErrorCategory, Kind, Origin, Status
from service.store.records import DeliveryStatus

_CLOSED = ConfigDict(extra="forbid")
UnixTime = Annotated[int, Field(description="Unix time in seconds")]
Count = Annotated[int, Field(ge=0)]


class BatchItemError(BaseModel):
    model_config = _CLOSED

    index: Count
    param: str | None
    message: str


class ErrorBody(BaseModel):
    model_config = _CLOSED

    code: str = Field(description="A stable, machine-readable reason.")
    message: str = Field(description="A sentence for people.")
    param: str = Field(default="", description="The request field, query parameter or header at fault.")
    errors: list[BatchItemError] = Field(
        default=[], description="`invalid_batch` only: every bad job of the batch, by index."
    )


class Error(BaseModel):
    model_config = _CLOSED

    error: ErrorBody


class JobRequest(BaseModel):
    """What was asked of OpenAI (jobs made through POST /v1/jobs)."""

    model_config = ConfigDict(extra="allow")

    model: str = ""
    prompt: str = ""
    seconds: str = ""
    size: str = ""


class StoredAsset(BaseModel):
    size: int = Field(ge=0, description="bytes")
    sha256: str = Field(pattern="^[0-9a-f]{64}$")
    stored_at: UnixTime
    uri: str = Field(description="file://… or s3://bucket/key")


class FailedAsset(BaseModel):
    status: Literal["archive_failed"]
    error: str


class JobResult(BaseModel):
    """Filled in from OpenAI's object once the job is terminal."""

    model_config = ConfigDict(extra="allow")

    expires_at: int | None = None
    size: str | None = None
    seconds: str | None = None
    assets: dict[str, StoredAsset | FailedAsset] = Field(
        default={},
        description="sorahook's own copies, by variant (`video`, `thumbnail`, `spritesheet`), once each is final.",
    )


class JobError(BaseModel):
    model_config = ConfigDict(extra="allow")

    code: str | None
    message: str | None
    categories: list[str] = Field(
        default=[], description="`moderation_flagged` only: the flagged moderation categories."
    )
    category: ErrorCategory = Field(
        default=ERROR_CATEGORIES[0],
        description="What kind of failure, from a closed set (OpenAI's own code stays in `code`).",
    )
    user_message: str = Field(default="", description="One line a product can show its end user.")


class Job(BaseModel):
    model_config = _CLOSED

    id: str = Field(pattern="^job_")
    object: Literal["job"]
    kind: Kind
    resource_id: str | None = Field(description="OpenAI's id (video_…); null until submitted")
    status: Status
    progress: int = Field(ge=0, le=100)
    origin: Origin
    request: JobRequest | None
    estimated_cost_usd: Annotated[float, Field(ge=0)] | None = Field(
        description="USD per second (price table by model and size) × seconds, set at creation; null for "
        "other kinds and for a model or size with no price."
    )
    result: JobResult | None
    error: JobError | None
    callback_url: str | None
    metadata: dict[str, str]
    created_at: UnixTime
    updated_at: UnixTime
    completed_at: int | None
    sequence: int = Field(ge=0, description="+1 on every state change")


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    model_config = _CLOSED

    object: Literal["list"]
    data: list[T]
    has_more: bool
    first_id: str | None
    last_id: str | None = Field(description="Pass as `after` for the next page.")


class JobEvent(BaseModel):
    model_config = _CLOSED

    id: str
    object: Literal["job.event"]
    direction: Literal["received", "emitted"]
    type: str
    source: str
    created_at: UnixTime
    webhook_id: str | None
    payload: Any = Field(description="The event body as received or emitted (JSON).")


class JobEventList(BaseModel):
    object: Literal["list"]
    data: list[JobEvent]
    has_more: Literal[False]


class JobBatch(BaseModel):
    model_config = _CLOSED

    object: Literal["list"]
    data: list[Job] = Field(description="In the request's order.")


class UsageEntry(BaseModel):
    model_config = _CLOSED

    jobs: int = Field(ge=1)
    estimated_cost_usd: float


class Usage(BaseModel):
    model_config = _CLOSED

    object: Literal["usage"]
    since: int | None
    until: int | None
    total_estimated_cost_usd: float = Field(ge=0)
    jobs: Count
    by_model: dict[str, UsageEntry] = Field(description="By the job's model; `(none)` for jobs without one.")
    by_status: dict[str, UsageEntry]
    by_client: dict[str, UsageEntry] = Field(
        description="By the metadata value of SORAHOOK_QUOTA_KEY; `(none)` without one."
    )


class Subscription(BaseModel):
    """A subscription as listed: without its secret."""

    model_config = _CLOSED

    id: str = Field(pattern="^sub_")
    object: Literal["subscription"]
    url: str
    event_types: list[str] | None
    description: str | None
    enabled: bool
    ordered: bool
    disabled_reason: str | None
    created_at: UnixTime
    updated_at: UnixTime


class SubscriptionWithSecret(Subscription):
    """A subscription with the secret that signs its deliveries."""

    secret: str = Field(pattern="^whsec_", description="Signs deliveries.")
    previous_secret_expires_at: UnixTime = Field(
        default=0, description="Only after rotate-secret: until then deliveries carry both signatures."
    )


class Attempt(BaseModel):
    model_config = _CLOSED

    attempted_at: UnixTime
    status_code: int | None
    latency_ms: float = Field(ge=0)
    error: str | None
    response_body: str | None = Field(
        max_length=1024,
        description="The first 1 KiB of the endpoint's answer (UTF-8, invalid bytes replaced).",
    )


class Delivery(BaseModel):
    model_config = _CLOSED

    id: str = Field(pattern="^dlv_")
    object: Literal["delivery"]
    event_id: str
    event_type: str
    subscription_id: str | None
    job_id: str | None
    target: Literal["subscription", "callback_url"]
    url: str | None
    status: DeliveryStatus
    attempt_count: Count
    next_attempt_at: int | None
    created_at: UnixTime
    updated_at: UnixTime
    delivered_at: int | None
    last_status_code: int | None
    last_error: str | None
    attempts: list[Attempt]


class BulkRetry(BaseModel):
    model_config = _CLOSED

    object: Literal["delivery.retry"]
    subscription_id: str | None
    since: float | None
    retried: Count = Field(description="Dead deliveries made pending again.")


class WebhookAck(BaseModel):
    model_config = _CLOSED

    status: Literal["accepted", "duplicate"]


# Component name -> model; generic pages get their documented names.
RESPONSE_MODELS: dict[str, type[BaseModel]] = {
    "Error": Error,
    "Job": Job,
    "JobList": Page[Job],
    "JobEvent": JobEvent,
    "JobEventList": JobEventList,
    "JobBatch": JobBatch,
    "Usage": Usage,
    "Subscription": Subscription,
    "SubscriptionWithSecret": SubscriptionWithSecret,
    "SubscriptionList": Page[Subscription],
    "Attempt": Attempt,
    "Delivery": Delivery,
    "DeliveryList": Page[Delivery],
    "BulkRetry": BulkRetry,
    "WebhookAck": WebhookAck,
}
