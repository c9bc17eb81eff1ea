"""The model table: what each model allows and costs, from OpenAI's defaults or SORAHOOK_MODELS_FILE."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.app import create_app
from service.config import ConfigError, load_settings
from service.models import DEFAULT_MODEL_TABLE, ModelTable, model_label, refusal
from service.openapi import openapi_document
from tests.support import auth, live_server, make_settings

pytestmark = pytest.mark.anyio

PROVIDER = {
    "wan-2.5": {"seconds": [5, 10], "sizes": ["1920x1080", "1080x1920"], "usd_per_second": 0.05},
    "sora-2-pro": {
        "seconds": ["4", "8", "12", "16", "20"],
        "sizes": ["1280x720", "1920x1080"],
        "usd_per_second": {"1280x720": 0.3, "1920x1080": 0.7},
    },
}


def test_refusals_name_what_the_model_allows() -> None:
    sora2 = DEFAULT_MODEL_TABLE.spec("sora-2")
    assert refusal(sora2, "4", "720x1280") is None
    assert refusal(sora2, "4", "1792x1024") == ("size", "sora-2 allows size 720x1280 or 1280x720")
    assert refusal(DEFAULT_MODEL_TABLE.spec("sora-2-pro"), "20", "1792x1024") == (
        "seconds",
        "sora-2-pro allows seconds 4, 8 or 12",
    )
    # A model the table does not describe gets the Videos API's own values and no price.
    other = DEFAULT_MODEL_TABLE.spec("sora-3")
    assert refusal(other, "12", "1792x1024") is None and other.prices == ()
    names = DEFAULT_MODEL_TABLE.names
    assert model_label("sora-2", names) == "sora-2"
    assert model_label("sora-3", names) == model_label(None, names) == "other"


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"model": "sora-2", "size": "1792x1024"}, "size", "sora-2 allows size 720x1280 or 1280x720"),
        ({"model": "sora-2-pro", "seconds": 16}, "seconds", "sora-2-pro allows seconds 4, 8 or 12"),
        ({"model": "sora-2-pro", "size": "1920x1080"}, "size", "sora-2-pro allows size 720x1280, "),
        ({"seconds": [4]}, "seconds", "sora-2 allows 4, 8, 12"),
        ({"size": 720}, "size", "size must be a string"),
    ],
)
async def test_a_combination_the_model_refuses_is_a_422_naming_what_it_allows(
    tmp_path: Path, body: dict[str, Any], param: str, message: str
) -> None:
    app = create_app(make_settings(tmp_path), start_workers=False)
    async with live_server(app) as url, httpx.AsyncClient(base_url=url, headers=auth()) as client:
        response = await client.post("/v1/jobs", json={"prompt": "a fox", **body})
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["param"] == param and message in error["message"]
        ok = await client.post(
            "/v1/jobs", json={"prompt": "a fox", "model": "sora-2-pro", "size": "1792x1024"}
        )
        assert ok.status_code == 202 and ok.json()["estimated_cost_usd"] == 2.0


async def test_a_models_file_replaces_the_table_for_validation_pricing_and_the_openapi_document(
    tmp_path: Path,
) -> None:
    path = tmp_path / "models.json"
    path.write_text(json.dumps(PROVIDER))
    settings = load_settings({"SORAHOOK_MODELS_FILE": str(path)})
    assert settings.models == ("wan-2.5", "sora-2-pro")
    app = create_app(
        make_settings(
            tmp_path, models=settings.models, model_table=settings.model_table, prices=settings.prices
        ),
        start_workers=False,
    )
    async with live_server(app) as url, httpx.AsyncClient(base_url=url, headers=auth()) as client:
        job = (await client.post("/v1/jobs", json={"prompt": "a fox"})).json()
        assert job["request"]["model"] == "wan-2.5"
        assert (job["request"]["seconds"], job["request"]["size"]) == ("5", "1920x1080")  # its first values
        assert job["estimated_cost_usd"] == 0.25
        pro = await client.post(
            "/v1/jobs", json={"prompt": "a fox", "model": "sora-2-pro", "seconds": 20, "size": "1920x1080"}
        )
        assert pro.status_code == 202 and pro.json()["estimated_cost_usd"] == 14.0
        refused = await client.post("/v1/jobs", json={"prompt": "a fox", "model": "wan-2.5", "seconds": 4})
        assert refused.status_code == 422
        assert refused.json()["error"]["message"] == "wan-2.5 allows seconds 5 or 10"
        gone = await client.post("/v1/jobs", json={"prompt": "a fox", "model": "sora-2"})
        assert gone.status_code == 422 and gone.json()["error"]["param"] == "model"

        document = (await client.get("/openapi.json")).json()
        request = document["components"]["schemas"]["CreateJobRequest"]
        assert request["properties"]["model"]["enum"] == ["wan-2.5", "sora-2-pro"]
        assert request["properties"]["size"]["enum"] == ["1920x1080", "1080x1920", "1280x720"]
        assert "20" in request["properties"]["seconds"]["enum"]
        rules = {json.dumps(r["if"]): r["then"]["properties"] for r in request["allOf"]}
        assert any(v["size"]["enum"] == ["1280x720", "1920x1080"] for v in rules.values())


def test_the_default_document_says_what_each_openai_model_allows() -> None:
    request = openapi_document()["components"]["schemas"]["CreateJobRequest"]
    assert request["properties"]["size"]["enum"] == ["720x1280", "1280x720", "1024x1792", "1792x1024"]
    sora2, pro = request["allOf"]
    assert sora2["then"]["properties"]["size"]["enum"] == ["720x1280", "1280x720"]
    assert pro["if"] == {"properties": {"model": {"const": "sora-2-pro"}}, "required": ["model"]}
    assert pro["then"]["properties"]["size"]["enum"][-1] == "1792x1024"


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        "{}",
        '{"m": []}',
        '{"m": {"seconds": [], "sizes": ["1x1"]}}',
        '{"m": {"seconds": [4], "sizes": ["big"]}}',
        '{"m": {"seconds": [4], "sizes": ["1280x720"], "usd_per_second": -1}}',
        '{"m": {"seconds": [4], "sizes": ["1280x720"], "usd_per_second": {"720x1280": 1}}}',
        '{"m": {"seconds": [4], "sizes": ["1280x720"], "colour": "red"}}',
    ],
)
def test_a_bad_models_file_stops_start_up_with_one_line_naming_the_variable(
    tmp_path: Path, content: str
) -> None:
    path = tmp_path / "models.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        load_settings({"SORAHOOK_MODELS_FILE": str(path)})
    assert "SORAHOOK_MODELS_FILE" in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="SORAHOOK_MODELS_FILE"):
        load_settings({"SORAHOOK_MODELS_FILE": str(tmp_path / "missing.json")})


@pytest.mark.parametrize("variable", ["SORAHOOK_MODELS_FILE", "SORAHOOK_PRICES_FILE"])
def test_an_odd_table_file_is_one_line_naming_the_variable_and_never_blocks(
    tmp_path: Path, variable: str
) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)  # opening it would wait for a writer that never comes
    big = tmp_path / "big.json"
    big.write_text('{"m": "' + "x" * (2 << 20) + '"}')
    for path in (deep, fifo, big, Path("/dev/zero")):
        with pytest.raises(ConfigError) as caught:
            load_settings({variable: str(path)})
        assert variable in str(caught.value) and "\n" not in str(caught.value)


def test_a_models_file_saved_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    path = tmp_path / "models.json"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"m": {"seconds": [4], "sizes": ["1280x720"]}}')
    assert load_settings({"SORAHOOK_MODELS_FILE": str(path)}).model_table.names == ("m",)


def test_the_default_table_is_openais() -> None:
    assert isinstance(DEFAULT_MODEL_TABLE, ModelTable)
    assert DEFAULT_MODEL_TABLE.names == ("sora-2", "sora-2-pro")
    assert DEFAULT_MODEL_TABLE.prices()["sora-2"] == {"*": 0.10}
    assert load_settings({}).prices.estimate("sora-2-pro", "1024x1792", "12") == 6.0
