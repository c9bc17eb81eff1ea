"""The pure core (no I/O): jobs and their state machine, what a change writes, fan-out, retry policy.

- `jobs`: kinds, statuses, the OpenAI event-type table, the state machine, errors as categories.
- `plan`: what one observation of a job changes and emits, decided from the job as stored.
- `fanout`: which deliveries an event makes, and the one ordering key.
- `retry`: the one backoff function, the delivery retry/410/dead/auto-disable policy, reconcile delays.
- `quotas`: a client's limits and the arithmetic that checks them.

A store backend reads what these functions need, calls them inside its transaction, and writes what
they return; the functions never see a connection.
"""

from __future__ import annotations

from service.domain.jobs import (
    ERROR_CATEGORIES,
    EVENT_TYPES,
    KINDS,
    STATUSES,
    TERMINAL,
    USER_MESSAGES,
    Change,
    ErrorCategory,
    Kind,
    Observation,
    Origin,
    Status,
    can_transition,
    categorized,
    decide,
    emitted_type,
    error_category,
    is_terminal,
    job_error,
    kind_for_resource_id,
    matches_filter,
    observation_from_resource,
    status_from_resource,
)

__all__ = [
    "ERROR_CATEGORIES",
    "EVENT_TYPES",
    "KINDS",
    "STATUSES",
    "TERMINAL",
    "USER_MESSAGES",
    "Change",
    "ErrorCategory",
    "Kind",
    "Observation",
    "Origin",
    "Status",
    "can_transition",
    "categorized",
    "decide",
    "emitted_type",
    "error_category",
    "is_terminal",
    "job_error",
    "kind_for_resource_id",
    "matches_filter",
    "observation_from_resource",
    "status_from_resource",
]
