"""The OpenAPI document: it names exactly the app's routes, it is valid OpenAPI 3.1, and real answers match it."""

from __future__ import annotations

import copy
import json
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest
import schemathesis
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount, Route

from service.app import create_app
from service.config import Settings
from service.domain import kind_for_resource_id
from service.openapi import RESOURCE_PREFIXES, openapi_document, openapi_endpoint
from tests.subscriber import Subscriber
from tests.support import auth, emulated_service, live_server, make_settings, signed_webhook, wait_until

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def app_with_openapi(settings: Settings, **kwargs: Any) -> Starlette:
    """create_app with GET /openapi.json, adding the route only while create_app does not serve it itself."""
    app = create_app(settings, **kwargs)
    if any(isinstance(r, Route) and r.path == "/openapi.json" for r in app.routes):
        return app
    extra: list[BaseRoute] = [
        *(kwargs.pop("extra_routes", None) or []),
        Route("/openapi.json", openapi_endpoint),
    ]
    return create_app(settings, extra_routes=extra, **kwargs)


def app_routes(app: Starlette) -> dict[str, set[str]]:
    """{path: methods} of the app's own routes; mounted sub-apps (the emulator) are not part of the API."""
    routes: dict[str, set[str]] = defaultdict(set)
    for route in app.routes:
        if isinstance(route, Mount):
            continue
        assert isinstance(route, Route), f"unexpected route type {route!r}"
        routes[route.path] |= set(route.methods or {"GET"}) - {"HEAD"}  # Starlette adds HEAD to GET
    return dict(routes)


def document_routes(document: dict[str, Any]) -> dict[str, set[str]]:
    return {
        path: {method.upper() for method in item if method in HTTP_METHODS}
        for path, item in document["paths"].items()
    }


def operation(document: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    return dict(document["paths"][path][method.lower()])


def _resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        target: Any = document
        for part in ref[2:].split("/"):
            target = target[part]
        node = target
    return node


_VALIDATORS: dict[str, Any] = {}


def _validator(document: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A JSON Schema 2020-12 validator for `schema`, whose `#/components/...` refs resolve in `document`."""
    root = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "allOf": [schema],
        "components": document["components"],
    }
    key = json.dumps(root, sort_keys=True)
    if key not in _VALIDATORS:
        _VALIDATORS[key] = jsonschema_rs.validator_for(root)
    return _VALIDATORS[key]


def assert_conforms(document: dict[str, Any], method: str, path: str, response: httpx.Response) -> Any:
    """The status is documented for the operation and the body and headers match what it says; returns the JSON."""
    op = operation(document, method, path)
    status = str(response.status_code)
    assert status in op["responses"], f"{method} {path} answered undocumented {status}: {response.text[:300]}"
    documented = _resolve(document, op["responses"][status])
    for name, header in documented.get("headers", {}).items():
        if _resolve(document, header).get("required"):
            assert name.lower() in response.headers, f"{method} {path} {status}: no {name} header"
    content = documented.get("content", {})
    media_type = response.headers.get("content-type", "").split(";")[0].strip()
    if "application/json" in content:
        assert media_type == "application/json", f"{method} {path} {status}: content-type {media_type}"
        body = response.json()
        errors = [
            f"{'/'.join(map(str, e.instance_path))}: {e.message}"
            for e in _validator(document, content["application/json"]["schema"]).iter_errors(body)
        ]
        assert not errors, f"{method} {path} {status} does not match the document: {errors}\n{body}"
        return body
    if "text/plain" in content:
        assert media_type == "text/plain", f"{method} {path} {status}: content-type {media_type}"
    else:
        assert content, f"{method} {path} {status}: the document gives no content"
    return None


# --- the document against the routes ---


def test_every_route_is_in_the_document_with_its_methods_and_the_other_way_round(tmp_path: Path) -> None:
    from service.emulator import Emulator, EmulatorConfig

    settings = make_settings(tmp_path)
    emulator = Emulator(
        EmulatorConfig(webhook_url="http://127.0.0.1:9/", webhook_secret=settings.webhook_secrets[0])
    )
    # As `serve --emulator` builds it: the mounted emulator is not part of sorahook's API.
    app = app_with_openapi(settings, extra_routes=[Mount("/_emulator", app=emulator.app)])
    routes, documented = app_routes(app), document_routes(openapi_document())
    assert "/v1/jobs" in routes and routes["/v1/jobs"] == {"GET", "POST"}
    missing = {p: m - documented.get(p, set()) for p, m in routes.items() if m - documented.get(p, set())}
    extra = {p: m - routes.get(p, set()) for p, m in documented.items() if m - routes.get(p, set())}
    assert not missing, f"routes the document does not describe: {missing}"
    assert not extra, f"operations the document describes but the app does not route: {extra}"


def test_the_document_is_valid_openapi_3_1() -> None:
    document = openapi_document()
    assert document["openapi"].startswith("3.1.")
    schemathesis.openapi.from_dict(document).validate()  # the official 3.1 meta-schema (jsonschema-rs)
    # ...and the validator does bite.
    broken = copy.deepcopy(document)
    broken["paths"]["/healthz"]["get"]["responses"]["200"] = {"content": {}}  # no description
    with pytest.raises(jsonschema_rs.ValidationError):
        schemathesis.openapi.from_dict(broken).validate()


def test_the_document_hangs_together() -> None:
    """What the meta-schema cannot see: refs resolve, ids are unique, links and path parameters line up."""
    document = openapi_document()
    text = json.dumps(document)
    for ref in set(re.findall(r'"\$ref": "([^"]+)"', text)):
        _resolve(document, {"$ref": ref})
    ops = {
        (method, path): op
        for path, item in document["paths"].items()
        for method, op in item.items()
        if method in HTTP_METHODS
    }
    ids = [op["operationId"] for op in ops.values()]
    assert len(ids) == len(set(ids)), "operationIds must be unique"
    by_id = {op["operationId"]: (method, path, op) for (method, path), op in ops.items()}
    for (method, path), op in ops.items():
        item = document["paths"][path]
        params = [_resolve(document, p) for p in [*item.get("parameters", []), *op.get("parameters", [])]]
        in_path = {p["name"] for p in params if p["in"] == "path"}
        assert in_path == set(re.findall(r"{(\w+)}", path)), f"{method} {path}: path parameters"
        is_v1 = path.startswith("/v1/")
        assert (op.get("security") == [{"bearerAuth": []}]) == is_v1, f"{method} {path}: security"
        if is_v1:
            assert "401" in op["responses"], f"{method} {path}: no 401"
        for status, response in op["responses"].items():
            assert re.fullmatch(r"[1-5]\d\d", status), status
            for name, link in _resolve(document, response).get("links", {}).items():
                _, target_path, target = by_id[link["operationId"]]
                target_item = document["paths"][target_path]
                names = {
                    _resolve(document, p)["name"]
                    for p in [*target_item.get("parameters", []), *target.get("parameters", [])]
                }
                assert set(link["parameters"]) <= names, f"link {name} names unknown parameters"
    # Every schema that refuses unknown fields in a request matches the handler's own allow-list.
    schemas = document["components"]["schemas"]
    for prefix in RESOURCE_PREFIXES:  # the id prefixes that let POST /v1/jobs/track go without `kind`
        assert kind_for_resource_id(f"{prefix}abc") is not None, prefix
    assert kind_for_resource_id("thing_abc") is None
    assert set(schemas["CreateJobRequest"]["properties"]) == {
        "prompt",
        "model",
        "seconds",
        "size",
        "callback_url",
        "metadata",
    }
    assert schemas["CreateJobRequest"]["additionalProperties"] is False
    assert set(schemas["UpdateSubscriptionRequest"]["properties"]) == {
        "url",
        "event_types",
        "enabled",
        "description",
        "ordered",
    }


def test_the_served_document_is_the_document_with_the_configured_models(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    settings = make_settings(tmp_path, models=("sora-2-pro", "sora-3"))
    with TestClient(app_with_openapi(settings, start_workers=False)) as client:
        response = client.get("/openapi.json")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.json() == openapi_document(("sora-2-pro", "sora-3"))
    model = response.json()["components"]["schemas"]["CreateJobRequest"]["properties"]["model"]
    assert model == {"enum": ["sora-2-pro", "sora-3"], "default": "sora-2-pro"}


# --- real answers against the document ---


@pytest.mark.anyio
async def test_every_v1_operation_answers_a_documented_401_without_the_token(tmp_path: Path) -> None:
    document = openapi_document()
    app = app_with_openapi(make_settings(tmp_path), start_workers=False)
    async with live_server(app) as url, httpx.AsyncClient(base_url=url) as client:
        for path, item in document["paths"].items():
            for method in (m for m in item if m in HTTP_METHODS):
                concrete = re.sub(r"{\w+}", "x", path)
                for headers in ({}, auth("wrong-token"), {"authorization": "Basic dGVzdA=="}):
                    response = await client.request(method, concrete, headers=headers, json={})
                    if path.startswith("/v1/"):
                        assert response.status_code == 401, f"{method} {path}"
                    assert_conforms(document, method, path, response)
                    if path.startswith("/v1/"):
                        assert response.json()["error"]["code"] == "unauthorized"


@pytest.mark.anyio
async def test_answers_of_a_whole_job_and_delivery_life_match_the_document(tmp_path: Path) -> None:
    document = openapi_document()
    sub_server = Subscriber()
    sub_server.defaults["/dead"] = 500

    async with (
        live_server(sub_server.app()) as sub_url,
        emulated_service(tmp_path) as (url, _emulator, settings),
        httpx.AsyncClient(base_url=url, headers=auth()) as client,
    ):

        async def call(method: str, path: str, concrete: str | None = None, **kwargs: Any) -> Any:
            response = await client.request(method, concrete or path, **kwargs)
            return response.status_code, assert_conforms(document, method, path, response)

        # Operations, no token.
        for path in ("/healthz", "/readyz", "/metrics"):
            status, _ = await call("GET", path)
            assert status == 200

        # Subscriptions: one that succeeds, one whose deliveries die.
        status, sub = await call(
            "POST", "/v1/subscriptions", json={"url": f"{sub_url}/ok", "description": "fine", "ordered": True}
        )
        assert status == 201 and sub["secret"].startswith("whsec_")
        status, dead_sub = await call(
            "POST", "/v1/subscriptions", json={"url": f"{sub_url}/dead", "event_types": ["video.*"]}
        )
        assert status == 201
        one = "/v1/subscriptions/{sub_id}"
        assert (await call("GET", "/v1/subscriptions"))[0] == 200
        assert (await call("GET", one, f"/v1/subscriptions/{sub['id']}"))[0] == 200
        status, changed = await call(
            "PATCH", one, f"/v1/subscriptions/{sub['id']}", json={"description": None}
        )
        assert status == 200 and changed["description"] is None
        status, _ = await call("PATCH", one, f"/v1/subscriptions/{sub['id']}", json={"secret": "whsec_x"})
        assert status == 422
        status, rotated = await call(
            "POST", "/v1/subscriptions/{sub_id}/rotate-secret", f"/v1/subscriptions/{sub['id']}/rotate-secret"
        )
        assert status == 200 and rotated["secret"] != sub["secret"]
        status, _ = await call(
            "POST", "/v1/subscriptions/{sub_id}/test", f"/v1/subscriptions/{sub['id']}/test"
        )
        assert status == 202

        # A job through the emulator to completion.
        status, job = await call(
            "POST",
            "/v1/jobs",
            json={"prompt": "a fox", "seconds": 4, "metadata": {"k": "v"}},
            headers={"idempotency-key": "openapi-1"},
        )
        assert status == 202
        again = await client.post(
            "/v1/jobs",
            json={"prompt": "a fox", "seconds": 4, "metadata": {"k": "v"}},
            headers={"idempotency-key": "openapi-1"},
        )
        assert assert_conforms(document, "POST", "/v1/jobs", again)["id"] == job["id"]
        assert again.headers["idempotent-replayed"] == "true"
        for bad in ({"prompt": " "}, {"prompt": "x", "seconds": 5}, {"prompt": "x", "colour": "red"}):
            assert (await call("POST", "/v1/jobs", json=bad))[0] == 422
        assert (await call("POST", "/v1/jobs", content=b"[1]"))[0] == 400

        async def completed() -> Any:
            response = await client.get(f"/v1/jobs/{job['id']}")
            body = assert_conforms(document, "GET", "/v1/jobs/{job_id}", response)
            return body if body["status"] == "completed" and body["result"] else None

        done = await wait_until(completed, timeout=20)
        assert (await call("GET", "/v1/jobs/{job_id}", f"/v1/jobs/{done['resource_id']}"))[0] == 200
        status, events = await call("GET", "/v1/jobs/{job_id}/events", f"/v1/jobs/{job['id']}/events")
        assert status == 200 and {e["direction"] for e in events["data"]} == {"received", "emitted"}
        content = "/v1/jobs/{job_id}/content"
        assert (await call("GET", content, f"/v1/jobs/{job['id']}/content"))[0] == 200
        assert (await call("GET", content, f"/v1/jobs/{job['id']}/content?variant=poster"))[0] == 422
        assert (await call("DELETE", "/v1/jobs/{job_id}", f"/v1/jobs/{job['id']}"))[0] == 409
        status, listed = await call("GET", "/v1/jobs", params={"status": "completed", "limit": "1"})
        assert status == 200 and listed["data"][0]["id"] == job["id"]
        assert (await call("GET", "/v1/jobs", params={"limit": "0"}))[0] == 422

        # Cancel a pending job; track resources; a missing job.
        status, pending = await call("POST", "/v1/jobs", json={"prompt": "to cancel", "size": "1280x720"})
        status, cancelled = await call("DELETE", "/v1/jobs/{job_id}", f"/v1/jobs/{pending['id']}")
        assert status == 200 and cancelled["status"] == "cancelled"
        status, tracked = await call("POST", "/v1/jobs/track", json={"resource_id": "batch_openapi"})
        assert status == 201 and tracked["kind"] == "batch"
        assert (await call("POST", "/v1/jobs/track", json={"resource_id": "batch_openapi"}))[0] == 200
        assert (await call("POST", "/v1/jobs/track", json={"resource_id": "thing_1"}))[0] == 422
        assert (await call("GET", "/v1/jobs/{job_id}", "/v1/jobs/job_missing"))[0] == 404

        # A webhook: accepted, duplicate, bad signature, missing headers.
        secret = settings.webhook_secrets[0]
        body, headers = signed_webhook(secret, "video.completed", "video_openapi", webhook_id="wh_openapi")
        for expected in ("accepted", "duplicate"):
            response = await client.post("/webhooks/openai", content=body, headers=headers)
            assert assert_conforms(document, "POST", "/webhooks/openai", response) == {"status": expected}
        bad = {**headers, "webhook-signature": "v1,AAAA"}
        response = await client.post("/webhooks/openai", content=body, headers=bad)
        assert response.status_code == 401 and assert_conforms(document, "POST", "/webhooks/openai", response)
        response = await client.post("/webhooks/openai", content=body)
        assert response.status_code == 400 and assert_conforms(document, "POST", "/webhooks/openai", response)

        # Deliveries with attempts: a succeeded one and a dead one, retried.
        async def dead() -> Any:
            response = await client.get("/v1/deliveries", params={"subscription_id": dead_sub["id"]})
            page = assert_conforms(document, "GET", "/v1/deliveries", response)
            return [d for d in page["data"] if d["status"] == "dead"]

        [dead_delivery, *_] = await wait_until(dead, timeout=20)
        assert len(dead_delivery["attempts"]) == dead_delivery["attempt_count"] > 0
        one_delivery = "/v1/deliveries/{delivery_id}"
        assert (await call("GET", one_delivery, f"/v1/deliveries/{dead_delivery['id']}"))[0] == 200
        retry = "/v1/deliveries/{delivery_id}/retry"
        status, retried = await call("POST", retry, f"/v1/deliveries/{dead_delivery['id']}/retry")
        assert status == 202 and retried["id"] == dead_delivery["id"]
        assert (await call("POST", retry, "/v1/deliveries/dlv_missing/retry"))[0] == 404
        assert (await call("GET", "/v1/deliveries", params={"status": "lost"}))[0] == 422

        status, replayed = await call(
            "POST",
            "/v1/subscriptions/{sub_id}/replay",
            f"/v1/subscriptions/{sub['id']}/replay",
            json={"since": int(time.time()) - 60},
        )
        assert status == 202 and replayed["enqueued"] >= 1
        status, _ = await call(
            "POST", "/v1/subscriptions/{sub_id}/replay", f"/v1/subscriptions/{sub['id']}/replay", json={}
        )
        assert status == 422
        status, _ = await call("PATCH", one, f"/v1/subscriptions/{sub['id']}", json={"enabled": False})
        status, _ = await call(
            "POST", "/v1/subscriptions/{sub_id}/test", f"/v1/subscriptions/{sub['id']}/test"
        )
        assert status == 409
        assert (await call("DELETE", one, f"/v1/subscriptions/{sub['id']}"))[0] == 200
        assert (await call("DELETE", one, f"/v1/subscriptions/{sub['id']}"))[0] == 404
