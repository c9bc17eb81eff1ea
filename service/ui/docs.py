"""GET /docs: the API reference, rendered on the server from the same document /openapi.json serves.

No Swagger UI: that would mean a CDN or a vendored JavaScript bundle, and an offline page of plain HTML
(operations by tag, their parameters, bodies and answers, the outgoing events, the schemas) reads the same.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from service.openapi import openapi_document

if TYPE_CHECKING:
    from collections.abc import Sequence

HTTP_METHODS = ("get", "post", "put", "patch", "delete")


def schema_ref(schema: dict[str, Any] | None) -> str | None:
    """The component name a `$ref` schema points at (`#/components/schemas/Job` -> `Job`)."""
    if schema and isinstance(schema.get("$ref"), str):
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    return None


def _resolve(document: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    ref = item.get("$ref")
    if not isinstance(ref, str):
        return item
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return dict(node)


def _body(document: dict[str, Any], content: dict[str, Any] | None) -> list[dict[str, Any]]:
    out = []
    for media_type, entry in (content or {}).items():
        schema = entry.get("schema") or {}
        ref = schema_ref(schema)
        out.append(
            {
                "media_type": media_type,
                "ref": ref,
                "schema": None if ref else json.dumps(schema, indent=2),
            }
        )
    return out


def operations(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Every operation as a flat record for the template, in document order."""
    out = []
    for path, item in document.get("paths", {}).items():
        for method in HTTP_METHODS:
            op = item.get(method)
            if op is None:
                continue
            params = [_resolve(document, p) for p in [*item.get("parameters", []), *op.get("parameters", [])]]
            body = op.get("requestBody")
            responses = []
            for status, response in op.get("responses", {}).items():
                response = _resolve(document, response)
                responses.append(
                    {
                        "status": status,
                        "description": response.get("description", ""),
                        "bodies": _body(document, response.get("content")),
                    }
                )
            out.append(
                {
                    "id": op.get("operationId", f"{method}-{path}"),
                    "method": method.upper(),
                    "path": path,
                    "summary": op.get("summary", ""),
                    "description": op.get("description", ""),
                    "tag": (op.get("tags") or ["other"])[0],
                    "auth": bool(op.get("security")),
                    "params": [
                        {
                            "name": p.get("name"),
                            "in": p.get("in"),
                            "required": bool(p.get("required")),
                            "description": p.get("description", ""),
                            "schema": json.dumps(p.get("schema", {})),
                        }
                        for p in params
                    ],
                    "body": _body(document, body.get("content")) if body else [],
                    "responses": responses,
                }
            )
    return out


def webhooks(document: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name, item in document.get("webhooks", {}).items():
        op = item.get("post", {})
        content = op.get("requestBody", {}).get("content", {}).get("application/json", {})
        ref = schema_ref(content.get("schema"))
        schema = document["components"]["schemas"].get(ref, {}) if ref else {}
        examples = schema.get("examples") or []
        out.append(
            {
                "name": name,
                "summary": op.get("summary", ""),
                "description": op.get("description", ""),
                "ref": ref,
                "example": json.dumps(examples[0], indent=2) if examples else None,
            }
        )
    return out


class DocsPage:
    def __init__(self, models: Sequence[str], templates: Jinja2Templates) -> None:
        self.models = tuple(models)
        self.templates = templates

    async def endpoint(self, request: Request) -> Response:
        document = openapi_document(self.models)
        ops = operations(document)
        tags = [t["name"] for t in document.get("tags", [])]
        tags += sorted({op["tag"] for op in ops} - set(tags))
        context = {
            "title": "API reference",
            "info": document["info"],
            "tags": [(t, [op for op in ops if op["tag"] == t]) for t in tags],
            "webhooks": webhooks(document),
            "schemas": [
                (name, json.dumps(schema, indent=2))
                for name, schema in document["components"]["schemas"].items()
            ],
            "session": None,
            "flashes": [],
        }
        return self.templates.TemplateResponse(request, "docs.html", context)
