"""msgspec against pydantic v2 for the API's typed models: decode and validate a POST /v1/jobs body, and
encode a job object, side by side with the standard library's json alone (no checks), the floor.

    python -m bench.models            # medians of 7 runs, microseconds per call

Both libraries get the same model: the same fields, bounds and refusal of unknown fields. What the
choice also weighs (not timed here): the JSON Schema each writes for /openapi.json, and how its
validation errors map onto the contract's `{"error": {"code", "message", "param"}}`.
"""

from __future__ import annotations

import json
import statistics
import timeit
from typing import Annotated, Any, Literal

import msgspec
import pydantic

BODY = json.dumps(
    {
        "prompt": "A fox walks through fresh snow at dawn, the camera low and following",
        "model": "sora-2-pro",
        "seconds": "8",
        "size": "1280x720",
        "callback_url": "https://hooks.example.com/sorahook",
        "metadata": {"customer": "acme", "order": "o-1234"},
    }
).encode()

JOB: dict[str, Any] = {
    "id": "job_01HZX3Y8Q4R5S6T7V8W9XAYBZC",
    "object": "job",
    "kind": "video",
    "resource_id": "video_68d7512d07848190b3e45da0ecbebcde",
    "status": "in_progress",
    "progress": 42,
    "origin": "api",
    "request": {"model": "sora-2-pro", "prompt": "A fox", "seconds": "8", "size": "1280x720"},
    "estimated_cost_usd": 2.4,
    "result": None,
    "error": None,
    "callback_url": "https://hooks.example.com/sorahook",
    "metadata": {"customer": "acme", "order": "o-1234"},
    "created_at": 1764806400,
    "updated_at": 1764806460,
    "completed_at": None,
    "sequence": 3,
}

Model = Literal["sora-2", "sora-2-pro"]


# --- pydantic v2 ---

PMetadata = Annotated[
    dict[
        Annotated[str, pydantic.StringConstraints(min_length=1, max_length=64)],
        Annotated[str, pydantic.Field(max_length=512)],
    ],
    pydantic.Field(max_length=16),
]


class PCreateJob(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)

    prompt: Annotated[str, pydantic.Field(min_length=1, max_length=10_000, pattern=r"\S")]
    model: Model = "sora-2"
    seconds: str | int = "4"
    size: str = "720x1280"
    callback_url: Annotated[str, pydantic.Field(min_length=1, max_length=2048)] | None = None
    metadata: PMetadata | None = None


class PRequest(pydantic.BaseModel):
    model: str
    prompt: str
    seconds: str
    size: str


class PJob(pydantic.BaseModel):
    id: str
    object: Literal["job"] = "job"
    kind: str
    resource_id: str | None
    status: str
    progress: int
    origin: str
    request: PRequest | None
    estimated_cost_usd: float | None
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    callback_url: str | None
    metadata: dict[str, str]
    created_at: int
    updated_at: int
    completed_at: int | None
    sequence: int


# --- msgspec ---

MMetadata = Annotated[
    dict[
        Annotated[str, msgspec.Meta(min_length=1, max_length=64)],
        Annotated[str, msgspec.Meta(max_length=512)],
    ],
    msgspec.Meta(max_length=16),
]


class MCreateJob(msgspec.Struct, forbid_unknown_fields=True):
    prompt: Annotated[str, msgspec.Meta(min_length=1, max_length=10_000, pattern=r"\S")]
    model: Model = "sora-2"
    seconds: str | int = "4"
    size: str = "720x1280"
    callback_url: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)] | None = None
    metadata: MMetadata | None = None


class MRequest(msgspec.Struct):
    model: str
    prompt: str
    seconds: str
    size: str


class MJob(msgspec.Struct):
    id: str
    kind: str
    resource_id: str | None
    status: str
    progress: int
    origin: str
    request: MRequest | None
    estimated_cost_usd: float | None
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    callback_url: str | None
    metadata: dict[str, str]
    created_at: int
    updated_at: int
    completed_at: int | None
    sequence: int
    object: Literal["job"] = "job"


def stdlib_decode() -> Any:
    return json.loads(BODY)


def median_us(fn: Any, number: int = 5000, repeat: int = 11) -> float:
    runs = timeit.repeat(fn, number=number, repeat=repeat)
    return statistics.median(runs) / number * 1e6


def main() -> None:
    p_decoder = PCreateJob.model_validate_json
    m_decoder = msgspec.json.Decoder(MCreateJob)
    p_job = PJob.model_validate(JOB)
    m_job = msgspec.convert(JOB, MJob)
    m_encoder = msgspec.json.Encoder()
    rows = [
        (
            "decode+validate POST /v1/jobs",
            median_us(stdlib_decode),
            median_us(lambda: p_decoder(BODY)),
            median_us(lambda: m_decoder.decode(BODY)),
        ),
        (
            "encode a job",
            median_us(lambda: json.dumps(JOB).encode()),
            median_us(p_job.model_dump_json),
            median_us(lambda: m_encoder.encode(m_job)),
        ),
        (
            "build a job from a dict, encode",
            median_us(lambda: json.dumps(JOB).encode()),
            median_us(lambda: PJob.model_validate(JOB).model_dump_json()),
            median_us(lambda: m_encoder.encode(msgspec.convert(JOB, MJob))),
        ),
    ]
    print(
        f"{'us per call (median of 11)':34} {'stdlib json':>12} {'pydantic':>10} {'msgspec':>10} {'pyd/msg':>8}"
    )
    for name, base, pyd, msg in rows:
        print(f"{name:34} {base:12.2f} {pyd:10.2f} {msg:10.2f} {pyd / msg:8.1f}")
    print(f"pydantic {pydantic.VERSION}, msgspec {msgspec.__version__}")


if __name__ == "__main__":
    main()
