"""The subscriptions and deliveries routes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.api.common import Late, UrlCheck, json_object, list_page
from service.api.schemas import (
    EVENT_TYPES,
    BulkRetryRequest,
    CreateSubscriptionRequest,
    ListDeliveriesQuery,
    ListSubscriptionsQuery,
    ReplayRequest,
    UpdateSubscriptionRequest,
    common_message,
    event_types_message,
    limit_message,
    parse,
    query,
)
from service.config import new_webhook_secret
from service.errors import ApiError
from service.store.records import DELIVERY_STATUSES, Subscription

if TYPE_CHECKING:
    from service.store.protocol import Store

ROTATION_OVERLAP = 24 * 3600.0


def _message(error: ErrorDetails) -> str:
    return common_message(error) or f"{error['loc'][0]} is invalid"


def _query_message(error: ErrorDetails) -> str:
    if error["loc"][0] == "status":
        return f"status must be one of {', '.join(DELIVERY_STATUSES)}"
    return limit_message(error) or f"{error['loc'][0]} is invalid"


def validate_event_types(value: Any) -> list[str] | None:
    """An event_types value (the API's or the console's), by the same rule as the request models."""
    if value is None:
        return None
    try:
        checked = EVENT_TYPES.validate_python(value, strict=True)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        error["loc"] = ("event_types", *error["loc"])
        raise ApiError(422, "invalid_field", event_types_message(error), param="event_types") from None
    return checked or None


class SubscriptionsApi:
    def __init__(self, *, store: Late[Store], urls: UrlCheck) -> None:
        self.store = store
        self.urls = urls

    async def _sub_or_404(self, sub_id: str) -> Subscription:
        sub = await self.store.get().get_subscription(sub_id)
        if sub is None:
            raise ApiError(404, "not_found", f"no subscription {sub_id!r}")
        return sub

    async def create(self, request: Request) -> Response:
        body = await json_object(request)
        if body.get("url") is None:  # absent or null
            raise ApiError(422, "invalid_field", "url is required", param="url")
        req = parse(CreateSubscriptionRequest, body, _message)
        checked = await self.urls(req.url, param="url")
        assert checked is not None
        sub = await self.store.get().create_subscription(
            url=checked,
            event_types=req.event_types or None,
            description=req.description,
            secret=new_webhook_secret(),
            ordered=req.ordered,
        )
        return JSONResponse(sub.to_api(with_secret=True), status_code=201)

    async def list(self, request: Request) -> Response:
        unknown = sorted(set(request.query_params) - set(ListSubscriptionsQuery.model_fields))
        if unknown:  # as GET /v1/jobs: a misspelt parameter is named, not silently ignored
            raise ApiError(
                400,
                "unknown_parameter",
                f"unknown query parameter {unknown[0]!r}; GET /v1/subscriptions takes limit and after",
                param=unknown[0],
            )
        args = query(ListSubscriptionsQuery, request.query_params, _query_message)
        limit = args.limit
        subs = await self.store.get().list_subscriptions(limit + 1, args.after)
        return JSONResponse(list_page([s.to_api() for s in subs[:limit]], len(subs) > limit))

    async def get(self, request: Request) -> Response:
        sub = await self._sub_or_404(request.path_params["sub_id"])
        return JSONResponse(sub.to_api(with_secret=True))

    async def update(self, request: Request) -> Response:
        sub_id = request.path_params["sub_id"]
        await self._sub_or_404(sub_id)
        body = await json_object(request)
        if "url" in body and body["url"] is None:
            raise ApiError(422, "invalid_field", "url cannot be null", param="url")
        req = parse(
            UpdateSubscriptionRequest, body, _message, unknown=lambda name: f"{name} cannot be changed"
        )
        changes = {name: getattr(req, name) for name in req.model_fields_set}
        if "url" in changes:
            changes["url"] = await self.urls(req.url, param="url")
        if "event_types" in changes:
            changes["event_types"] = req.event_types or None
        updated = await self.store.get().update_subscription(sub_id, changes)
        if updated is None:
            raise ApiError(404, "not_found", f"no subscription {sub_id!r}")
        return JSONResponse(updated.to_api(with_secret=True))

    async def delete(self, request: Request) -> Response:
        sub_id = request.path_params["sub_id"]
        if not await self.store.get().delete_subscription(sub_id):
            raise ApiError(404, "not_found", f"no subscription {sub_id!r}")
        return JSONResponse({"id": sub_id, "object": "subscription.deleted", "deleted": True})

    async def rotate_secret(self, request: Request) -> Response:
        sub_id = request.path_params["sub_id"]
        sub = await self.store.get().rotate_secret(sub_id, new_webhook_secret(), ROTATION_OVERLAP)
        if sub is None:
            raise ApiError(404, "not_found", f"no subscription {sub_id!r}")
        out = sub.to_api(with_secret=True)
        out["previous_secret_expires_at"] = int(sub.previous_secret_until or 0)
        return JSONResponse(out)

    async def test(self, request: Request) -> Response:
        sub = await self._sub_or_404(request.path_params["sub_id"])
        if not sub.enabled:
            raise ApiError(
                409, "subscription_disabled", "enable the subscription before sending a test event"
            )
        event_id = await self.store.get().enqueue_test(sub.id)
        return JSONResponse({"object": "event", "id": event_id, "type": "sorahook.test"}, status_code=202)

    async def replay(self, request: Request) -> Response:
        sub_id = request.path_params["sub_id"]
        req = parse(ReplayRequest, await json_object(request), _message)
        if req.until is not None and req.until <= req.since:
            raise ApiError(
                422, "invalid_field", "until must be a Unix time in seconds after since", param="until"
            )
        count = await self.store.get().replay(sub_id, req.since, until=req.until)
        if count is None:
            raise ApiError(404, "not_found", f"no subscription {sub_id!r}")
        return JSONResponse(
            {"object": "replay", "subscription_id": sub_id, "enqueued": count}, status_code=202
        )


class DeliveriesApi:
    def __init__(self, *, store: Late[Store]) -> None:
        self.store = store

    async def list(self, request: Request) -> Response:
        args = query(ListDeliveriesQuery, request.query_params, _query_message)
        found, has_more = await self.store.get().list_deliveries(
            subscription_id=args.subscription_id,
            job_id=args.job_id,
            status=args.status,
            limit=args.limit,
            after=args.after,
        )
        return JSONResponse(list_page([d.to_api() for d in found], has_more))

    async def get(self, request: Request) -> Response:
        found = await self.store.get().get_delivery(request.path_params["delivery_id"])
        if found is None:
            raise ApiError(404, "not_found", "no such delivery")
        return JSONResponse(found.to_api())

    async def retry(self, request: Request) -> Response:
        delivery_id = request.path_params["delivery_id"]
        previous = await self.store.get().retry_delivery(delivery_id)
        if previous is None:
            raise ApiError(404, "not_found", "no such delivery")
        if previous not in ("dead", "failed"):
            raise ApiError(
                409, "not_retryable", f"the delivery is {previous}; only dead or failed ones are retried"
            )
        found = await self.store.get().get_delivery(delivery_id)
        assert found is not None
        return JSONResponse(found.to_api(), status_code=202)

    async def retry_many(self, request: Request) -> Response:
        """Retry every dead delivery of a subscription, or made since a time, or both (one filter needed)."""
        body = await json_object(request)
        req = parse(BulkRetryRequest, body, _message, unknown=lambda name: f"unknown field {name}")
        sub_id, since = req.subscription_id, req.since
        if sub_id is None and since is None:
            raise ApiError(
                422,
                "missing_filter",
                "give subscription_id, since (Unix seconds), or both: a bulk retry needs a filter",
            )
        if sub_id is not None:
            if await self.store.get().get_subscription(sub_id) is None:
                raise ApiError(404, "not_found", f"no subscription {sub_id!r}")
        count = await self.store.get().retry_dead_deliveries(subscription_id=sub_id, since=since)
        return JSONResponse(
            {
                "object": "delivery.retry",
                "subscription_id": sub_id,
                "since": body.get("since"),
                "retried": count,
            },
            status_code=202,
        )
