"""Soak: minutes of mixed traffic against a real `sorahook serve --emulator` process, then a full audit.

    python -m bench.soak [--duration 180] [--rate 30] [--job-rate 3] [--warmup 30] [--drain 60]

(what `make soak` runs; not part of `make bench`). Three processes:

- the service: `python -m service serve --port P --emulator` on a fresh SQLite file in a temp data dir,
  with a short retry schedule (0,1,2,4 s) and a 2 s delivery timeout;
- 10 subscribers, one uvicorn process on 11 ports (a control port and one per subscriber): 7 healthy,
  1 failing (always 500), 1 flaky (500 on 30%), 1 hanging (holds every request past the delivery
  timeout). Each verifies the signature of every delivery with its subscription's secret and records
  the `webhook-id` of every delivery, and of every one it answered 2xx;
- this one: signed webhooks on an open-loop timeline (`--rate`/s; raw HTTP/1.1 over keep-alive
  connections, through bench.loadgen's `Pool` and `pace`) for new `video_…` resources (video.completed and
  video.failed), `batch_…` ones (batch.completed) and an unmodelled event type, with ~5% duplicates
  (a `webhook-id` already accepted, re-sent) and ~5% bad signatures (wrong key, altered body, or a stale
  timestamp); job submissions through `POST /v1/jobs` (`--job-rate`/s; ~5% reuse an Idempotency-Key),
  which the emulator completes and reports back with its own signed webhooks.

Every `--interval` s a line: the server's RSS (VmRSS, and its anonymous part), database + WAL size,
webhook throughput and latency p50/p99 over the interval (open loop: from each webhook's scheduled
time), deliveries succeeded/s and attempts/s, the delivery backlog (`sorahook_delivery_backlog`, which
counts the failing and hanging subscribers' retries too), and the CPU of the server, the subscribers
and this generator. Then traffic stops and the healthy and flaky subscribers' deliveries drain
(bounded by `--drain`; the failing and hanging ones' deliveries end dead or are still being retried,
and are accounted for), and the audit runs: through the API (every accepted webhook's job with the
state its event says, or a random sample if `--verify-seconds` runs out; rejected webhooks made no
job; a sample of job timelines; every API job terminal; a reused Idempotency-Key returns the same job)
and, after a clean SIGTERM, on the database file with the subscribers' records (every accepted
webhook-id stored, no rejected one; every emitted event fanned out to every subscriber and answered
2xx by every healthy one; no delivery marked succeeded that its subscriber did not answer 2xx; no bad
signature on any delivery; `PRAGMA integrity_check`), and: no 5xx to any request, no error in the
server's log, exit status 0 on SIGTERM, and the RSS at the end of the traffic within the larger of
16 MB and 20% of the RSS after warm-up. An event delivered twice to a healthy subscriber is allowed
(at least once) and counted. The last line is PASS or FAIL; the exit status is 1 on FAIL, and the data
dir (with the server's log) is then kept.

`--subscribers healthy*10` (say) changes the mix; `--profile FILE` runs the server under cProfile.

Its parts: `subscribers` (the subscriber process and its records), `server` (the service process and
its API), `traffic` (what is sent), `sampler` (the interval lines), `checks` (drain and audit),
`report` (the summary and the verdict); `__main__` runs them in order.
"""
