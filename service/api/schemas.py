"""The /v1 request bodies as typed models: one place for each field's type and bounds.

The handlers validate with these models and /openapi.json takes its request schemas from them, so a
rule is written once. What a model cannot know stays in the handler: the configured model table (which
seconds and sizes a model allows), and whether a URL's host is public (a DNS lookup).

A failed validation becomes the contract's 422 through `parse`: the first bad field is `param`, an
unknown field is named, and each model says in words what a field must be (`message`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import ErrorDetails

from service.domain import KINDS, Kind, Status
from service.errors import ApiError
from service.store.records import DeliveryStatus

MAX_PROMPT = 10_000
MAX_METADATA_KEYS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
MAX_BATCH = 100
MAX_URL = 2048
MAX_EVENT_TYPES = 100
MAX_DESCRIPTION = 500
MAX_SINCE = 1e11  # Unix seconds: far past any real time, and exact as a float
# OpenAI's id prefixes that tell the kind of a tracked resource (service.domain.kind_for_resource_id).
RESOURCE_PREFIXES: tuple[str, ...] = ("video_", "batch_", "resp_", "ftjob_")

# A URL's scheme and host are checked by ssrf.vet (422 invalid_url); the pattern tells clients the rule.
Url = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_URL,
        description="An absolute http(s) URL. Unless private targets are allowed, its host must resolve to "
        "public addresses only: loopback, private, link-local, multicast and reserved ones get 422 "
        "invalid_url.",
        examples=["https://hooks.example.com/sorahook"],
        json_schema_extra={"format": "uri", "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://[^/?#@]"},
    ),
]

Metadata = Annotated[
    dict[
        Annotated[str, StringConstraints(min_length=1, max_length=MAX_METADATA_KEY)],
        Annotated[str, StringConstraints(max_length=MAX_METADATA_VALUE)],
    ],
    Field(
        max_length=MAX_METADATA_KEYS,
        description=f"Up to {MAX_METADATA_KEYS} string keys (1 to {MAX_METADATA_KEY} characters) "
        f"with string values (at most {MAX_METADATA_VALUE} characters).",
    ),
]
METADATA = TypeAdapter(Metadata)

EventTypes = Annotated[
    list[
        Annotated[
            str,
            StringConstraints(min_length=1, max_length=100, pattern=r"^[a-z0-9._]*\*?$"),
            Field(
                description="An event type (`video.completed`), or a prefix ending in `*` (`video.*`, `*`)."
            ),
        ]
    ],
    Field(max_length=MAX_EVENT_TYPES, description="Event types to receive; null or empty means every type."),
]

EVENT_TYPES = TypeAdapter(EventTypes)

Description = Annotated[str, StringConstraints(max_length=MAX_DESCRIPTION)]
UnixSeconds = Annotated[float, Field(ge=0, le=MAX_SINCE, allow_inf_nan=False)]

# Strict: JSON's types as sent (no "5" for 5, no true for 1). Unset optional fields keep a placeholder
# default that is never validated; handlers read `model_fields_set` to tell "absent" from "null".
_STRICT = ConfigDict(strict=True, extra="forbid")
_STRICT_OPEN = ConfigDict(strict=True, extra="ignore")


class CreateJobRequest(BaseModel):
    """A video to make (POST /v1/jobs, and each item of POST /v1/jobs/batch)."""

    # model, seconds and size are checked against the configured model table after this model's own
    # checks; /openapi.json fills in their enums, defaults and per-model rules from the same table.

    model_config = _STRICT

    prompt: Annotated[str, Field(min_length=1, max_length=MAX_PROMPT, pattern=r"\S")] = Field(
        description="What the video shows; not blank."
    )
    model: str = ""
    seconds: str | int = ""
    size: str = ""
    callback_url: Url | None = None
    metadata: Metadata | None = None


class CreateJobBatchRequest(BaseModel):
    """Up to 100 video jobs, created all together or none."""

    # The items are validated one by one, so the 422 can list every bad one.

    model_config = _STRICT

    jobs: list[Any] = Field(
        min_length=1,
        max_length=MAX_BATCH,
        description="Created all together in one transaction, or none of them.",
    )


class TrackJobRequest(BaseModel):
    """A resource created elsewhere (a video, batch, response or fine-tuning job) for sorahook to follow."""

    model_config = ConfigDict(
        strict=True,
        extra="ignore",
        json_schema_extra={
            "anyOf": [
                {"properties": {"resource_id": {"pattern": f"^({'|'.join(RESOURCE_PREFIXES)})"}}},
                {"required": ["kind"], "properties": {"kind": {"enum": list(KINDS)}}},
            ]
        },
    )

    resource_id: Annotated[str, Field(min_length=1, max_length=256, pattern=r"\S")]
    kind: Kind | None = Field(
        default=None,
        description="Required when resource_id has no known prefix (video_, batch_, resp_, ftjob_).",
    )
    callback_url: Url | None = None
    metadata: Metadata | None = None


class CreateSubscriptionRequest(BaseModel):
    """An endpoint to receive signed events."""

    model_config = _STRICT_OPEN

    url: Url
    event_types: EventTypes | None = None
    description: Description | None = None
    ordered: bool = False


class UpdateSubscriptionRequest(BaseModel):
    """Only the fields sent change."""

    model_config = _STRICT

    url: Url = ""
    event_types: EventTypes | None = None
    enabled: bool = True
    description: Description | None = None
    ordered: bool = False


class ReplayRequest(BaseModel):
    """Send the subscription every event since a time again."""

    model_config = _STRICT_OPEN

    since: UnixSeconds = Field(description="Unix time in seconds")
    until: UnixSeconds | None = Field(
        default=None,
        description="Unix time in seconds, exclusive: replay only events before it (after since)",
    )


class BulkRetryRequest(BaseModel):
    """At least one filter; with both, a delivery must match both."""

    model_config = ConfigDict(strict=True, extra="forbid", json_schema_extra={"minProperties": 1})

    subscription_id: str | None = Field(default=None, description="Only this subscription's deliveries.")
    since: UnixSeconds | None = Field(
        default=None, description="Only deliveries made at or after this Unix time (seconds)."
    )


REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    CreateJobRequest,
    CreateJobBatchRequest,
    TrackJobRequest,
    CreateSubscriptionRequest,
    UpdateSubscriptionRequest,
    ReplayRequest,
    BulkRetryRequest,
)

M = TypeVar("M", bound=BaseModel)


def parse(
    model: type[M],
    body: dict[str, Any],
    message: Callable[[ErrorDetails], str],
    *,
    unknown: Callable[[str], str] = lambda name: f"unknown field {name!r}",
) -> M:
    """`body` as a `model`, or a 422 `invalid_field` naming the first bad field (an unknown one first)."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    extra = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
    if extra:
        raise ApiError(422, "invalid_field", unknown(extra[0]), param=extra[0])
    first = errors[0]
    param = str(first["loc"][0]) if first["loc"] else None
    raise ApiError(422, "invalid_field", message(first), param=param)


def metadata_message(error: ErrorDetails) -> str:
    """What a `metadata` failure says, by where in the object it failed."""
    loc = error["loc"]
    if len(loc) == 1:
        if error["type"] == "too_long":
            return f"metadata may hold at most {MAX_METADATA_KEYS} keys"
        return "metadata must be an object of string keys and string values"
    if loc[-1] == "[key]":
        return f"metadata keys must be 1 to {MAX_METADATA_KEY} characters"
    return f"metadata[{loc[1]!r}] must be a string of at most {MAX_METADATA_VALUE} characters"


def url_message(error: ErrorDetails) -> str:
    param = str(error["loc"][0])
    if error["type"] == "string_too_long":
        return f"{param} must be at most {MAX_URL} characters"
    if error["type"] == "missing":
        return f"{param} is required"
    return f"{param} must be an http(s) URL"


def event_types_message(error: ErrorDetails) -> str:
    if len(error["loc"]) == 1:
        return "event_types must be a list of event type names"
    item = error["input"]
    if isinstance(item, str) and "*" in item[:-1] and error["type"] == "string_pattern_mismatch":
        return f"'*' may only end an entry: {item!r}"
    return f"event_types holds an invalid entry: {item!r}"


def common_message(error: ErrorDetails) -> str | None:
    """The words for a field several bodies share (urls, metadata, event_types, description, since)."""
    field = str(error["loc"][0]) if error["loc"] else ""
    if field in ("url", "callback_url"):
        return url_message(error)
    if field == "metadata":
        return metadata_message(error)
    if field == "event_types":
        return event_types_message(error)
    if field == "description":
        return f"description must be a string of at most {MAX_DESCRIPTION} characters"
    if field == "since":
        return "since must be a Unix time in seconds"
    if field in ("enabled", "ordered"):
        return f"{field} must be true or false"
    if field == "subscription_id":
        return "subscription_id must be a string"
    return None


# --- query strings -------------------------------------------------------------------------------------------
# An empty value means the parameter was not given (`?status=&limit=` lists everything, 20 a page): `query`
# drops empty values before the model sees them, and /openapi.json lists "" as allowed for each parameter.

# Read as Python's int() reads it (so `5.0` is refused, as a page size is a whole number).
Limit = Annotated[
    int,
    Field(ge=1, le=100, description="Page size, 1 to 100."),
    BeforeValidator(lambda v: int(v) if isinstance(v, str) else v),
]
After = Annotated[str | None, Field(description="Cursor: the `last_id` of the previous page.")]


class ListJobsQuery(BaseModel):
    """GET /v1/jobs; `metadata.<key>` filters are read apart (their names are open)."""

    status: Status | None = Field(default=None, description="Only jobs in this status.")
    kind: Kind | None = Field(default=None, description="Only jobs of this kind.")
    order: Literal["asc", "desc"] = Field(
        default="desc", description="`desc` (newest first, the default) or `asc`."
    )
    after: Annotated[str, StringConstraints(max_length=256)] | None = Field(
        default=None, description="Cursor: the `last_id` of the previous page."
    )
    before: Annotated[str, StringConstraints(max_length=256)] | None = Field(
        default=None, description="Cursor: the `first_id` of the current page; returns the page before it."
    )
    limit: Limit = 20


class ListSubscriptionsQuery(BaseModel):
    """GET /v1/subscriptions: oldest first; the default page holds the most a page may."""

    limit: Limit = 100
    after: After = None


class ListDeliveriesQuery(BaseModel):
    subscription_id: str | None = Field(default=None, description="Only this subscription's deliveries.")
    job_id: str | None = Field(default=None, description="Only deliveries of this job's events.")
    status: DeliveryStatus | None = Field(default=None, description="Only deliveries in this status.")
    limit: Limit = 20
    after: After = None


MAX_TIME = 2**53  # JSON's exact-integer range: well past any real Unix time


def _whole_seconds(raw: Any) -> Any:
    """`1700000000`, `1.7e9` or `1700000000.0`: a number with no fraction (anything else is refused)."""
    if not isinstance(raw, str):
        return raw
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("not a number") from None
    if not (math.isfinite(value) and value == int(value)):
        raise ValueError("not whole seconds")
    return int(value)


QueryTime = Annotated[int, Field(ge=0, le=MAX_TIME), BeforeValidator(_whole_seconds)]


class UsageQuery(BaseModel):
    since: QueryTime | None = Field(
        default=None, description="Unix seconds, inclusive; all time when absent."
    )
    until: QueryTime | None = Field(default=None, description="Unix seconds, exclusive; no end when absent.")


Q = TypeVar("Q", bound=BaseModel)


def query(model: type[Q], params: Mapping[str, str], message: Callable[[ErrorDetails], str]) -> Q:
    """The query string as a `model` (unknown names ignored), or a 422 `invalid_parameter` naming the first
    bad parameter."""
    given = {name: value for name, value in params.items() if value != "" and name in model.model_fields}
    try:
        return model.model_validate(given)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise ApiError(422, "invalid_parameter", message(first), param=str(first["loc"][0])) from None


def limit_message(error: ErrorDetails) -> str | None:
    if error["loc"][0] != "limit":
        return None
    if error["type"] in ("greater_than_equal", "less_than_equal"):
        return "limit must be between 1 and 100"
    return "limit must be a whole number"


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """The model's fields as OpenAPI query parameters, each also allowing "" (not given)."""
    schema = model.model_json_schema()
    out = []
    for name, prop in schema["properties"].items():
        description = prop.pop("description", "")
        prop.pop("title", None)
        default = prop.pop("default", None)
        options = [p for p in prop.pop("anyOf", [prop]) if p != {"type": "null"}]
        [value] = options
        value = {k: v for k, v in value.items() if k != "title"}
        if "enum" in value or "const" in value:
            allowed: dict[str, Any] = {"enum": [*value.get("enum", [value.get("const")]), ""]}
        elif value.get("type") == "string" and "minLength" not in value:
            allowed = value  # "" is already a string
        else:
            allowed = {"anyOf": [value, {"const": ""}]}
        if default is not None:
            allowed["default"] = default
        out.append(
            {"name": name, "in": "query", "required": False, "description": description, "schema": allowed}
        )
    return out
