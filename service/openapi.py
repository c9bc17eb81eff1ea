"""The OpenAPI 3.1 document for every route create_app serves, written by hand and served at /openapi.json.

tests/test_openapi.py keeps it in step with the routes (both ways) and checks real responses against
its schemas; tests/test_fuzz.py runs schemathesis against it on a live server.
"""

from __future__ import annotations

import copy
import importlib.metadata
from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.api.jobs import (
    MAX_BATCH,
    MAX_IDEMPOTENCY_KEY,
    MAX_METADATA_KEY,
    MAX_METADATA_KEYS,
    MAX_METADATA_VALUE,
    MAX_PROMPT,
    VARIANTS,
)
from service.domain import ERROR_CATEGORIES, KINDS, STATUSES
from service.models import DEFAULT_MODEL_TABLE, ModelTable
from service.store.records import DELIVERY_STATUSES

__all__ = ["DEFAULT_MODELS", "openapi_document", "openapi_endpoint"]

DEFAULT_MODELS: tuple[str, ...] = ("sora-2", "sora-2-pro")
# OpenAI's id prefixes that tell the kind of a tracked resource (service.domain.kind_for_resource_id).
RESOURCE_PREFIXES: tuple[str, ...] = ("video_", "batch_", "resp_", "ftjob_")

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    """`schema` or null (OpenAPI 3.1 is JSON Schema 2020-12: no `nullable`)."""
    return {"anyOf": [schema, {"type": "null"}]}


def _json(schema: Schema, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    out["headers"] = {"X-Request-Id": {"$ref": "#/components/headers/RequestId"}, **(headers or {})}
    return out


def _error(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


_BASE64 = "(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?"
_UNIX_TIME: Schema = {"type": "integer", "description": "Unix time in seconds"}
_SUBSCRIPTION_PROPERTIES: dict[str, Schema] = {
    "id": {"type": "string", "pattern": "^sub_"},
    "object": {"const": "subscription"},
    "url": {"type": "string"},
    "event_types": {"type": ["array", "null"], "items": {"type": "string"}},
    "description": {"type": ["string", "null"]},
    "enabled": {"type": "boolean"},
    "ordered": {"type": "boolean"},
    "disabled_reason": {"type": ["string", "null"]},
    "created_at": _UNIX_TIME,
    "updated_at": _UNIX_TIME,
}
_SUBSCRIPTION_REQUIRED = list(_SUBSCRIPTION_PROPERTIES)
_ID: Schema = {"type": "string", "minLength": 1}

# issue 9: the archived copies of a completed video's assets, by variant, and the headers they are served with.
_ASSETS: Schema = {
    "type": "object",
    "description": "sorahook's own copies, by variant (`video`, `thumbnail`, `spritesheet`), once each is final.",
    "additionalProperties": {
        "oneOf": [
            {
                "type": "object",
                "required": ["size", "sha256", "stored_at", "uri"],
                "properties": {
                    "size": {"type": "integer", "minimum": 0, "description": "bytes"},
                    "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                    "stored_at": _UNIX_TIME,
                    "uri": {"type": "string", "description": "file://… or s3://bucket/key"},
                },
            },
            {
                "type": "object",
                "required": ["status", "error"],
                "properties": {"status": {"const": "archive_failed"}, "error": {"type": "string"}},
            },
        ]
    },
}
_ARCHIVE_HEADERS: dict[str, Any] = {
    "ETag": {"description": "The archived asset's SHA-256, quoted.", "schema": {"type": "string"}},
    "Accept-Ranges": {"description": "`bytes` when served from the archive.", "schema": {"type": "string"}},
}

# The `url` / `callback_url` rule: an absolute http(s) URL whose host resolves to public addresses only
# (unless SORAHOOK_ALLOW_PRIVATE_TARGETS); anything else is a 422 `invalid_url` naming the reason.
_URL: Schema = {
    "type": "string",
    "minLength": 1,
    "maxLength": 2048,
    "format": "uri",
    "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://[^/?#@]",
    "description": "An absolute http(s) URL. Unless private targets are allowed, its host must resolve to "
    "public addresses only: loopback, private, link-local, multicast and reserved ones get 422 invalid_url.",
    "examples": ["https://hooks.example.com/sorahook"],
}

_EVENT_TYPES: Schema = _nullable(
    {
        "type": "array",
        "maxItems": 100,
        "items": {
            "type": "string",
            "minLength": 1,
            "maxLength": 100,
            "pattern": r"^[a-z0-9._]*\*?$",
            "description": "An event type (`video.completed`), or a prefix ending in `*` (`video.*`, `*`).",
        },
        "description": "Event types to receive; null or empty means every type.",
    }
)

_DESCRIPTION: Schema = _nullable({"type": "string", "maxLength": 500})


def _model_rules(models: Sequence[str], table: ModelTable) -> list[Schema]:
    """Per model, the seconds and sizes it allows (JSON Schema if/then); no `model` means the first one."""
    rules: list[Schema] = []
    for index, name in enumerate(models):
        spec = table.spec(name)
        chosen: Schema = {"properties": {"model": {"const": name}}, "required": ["model"]}
        if index == 0:
            chosen = {"anyOf": [chosen, {"not": {"required": ["model"]}}]}
        allowed: Schema = {
            "properties": {
                "seconds": {"enum": [*spec.seconds, *(int(s) for s in spec.seconds)]},
                "size": {"enum": list(spec.sizes)},
            }
        }
        rules.append({"if": chosen, "then": allowed})
    return rules


def _schemas(models: Sequence[str], table: ModelTable = DEFAULT_MODEL_TABLE) -> dict[str, Schema]:
    seconds, sizes = table.seconds_values(models), table.size_values(models)
    metadata: Schema = {
        "type": "object",
        "maxProperties": MAX_METADATA_KEYS,
        "propertyNames": {"minLength": 1, "maxLength": MAX_METADATA_KEY},
        "additionalProperties": {"type": "string", "maxLength": MAX_METADATA_VALUE},
        "description": f"Up to {MAX_METADATA_KEYS} string keys (1 to {MAX_METADATA_KEY} characters) "
        f"with string values (at most {MAX_METADATA_VALUE} characters).",
    }
    job_error: Schema = {
        "type": "object",
        "required": ["code", "message"],
        "properties": {
            "code": {"type": ["string", "null"]},
            "message": {"type": ["string", "null"]},
            "categories": {
                "type": "array",
                "items": {"type": "string"},
                "description": "`moderation_flagged` only: the flagged moderation categories.",
            },
            "category": {
                "enum": list(ERROR_CATEGORIES),
                "description": "What kind of failure, from a closed set (OpenAI's own code stays in `code`).",
            },
            "user_message": {"type": "string", "description": "One line a product can show its end user."},
        },
    }
    usage_entry: Schema = {
        "type": "object",
        "required": ["jobs", "estimated_cost_usd"],
        "additionalProperties": False,
        "properties": {"jobs": {"type": "integer", "minimum": 1}, "estimated_cost_usd": {"type": "number"}},
    }
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "additionalProperties": False,
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "additionalProperties": False,
                    "properties": {
                        "code": {"type": "string", "description": "A stable, machine-readable reason."},
                        "message": {"type": "string", "description": "A sentence for people."},
                        "param": {
                            "type": "string",
                            "description": "The request field, query parameter or header at fault.",
                        },
                        "errors": {
                            "type": "array",
                            "description": "`invalid_batch` only: every bad job of the batch, by index.",
                            "items": {
                                "type": "object",
                                "required": ["index", "param", "message"],
                                "additionalProperties": False,
                                "properties": {
                                    "index": {"type": "integer", "minimum": 0},
                                    "param": {"type": ["string", "null"]},
                                    "message": {"type": "string"},
                                },
                            },
                        },
                    },
                }
            },
        },
        "Metadata": metadata,
        "Job": {
            "type": "object",
            "required": [
                "id",
                "object",
                "kind",
                "resource_id",
                "status",
                "progress",
                "origin",
                "request",
                "estimated_cost_usd",
                "result",
                "error",
                "callback_url",
                "metadata",
                "created_at",
                "updated_at",
                "completed_at",
                "sequence",
            ],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "string", "pattern": "^job_"},
                "object": {"const": "job"},
                "kind": {"enum": list(KINDS)},
                "resource_id": {
                    "type": ["string", "null"],
                    "description": "OpenAI's id (video_…); null until submitted",
                },
                "status": {"enum": list(STATUSES)},
                "progress": {"type": "integer", "minimum": 0, "maximum": 100},
                "origin": {"enum": ["api", "track", "webhook"]},
                "request": _nullable(
                    {
                        "type": "object",
                        "description": "What was asked of OpenAI (jobs made through POST /v1/jobs).",
                        "properties": {
                            "model": {"type": "string"},
                            "prompt": {"type": "string"},
                            "seconds": {"type": "string"},
                            "size": {"type": "string"},
                        },
                    }
                ),
                "estimated_cost_usd": {
                    "type": ["number", "null"],
                    "minimum": 0,
                    "description": "USD per second (price table by model and size) × seconds, set at "
                    "creation; null for other kinds and for a model or size with no price.",
                },
                "result": _nullable(
                    {
                        "type": "object",
                        "description": "Filled in from OpenAI's object once the job is terminal.",
                        "properties": {
                            "expires_at": {"type": ["integer", "null"]},
                            "size": {"type": ["string", "null"]},
                            "seconds": {"type": ["string", "null"]},
                            "assets": _ASSETS,
                        },
                    }
                ),
                "error": _nullable(job_error),
                "callback_url": {"type": ["string", "null"]},
                "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                "created_at": _UNIX_TIME,
                "updated_at": _UNIX_TIME,
                "completed_at": {"type": ["integer", "null"]},
                "sequence": {"type": "integer", "minimum": 0, "description": "+1 on every state change"},
            },
        },
        "JobList": _list_of(_ref("Job"), paginated=True),
        "JobEvent": {
            "type": "object",
            "required": [
                "id",
                "object",
                "direction",
                "type",
                "source",
                "created_at",
                "webhook_id",
                "payload",
            ],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "string"},
                "object": {"const": "job.event"},
                "direction": {"enum": ["received", "emitted"]},
                "type": {"type": "string"},
                "source": {"type": "string"},
                "created_at": _UNIX_TIME,
                "webhook_id": {"type": ["string", "null"]},
                "payload": {"description": "The event body as received or emitted (JSON)."},
            },
        },
        "JobEventList": {
            "type": "object",
            "required": ["object", "data", "has_more"],
            "properties": {
                "object": {"const": "list"},
                "data": {"type": "array", "items": _ref("JobEvent")},
                "has_more": {"const": False},
            },
        },
        "CreateJobRequest": {
            "type": "object",
            "required": ["prompt"],
            "additionalProperties": False,
            "allOf": _model_rules(models, table),
            "properties": {
                "prompt": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_PROMPT,
                    "pattern": r"\S",
                    "description": "What the video shows; not blank.",
                },
                "model": {"enum": list(models), "default": models[0]},
                "seconds": {
                    "enum": [*seconds, *(int(s) for s in seconds)],
                    "default": table.spec(models[0]).default_seconds,
                    "description": "Clip length; a string as OpenAI takes it, or the same whole number. "
                    "Each model allows its own lengths (the model table, SORAHOOK_MODELS_FILE).",
                },
                "size": {
                    "enum": list(sizes),
                    "default": table.spec(models[0]).default_size,
                    "description": "Each model allows its own sizes (the model table).",
                },
                "callback_url": _nullable(_URL),
                "metadata": _nullable(_ref("Metadata")),
            },
        },
        "CreateJobBatchRequest": {
            "type": "object",
            "required": ["jobs"],
            "additionalProperties": False,
            "properties": {
                "jobs": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_BATCH,
                    "items": _ref("CreateJobRequest"),
                    "description": "Created all together in one transaction, or none of them.",
                }
            },
        },
        "JobBatch": {
            "type": "object",
            "required": ["object", "data"],
            "additionalProperties": False,
            "properties": {
                "object": {"const": "list"},
                "data": {"type": "array", "items": _ref("Job"), "description": "In the request's order."},
            },
        },
        "Usage": {
            "type": "object",
            "required": [
                "object",
                "since",
                "until",
                "total_estimated_cost_usd",
                "jobs",
                "by_model",
                "by_status",
                "by_client",
            ],
            "additionalProperties": False,
            "properties": {
                "object": {"const": "usage"},
                "since": {"type": ["integer", "null"]},
                "until": {"type": ["integer", "null"]},
                "total_estimated_cost_usd": {"type": "number", "minimum": 0},
                "jobs": {"type": "integer", "minimum": 0},
                "by_model": {
                    "type": "object",
                    "additionalProperties": usage_entry,
                    "description": "By the job's model; `(none)` for jobs without one.",
                },
                "by_status": {"type": "object", "additionalProperties": usage_entry},
                "by_client": {
                    "type": "object",
                    "additionalProperties": usage_entry,
                    "description": "By the metadata value of SORAHOOK_QUOTA_KEY; `(none)` without one.",
                },
            },
        },
        "TrackJobRequest": {
            "type": "object",
            "required": ["resource_id"],
            "anyOf": [
                {"properties": {"resource_id": {"pattern": f"^({'|'.join(RESOURCE_PREFIXES)})"}}},
                {"required": ["kind"], "properties": {"kind": {"enum": list(KINDS)}}},
            ],
            "properties": {
                "kind": {
                    "anyOf": [{"enum": list(KINDS)}, {"type": "null"}],
                    "description": "Required when resource_id has no known prefix (video_, batch_, resp_, ftjob_).",
                },
                "resource_id": {"type": "string", "minLength": 1, "maxLength": 256, "pattern": r"\S"},
                "callback_url": _nullable(_URL),
                "metadata": _nullable(_ref("Metadata")),
            },
        },
        "Subscription": {
            "type": "object",
            "required": _SUBSCRIPTION_REQUIRED,
            "properties": _SUBSCRIPTION_PROPERTIES,
            "additionalProperties": False,
            "description": "A subscription as listed: without its secret.",
        },
        "SubscriptionWithSecret": {
            "type": "object",
            "required": [*_SUBSCRIPTION_REQUIRED, "secret"],
            "properties": {
                **_SUBSCRIPTION_PROPERTIES,
                "secret": {"type": "string", "pattern": "^whsec_", "description": "Signs deliveries."},
                "previous_secret_expires_at": {
                    **_UNIX_TIME,
                    "description": "Only after rotate-secret: until then deliveries carry both signatures.",
                },
            },
            "additionalProperties": False,
        },
        "SubscriptionList": _list_of(_ref("Subscription"), paginated=True),
        "CreateSubscriptionRequest": {
            "type": "object",
            "required": ["url"],
            "properties": {
                "url": _URL,
                "event_types": _EVENT_TYPES,
                "description": _DESCRIPTION,
                "ordered": {"type": "boolean", "default": False},
            },
        },
        "UpdateSubscriptionRequest": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "url": _URL,
                "event_types": _EVENT_TYPES,
                "enabled": {"type": "boolean"},
                "description": _DESCRIPTION,
                "ordered": {"type": "boolean"},
            },
        },
        "ReplayRequest": {
            "type": "object",
            "required": ["since"],
            "properties": {
                "since": {"type": "number", "minimum": 0, "description": "Unix time in seconds"},
                "until": {
                    "type": "number",
                    "maximum": 1e11,
                    "description": "Optional end of the range (Unix seconds, exclusive); must be after `since`.",
                },
            },
        },
        "Attempt": {
            "type": "object",
            "required": ["attempted_at", "status_code", "latency_ms", "error", "response_body"],
            "additionalProperties": False,
            "properties": {
                "attempted_at": _UNIX_TIME,
                "status_code": {"type": ["integer", "null"]},
                "latency_ms": {"type": "number", "minimum": 0},
                "error": {"type": ["string", "null"]},
                "response_body": {
                    "type": ["string", "null"],
                    "maxLength": 1024,
                    "description": "The first 1 KiB of the endpoint's answer (UTF-8, invalid bytes replaced).",
                },
            },
        },
        "BulkRetryRequest": {
            "type": "object",
            "additionalProperties": False,
            "minProperties": 1,
            "description": "At least one filter; with both, a delivery must match both.",
            "properties": {
                "subscription_id": {"type": "string", "description": "Only this subscription's deliveries."},
                "since": {
                    "type": "number",
                    "minimum": 0,
                    "maximum": 1e11,
                    "description": "Only deliveries made at or after this Unix time (seconds).",
                },
            },
        },
        "BulkRetry": {
            "type": "object",
            "required": ["object", "subscription_id", "since", "retried"],
            "additionalProperties": False,
            "properties": {
                "object": {"const": "delivery.retry"},
                "subscription_id": {"type": ["string", "null"]},
                "since": {"type": ["number", "null"]},
                "retried": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Dead deliveries made pending again.",
                },
            },
        },
        "Delivery": {
            "type": "object",
            "required": [
                "id",
                "object",
                "event_id",
                "event_type",
                "subscription_id",
                "job_id",
                "target",
                "url",
                "status",
                "attempt_count",
                "next_attempt_at",
                "created_at",
                "updated_at",
                "delivered_at",
                "last_status_code",
                "last_error",
                "attempts",
            ],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "string", "pattern": "^dlv_"},
                "object": {"const": "delivery"},
                "event_id": {"type": "string"},
                "event_type": {"type": "string"},
                "subscription_id": {"type": ["string", "null"]},
                "job_id": {"type": ["string", "null"]},
                "target": {"enum": ["subscription", "callback_url"]},
                "url": {"type": ["string", "null"]},
                "status": {"enum": list(DELIVERY_STATUSES)},
                "attempt_count": {"type": "integer", "minimum": 0},
                "next_attempt_at": {"type": ["integer", "null"]},
                "created_at": _UNIX_TIME,
                "updated_at": _UNIX_TIME,
                "delivered_at": {"type": ["integer", "null"]},
                "last_status_code": {"type": ["integer", "null"]},
                "last_error": {"type": ["string", "null"]},
                "attempts": {"type": "array", "items": _ref("Attempt")},
            },
        },
        "DeliveryList": _list_of(_ref("Delivery"), paginated=True),
        "WebhookEvent": {
            "type": "object",
            "required": ["id", "type", "data"],
            "description": "OpenAI's event envelope (Standard Webhooks), signed over the raw body.",
            "properties": {
                "id": {"type": "string"},
                "object": {"const": "event"},
                "type": {"type": "string", "minLength": 1, "examples": ["video.completed"]},
                "created_at": {"type": "integer"},
                "data": {
                    "type": "object",
                    "required": ["id"],
                    "properties": {"id": {"type": "string", "minLength": 1}},
                },
            },
        },
        "WebhookAck": {
            "type": "object",
            "required": ["status"],
            "additionalProperties": False,
            "properties": {"status": {"enum": ["accepted", "duplicate"]}},
        },
    }


def _list_of(item: Schema, *, paginated: bool) -> Schema:
    return {
        "type": "object",
        "required": ["object", "data", "has_more", "first_id", "last_id"],
        "additionalProperties": False,
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": item},
            "has_more": {"type": "boolean"} if paginated else {"const": False},
            "first_id": {"type": ["string", "null"]},
            "last_id": {"type": ["string", "null"], "description": "Pass as `after` for the next page."},
        },
    }


def _responses() -> dict[str, Any]:
    def err(description: str) -> dict[str, Any]:
        return _json(_ref("Error"), description)

    return {
        "BadRequest": err("The body is not a JSON object (`invalid_json`)."),
        "Unauthorized": err("No bearer token, or the wrong one (`unauthorized`)."),
        "NotFound": err("No such object (`not_found`)."),
        "Conflict": err("The object is not in a state that allows this."),
        "Gone": err("OpenAI no longer serves the asset (`content_expired`)."),
        "PayloadTooLarge": err("The body is larger than the limit (`body_too_large`)."),
        "Unprocessable": err("A field, query parameter or header is invalid; `param` names it."),
        "QuotaExceeded": _json(
            _ref("Error"),
            "Over a client's quota (`quota_exceeded`); `param` names the limit: concurrent_jobs, "
            "jobs_per_hour or daily_spend_usd.",
            {
                "Retry-After": {
                    "description": "Seconds until the request could pass, at the soonest.",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                }
            },
        ),
        "BadGateway": err("OpenAI failed or refused (`openai_error`)."),
    }


def _op(
    summary: str,
    operation_id: str,
    responses: dict[str, Any],
    *,
    parameters: list[dict[str, Any]] | None = None,
    body: str | None = None,
    body_required: bool = True,
    auth: bool = True,
    tags: list[str] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "operationId": operation_id}
    if tags:
        op["tags"] = tags
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = {
            "required": body_required,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    if auth:
        op["security"] = [{"bearerAuth": []}]
        responses = {**responses, "401": _error("Unauthorized")}
    op["responses"] = dict(sorted(responses.items()))
    return op


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": _ID}


def _query(name: str, schema: Schema, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


# An empty query value means the parameter was not given (`?status=&limit=` lists everything, 20 a page).
_LIMIT = _query(
    "limit",
    {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 100}, {"const": ""}], "default": 20},
    "Page size, 1 to 100.",
)
_AFTER = _query("after", {"type": "string"}, "Cursor: the `last_id` of the previous page.")

_JOB_LINKS: dict[str, Any] = {
    "GetJob": {"operationId": "getJob", "parameters": {"job_id": "$response.body#/id"}},
    "CancelJob": {"operationId": "cancelJob", "parameters": {"job_id": "$response.body#/id"}},
    "GetJobEvents": {"operationId": "listJobEvents", "parameters": {"job_id": "$response.body#/id"}},
    "GetJobContent": {"operationId": "getJobContent", "parameters": {"job_id": "$response.body#/id"}},
}

# A tracked job has its resource id from the start (a created one gets it only once submitted).
_TRACK_LINKS: dict[str, Any] = {
    **_JOB_LINKS,
    "GetJobByResourceId": {"operationId": "getJob", "parameters": {"job_id": "$response.body#/resource_id"}},
}

_SUB_LINKS: dict[str, Any] = {
    **{
        name: {"operationId": op, "parameters": {"sub_id": "$response.body#/id"}}
        for name, op in (
            ("GetSubscription", "getSubscription"),
            ("UpdateSubscription", "updateSubscription"),
            ("DeleteSubscription", "deleteSubscription"),
            ("RotateSecret", "rotateSubscriptionSecret"),
            ("SendTestEvent", "testSubscription"),
            ("Replay", "replaySubscription"),
        )
    },
    "ListDeliveries": {
        "operationId": "listDeliveries",
        "parameters": {"subscription_id": "$response.body#/id"},
    },
}


def _with_links(response: dict[str, Any], links: dict[str, Any]) -> dict[str, Any]:
    return {**response, "links": copy.deepcopy(links)}


def _paths() -> dict[str, Any]:
    job_id = _path_param("job_id", "A job id (`job_…`) or the OpenAI resource id it tracks.")
    sub_id = _path_param("sub_id", "A subscription id (`sub_…`).")
    delivery_id = _path_param("delivery_id", "A delivery id (`dlv_…`).")
    job = _json(_ref("Job"), "The job.")
    sub_secret = _json(_ref("SubscriptionWithSecret"), "The subscription, with its signing secret.")
    webhook_headers = [
        {"name": name, "in": "header", "required": True, "description": description, "schema": schema}
        for name, description, schema in (
            (
                "webhook-id",
                "The message id; a repeated id is acknowledged as a duplicate.",
                {"type": "string", "minLength": 1, "maxLength": 256},
            ),
            (
                "webhook-timestamp",
                "Unix seconds; must be within SORAHOOK_WEBHOOK_TOLERANCE of now.",
                {"type": "string", "pattern": "^[0-9]{1,12}$"},
            ),
            (
                "webhook-signature",
                "Space-separated `v1,<base64 HMAC-SHA256>` signatures; one must match a configured secret.",
                {"type": "string", "pattern": f"^v1,{_BASE64}( v1,{_BASE64})*$"},
            ),
        )
    ]
    body_errors = {
        "400": _error("BadRequest"),
        "413": _error("PayloadTooLarge"),
        "422": _error("Unprocessable"),
    }
    return {
        "/webhooks/openai": {
            "post": _op(
                "Receive an OpenAI webhook",
                "receiveOpenAIWebhook",
                {
                    "200": _json(_ref("WebhookAck"), "Stored (accepted) or seen before (duplicate)."),
                    "400": _json(
                        _ref("Error"),
                        "Missing or malformed webhook headers (`missing_headers`), or a verified body that is "
                        "not an event with string id, type and data.id (`invalid_payload`).",
                    ),
                    "401": _json(
                        _ref("Error"),
                        "No signature matches (`invalid_signature`) or the timestamp is outside the "
                        "tolerance (`timestamp_out_of_tolerance`).",
                    ),
                    "413": _json(_ref("Error"), "The body is larger than SORAHOOK_MAX_BODY_BYTES."),
                    "503": _json(_ref("Error"), "Shutting down (`shutting_down`); OpenAI retries."),
                },
                parameters=webhook_headers,
                body="WebhookEvent",
                auth=False,
                tags=["webhooks"],
            )
        },
        "/v1/jobs": {
            "post": _op(
                "Create a video job",
                "createJob",
                {
                    "202": _with_links(
                        _json(
                            _ref("Job"),
                            "The job, stored as pending; it is submitted to OpenAI in the background.",
                            {
                                "Idempotent-Replayed": {
                                    "description": "`true` when an earlier request with the same "
                                    "Idempotency-Key made this job.",
                                    "schema": {"const": "true"},
                                }
                            },
                        ),
                        _JOB_LINKS,
                    ),
                    **body_errors,
                    "429": _error("QuotaExceeded"),
                },
                parameters=[
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "description": "The same key with the same body returns the same job; "
                        "with another body it is refused (422 `idempotency_key_reused`).",
                        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY},
                    }
                ],
                body="CreateJobRequest",
                tags=["jobs"],
            ),
            "get": {
                **_op(
                    "List jobs, newest first",
                    "listJobs",
                    {
                        "200": _json(_ref("JobList"), "A page of jobs."),
                        "400": _json(
                            _ref("Error"), "A query parameter this route does not take (`unknown_parameter`)."
                        ),
                        "422": _error("Unprocessable"),
                    },
                    parameters=[
                        _query("status", {"enum": [*STATUSES, ""]}, "Only jobs in this status."),
                        _query("kind", {"enum": [*KINDS, ""]}, "Only jobs of this kind."),
                        _LIMIT,
                        _AFTER,
                        _query(
                            "before",
                            {"type": "string", "maxLength": 256},
                            "Cursor: the `first_id` of the current page; returns the page before it.",
                        ),
                        _query(
                            "order",
                            {"enum": ["asc", "desc", ""], "default": "desc"},
                            "`desc` (newest first, the default) or `asc`.",
                        ),
                    ],
                    tags=["jobs"],
                ),
                "description": "Filter by one metadata entry with `metadata.<key>=<value>` "
                "(e.g. `metadata.customer=acme`). Any other query parameter is refused "
                "(400 `unknown_parameter`).",
            },
        },
        "/v1/jobs/batch": {
            "post": _op(
                "Create up to 100 video jobs at once, all or none",
                "createJobBatch",
                {
                    "202": _json(
                        _ref("JobBatch"),
                        "The jobs, stored as pending in one transaction.",
                        {
                            "Idempotent-Replayed": {
                                "description": "`true` when an earlier request with the same "
                                "Idempotency-Key made these jobs.",
                                "schema": {"const": "true"},
                            }
                        },
                    ),
                    "400": _error("BadRequest"),
                    "413": _error("PayloadTooLarge"),
                    "422": _json(
                        _ref("Error"),
                        "Some jobs are invalid (`invalid_batch`, with `errors` listing each by index) and "
                        "none was created; or `jobs` itself is missing or too long.",
                    ),
                    "429": _error("QuotaExceeded"),
                },
                parameters=[
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "description": "One key for the whole batch: the same key returns the same jobs.",
                        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY},
                    }
                ],
                body="CreateJobBatchRequest",
                tags=["jobs"],
            )
        },
        "/v1/usage": {
            "get": _op(
                "Estimated cost and job counts, by model, status and client",
                "getUsage",
                {
                    "200": _json(_ref("Usage"), "Jobs created in [since, until)."),
                    "422": _error("Unprocessable"),
                },
                parameters=[
                    _query(
                        "since",
                        {"anyOf": [{"type": "integer", "minimum": 0}, {"const": ""}]},
                        "Unix seconds, inclusive; all time when absent.",
                    ),
                    _query(
                        "until",
                        {"anyOf": [{"type": "integer", "minimum": 0}, {"const": ""}]},
                        "Unix seconds, exclusive; no end when absent.",
                    ),
                ],
                tags=["jobs"],
            )
        },
        "/v1/jobs/track": {
            "post": _op(
                "Track a resource created elsewhere",
                "trackJob",
                {
                    "200": _with_links(
                        job | {"description": "Already tracked: the existing job."}, _TRACK_LINKS
                    ),
                    "201": _with_links(
                        job | {"description": "A new job tracking the resource."}, _TRACK_LINKS
                    ),
                    **body_errors,
                },
                body="TrackJobRequest",
                tags=["jobs"],
            )
        },
        "/v1/jobs/{job_id}": {
            "parameters": [job_id],
            "get": _op("Read a job", "getJob", {"200": job, "404": _error("NotFound")}, tags=["jobs"]),
            "delete": _op(
                "Cancel a job",
                "cancelJob",
                {
                    "200": job | {"description": "The job, now cancelled."},
                    "404": _error("NotFound"),
                    "409": _json(
                        _ref("Error"),
                        "Already terminal (`job_terminal`), or a kind sorahook cannot cancel "
                        "(`cancel_not_supported`).",
                    ),
                    "502": _error("BadGateway"),
                },
                tags=["jobs"],
            ),
        },
        "/v1/jobs/{job_id}/events": {
            "parameters": [job_id],
            "get": _op(
                "A job's timeline, oldest first",
                "listJobEvents",
                {
                    "200": _json(_ref("JobEventList"), "Every received and emitted event."),
                    "404": _error("NotFound"),
                },
                tags=["jobs"],
            ),
        },
        "/v1/jobs/{job_id}/content": {
            "parameters": [job_id],
            "get": _op(
                "Stream a completed video's asset: sorahook's archived copy, else OpenAI's until it expires",
                "getJobContent",
                {
                    "200": {
                        "description": "The asset, streamed (video/mp4, image/webp, image/jpeg, …). From the "
                        "archive it carries `ETag` (the SHA-256, quoted), `Content-Length` and "
                        "`Accept-Ranges: bytes`.",
                        "headers": {
                            "X-Request-Id": {"$ref": "#/components/headers/RequestId"},
                            **_ARCHIVE_HEADERS,
                        },
                        "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    "206": {
                        "description": "One byte range of the archived asset (`Range: bytes=a-b`, `a-` or `-n`).",
                        "headers": {
                            "X-Request-Id": {"$ref": "#/components/headers/RequestId"},
                            **_ARCHIVE_HEADERS,
                            "Content-Range": {
                                "required": True,
                                "description": "`bytes start-end/size`.",
                                "schema": {"type": "string"},
                            },
                        },
                        "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    "304": {
                        "description": "`If-None-Match` names the archived asset's ETag: the copy you hold is current.",
                        "headers": {
                            "X-Request-Id": {"$ref": "#/components/headers/RequestId"},
                            **_ARCHIVE_HEADERS,
                        },
                    },
                    "404": _error("NotFound"),
                    "409": _json(
                        _ref("Error"),
                        "Not a video (`no_content`) or not completed yet (`job_not_completed`).",
                    ),
                    "410": _error("Gone"),
                    "416": _json(
                        _ref("Error"),
                        "The range lies outside the archived asset (`range_not_satisfiable`).",
                        {
                            "Content-Range": {
                                "required": True,
                                "description": "`bytes */size`.",
                                "schema": {"type": "string"},
                            }
                        },
                    ),
                    "422": _error("Unprocessable"),
                    "502": _error("BadGateway"),
                },
                parameters=[
                    _query("variant", {"enum": list(VARIANTS), "default": "video"}, "Which asset."),
                    *(
                        {
                            "name": name,
                            "in": "header",
                            "required": False,
                            "description": text,
                            "schema": {"type": "string"},
                        }
                        for name, text in (
                            (
                                "Range",
                                "One byte range of an archived asset: `bytes=a-b`, `bytes=a-` or `bytes=-n`.",
                            ),
                            (
                                "If-None-Match",
                                "An ETag from an earlier answer: 304 if the archived asset is that one.",
                            ),
                            (
                                "If-Range",
                                "An ETag: the Range applies only if the archived asset is still that one.",
                            ),
                        )
                    ),
                ],
                tags=["jobs"],
            ),
        },
        "/v1/subscriptions": {
            "post": _op(
                "Create a subscription",
                "createSubscription",
                {
                    "201": _with_links(
                        _json(_ref("SubscriptionWithSecret"), "The subscription, with its secret."),
                        _SUB_LINKS,
                    ),
                    **body_errors,
                },
                body="CreateSubscriptionRequest",
                tags=["subscriptions"],
            ),
            "get": _op(
                "List subscriptions, oldest first",
                "listSubscriptions",
                {
                    "200": _json(_ref("SubscriptionList"), "A page of subscriptions, without secrets."),
                    "400": _json(
                        _ref("Error"), "A query parameter this route does not take (`unknown_parameter`)."
                    ),
                    "422": _error("Unprocessable"),
                },
                parameters=[
                    _query(
                        "limit",
                        {
                            "anyOf": [{"type": "integer", "minimum": 1, "maximum": 100}, {"const": ""}],
                            "default": 100,
                        },
                        "Page size, 1 to 100.",
                    ),
                    _AFTER,
                ],
                tags=["subscriptions"],
            ),
        },
        "/v1/subscriptions/{sub_id}": {
            "parameters": [sub_id],
            "get": _op(
                "Read a subscription",
                "getSubscription",
                {"200": sub_secret, "404": _error("NotFound")},
                tags=["subscriptions"],
            ),
            "patch": _op(
                "Change a subscription",
                "updateSubscription",
                {"200": sub_secret, "404": _error("NotFound"), **body_errors},
                body="UpdateSubscriptionRequest",
                body_required=False,
                tags=["subscriptions"],
            ),
            "delete": _op(
                "Remove a subscription",
                "deleteSubscription",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["id", "object", "deleted"],
                            "additionalProperties": False,
                            "properties": {
                                "id": {"type": "string"},
                                "object": {"const": "subscription.deleted"},
                                "deleted": {"const": True},
                            },
                        },
                        "Removed.",
                    ),
                    "404": _error("NotFound"),
                },
                tags=["subscriptions"],
            ),
        },
        "/v1/subscriptions/{sub_id}/rotate-secret": {
            "parameters": [sub_id],
            "post": _op(
                "Rotate the signing secret",
                "rotateSubscriptionSecret",
                {
                    "200": _json(
                        {
                            "allOf": [_ref("SubscriptionWithSecret")],
                            "required": ["previous_secret_expires_at"],
                        },
                        "The new secret; for 24 h deliveries are signed with the old one too.",
                    ),
                    "404": _error("NotFound"),
                },
                tags=["subscriptions"],
            ),
        },
        "/v1/subscriptions/{sub_id}/test": {
            "parameters": [sub_id],
            "post": _op(
                "Send a sorahook.test event to this subscription",
                "testSubscription",
                {
                    "202": _json(
                        {
                            "type": "object",
                            "required": ["object", "id", "type"],
                            "additionalProperties": False,
                            "properties": {
                                "object": {"const": "event"},
                                "id": {"type": "string", "pattern": "^evt_"},
                                "type": {"const": "sorahook.test"},
                            },
                        },
                        "Enqueued.",
                    ),
                    "404": _error("NotFound"),
                    "409": _json(_ref("Error"), "The subscription is disabled (`subscription_disabled`)."),
                },
                tags=["subscriptions"],
            ),
        },
        "/v1/subscriptions/{sub_id}/replay": {
            "parameters": [sub_id],
            "post": _op(
                "Enqueue again every matching event since a time (or in a time range, with `until`)",
                "replaySubscription",
                {
                    "202": _json(
                        {
                            "type": "object",
                            "required": ["object", "subscription_id", "enqueued"],
                            "additionalProperties": False,
                            "properties": {
                                "object": {"const": "replay"},
                                "subscription_id": {"type": "string"},
                                "enqueued": {"type": "integer", "minimum": 0},
                            },
                        },
                        "How many deliveries were enqueued.",
                    ),
                    "404": _error("NotFound"),
                    **body_errors,
                },
                body="ReplayRequest",
                tags=["subscriptions"],
            ),
        },
        "/v1/deliveries": {
            "get": _op(
                "List deliveries with their attempts, newest first",
                "listDeliveries",
                {"200": _json(_ref("DeliveryList"), "A page of deliveries."), "422": _error("Unprocessable")},
                parameters=[
                    _query("subscription_id", {"type": "string"}, "Only this subscription's deliveries."),
                    _query("job_id", {"type": "string"}, "Only deliveries of this job's events."),
                    _query("status", {"enum": [*DELIVERY_STATUSES, ""]}, "Only deliveries in this status."),
                    _LIMIT,
                    _AFTER,
                ],
                tags=["deliveries"],
            )
        },
        "/v1/deliveries/{delivery_id}": {
            "parameters": [delivery_id],
            "get": _op(
                "Read a delivery",
                "getDelivery",
                {"200": _json(_ref("Delivery"), "The delivery."), "404": _error("NotFound")},
                tags=["deliveries"],
            ),
        },
        "/v1/deliveries/retry": {
            "post": _op(
                "Retry every dead delivery of a subscription, or made since a time, on a fresh schedule",
                "retryDeliveries",
                {
                    "202": _json(_ref("BulkRetry"), "How many dead deliveries are pending again."),
                    "404": _error("NotFound"),
                    **body_errors,
                },
                body="BulkRetryRequest",
                tags=["deliveries"],
            ),
        },
        "/v1/deliveries/{delivery_id}/retry": {
            "parameters": [delivery_id],
            "post": _op(
                "Try a dead or failed delivery again now, on a fresh retry schedule",
                "retryDelivery",
                {
                    "202": _json(_ref("Delivery"), "Pending again (status `pending`), due now."),
                    "404": _error("NotFound"),
                    "409": _json(_ref("Error"), "Neither dead nor failed (`not_retryable`)."),
                },
                tags=["deliveries"],
            ),
        },
        "/healthz": {
            "get": _op(
                "Liveness",
                "healthz",
                {
                    "200": _json(
                        {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
                        "The process runs.",
                    )
                },
                auth=False,
                tags=["operations"],
            )
        },
        "/readyz": {
            "get": _op(
                "Readiness: the store answers and the workers run",
                "readyz",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["status"],
                            "properties": {"status": {"const": "ready"}},
                        },
                        "Ready.",
                    ),
                    "503": _json(
                        {
                            "type": "object",
                            "required": ["status", "problems"],
                            "properties": {
                                "status": {"const": "unavailable"},
                                "problems": {"type": "array", "items": {"type": "string"}},
                            },
                        },
                        "Not ready; `problems` says why.",
                    ),
                },
                auth=False,
                tags=["operations"],
            )
        },
        "/metrics": {
            "get": _op(
                "Prometheus metrics",
                "metrics",
                {
                    "200": {
                        "description": "Prometheus text exposition format.",
                        "headers": {"X-Request-Id": {"$ref": "#/components/headers/RequestId"}},
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
                auth=False,
                tags=["operations"],
            )
        },
        "/openapi.json": {
            "get": _op(
                "This document",
                "openapi",
                {"200": _json({"type": "object", "required": ["openapi", "paths"]}, "OpenAPI 3.1.")},
                auth=False,
                tags=["operations"],
            )
        },
        "/docs": {
            "get": _op(
                "This document as an HTML page (rendered on the server; works offline)",
                "docs",
                {"200": {"description": "HTML.", "content": {"text/html": {"schema": {"type": "string"}}}}},
                auth=False,
                tags=["operations"],
            )
        },
    }


# -- the events sorahook sends (OpenAPI 3.1 `webhooks`) ---------------------------------------------

_EXAMPLE_TIME = 1_764_806_400


def _example_job(kind: str, status: str) -> dict[str, Any]:
    """A job object as an event's `data`, for the examples."""
    video = kind == "video"
    done = status in ("completed", "failed", "cancelled", "expired")
    result: dict[str, Any] | None = None
    if video and status == "completed":
        result = {"expires_at": _EXAMPLE_TIME + 3600, "size": "720x1280", "seconds": "4"}
    return {
        "id": "job_06bfv3s0ehk3r8t2q9m4p5n7a0",
        "object": "job",
        "kind": kind,
        "resource_id": f"{_EXAMPLE_RESOURCE.get(kind, 'res')}_68d1c0e4f8a4",
        "status": status,
        "progress": 100 if status == "completed" else (40 if status == "in_progress" else 0),
        "origin": "api" if video else "track",
        "request": {"model": "sora-2", "prompt": "a red fox in the snow", "seconds": "4", "size": "720x1280"}
        if video
        else None,
        "estimated_cost_usd": 0.4 if video else None,
        "result": result,
        "error": {"code": "generation_failed", "message": "The video could not be generated."}
        if status == "failed"
        else None,
        "callback_url": None,
        "metadata": {"client": "demo"} if video else {},
        "created_at": _EXAMPLE_TIME,
        "updated_at": _EXAMPLE_TIME + 12,
        "completed_at": _EXAMPLE_TIME + 12 if done else None,
        "sequence": 2,
    }


_EXAMPLE_RESOURCE = {"video": "video", "batch": "batch", "response": "resp", "fine_tuning_job": "ftjob"}


def _emitted_events() -> dict[str, tuple[str, Schema, Any]]:
    """Every event type sorahook emits: (summary, the schema of `data`, an example `data`)."""
    from service.domain import emitted_type

    job = _ref("Job")
    events: dict[str, tuple[str, Schema, Any]] = {}
    for kind in KINDS:
        for status in STATUSES:
            if status == "pending":
                continue  # a new job is `pending` without an event; the first is its `queued`
            summary = f"A {kind} job became `{status}`."
            events[emitted_type(kind, status)] = (summary, job, _example_job(kind, status))
    events["video.progress"] = (
        "A video's `progress` moved by SORAHOOK_PROGRESS_STEP points (not a state change).",
        job,
        _example_job("video", "in_progress"),
    )
    archived = _example_job("video", "completed")
    archived["result"] = {
        **archived["result"],
        "assets": {
            "video": {
                "size": 1048576,
                "sha256": "9f" * 32,
                "stored_at": _EXAMPLE_TIME + 20,
                "uri": "file:///data/archive/job_06bfv3s0ehk3r8t2q9m4p5n7a0/video.mp4",
            }
        },
    }
    events["video.archived"] = ("Every configured asset of a completed video is stored.", job, archived)
    failed = _example_job("video", "completed")
    failed["result"] = {
        **failed["result"],
        "assets": {"video": {"status": "archive_failed", "error": "OpenAI answered 410"}},
    }
    events["video.archive_failed"] = ("Every asset is final and at least one failed to archive.", job, failed)
    events["sorahook.test"] = (
        "Sent by POST /v1/subscriptions/{sub_id}/test to that subscription only.",
        {
            "type": "object",
            "required": ["subscription_id", "message"],
            "properties": {"subscription_id": {"type": "string"}, "message": {"type": "string"}},
        },
        {
            "subscription_id": "sub_06bfv3s0ehk3r8t2q9m4p5n7a0",
            "message": "This is a test event from sorahook.",
        },
    )
    events["sorahook.subscription.disabled"] = (
        "A subscription was disabled (a 410, or failing too long); sent to the other subscriptions.",
        _ref("Subscription"),
        {
            "id": "sub_06bfv3s0ehk3r8t2q9m4p5n7a0",
            "object": "subscription",
            "url": "https://example.com/hooks/sora",
            "event_types": ["video.*"],
            "description": None,
            "enabled": False,
            "ordered": False,
            "disabled_reason": "the endpoint answered 410 Gone",
            "created_at": _EXAMPLE_TIME,
            "updated_at": _EXAMPLE_TIME + 60,
        },
    )
    return events


def _event_schema_name(event_type: str) -> str:
    return "Event." + event_type


def _event_schemas() -> dict[str, Schema]:
    """One schema per emitted event type: the envelope with its `type` fixed, and an example."""
    out: dict[str, Schema] = {}
    for event_type, (summary, data, example) in _emitted_events().items():
        out[_event_schema_name(event_type)] = {
            "type": "object",
            "description": summary,
            "required": ["id", "object", "type", "created_at", "data"],
            "properties": {
                "id": {"type": "string", "pattern": "^evt_", "description": "Also the `webhook-id` header."},
                "object": {"const": "event"},
                "type": {"const": event_type},
                "created_at": _UNIX_TIME,
                "data": data,
            },
            "examples": [
                {
                    "id": "evt_06bfv3s0ehk3r8t2q9m4p5n7a0",
                    "object": "event",
                    "type": event_type,
                    "created_at": _EXAMPLE_TIME + 12,
                    "data": example,
                }
            ],
        }
    return out


def _webhooks() -> dict[str, Any]:
    """OpenAPI 3.1 `webhooks`: what sorahook POSTs to subscriptions and to jobs' `callback_url`s."""
    headers = [
        {
            "name": name,
            "in": "header",
            "required": True,
            "description": description,
            "schema": {"type": "string"},
        }
        for name, description in (
            ("webhook-id", "The event id; the same on every attempt (deduplicate on it)."),
            ("webhook-timestamp", "Unix seconds of this attempt."),
            (
                "webhook-signature",
                "`v1,<base64 HMAC-SHA256>` entries, space-separated (two during a rotation).",
            ),
        )
    ]
    out: dict[str, Any] = {}
    for event_type, (summary, _, _) in _emitted_events().items():
        out[event_type] = {
            "post": {
                "summary": summary,
                "operationId": "event." + event_type,
                "tags": ["events"],
                "parameters": headers,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref(_event_schema_name(event_type))}},
                },
                "responses": {
                    "200": {"description": "Any 2xx: delivered."},
                    "410": {"description": "Gone: the subscription is disabled."},
                    "default": {
                        "description": "Anything else, a timeout or a connection error: retried on the schedule."
                    },
                },
            }
        }
    return out


def _version() -> str:
    try:
        return importlib.metadata.version("sorahook")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def openapi_document(
    models: Sequence[str] = DEFAULT_MODELS, table: ModelTable = DEFAULT_MODEL_TABLE
) -> dict[str, Any]:
    """The OpenAPI 3.1 document (a fresh dict each call). `models` is SORAHOOK_MODELS, first the default;
    `table` says what each allows (SORAHOOK_MODELS_FILE)."""
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "sorahook",
            "version": _version(),
            "summary": "A dependable relay for OpenAI's async-job webhooks.",
            "description": "Every `/v1/…` route needs `Authorization: Bearer $SORAHOOK_ADMIN_TOKEN`. "
            'Errors are always `{"error": {"code": …, "message": …, "param"?: …}}`. '
            "Times are Unix seconds.",
        },
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "tags": [
            {"name": "webhooks", "description": "OpenAI's signed webhooks (Standard Webhooks); no token."},
            {"name": "jobs", "description": "OpenAI async resources sorahook tracks."},
            {"name": "subscriptions", "description": "Where sorahook delivers events."},
            {"name": "deliveries", "description": "Each event's delivery to each target, with attempts."},
            {"name": "operations", "description": "Health, readiness, metrics; no token."},
            {"name": "events", "description": "What sorahook POSTs to your endpoints (`webhooks`)."},
        ],
        "paths": _paths(),
        "webhooks": _webhooks(),
        "components": {
            "schemas": {**_schemas(tuple(models) or DEFAULT_MODELS, table), **_event_schemas()},
            "responses": _responses(),
            "headers": {
                "RequestId": {
                    "description": "The caller's own `x-request-id`, or a new one.",
                    "required": True,
                    "schema": {"type": "string"},
                }
            },
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "SORAHOOK_ADMIN_TOKEN",
                }
            },
        },
    }
    return copy.deepcopy(document)  # the module-level pieces are shared; callers may change theirs


async def openapi_endpoint(request: Request) -> Response:
    """GET /openapi.json: the document, with the models this server is configured for."""
    models: Sequence[str] = DEFAULT_MODELS
    table = DEFAULT_MODEL_TABLE
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is not None:
        models, table = runtime.settings.models, runtime.settings.model_table
    return JSONResponse(openapi_document(models, table))
