"""The pure planner, property-tested: what a change writes, fan-out, the retry policies, quotas."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import assume, given
from hypothesis import strategies as st

from service.domain import KINDS, STATUSES, Observation, is_terminal
from service.domain.fanout import fan_out, ordering_key
from service.domain.plan import new_webhook_job, plan_observation, status_effects, webhook_observation
from service.domain.quotas import (
    HOUR,
    NewJob,
    concurrent_refusal,
    demand,
    per_hour_exceeded,
    per_hour_retry_after,
)
from service.domain.retry import backoff, delivery_verdict, reconcile_delay, should_disable
from service.store.records import Job

NOW = 1_800_000_000.0

statuses = st.sampled_from(STATUSES)
observations = st.builds(
    Observation,
    status=st.none() | statuses,
    progress=st.none() | st.integers(0, 100),
    result=st.none()
    | st.dictionaries(st.sampled_from(["url", "size"]), st.integers(0, 9), min_size=1, max_size=2),
    error=st.none() | st.just({"code": "x", "message": "m"}),
)


@st.composite
def jobs(draw: st.DrawFn) -> Job:
    status = draw(statuses)
    return Job(
        id="job_1",
        kind=draw(st.sampled_from(KINDS)),
        resource_id=draw(st.none() | st.just("video_1")),
        status=status,
        progress=draw(st.integers(0, 100)),
        origin="api",
        request=None,
        result=None,
        error=None,
        callback_url=None,
        metadata={},
        created_at=NOW - 100.0,
        updated_at=NOW - 100.0,
        completed_at=None,
        sequence=draw(st.integers(0, 5)),
    )


@given(jobs(), observations)
def test_a_terminal_job_keeps_its_status_and_sequence_never_goes_back(job: Job, obs: Observation) -> None:
    plan = plan_observation(job, obs, NOW)
    if is_terminal(job.status):
        assert plan.job.status == job.status
    assert plan.job.sequence >= job.sequence
    assert plan.status_changed == (plan.job.status != job.status)
    assert ("updated_at" in plan.fields) == bool(plan.fields)


@given(jobs(), observations)
def test_the_same_observation_twice_writes_nothing_the_second_time(job: Job, obs: Observation) -> None:
    first = plan_observation(job, obs, NOW)
    second = plan_observation(first.job, obs, NOW + 1.0)
    assert second.fields == {} and not second.status_changed


@given(jobs(), observations)
def test_a_status_change_to_terminal_records_completion_and_ends_submission(
    job: Job, obs: Observation
) -> None:
    plan = plan_observation(job, obs, NOW)
    finishing = plan.status_changed and is_terminal(plan.job.status)
    assert plan.finishes_submission == finishing
    if finishing:
        assert plan.job.completed_at is not None
        effects = status_effects(plan.job, obs, NOW, ("video",))
        assert effects.finished_after is not None and effects.finished_after >= 0.0
        assert bool(effects.archive_variants) == (plan.job.status == "completed" and plan.job.kind == "video")


@given(st.sampled_from(["video.completed", "video.failed", "batch.completed", "response.incomplete", "x.y"]))
def test_a_webhook_makes_a_job_in_the_state_its_type_names(event_type: str) -> None:
    mapped = webhook_observation(event_type, 123)
    if mapped is None:
        assert event_type == "x.y"
        return
    kind, obs = mapped
    job = new_webhook_job("job_1", kind, "res_1", obs, NOW)
    assert job.status == obs.status and job.origin == "webhook"
    assert (job.completed_at is not None) == is_terminal(job.status)


@dataclass(frozen=True)
class Sub:
    id: str
    event_types: list[str] | None
    ordered: bool


subs = st.lists(
    st.builds(
        Sub,
        id=st.sampled_from(["sub_a", "sub_b", "sub_c"]),
        event_types=st.none() | st.just(["video.*"]) | st.just(["batch.completed"]),
        ordered=st.booleans(),
    ),
    max_size=3,
    unique_by=lambda s: s.id,
)


@given(subs, st.none() | st.just("job_1"), st.none() | st.just("http://cb/x"), st.none() | st.just("sub_b"))
def test_fan_out_orders_what_asked_for_order_and_the_callback_comes_last(
    subscriptions: list[Sub], job_id: str | None, callback: str | None, exclude: str | None
) -> None:
    targets = fan_out(
        "video.completed",
        subscriptions,
        job_id=job_id,
        job_sequence=1,
        callback_url=callback,
        exclude_subscription=exclude,
    )
    by_id = {s.id: s for s in subscriptions}
    for t in targets:
        if t.subscription_id is None:
            assert (
                t is targets[-1] and t.url == callback and t.ordering_key == ordering_key("callback", job_id)
            )
        else:
            sub = by_id[t.subscription_id]
            assert sub.id != exclude
            assert t.ordering_key == (ordering_key(sub.id, job_id) if sub.ordered else None)
    assert any(t.subscription_id is None for t in targets) == bool(callback and job_id)


@given(subs, st.sampled_from(["sub_a", "sub_b"]))
def test_a_delivery_to_one_subscription_ignores_its_filter_and_the_callback(
    subscriptions: list[Sub], only: str
) -> None:
    targets = fan_out(
        "sorahook.test", subscriptions, job_id="job_1", callback_url="http://cb/x", only_subscription=only
    )
    assert [t.subscription_id for t in targets] == [s.id for s in subscriptions if s.id == only]


@given(
    st.integers(0, 40),
    st.floats(0.01, 10.0),
    st.floats(1.0, 1000.0),
    st.floats(0.0, 1.0),
    st.floats(0.0, 1.0),
)
def test_backoff_grows_to_its_cap_and_stays_within_its_jitter(
    attempt: int, base: float, cap: float, low: float, spread: float
) -> None:
    high = low + spread
    nominal = min(cap, base * 2.0**attempt)
    delay = backoff(attempt, base=base, cap=cap, jitter=(low, high))
    assert nominal * low - 1e-9 <= delay <= nominal * high + 1e-9
    assert backoff(attempt, base=base, cap=cap, jitter=(1.0, 1.0)) == nominal


@given(st.integers(1, 50), st.floats(1.0, 100.0), st.floats(100.0, 10_000.0))
def test_reconcile_delays_double_without_jitter_up_to_the_cap(misses: int, base: float, cap: float) -> None:
    assert reconcile_delay(misses, base=base, cap=cap) == min(cap, base * 2.0 ** (misses - 1))
    assert reconcile_delay(misses + 1, base=base, cap=cap) >= reconcile_delay(misses, base=base, cap=cap)


schedules = st.lists(st.floats(0.0, 3600.0), min_size=1, max_size=6)


@given(st.none() | st.integers(100, 599), st.integers(0, 8), schedules, st.none() | st.floats(0.0, 10_000.0))
def test_the_delivery_policy(
    code: int | None, step: int, schedule: list[float], retry_after: float | None
) -> None:
    verdict = delivery_verdict(
        status_code=code, error=None, step=step, schedule=schedule, retry_after=retry_after, now=NOW
    )
    if code is not None and 200 <= code < 300:
        assert verdict.status == "succeeded" and verdict.next_attempt_at is None
    elif code == 410:
        assert verdict.status == "dead" and verdict.disable is not None and verdict.error
    elif step >= len(schedule):
        assert verdict.status == "dead" and verdict.next_attempt_at is None
    else:
        assert verdict.status == "failed" and verdict.next_attempt_at is not None
        delay = verdict.next_attempt_at - NOW
        assert schedule[step] * 0.8 - 1e-6 <= delay <= max(schedule[step] * 1.2, max(schedule)) + 1e-6
    assert verdict.disable is None or code == 410


@given(st.none() | st.floats(0.0, 1e6), st.floats(0.0, 1e6))
def test_a_subscription_is_disabled_only_after_failing_for_the_whole_window(
    since: float | None, window: float
) -> None:
    assert should_disable(since, NOW, window) == (since is not None and NOW - since >= window)


@given(st.integers(0, 50), st.integers(1, 10), st.integers(1, 50))
def test_the_concurrent_quota_refuses_exactly_past_its_limit(active: int, adding: int, limit: int) -> None:
    refusal = concurrent_refusal("team", active, adding, limit)
    assert (refusal is None) == (active + adding <= limit)
    if refusal is not None:
        assert refusal.retry_after > 0 and "SORAHOOK_QUOTA_CONCURRENT" in refusal.message


@given(
    st.lists(st.floats(NOW - HOUR + 1.0, NOW), max_size=20).map(sorted), st.integers(1, 5), st.integers(1, 20)
)
def test_the_hourly_quota_says_a_wait_within_the_hour(created: list[float], adding: int, limit: int) -> None:
    assume(per_hour_exceeded(len(created), adding, limit))  # only asked when the request is refused
    wait = per_hour_retry_after(created, adding, limit, NOW)
    assert 1.0 <= wait <= HOUR


@given(st.lists(st.tuples(st.sampled_from(["a", "b", None]), st.floats(0.0, 5.0)), max_size=10))
def test_demand_adds_up_jobs_and_dollars_per_client(specs: list[tuple[str | None, float]]) -> None:
    asked = demand(NewJob({}, None, {}, client, usd) for client, usd in specs)
    assert sum(n for n, _ in asked.values()) == len(specs)
    for client, (n, usd) in asked.items():
        mine = [u for c, u in specs if c == client]
        assert n == len(mine) and abs(usd - sum(mine)) < 1e-6
