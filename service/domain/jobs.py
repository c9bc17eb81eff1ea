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
        return job_error(str(error.get("code") or "error"), str(error.get("message") or ""))
    errors = obj.get("errors")
    if (
        kind == "batch"
        and isinstance(errors, dict)
        and isinstance(errors.get("data"), list)
        and errors["data"]
    ):
        first = errors["data"][0]
        if isinstance(first, dict):
            return job_error(str(first.get("code") or "batch_failed"), str(first.get("message") or ""))
    if kind == "response" and obj.get("status") == "incomplete":
        details = obj.get("incomplete_details") or {}
        reason = details.get("reason") if isinstance(details, dict) else None
        return job_error(
            "incomplete",
            f"the response is incomplete: {reason or 'unknown reason'}",
            category="content_policy" if reason == "content_filter" else "provider_error",
        )
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


# --- a failed job's error: OpenAI's code and message, a category from a closed set, a line for end users ----

ErrorCategory = Literal[
    "invalid_request",
    "content_policy",
    "quota_or_billing",
    "rate_limited",
    "provider_error",
    "network",
    "not_found",
    "cancelled",
]
ERROR_CATEGORIES: tuple[ErrorCategory, ...] = get_args(ErrorCategory)

# OpenAI's error codes (and sorahook's own) by category; a code not listed falls to the HTTP status.
_CODE_CATEGORY: dict[str, ErrorCategory] = {
    "moderation_blocked": "content_policy",
    "moderation_flagged": "content_policy",
    "content_policy_violation": "content_policy",
    "content_filter": "content_policy",
    "insufficient_quota": "quota_or_billing",
    "billing_hard_limit_reached": "quota_or_billing",
    "billing_not_active": "quota_or_billing",
    "payment_required": "quota_or_billing",
    "rate_limit_exceeded": "rate_limited",
    "timeout": "network",
    "connection_error": "network",
    "network_error": "network",
    "not_found": "not_found",
    "resource_not_found": "not_found",
    "cancelled": "cancelled",
    "canceled": "cancelled",
    "invalid_value": "invalid_request",
    "invalid_request": "invalid_request",
    "invalid_request_error": "invalid_request",
    "missing_required_parameter": "invalid_request",
    "unsupported_value": "invalid_request",
    "invalid_prompt": "invalid_request",
    "video_generation_failed": "provider_error",
    "invalid_response": "provider_error",
    "server_error": "provider_error",
    "submission_failed": "provider_error",
}

# A sentence a product can show its own end user: no codes, no blame, what to do next.
USER_MESSAGES: dict[ErrorCategory, str] = {
    "invalid_request": "The video request was not accepted. Please check the prompt and settings and try again.",
    "content_policy": "This request was blocked by the content policy. Please change the prompt and try again.",
    "quota_or_billing": "Video generation is unavailable right now because of an account limit. "
    "Please try again later.",
    "rate_limited": "The video service is busy right now. Please try again in a few minutes.",
    "provider_error": "The video service had a problem making this video. Please try again.",
    "network": "The video service could not be reached. Please try again in a few minutes.",
    "not_found": "This video is no longer available.",
    "cancelled": "This video was cancelled.",
}


def error_category(status: int | None, code: str | None) -> ErrorCategory:
    """The category of an error from its HTTP status (None for a failed video or a network error) and code.

    The code decides first (a 429 `insufficient_quota` is billing, a 400 `moderation_blocked` is policy);
    then the status; anything else is the provider's own failure.
    """
    if code:
        name = code.lower()
        known = _CODE_CATEGORY.get(name)
        if known is not None:
            return known
        if "moderation" in name or "safety" in name or "policy" in name:
            return "content_policy"
        if "quota" in name or "billing" in name:
            return "quota_or_billing"
    if status is None:
        return "provider_error"
    if status == 402:
        return "quota_or_billing"
    if status == 429:
        return "rate_limited"
    if status in (404, 410):
        return "not_found"
    if status == 408:
        return "network"
    if status in (400, 409, 413, 415, 422):
        return "invalid_request"
    return "provider_error"


def job_error(
    code: str,
    message: str,
    *,
    status: int | None = None,
    category: ErrorCategory | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A failed job's `error`: OpenAI's (or sorahook's) code and message, its category and the user line."""
    chosen = category if category is not None else error_category(status, code)
    return {
        "code": code,
        "message": message,
        "category": chosen,
        "user_message": USER_MESSAGES[chosen],
        **extra,
    }


def categorized(error: dict[str, Any] | None) -> dict[str, Any] | None:
    """`error` with its category and user line, filled in from its code when it was stored without them."""
    if error is None or ("category" in error and "user_message" in error):
        return error
    category = error.get("category")
    if category not in USER_MESSAGES:
        code = error.get("code")
        category = error_category(None, code if isinstance(code, str) else None)
    return {**error, "category": category, "user_message": USER_MESSAGES[category]}
