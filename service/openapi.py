"""The OpenAPI 3.1 document for every route create_app serves, written by hand and served at /openapi.json.

tests/test_openapi.py keeps it in step with the routes (both ways) and checks real responses against
its schemas; tests/test_fuzz.py runs schemathesis against it on a live server.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import re
from collections.abc import Sequence
from typing import Any

from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.api.jobs import MAX_IDEMPOTENCY_KEY, VARIANTS
from service.api.responses import RESPONSE_MODELS
from service.api.routes import BY_OPERATION, ROUTES
from service.api.schemas import (
    METADATA,
    REQUEST_MODELS,
    RESOURCE_PREFIXES,
    ListDeliveriesQuery,
    ListJobsQuery,
    ListSubscriptionsQuery,
    UsageQuery,
    query_parameters,
)
from service.domain import KINDS, STATUSES
from service.models import DEFAULT_MODEL_TABLE, ModelTable

__all__ = ["DEFAULT_MODELS", "RESOURCE_PREFIXES", "openapi_document", "openapi_endpoint"]

DEFAULT_MODELS: tuple[str, ...] = ("sora-2", "sora-2-pro")

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Schema, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    out["headers"] = {"X-Request-Id": {"$ref": "#/components/headers/RequestId"}, **(headers or {})}
    return out


def _error(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


_BASE64 = "(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?"
_UNIX_TIME: Schema = {"type": "integer", "description": "Unix time in seconds"}
_ID: Schema = {"type": "string", "minLength": 1}

_ARCHIVE_HEADERS: dict[str, Any] = {
    "ETag": {"description": "The archived asset's SHA-256, quoted.", "schema": {"type": "string"}},
    "Accept-Ranges": {"description": "`bytes` when served from the archive.", "schema": {"type": "string"}},
}


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


def _plain(schema: Any) -> Any:
    """A model's JSON Schema without pydantic's generated titles (the component's name says it)."""
    if isinstance(schema, dict):
        return {k: _plain(v) for k, v in schema.items() if not (k == "title" and isinstance(v, str))}
    if isinstance(schema, list):
        return [_plain(v) for v in schema]
    return schema


def _request_schemas(models: Sequence[str], table: ModelTable) -> dict[str, Schema]:
    """The request bodies, from their models (service/api/schemas.py); what the model table decides
    (which models, seconds and sizes, and the defaults) is filled in from the table."""
    out = {
        m.__name__: _plain(m.model_json_schema(ref_template="#/components/schemas/{model}"))
        for m in REQUEST_MODELS
    }
    seconds, sizes = table.seconds_values(models), table.size_values(models)
    create = out["CreateJobRequest"]
    create["allOf"] = _model_rules(models, table)
    create["properties"].update(
        model={"enum": list(models), "default": models[0]},
        seconds={
            "enum": [*seconds, *(int(s) for s in seconds)],
            "default": table.spec(models[0]).default_seconds,
            "description": "Clip length; a string as OpenAI takes it, or the same whole number. "
            "Each model allows its own lengths (the model table, SORAHOOK_MODELS_FILE).",
        },
        size={
            "enum": list(sizes),
            "default": table.spec(models[0]).default_size,
            "description": "Each model allows its own sizes (the model table).",
        },
    )
    out["CreateJobBatchRequest"]["properties"]["jobs"]["items"] = _ref("CreateJobRequest")
    # Only what is sent changes: the models' placeholders for absent fields are no defaults.
    for schema in out["UpdateSubscriptionRequest"]["properties"].values():
        schema.pop("default", None)
    return out


def _response_schemas() -> dict[str, Schema]:
    """The response bodies, from their models (service/api/responses.py), under their component names."""
    _, top = models_json_schema(
        [(m, "validation") for m in RESPONSE_MODELS.values()], ref_template="#/components/schemas/{model}"
    )
    defs: dict[str, Any] = top["$defs"]
    # pydantic names a generic page `Page_Job_`; the document names each by what it lists.
    renames = {m.__name__.replace("[", "_").replace("]", "_"): name for name, m in RESPONSE_MODELS.items()}
    text = json.dumps(defs)
    for old, new in renames.items():
        if old != new:
            text = text.replace(f'"#/components/schemas/{old}"', f'"#/components/schemas/{new}"')
    defs = json.loads(text)
    out = {renames.get(name, name): _plain(schema) for name, schema in defs.items()}
    for schema in out.values():  # a response has no defaults: absent means the server did not send it
        for prop in schema.get("properties", {}).values():
            prop.pop("default", None)
    return out


def _schemas(models: Sequence[str], table: ModelTable = DEFAULT_MODEL_TABLE) -> dict[str, Schema]:
    return {
        **_response_schemas(),
        "Metadata": _plain(METADATA.json_schema()),
        **_request_schemas(models, table),
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
    operation_id: str, responses: dict[str, Any], *, parameters: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """One operation: its summary, tag, request body and auth from the route table, the rest given."""
    spec = BY_OPERATION[operation_id]
    op: dict[str, Any] = {"summary": spec.summary, "operationId": operation_id, "tags": [spec.tag]}
    if parameters:
        op["parameters"] = parameters
    if spec.body_schema is not None:
        op["requestBody"] = {
            "required": not spec.body_optional,
            "content": {"application/json": {"schema": _ref(spec.body_schema)}},
        }
    if spec.auth:
        op["security"] = [{"bearerAuth": []}]
        responses = {**responses, "401": _error("Unauthorized")}
    op["responses"] = dict(sorted(responses.items()))
    return op


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": _ID}


def _query(name: str, schema: Schema, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


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


_PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "job_id": _path_param("job_id", "A job id (`job_…`) or the OpenAI resource id it tracks."),
    "sub_id": _path_param("sub_id", "A subscription id (`sub_…`)."),
    "delivery_id": _path_param("delivery_id", "A delivery id (`dlv_…`)."),
}


def _paths() -> dict[str, Any]:
    """The route table's operations by path; a templated path lists its path parameters once."""
    operations = {op["operationId"]: op for op in _operations()}
    paths: dict[str, Any] = {}
    for spec in ROUTES:
        item = paths.setdefault(spec.path, {})
        names = re.findall(r"{(\w+)}", spec.path)
        if names:
            item["parameters"] = [_PATH_PARAMETERS[name] for name in names]
        item[spec.method.lower()] = operations[spec.operation_id]
    return paths


def _operations() -> list[dict[str, Any]]:
    """Each operation's parameters and responses; what the route table says (path, method, summary,
    request body, auth) is added by _op."""
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
    return [
        _op(
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
        ),
        _op(
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
        ),
        {
            **_op(
                "listJobs",
                {
                    "200": _json(_ref("JobList"), "A page of jobs."),
                    "400": _json(
                        _ref("Error"), "A query parameter this route does not take (`unknown_parameter`)."
                    ),
                    "422": _error("Unprocessable"),
                },
                parameters=query_parameters(ListJobsQuery),
            ),
            "description": "Filter by one metadata entry with `metadata.<key>=<value>` "
            "(e.g. `metadata.customer=acme`). Any other query parameter is refused "
            "(400 `unknown_parameter`).",
        },
        _op(
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
        ),
        _op(
            "getUsage",
            {
                "200": _json(_ref("Usage"), "Jobs created in [since, until)."),
                "422": _error("Unprocessable"),
            },
            parameters=query_parameters(UsageQuery),
        ),
        _op(
            "trackJob",
            {
                "200": _with_links(job | {"description": "Already tracked: the existing job."}, _TRACK_LINKS),
                "201": _with_links(job | {"description": "A new job tracking the resource."}, _TRACK_LINKS),
                **body_errors,
            },
        ),
        _op("getJob", {"200": job, "404": _error("NotFound")}),
        _op(
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
        ),
        _op(
            "listJobEvents",
            {
                "200": _json(_ref("JobEventList"), "Every received and emitted event."),
                "404": _error("NotFound"),
            },
        ),
        _op(
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
        ),
        _op(
            "createSubscription",
            {
                "201": _with_links(
                    _json(_ref("SubscriptionWithSecret"), "The subscription, with its secret."),
                    _SUB_LINKS,
                ),
                **body_errors,
            },
        ),
        _op(
            "listSubscriptions",
            {
                "200": _json(_ref("SubscriptionList"), "A page of subscriptions, without secrets."),
                "400": _json(
                    _ref("Error"), "A query parameter this route does not take (`unknown_parameter`)."
                ),
                "422": _error("Unprocessable"),
            },
            parameters=query_parameters(ListSubscriptionsQuery),
        ),
        _op(
            "getSubscription",
            {"200": sub_secret, "404": _error("NotFound")},
        ),
        _op(
            "updateSubscription",
            {"200": sub_secret, "404": _error("NotFound"), **body_errors},
        ),
        _op(
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
        ),
        _op(
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
        ),
        _op(
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
        ),
        _op(
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
        ),
        _op(
            "listDeliveries",
            {"200": _json(_ref("DeliveryList"), "A page of deliveries."), "422": _error("Unprocessable")},
            parameters=query_parameters(ListDeliveriesQuery),
        ),
        _op(
            "getDelivery",
            {"200": _json(_ref("Delivery"), "The delivery."), "404": _error("NotFound")},
        ),
        _op(
            "retryDeliveries",
            {
                "202": _json(_ref("BulkRetry"), "How many dead deliveries are pending again."),
                "404": _error("NotFound"),
                **body_errors,
            },
        ),
        _op(
            "retryDelivery",
            {
                "202": _json(_ref("Delivery"), "Pending again (status `pending`), due now."),
                "404": _error("NotFound"),
                "409": _json(_ref("Error"), "Neither dead nor failed (`not_retryable`)."),
            },
        ),
        _op(
            "healthz",
            {
                "200": _json(
                    {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
                    "The process runs.",
                )
            },
        ),
        _op(
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
        ),
        _op(
            "metrics",
            {
                "200": {
                    "description": "Prometheus text exposition format.",
                    "headers": {"X-Request-Id": {"$ref": "#/components/headers/RequestId"}},
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        ),
        _op(
            "openapi",
            {"200": _json({"type": "object", "required": ["openapi", "paths"]}, "OpenAPI 3.1.")},
        ),
        _op(
            "docs",
            {"200": {"description": "HTML.", "content": {"text/html": {"schema": {"type": "string"}}}}},
        ),
    ]


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
