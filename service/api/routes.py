"""The route table: every operation sorahook serves, once. The router and /openapi.json both read it.

Each entry names its method, path, handler, request model, summary and tag; service/openapi.py adds the
responses and parameters by operation id, and create_app binds the handlers to the API objects it built.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from service.api.common import require_token
from service.api.jobs import JobsApi
from service.api.schemas import (
    BulkRetryRequest,
    CreateJobBatchRequest,
    CreateJobRequest,
    CreateSubscriptionRequest,
    ReplayRequest,
    TrackJobRequest,
    UpdateSubscriptionRequest,
)
from service.api.subscriptions import DeliveriesApi, SubscriptionsApi
from service.api.usage import UsageApi

# An API class's method, unbound: create_app's object of that class answers it.
Handler = Callable[[Any, Request], Awaitable[Response]]


@dataclass(frozen=True)
class RouteSpec:
    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    # None: an endpoint of the app itself (health, metrics, the webhook receiver), given by operation id.
    handler: Handler | None = None
    # The request body's model; its schema is the document's, by the model's name.
    request: type[BaseModel] | None = None
    body_optional: bool = False
    # /v1 routes take the admin bearer token.
    auth: bool = True
    # The body's schema by component name, for a body no model of ours validates (the webhook's).
    request_schema: str | None = None

    @property
    def body_schema(self) -> str | None:
        return self.request.__name__ if self.request is not None else self.request_schema


def _op(method: str, path: str, operation_id: str, summary: str, tag: str, **kw: Any) -> RouteSpec:
    return RouteSpec(method, path, operation_id, summary, tag, **kw)


# Literal paths come before the templated ones they would also match (/v1/jobs/track before /v1/jobs/{job_id}).
ROUTES: tuple[RouteSpec, ...] = (
    _op(
        "POST",
        "/webhooks/openai",
        "receiveOpenAIWebhook",
        "Receive an OpenAI webhook",
        "webhooks",
        auth=False,
        request_schema="WebhookEvent",
    ),
    _op("GET", "/healthz", "healthz", "Liveness", "operations", auth=False),
    _op(
        "GET",
        "/readyz",
        "readyz",
        "Readiness: the store answers and the workers run",
        "operations",
        auth=False,
    ),
    _op("GET", "/metrics", "metrics", "Prometheus metrics", "operations", auth=False),
    _op("GET", "/openapi.json", "openapi", "This document", "operations", auth=False),
    _op(
        "GET",
        "/docs",
        "docs",
        "This document as an HTML page (rendered on the server; works offline)",
        "operations",
        auth=False,
    ),
    _op(
        "POST",
        "/v1/jobs",
        "createJob",
        "Create a video job",
        "jobs",
        handler=JobsApi.create,
        request=CreateJobRequest,
    ),
    _op("GET", "/v1/jobs", "listJobs", "List jobs, newest first", "jobs", handler=JobsApi.list),
    _op(
        "POST",
        "/v1/jobs/track",
        "trackJob",
        "Track a resource created elsewhere",
        "jobs",
        handler=JobsApi.track,
        request=TrackJobRequest,
    ),
    _op(
        "POST",
        "/v1/jobs/batch",
        "createJobBatch",
        "Create up to 100 video jobs at once, all or none",
        "jobs",
        handler=JobsApi.create_batch,
        request=CreateJobBatchRequest,
    ),
    _op(
        "GET",
        "/v1/usage",
        "getUsage",
        "Estimated cost and job counts, by model, status and client",
        "jobs",
        handler=UsageApi.get,
    ),
    _op("GET", "/v1/jobs/{job_id}", "getJob", "Read a job", "jobs", handler=JobsApi.get),
    _op("DELETE", "/v1/jobs/{job_id}", "cancelJob", "Cancel a job", "jobs", handler=JobsApi.cancel),
    _op(
        "GET",
        "/v1/jobs/{job_id}/events",
        "listJobEvents",
        "A job's timeline, oldest first",
        "jobs",
        handler=JobsApi.events,
    ),
    _op(
        "GET",
        "/v1/jobs/{job_id}/content",
        "getJobContent",
        "Stream a completed video's asset: sorahook's archived copy, else OpenAI's until it expires",
        "jobs",
        handler=JobsApi.content,
    ),
    _op(
        "POST",
        "/v1/subscriptions",
        "createSubscription",
        "Create a subscription",
        "subscriptions",
        handler=SubscriptionsApi.create,
        request=CreateSubscriptionRequest,
    ),
    _op(
        "GET",
        "/v1/subscriptions",
        "listSubscriptions",
        "List subscriptions, oldest first",
        "subscriptions",
        handler=SubscriptionsApi.list,
    ),
    _op(
        "GET",
        "/v1/subscriptions/{sub_id}",
        "getSubscription",
        "Read a subscription",
        "subscriptions",
        handler=SubscriptionsApi.get,
    ),
    _op(
        "PATCH",
        "/v1/subscriptions/{sub_id}",
        "updateSubscription",
        "Change a subscription",
        "subscriptions",
        handler=SubscriptionsApi.update,
        request=UpdateSubscriptionRequest,
        body_optional=True,
    ),
    _op(
        "DELETE",
        "/v1/subscriptions/{sub_id}",
        "deleteSubscription",
        "Remove a subscription",
        "subscriptions",
        handler=SubscriptionsApi.delete,
    ),
    _op(
        "POST",
        "/v1/subscriptions/{sub_id}/rotate-secret",
        "rotateSubscriptionSecret",
        "Rotate the signing secret",
        "subscriptions",
        handler=SubscriptionsApi.rotate_secret,
    ),
    _op(
        "POST",
        "/v1/subscriptions/{sub_id}/test",
        "testSubscription",
        "Send a sorahook.test event to this subscription",
        "subscriptions",
        handler=SubscriptionsApi.test,
    ),
    _op(
        "POST",
        "/v1/subscriptions/{sub_id}/replay",
        "replaySubscription",
        "Enqueue again every matching event since a time (or in a time range, with `until`)",
        "subscriptions",
        handler=SubscriptionsApi.replay,
        request=ReplayRequest,
    ),
    _op(
        "GET",
        "/v1/deliveries",
        "listDeliveries",
        "List deliveries with their attempts, newest first",
        "deliveries",
        handler=DeliveriesApi.list,
    ),
    _op(
        "POST",
        "/v1/deliveries/retry",
        "retryDeliveries",
        "Retry every dead delivery of a subscription, or made since a time, on a fresh schedule",
        "deliveries",
        handler=DeliveriesApi.retry_many,
        request=BulkRetryRequest,
    ),
    _op(
        "GET",
        "/v1/deliveries/{delivery_id}",
        "getDelivery",
        "Read a delivery",
        "deliveries",
        handler=DeliveriesApi.get,
    ),
    _op(
        "POST",
        "/v1/deliveries/{delivery_id}/retry",
        "retryDelivery",
        "Try a dead or failed delivery again now, on a fresh retry schedule",
        "deliveries",
        handler=DeliveriesApi.retry,
    ),
)

BY_OPERATION: Mapping[str, RouteSpec] = {spec.operation_id: spec for spec in ROUTES}


def build_routes(
    apis: Mapping[type, object],
    own: Mapping[str, Callable[[Request], Awaitable[Response]] | ASGIApp],
    token: str,
) -> list[BaseRoute]:
    """Starlette routes for the table, in its order: one Route per /v1 path (so a 405 names every allowed
    method), each handler bound to its API object and behind the token; the app's own endpoints by id."""
    by_path: dict[str, dict[str, Callable[[Request], Awaitable[Response]]]] = {}
    order: list[RouteSpec | str] = []
    for spec in ROUTES:
        if spec.handler is None:
            order.append(spec)
            continue
        bound: Callable[[Request], Awaitable[Response]] = spec.handler.__get__(apis[_owner(spec.handler)])
        if spec.path not in by_path:
            by_path[spec.path] = {}
            order.append(spec.path)
        by_path[spec.path][spec.method] = require_token(token, bound) if spec.auth else bound
    return [
        Route(item.path, own[item.operation_id], methods=[item.method])
        if isinstance(item, RouteSpec)
        else _dispatch(item, by_path[item])
        for item in order
    ]


def _owner(handler: Handler) -> type:
    for cls in (JobsApi, SubscriptionsApi, DeliveriesApi, UsageApi):
        if getattr(cls, handler.__name__, None) is handler:
            return cls
    raise LookupError(f"no API class defines {handler.__qualname__}")


def _dispatch(path: str, handlers: dict[str, Callable[[Request], Awaitable[Response]]]) -> Route:
    async def dispatch(request: Request) -> Response:
        return await handlers[request.method if request.method != "HEAD" else "GET"](request)

    return Route(path, dispatch, methods=list(handlers))
