"""How the API is put together: one route table, request models that are the document's schemas, and
handlers that get their dependencies rather than the app."""

from __future__ import annotations

import ast
from pathlib import Path

import httpx
import jsonschema_rs
import pytest
from pydantic import ValidationError

from service.api.routes import ROUTES
from service.api.schemas import REQUEST_MODELS
from service.app import create_app
from service.openapi import openapi_document
from tests.support import auth, make_settings

SERVICE = Path(__file__).resolve().parent.parent / "service"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("folder", ["api", "ui"])
def test_the_api_and_the_console_do_not_import_the_app(folder: str) -> None:
    """app.py builds the API; the API never reaches back into it (no circle, no Runtime to look things up in)."""
    for path in sorted((SERVICE / folder).glob("*.py")):
        assert "service.app" not in _imports(path), f"{path.name} imports service.app"


def test_every_operation_of_the_table_is_in_the_document_once() -> None:
    document = openapi_document()
    ids = [spec.operation_id for spec in ROUTES]
    assert len(ids) == len(set(ids))
    for spec in ROUTES:
        op = document["paths"][spec.path][spec.method.lower()]
        assert op["operationId"] == spec.operation_id and op["summary"] == spec.summary
        if spec.request is not None:
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            assert schema == {"$ref": f"#/components/schemas/{spec.request.__name__}"}


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "a fox"},
        {"prompt": "a fox", "seconds": 8, "size": "1280x720", "metadata": {"k": "v"}},
        {"prompt": " "},
        {"prompt": "a fox", "colour": "red"},
        {"prompt": "a fox", "metadata": {"": "v"}},
        {"prompt": "a fox", "metadata": {"k": 1}},
        {"prompt": "a fox", "callback_url": "x" * 2049},
        {"prompt": 7},
    ],
)
def test_the_job_request_model_and_its_documented_schema_agree(body: dict[str, object]) -> None:
    """The schema /openapi.json gives for POST /v1/jobs is generated from the model the handler validates with."""
    from service.api.schemas import CreateJobRequest

    document = openapi_document()
    validator = jsonschema_rs.validator_for(
        {"allOf": [{"$ref": "#/components/schemas/CreateJobRequest"}], "components": document["components"]}
    )
    try:
        CreateJobRequest.model_validate(body)
        model_accepts = True
    except ValidationError:
        model_accepts = False
    assert validator.is_valid(body) == model_accepts


def test_every_request_model_is_a_component_of_the_document() -> None:
    schemas = openapi_document()["components"]["schemas"]
    for model in REQUEST_MODELS:
        assert model.__name__ in schemas


@pytest.mark.anyio
async def test_a_request_before_the_store_opens_is_a_503_starting_not_a_500(tmp_path: Path) -> None:
    """The handlers hold what the lifespan will open; asked before it has, they say so."""
    app = create_app(make_settings(tmp_path), start_workers=False)
    transport = httpx.ASGITransport(app=app)  # runs no lifespan: nothing is open
    async with httpx.AsyncClient(transport=transport, base_url="http://sorahook") as client:
        response = await client.get("/v1/jobs/job_x", headers=auth())
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "starting"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("", 20), ("7", 7), ("+7", 7), (" 7 ", 7), ("5.0", None), ("abc", None), ("0", None), ("101", None)],
)
def test_a_page_size_is_read_as_a_whole_number_or_named_as_the_bad_parameter(
    raw: str, expected: int | None
) -> None:
    from service.api.schemas import ListJobsQuery, limit_message, query
    from service.errors import ApiError

    if expected is not None:
        assert query(ListJobsQuery, {"limit": raw}, lambda e: limit_message(e) or "").limit == expected
        return
    with pytest.raises(ApiError) as refused:
        query(ListJobsQuery, {"limit": raw}, lambda e: limit_message(e) or "")
    assert (refused.value.status, refused.value.code, refused.value.param) == (
        422,
        "invalid_parameter",
        "limit",
    )
    assert refused.value.message.startswith("limit must be")
