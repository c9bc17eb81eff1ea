"""The soak's summary: traffic, latency, throughput, memory, database, drain, audit, per subscriber, then
PASS or FAIL.

Memory is flat if the server's RSS at the end of the traffic exceeds the RSS after warm-up by no more
than the larger of 16 MB and 20% (SQLite's page caches and the allocator's arenas settle over minutes).
An event delivered twice to a healthy subscriber is allowed (at least once) and counted.
"""

from __future__ import annotations

import argparse
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from bench.delivery import _percentile
from bench.soak.sampler import Sample
from bench.soak.server import Findings
from bench.soak.subscribers import PortRecord, Subscribers
from bench.soak.traffic import Sent, Traffic

RSS_GROWTH_LIMIT_MB, RSS_GROWTH_LIMIT_PCT = 16.0, 20.0


def _mb(kb: int) -> float:
    return kb / 1024


def _median(values: Sequence[float]) -> float:
    finite = [v for v in values if v == v]
    return statistics.median(finite) if finite else float("nan")


def _slope_mb_per_min(samples: Sequence[Sample]) -> float:
    if len(samples) < 3:
        return float("nan")
    xs = [s.t / 60 for s in samples]
    ys = [_mb(s.rss_kb) for s in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else float("nan")


def _end_to_end(subs: Subscribers, accepted: list[Sent], records: dict[int, PortRecord]) -> list[float]:
    """Seconds from each accepted modelled webhook's scheduled time to its job's first event answered 2xx
    at each healthy subscriber."""
    out: list[float] = []
    for port in subs.ports("healthy"):
        first = records[port].first_ok
        for sent in accepted:
            at = first.get(sent.hook.resource_id)
            if at is not None:
                out.append(at - sent.scheduled)
    out.sort()
    return out


def report(
    args: argparse.Namespace,
    traffic: Traffic,
    subs: Subscribers,
    samples: list[Sample],
    findings: Findings,
    api: dict[str, Any],
    db: dict[str, Any],
    records: dict[int, PortRecord],
    extra: dict[str, Any],
) -> bool:
    """Print the summary and every failed check; True if none failed."""
    sent = traffic.sent
    by_cat: Counter[str] = Counter(s.category for s in sent)
    outcomes: dict[str, Counter[str]] = {}
    for s in sent:
        outcomes.setdefault(s.category, Counter())[f"{s.status} {s.outcome}"] += 1
    expected = {"new": "200 accepted", "duplicate": "200 duplicate", "bad": "401"}
    for category, counts in outcomes.items():
        wrong = {k: n for k, n in counts.items() if not k.startswith(expected[category])}
        if wrong:
            findings.failures.append(
                f"{category} webhooks answered otherwise than {expected[category]}: {wrong}"
            )
    during = [s for s in samples if s.phase != "drain"]
    after_warmup = [s for s in during if s.t >= args.warmup - 0.5]
    latencies = sorted(s.latency for s in sent if s.status)
    e2e = _end_to_end(subs, traffic.accepted, records)
    print()
    seconds = extra["traffic_s"]
    api_jobs = len([j for j in traffic.jobs if j.replay_of is None])
    print(
        f"traffic: {len(sent):,} webhooks in {seconds:.0f} s ({len(sent) / seconds:.1f}/s offered): "
        f"{by_cat['new']:,} new, {by_cat['duplicate']:,} duplicates, {by_cat['bad']:,} bad signatures; "
        f"{api_jobs:,} API jobs + {api['replays']} Idempotency-Key replays"
    )
    for category in ("new", "duplicate", "bad"):
        print(f"  {category:<10} {dict(outcomes.get(category, Counter()))}")
    worst = latencies[-1] if latencies else float("nan")
    print(
        f"webhook latency (scheduled -> answered), whole run: p50 {_percentile(latencies, 50) * 1e3:.1f} ms, "
        f"p99 {_percentile(latencies, 99) * 1e3:.1f} ms, max {worst * 1e3:.1f} ms; medians of the "
        f"{len(during)} interval samples: p50 {_median([s.p50_ms for s in during]):.1f} ms, "
        f"p99 {_median([s.p99_ms for s in during]):.1f} ms"
    )

    def med(values: Iterable[float]) -> float:
        return _median(list(values))

    print(
        f"throughput (median of intervals): {med(s.accepted_rate for s in during):.0f} webhooks accepted/s, "
        f"{med(s.delivered_rate for s in during):.0f} deliveries succeeded/s of "
        f"{med(s.attempt_rate for s in during):.0f} attempts/s; CPU (100% = one core): server "
        f"{med(s.cpu for s in during) * 100:.0f}%, "
        f"subscribers {med(s.subs_cpu for s in during) * 100:.0f}%, "
        f"this generator {med(s.own_cpu for s in during) * 100:.0f}%"
    )
    if e2e:
        print(
            "webhook -> healthy subscriber (the job's first event answered 2xx): "
            f"p50 {_percentile(e2e, 50) * 1e3:.0f} ms, p99 {_percentile(e2e, 99) * 1e3:.0f} ms "
            f"over {len(e2e):,} (webhook, subscriber) pairs"
        )
    if after_warmup:
        start, end = after_warmup[0], during[-1]
        growth = _mb(end.rss_kb - start.rss_kb)
        pct = growth / _mb(start.rss_kb) * 100 if start.rss_kb else float("nan")
        peak = max(during, key=lambda s: s.rss_kb)
        drained_rss = extra["rss_drained"][0]
        print(
            f"RSS: {_mb(start.rss_kb):.1f} MB after warm-up (t={start.t:.0f} s), {_mb(end.rss_kb):.1f} MB "
            f"at the end of the traffic (t={end.t:.0f} s): {growth:+.1f} MB ({pct:+.1f}%); "
            f"peak {_mb(peak.rss_kb):.1f} MB at t={peak.t:.0f} s; {_mb(drained_rss):.1f} MB after the drain "
            f"and audit; slope after warm-up {_slope_mb_per_min(after_warmup):+.2f} MB/min; "
            f"anonymous {_mb(start.anon_kb):.1f} -> {_mb(end.anon_kb):.1f} MB"
        )
        limit = max(RSS_GROWTH_LIMIT_MB, _mb(start.rss_kb) * RSS_GROWTH_LIMIT_PCT / 100)
        if growth > limit:
            findings.failures.append(
                f"RSS grew {growth:.1f} MB ({pct:.1f}%) after warm-up "
                f"(limit {limit:.1f} MB: the larger of {RSS_GROWTH_LIMIT_MB:g} MB "
                f"and {RSS_GROWTH_LIMIT_PCT:g}%)"
            )
    else:
        findings.notes.append("the run ended before the warm-up did: no RSS growth figure")
    final_db, final_wal = extra["db_sizes"]
    stopped_db, stopped_wal = extra["db_final"]
    print(
        f"database: {final_db / 1e6:.1f} MB + WAL/SHM {final_wal / 1e6:.1f} MB at the end of the traffic; "
        f"{stopped_db / 1e6:.1f} MB + {stopped_wal / 1e6:.1f} MB after shutdown; "
        f"integrity_check {db['integrity']}; {db['stored_webhooks']:,} received webhooks stored, "
        f"{db['emitted']:,} events emitted {dict(db['emitted_types'].most_common())}"
    )
    print(
        f"drain: {extra['drain_s']:.0f} s (limit {args.drain:g} s); "
        f"service exit status {extra['exit_status']}"
    )
    sampled = "" if api["jobs_complete"] else " (a random sample: the time budget ran out)"
    print(
        f"audit via the API: {api['jobs_checked']:,} of {api['jobs_total']:,} accepted webhooks' jobs "
        f"checked{sampled} in {api['jobs_check_s']:.0f} s; {api['bad_checked']} rejected webhooks' resources "
        f"checked absent; {api['timelines']} job timelines ({len(api['timeline']):,} emitted events) checked "
        f"against the healthy subscribers; API jobs {dict(api['api_jobs'])}"
    )
    print("deliveries per subscriber (database) and what each subscriber saw:")
    print(
        f"  {'subscriber':<10}{'succeeded':>10}{'dead':>7}{'failed':>7}{'pending':>8}{'requests':>10}"
        f"{'2xx ids':>9}"
        f"{'2xx twice':>10}{'sent twice':>11}"
    )
    for label, info in db["subscribers"].items():
        st = info["statuses"]
        print(
            f"  {label:<10}{st.get('succeeded', 0):>10,}{st.get('dead', 0):>7,}{st.get('failed', 0):>7,}"
            f"{st.get('pending', 0):>8,}{info['requests']:>10,}{info['ok_ids']:>9,}{info['repeat_ok']:>10,}"
            f"{info['repeat_requests']:>11,}"
        )
    for label, info in db["subscribers"].items():
        if label.startswith("healthy"):
            continue
        st = info["statuses"]
        print(
            f"  {label}: of {sum(st.values()):,} deliveries {st.get('succeeded', 0):,} delivered, "
            f"{st.get('dead', 0):,} dead after the last attempt, "
            f"{st.get('pending', 0) + st.get('failed', 0):,} still to be tried at shutdown"
        )
    twice = sum(info["repeat_ok"] for label, info in db["subscribers"].items() if label.startswith("healthy"))
    if db["late"]:
        findings.notes.append(
            f"{db['late']} (event, healthy subscriber) deliveries of events emitted after the last drain "
            "were still waiting at shutdown (delivered after the next start)"
        )
    print(
        f"duplicates beyond at-least-once: {twice} event ids answered 2xx more than once at a healthy "
        "subscriber (allowed, reported)"
    )
    if findings.errors_5xx:
        findings.failures.append(
            f"{len(findings.errors_5xx)} responses with a 5xx status, e.g. {findings.errors_5xx[:3]}"
        )
    log_errors = extra["log_errors"]
    print(f"server log (SORAHOOK_LOG_LEVEL=warning): {dict(extra['log_levels'].most_common())}")
    for line in log_errors[:5]:
        print(f"  {line[:300]}")
    if log_errors:
        findings.failures.append(f"the server logged {len(log_errors)} errors")
    if extra["exit_status"] != 0:
        findings.failures.append(f"the service exited with status {extra['exit_status']} on SIGTERM")
    for note in findings.notes:
        print(f"note: {note}")
    for failure in findings.failures:
        print(f"FAILED: {failure}")
    ok = not findings.failures
    print(
        f"{'PASS' if ok else 'FAIL'}: soak {args.duration:g} s at {args.rate:g} webhooks/s "
        f"+ {args.job_rate:g} jobs/s, {len(findings.failures)} failed checks"
    )
    return ok
