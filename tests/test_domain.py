"""The pure core: the event-type table and the job state machine, property-tested."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from service.domain import (
    EVENT_TYPES,
    STATUSES,
    TERMINAL,
    Observation,
    can_transition,
    decide,
    emitted_type,
    kind_for_resource_id,
    matches_filter,
    observation_from_resource,
)

_RANK = {"pending": 0, "queued": 1, "in_progress": 2}

statuses = st.sampled_from(STATUSES)
observations = st.builds(
    Observation,
    status=st.one_of(st.none(), statuses),
    progress=st.one_of(st.none(), st.integers(min_value=-5, max_value=120)),
)


def test_every_openai_event_type_maps_to_a_kind_and_status() -> None:
    assert EVENT_TYPES["video.completed"] == ("video", "completed")
    assert EVENT_TYPES["video.failed"] == ("video", "failed")
    assert EVENT_TYPES["batch.expired"] == ("batch", "expired")
    assert EVENT_TYPES["response.incomplete"] == ("response", "failed")
    assert EVENT_TYPES["fine_tuning.job.succeeded"] == ("fine_tuning_job", "completed")
    assert len(EVENT_TYPES) == 13


def test_emitted_types_use_openai_names() -> None:
    assert emitted_type("video", "in_progress") == "video.in_progress"
    assert emitted_type("fine_tuning_job", "completed") == "fine_tuning.job.succeeded"
    assert emitted_type("batch", "cancelled") == "batch.cancelled"


def test_resource_prefixes_give_kinds() -> None:
    assert kind_for_resource_id("video_123") == "video"
    assert kind_for_resource_id("batch_1") == "batch"
    assert kind_for_resource_id("resp_1") == "response"
    assert kind_for_resource_id("ftjob_1") == "fine_tuning_job"
    assert kind_for_resource_id("file_1") is None


@given(current=st.sampled_from(sorted(TERMINAL)), new=statuses)
def test_rule_terminal_states_are_final(current: str, new: str) -> None:
    assert not can_transition(current, new)  # type: ignore[arg-type]


@given(current=st.sampled_from(["queued", "in_progress"]), new=st.sampled_from(["pending", "queued"]))
def test_rule_a_late_event_never_moves_a_job_back(current: str, new: str) -> None:
    if _RANK[new] <= _RANK[current]:
        assert not can_transition(current, new)  # type: ignore[arg-type]


@given(status=statuses)
def test_rule_the_same_status_again_is_no_change(status: str) -> None:
    change = decide(status, 10, 3, Observation(status=status))  # type: ignore[arg-type]
    assert not change.status_changed and change.sequence == 3


@given(current=st.sampled_from(["pending", "queued", "in_progress"]), new=st.sampled_from(sorted(TERMINAL)))
def test_rule_any_live_state_may_end_in_any_terminal_one(current: str, new: str) -> None:
    assert can_transition(current, new)  # type: ignore[arg-type]


@given(st.lists(observations, max_size=30))
def test_rule_sequence_rises_by_one_per_status_change_and_never_goes_back(
    obs_list: list[Observation],
) -> None:
    status, progress, sequence = "pending", 0, 0
    seen_terminal = False
    for obs in obs_list:
        change = decide(status, progress, sequence, obs)  # type: ignore[arg-type]
        assert change.sequence == sequence + (1 if change.status_changed else 0)
        if seen_terminal:
            assert change.status == status
        if change.status not in TERMINAL and status not in TERMINAL:
            assert _RANK[change.status] >= _RANK[status]
        assert 0 <= change.progress <= 100
        assert change.progress >= progress or change.status == "completed"
        status, progress, sequence = change.status, change.progress, change.sequence
        seen_terminal = seen_terminal or status in TERMINAL


@given(st.text(alphabet="abcdefghij._*", max_size=20), st.text(alphabet="abcdefghij._", max_size=20))
def test_filters_exact_and_prefix(pattern: str, event_type: str) -> None:
    if pattern.endswith("*") and "*" not in pattern[:-1]:
        assert matches_filter(event_type, [pattern]) == (
            pattern == "*" or event_type.startswith(pattern[:-1])
        )
    assert matches_filter(event_type, None)
    assert matches_filter(event_type, [event_type])


def test_observation_from_a_completed_video_fills_the_result() -> None:
    obs = observation_from_resource(
        "video",
        {
            "id": "video_1",
            "status": "completed",
            "progress": 100,
            "expires_at": 2000,
            "size": "720x1280",
            "seconds": "4",
            "completed_at": 1000,
            "model": "sora-2",
        },
    )
    assert obs.status == "completed" and obs.completed_at == 1000
    assert obs.result == {"expires_at": 2000, "size": "720x1280", "seconds": "4", "model": "sora-2"}


def test_observation_from_a_failed_video_keeps_openai_error() -> None:
    obs = observation_from_resource(
        "video",
        {"id": "video_1", "status": "failed", "error": {"code": "moderation_blocked", "message": "no"}},
    )
    assert obs.status == "failed" and obs.error is not None
    assert (obs.error["code"], obs.error["message"]) == ("moderation_blocked", "no")  # OpenAI's own, kept
    assert obs.error["category"] == "content_policy" and obs.error["user_message"]
