"""The subscriptions and deliveries routes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.api.common import json_object, limit_arg, list_page
from service.api.jobs import validate_callback_url
from service.config import new_webhook_secret
from service.errors import ApiError
from service.store.records import DELIVERY_STATUSES, Subscription

if TYPE_CHECKING:
    from service.app import Runtime

ROTATION_OVERLAP = 24 * 3600.0
SUBSCRIPTION_PAGE = 100  # the default and largest page of GET /v1/subscriptions
_EVENT_TYPE_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789._*")


def validate_event_types(value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > 100:
        raise ApiError(
            422, "invalid_field", "event_types must be a list of event type names", param="event_types"
        )
    out: list[str] = []
    for item in value:
        if not isinstance(item, str) or not item or len(item) > 100 or not set(item) <= _EVENT_TYPE_CHARS:
            raise ApiError(
                422, "invalid_field", f"event_types holds an invalid entry: {item!r}", param="event_types"
            )
        if "*" in item[:-1]:
            raise ApiError(422, "invalid_field", f"'*' may only end an entry: {item!r}", param="event_types")
        out.append(item)
    return out or None


def _description(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 500:
        raise ApiError(
            422,
            "invalid_field",
            "description must be a string of at most 500 characters",
            param="description",
        )
    return value


def _bool(body: dict[str, Any], name: str) -> bool:
    value = body[name]
    if not isinstance(value, bool):
        raise ApiError(422, "invalid_field", f"{name} must be true or false", param=name)
    return value


class SubscriptionsApi:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    async def _sub_or_404(self, sub_id: str) -> Subscription:
        sub = await self.rt.store.get_subscription(sub_id)
        if sub is None:
            raise ApiError(404, "not_found", f"no subscription {sub_id!r}")
        return sub

    async def create(self, request: Request) -> Response:
        body = await json_object(request)
        url = body.get("url")
        if url is None:
            raise ApiError(422, "invalid_field", "url is required", param="url")
        checked = await validate_callback_url(url, self.rt, param="url")
        assert checked is not None
        sub = await self.rt.store.create_subscription(
            url=checked,
            event_types=validate_event_types(body.get("event_types")),
            description=_description(body.get("description")),
            secret=new_webhook_secret(),
            ordered=_bool(body, "ordered") if "ordered" in body else False,
        )
        return JSONResponse(sub.to_api(with_secret=True), status_code=201)

    async def list(self, request: Request) -> Response:
        unknown = sorted(set(request.query_params) - {"limit", "after"})
        if unknown:  # as GET /v1/jobs: a misspelt parameter is named, not silently ignored
            raise ApiError(
                400,
                "unknown_parameter",
                f"unknown query parameter {unknown[0]!r}; GET /v1/subscriptions takes limit and after",
                param=unknown[0],
            )
        # Oldest first, as before pagination; the default page holds the most a page may.
        limit = limit_arg(request, default=SUBSCRIPTION_PAGE, maximum=SUBSCRIPTION_PAGE)
        subs = await self.rt.store.list_subscriptions(limit + 1, request.query_params.get("after") or None)
        return JSONResponse(list_page([s.to_api() for s in subs[:limit]], len(subs) > limit))

    async def get(self, request: Request) -> Response:
        sub = await self._sub_or_404(request.path_params["sub_id"])
        return JSONResponse(sub.to_api(with_secret=True))

    async def update(self, request: Request) -> Response:
        sub_id = request.path_params["sub_id"]
        await self._sub_or_404(sub_id)
        body = await json_object(request)
        unknown = set(body) - {"url", "event_types", "enabled", "description", "ordered"}
        if unknown:
            name = sorted(unknown)[0]
            raise ApiError(422, "invalid_field", f"{name} cannot be changed", param=name)
        changes: dict[str, Any] = {}
        if "url" in body:
            changes["url"] = await validate_callback_url(body["url"], self.rt, param="url")
            if changes["url"] is None:
                raise ApiError(422, "invalid_field", "url cannot be null", param="url")
        if "event_types" in body:
            changes["event_types"] = validate_event_types(body["event_types"])
        if "description" in body:
            changes["description"] = _description(body["description"])
        for name in ("enabled", "ordered"):
            if name in body:
                changes[name] = _bool(body, name)
        updated = await self.rt.store.update_subscription(sub_id, changes)
        if updated is None:
            raise ApiError(404, "not_found", f"no subscription {sub_id!r}")
        return JSONResponse(updated.to_api(with_secret=True))

    async def delete(self, request: Request) -> Response:
        sub_id = request.path_params["sub_id"]
        if not await self.rt.store.delete_subscription(sub_id):
            raise ApiError(404, "not_found", f"no subscription {sub_id!r}")
        return JSONResponse({"id": sub_id, "object": "subscription.deleted", "deleted": True})

    async def rotate_secret(self, request: Request) -> Response:
        sub_id = request.path_params["sub_id"]
        sub = await self.rt.store.rotate_secret(sub_id, new_webhook_secret(), ROTATION_OVERLAP)
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
        event_id = await self.rt.store.enqueue_test(sub.id)
        return JSONResponse({"object": "event", "id": event_id, "type": "sorahook.test"}, status_code=202)

    async def replay(self, request: Request) -> Response:
        sub_id = request.path_params["sub_id"]
        body = await json_object(request)
        since = body.get("since")
        if not isinstance(since, (int, float)) or isinstance(since, bool) or not 0 <= since <= 1e11:
            raise ApiError(422, "invalid_field", "since must be a Unix time in seconds", param="since")
        until = body.get("until")  # optional and exclusive: replay a time range
        if until is not None and (
            not isinstance(until, (int, float)) or isinstance(until, bool) or not since < until <= 1e11
        ):
            raise ApiError(
                422, "invalid_field", "until must be a Unix time in seconds after since", param="until"
            )
        count = await self.rt.store.replay(
            sub_id, float(since), until=None if until is None else float(until)
        )
        if count is None:
            raise ApiError(404, "not_found", f"no subscription {sub_id!r}")
        return JSONResponse(
            {"object": "replay", "subscription_id": sub_id, "enqueued": count}, status_code=202
        )


class DeliveriesApi:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    async def list(self, request: Request) -> Response:
        q = request.query_params
        status = q.get("status") or None
        if status is not None and status not in DELIVERY_STATUSES:
            raise ApiError(
                422,
                "invalid_parameter",
                f"status must be one of {', '.join(DELIVERY_STATUSES)}",
                param="status",
            )
        found, has_more = await self.rt.store.list_deliveries(
            subscription_id=q.get("subscription_id") or None,
            job_id=q.get("job_id") or None,
            status=status,
            limit=limit_arg(request),
            after=q.get("after") or None,
        )
        return JSONResponse(list_page([d.to_api() for d in found], has_more))

    async def get(self, request: Request) -> Response:
        found = await self.rt.store.get_delivery(request.path_params["delivery_id"])
        if found is None:
            raise ApiError(404, "not_found", "no such delivery")
        return JSONResponse(found.to_api())

    async def retry(self, request: Request) -> Response:
        delivery_id = request.path_params["delivery_id"]
        previous = await self.rt.store.retry_delivery(delivery_id)
        if previous is None:
            raise ApiError(404, "not_found", "no such delivery")
        if previous not in ("dead", "failed"):
            raise ApiError(
                409, "not_retryable", f"the delivery is {previous}; only dead or failed ones are retried"
            )
        found = await self.rt.store.get_delivery(delivery_id)
        assert found is not None
        return JSONResponse(found.to_api(), status_code=202)

    async def retry_many(self, request: Request) -> Response:
        """Retry every dead delivery of a subscription, or made since a time, or both (one filter needed)."""
        body = await json_object(request)
        unknown = set(body) - {"subscription_id", "since"}
        if unknown:
            name = sorted(unknown)[0]
            raise ApiError(422, "invalid_field", f"unknown field {name}", param=name)
        sub_id = body.get("subscription_id")
        since = body.get("since")
        if sub_id is None and since is None:
            raise ApiError(
                422,
                "missing_filter",
                "give subscription_id, since (Unix seconds), or both: a bulk retry needs a filter",
            )
        if sub_id is not None:
            if not isinstance(sub_id, str):
                raise ApiError(
                    422, "invalid_field", "subscription_id must be a string", param="subscription_id"
                )
            await SubscriptionsApi(self.rt)._sub_or_404(sub_id)
        if since is not None and (
            not isinstance(since, (int, float)) or isinstance(since, bool) or not 0 <= since <= 1e11
        ):
            raise ApiError(422, "invalid_field", "since must be a Unix time in seconds", param="since")
        count = await self.rt.store.retry_dead_deliveries(
            subscription_id=sub_id, since=None if since is None else float(since)
        )
        return JSONResponse(
            {"object": "delivery.retry", "subscription_id": sub_id, "since": since, "retried": count},
            status_code=202,
        )
