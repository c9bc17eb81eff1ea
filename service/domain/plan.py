"""What one observation of a job writes: the planner every source (webhook, submitter, refresher,
reconciler, cancel) goes through, from the job as stored to the fields and events to write.

The store reads the job, calls `plan_observation`, writes `JobPlan.fields` (and, when the status
moved, the event `status_effects` names, its fan-out and archive rows) in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from service.domain.jobs import EVENT_TYPES, Kind, Observation, decide, emitted_type, is_terminal
from service.store.records import Job


@dataclass(frozen=True, slots=True)
class JobPlan:
    """The change an observation makes: `fields` are Job attributes with their new values (empty:
    nothing to write), `job` the job as it will be, `finishes_submission` clears a pending submit."""

    job: Job
    fields: dict[str, Any]
    status_changed: bool
    finishes_submission: bool


def plan_observation(current: Job, obs: Observation, now: float) -> JobPlan:
    """Run the state machine on `current` and say what to write.

    Details (result, error) are taken whenever a source brings them, even without a status change
    (the follow-up retrieve after a terminal webhook); a terminal job's details only grow.
    """
    change = decide(current.status, current.progress, current.sequence, obs)
    fields: dict[str, Any] = {}
    if obs.resource_id and current.resource_id is None:
        fields["resource_id"] = obs.resource_id
    if change.fields_changed:
        fields["status"] = change.status
        fields["progress"] = change.progress
        fields["sequence"] = change.sequence
    finishing = change.status_changed and is_terminal(change.status)
    if finishing:
        fields["completed_at"] = obs.completed_at or int(now)
    if obs.result is not None:
        merged = dict(current.result or {})
        merged.update(obs.result)
        if merged != (current.result or None):
            fields["result"] = merged
    if obs.error is not None and (change.status == "failed" or change.status_changed):
        if current.error != obs.error:
            fields["error"] = obs.error
    if fields:
        fields["updated_at"] = now
    job = replace(current, **fields) if fields else current
    return JobPlan(job, fields, change.status_changed, finishing)


def new_webhook_job(job_id: str, kind: Kind, resource_id: str, obs: Observation, now: float) -> Job:
    """A job first heard of by webhook, in the state the webhook puts it in (written once)."""
    change = decide("queued", 0, 0, obs)
    return Job(
        id=job_id,
        kind=kind,
        resource_id=resource_id,
        status=change.status,
        progress=change.progress,
        origin="webhook",
        request=None,
        result=None,
        error=None,
        callback_url=None,
        metadata={},
        created_at=now,
        updated_at=now,
        completed_at=(obs.completed_at or int(now)) if is_terminal(change.status) else None,
        sequence=change.sequence,
    )


@dataclass(frozen=True, slots=True)
class StatusEffects:
    """What follows a status change: the event to emit, whether the job finished (for its duration
    metric), and which archive variants to queue."""

    event_type: str
    finished_after: float | None
    archive_variants: tuple[str, ...]


def status_effects(
    job: Job, obs: Observation, now: float, archive_variants: tuple[str, ...]
) -> StatusEffects:
    """The consequences of `job` having just reached its status through `obs`."""
    event_type = emitted_type(job.kind, job.status)
    if obs.event_type and EVENT_TYPES.get(obs.event_type, (None, None))[1] == job.status:
        event_type = obs.event_type  # OpenAI's own name (`response.incomplete`)
    finished = max(0.0, now - job.created_at) if is_terminal(job.status) else None
    archive = archive_variants if (job.status == "completed" and job.kind == "video") else ()
    return StatusEffects(event_type, finished, archive)


def webhook_observation(event_type: str, created_at: int | None) -> tuple[Kind, Observation] | None:
    """What an OpenAI webhook of `event_type` says about its resource: (kind, observation), or None
    for a type the state machine does not model (passed through to its subscribers as it came)."""
    mapped = EVENT_TYPES.get(event_type)
    if mapped is None:
        return None
    kind, status = mapped
    return kind, Observation(
        status=status, completed_at=created_at if is_terminal(status) else None, event_type=event_type
    )
