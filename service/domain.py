"""The pure core: job kinds and statuses, the OpenAI event-type table, and the job state machine (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

Kind = Literal["video", "batch", "response", "fine_tuning_job"]
Status = Literal["pending", "queued", "in_progress", "completed", "failed", "cancelled", "expired"]
Origin = Literal["api", "track", "webhook"]

KINDS: tuple[Kind, ...] = get_args(Kind)
STATUSES: tuple[Status, ...] = get_args(Status)
TERMINAL: frozenset[Status] = frozenset({"completed", "failed", "cancelled", "expired"})

# Where a status sits in the lifecycle; a job only moves to a higher rank.
_RANK: dict[Status, int] = {
    "pending": 0,
    "queued": 1,
    "in_progress": 2,
    "completed": 3,
    "failed": 3,
    "cancelled": 3,
    "expired": 3,
}

# Every OpenAI webhook type we model: type -> (kind, status it moves the job to).
EVENT_TYPES: dict[str, tuple[Kind, Status]] = {
    "video.completed": ("video", "completed"),
    "video.failed": ("video", "failed"),
    "batch.completed": ("batch", "completed"),
    "batch.failed": ("batch", "failed"),
    "batch.expired": ("batch", "expired"),
    "batch.cancelled": ("batch", "cancelled"),
    "response.completed": ("response", "completed"),
    "response.failed": ("response", "failed"),
    "response.cancelled": ("response", "cancelled"),
    # An incomplete response ended without its full output: terminal, and not a success.
    "response.incomplete": ("response", "failed"),
    "fine_tuning.job.succeeded": ("fine_tuning_job", "completed"),
    "fine_tuning.job.failed": ("fine_tuning_job", "failed"),
    "fine_tuning.job.cancelled": ("fine_tuning_job", "cancelled"),
}

# The event type we emit when a job of a kind enters a status (OpenAI's own names where they exist).
_EMIT_PREFIX: dict[Kind, str] = {
    "video": "video",
    "batch": "batch",
    "response": "response",
    "fine_tuning_job": "fine_tuning.job",
}


def emitted_type(kind: Kind, status: Status) -> str:
    """The event type sorahook emits when a job of `kind` enters `status`."""
    if kind == "fine_tuning_job" and status == "completed":
        return "fine_tuning.job.succeeded"
    return f"{_EMIT_PREFIX[kind]}.{status}"


# The status names OpenAI uses on each kind's own object, mapped to ours.
_RESOURCE_STATUS: dict[Kind, dict[str, Status]] = {
    "video": {"queued": "queued", "in_progress": "in_progress", "completed": "completed", "failed": "failed"},
    "batch": {
        "validating": "queued",
        "in_progress": "in_progress",
        "finalizing": "in_progress",
        "completed": "completed",
        "failed": "failed",
        "expired": "expired",
        "cancelling": "in_progress",
        "cancelled": "cancelled",
    },
    "response": {
        "queued": "queued",
        "in_progress": "in_progress",
        "completed": "completed",
        "failed": "failed",
        "cancelled": "cancelled",
        "incomplete": "failed",
    },
    "fine_tuning_job": {
        "validating_files": "queued",
        "queued": "queued",
        "running": "in_progress",
        "succeeded": "completed",
        "failed": "failed",
        "cancelled": "cancelled",
    },
}

_RESOURCE_PREFIX: dict[str, Kind] = {
    "video_": "video",
    "batch_": "batch",
    "resp_": "response",
    "ftjob_": "fine_tuning_job",
}


def kind_for_resource_id(resource_id: str) -> Kind | None:
    """Guess a kind from OpenAI's id prefixes (`video_…`, `batch_…`, `resp_…`, `ftjob_…`)."""
    for prefix, kind in _RESOURCE_PREFIX.items():
        if resource_id.startswith(prefix):
            return kind
    return None


def status_from_resource(kind: Kind, openai_status: str) -> Status | None:
    return _RESOURCE_STATUS[kind].get(openai_status)


def is_terminal(status: Status) -> bool:
    return status in TERMINAL


def can_transition(current: Status, new: Status) -> bool:
    """True when moving a job from `current` to `new` is a real, forward change.

    1. terminal states are final; 2. a job never moves back (a late `queued` after `in_progress` is
    ignored); 3. the same status again is no change; 4. any non-terminal state may end in any terminal one.
    """
    if current in TERMINAL or new == current:
        return False
    return _RANK[new] > _RANK[current]


@dataclass(frozen=True)
class Observation:
    """What one source (a webhook, a retrieve, the submitter, a cancel) learned about a job's resource."""

    status: Status | None = None
    progress: int | None = None
    resource_id: str | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    completed_at: int | None = None
    event_type: str | None = None  # the OpenAI type that carried it, when it came by webhook


@dataclass(frozen=True)
class Change:
    """The outcome of applying an observation to a job: the new fields, and whether the status moved."""

    status: Status
    progress: int
    sequence: int
    status_changed: bool
    fields_changed: bool


def decide(current_status: Status, current_progress: int, current_sequence: int, obs: Observation) -> Change:
    """Apply the state machine: what the job looks like after `obs` (rule 5: sequence +1 per status change)."""
    status = current_status
    changed = False
    if obs.status is not None and can_transition(current_status, obs.status):
        status = obs.status
        changed = True
    progress = current_progress
    if status == "completed":
        progress = 100
    elif obs.progress is not None and not is_terminal(current_status) and obs.progress > current_progress:
        progress = max(0, min(100, obs.progress))
    fields_changed = changed or progress != current_progress
    return Change(
        status=status,
        progress=progress,
        sequence=current_sequence + 1 if changed else current_sequence,
        status_changed=changed,
        fields_changed=fields_changed,
    )


def matches_filter(event_type: str, patterns: list[str] | None) -> bool:
    """Subscription filters: no list means every type; `video.*` matches any type under `video.`."""
    if not patterns:
        return True
    for pattern in patterns:
        if pattern == "*" or pattern == event_type:
            return True
        if pattern.endswith("*") and event_type.startswith(pattern[:-1]):
            return True
    return False


def _error_of(kind: Kind, obj: dict[str, Any]) -> dict[str, Any] | None:
    error = obj.get("error")
    if isinstance(error, dict) and (error.get("code") or error.get("message")):
        return {"code": error.get("code") or "error", "message": error.get("message") or ""}
    errors = obj.get("errors")
    if (
        kind == "batch"
        and isinstance(errors, dict)
        and isinstance(errors.get("data"), list)
        and errors["data"]
    ):
        first = errors["data"][0]
        if isinstance(first, dict):
            return {"code": first.get("code") or "batch_failed", "message": first.get("message") or ""}
    if kind == "response" and obj.get("status") == "incomplete":
        details = obj.get("incomplete_details") or {}
        reason = details.get("reason") if isinstance(details, dict) else None
        return {"code": "incomplete", "message": f"the response is incomplete: {reason or 'unknown reason'}"}
    return None


_RESULT_FIELDS: dict[Kind, tuple[str, ...]] = {
    "video": ("expires_at", "size", "seconds", "model"),
    "batch": ("output_file_id", "error_file_id", "request_counts"),
    "response": ("usage",),
    "fine_tuning_job": ("fine_tuned_model", "result_files", "trained_tokens"),
}


def observation_from_resource(kind: Kind, obj: dict[str, Any]) -> Observation:
    """What an OpenAI object (a Video, Batch, Response or FineTuningJob) says about the job tracking it."""
    raw_status = obj.get("status")
    status = status_from_resource(kind, raw_status) if isinstance(raw_status, str) else None
    progress = obj.get("progress")
    if not isinstance(progress, int) or isinstance(progress, bool):
        progress = None
    result: dict[str, Any] | None = None
    if status in TERMINAL or obj.get("expires_at"):
        result = {name: obj.get(name) for name in _RESULT_FIELDS[kind] if obj.get(name) is not None} or None
    completed_at = obj.get("completed_at") or obj.get("finished_at")
    resource_id = obj.get("id")
    return Observation(
        status=status,
        progress=progress,
        resource_id=resource_id if isinstance(resource_id, str) else None,
        result=result,
        error=_error_of(kind, obj) if status == "failed" else None,
        completed_at=completed_at if isinstance(completed_at, int) else None,
    )
