"""Claiming deliveries and recording their attempts, inside the writer's transaction."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable
from typing import Any

from service.domain.retry import delivery_verdict, should_disable
from service.secretbox import SealError
from service.store.records import (
    ClaimedDelivery,
    DeliveryOutcome,
    DeliveryStatus,
)
from service.store.sqlite.common import (
    ERROR_TEXT_LIMIT,
    _clip,
)
from service.store.sqlite.ops import OpsCore
from service.store.sqlite.rows import _subscription


class DeliveryOps(OpsCore):
    """The delivery path of the writer's operations."""

    # -- deliveries -------------------------------------------------------------------------------

    # Columns picked by position (plain tuples: no sqlite3.Row built and looked up by name per row).
    _CLAIM_SQL = (
        "SELECT d.id, d.event_id, d.event_type, d.subscription_id, d.job_id, d.url, d.attempts,"
        " d.event_created_at, e.body, s.url, s.secret, s.previous_secret, s.previous_secret_until, s.ordered,"
        " s.enabled FROM deliveries d INDEXED BY deliveries_sub_due JOIN events e ON e.id = d.event_id"
        " LEFT JOIN subscriptions s ON s.id = d.subscription_id"
        " WHERE {target} AND d.status IN ('pending', 'failed') AND d.next_attempt_at <= ?"
        " AND NOT EXISTS ("
        "   SELECT 1 FROM deliveries p WHERE d.ordering_key IS NOT NULL AND p.ordering_key = d.ordering_key"
        "   AND p.status IN ('pending', 'failed') AND (p.sequence < d.sequence"
        "   OR (p.sequence = d.sequence AND p.id < d.id)))"
        " ORDER BY d.next_attempt_at LIMIT ?"
    )

    # The subscriptions with a delivery due now, found by walking the keys of deliveries_sub_due (a
    # partial index of pending and failed rows only): one seek per subscription that has work waiting,
    # none for the idle or disabled ones, however many there are.
    _DUE_KEYS_SQL = (
        "WITH RECURSIVE k(sub) AS ("
        " SELECT (SELECT subscription_id FROM deliveries INDEXED BY deliveries_sub_due"
        "  WHERE status IN ('pending', 'failed') AND subscription_id > ''"
        "  ORDER BY subscription_id LIMIT 1)"
        " UNION ALL"
        " SELECT (SELECT subscription_id FROM deliveries INDEXED BY deliveries_sub_due"
        "  WHERE status IN ('pending', 'failed') AND subscription_id > k.sub"
        "  ORDER BY subscription_id LIMIT 1) FROM k WHERE k.sub IS NOT NULL)"
        " SELECT sub FROM k WHERE sub IS NOT NULL AND (SELECT next_attempt_at FROM deliveries"
        "  INDEXED BY deliveries_sub_due WHERE status IN ('pending', 'failed') AND subscription_id = k.sub"
        "  ORDER BY next_attempt_at LIMIT 1) <= ?"
    )

    def claim_deliveries(
        self,
        conn: sqlite3.Connection,
        limit: int,
        lease: float,
        busy: Iterable[str],
        per_key: int | None = None,
        room: Callable[[str], int] | None = None,
    ) -> list[ClaimedDelivery]:
        """Lease due deliveries, subscription by subscription (then callback URLs).

        Only subscriptions with a delivery due are visited (`_DUE_KEYS_SQL`), so the claim costs in
        proportion to the work waiting, not to the subscriptions there are. Each is a short range seek
        on (subscription_id, next_attempt_at), taking at most `per_key` rows (and at most `room(id)`);
        subscriptions in `busy` (at their in-flight cap) are not visited at all, so a hanging endpoint's
        growing backlog costs the claim nothing, and no subscription's rows can crowd out another's. The
        starting subscription rotates from claim to claim.
        """
        now = self.clock.now()
        skip = set(busy)
        cursor = conn.cursor()
        cursor.row_factory = None
        groups: list[str | None] = [
            r[0] for r in cursor.execute(self._DUE_KEYS_SQL, (now,)) if r[0] not in skip
        ]
        if groups:
            start = self._claim_turn % len(groups)
            groups = groups[start:] + groups[:start]
            self._claim_turn += 1
        groups.append(None)  # per-job callback_url deliveries
        rows: list[tuple[Any, ...]] = []
        for group in groups:
            remaining = limit - len(rows)
            if remaining <= 0:
                break
            args: tuple[Any, ...]
            if group is None:
                # Callback URLs at their cap are left where they are, not leased and given back.
                target = "d.subscription_id IS NULL AND d.url NOT IN (SELECT value FROM json_each(?))"
                sql, args = self._CLAIM_SQL.format(target=target), (json.dumps(sorted(skip)), now, remaining)
            else:
                take = remaining if per_key is None else min(remaining, per_key)
                if room is not None:
                    take = min(take, room(group))
                    if take <= 0:
                        continue
                sql, args = self._CLAIM_SQL.format(target="d.subscription_id = ?"), (group, now, take)
            rows.extend(cursor.execute(sql, args).fetchall())
        claimed: list[ClaimedDelivery] = []
        for (
            delivery_id,
            event_id,
            event_type,
            sub_id,
            job_id,
            own_url,
            attempts,
            event_created_at,
            body,
            sub_url,
            secret,
            previous,
            previous_until,
            ordered,
            enabled,
        ) in rows:
            if sub_id is None:
                url = own_url
                secrets = [self.callback_secret] if self.callback_secret else []
            elif not enabled:  # the subscription was disabled or removed after the event was enqueued
                conn.execute(
                    "UPDATE deliveries SET status = 'dead', next_attempt_at = NULL, lease_until = NULL,"
                    " last_error = ?, updated_at = ? WHERE id = ?",
                    ("subscription disabled or deleted", now, delivery_id),
                )
                continue
            else:
                url = sub_url
                try:
                    secrets = [self.open_secret(secret, sub_id)]
                    if previous and previous_until and now < previous_until:
                        secrets.append(self.open_secret(previous, sub_id))
                except SealError:  # never sent unsigned or signed with a secret from another row
                    conn.execute(
                        "UPDATE deliveries SET status = 'dead', next_attempt_at = NULL, lease_until = NULL,"
                        " last_error = ?, updated_at = ? WHERE id = ?",
                        ("the subscription's secret does not open (SORAHOOK_SECRET_KEY)", now, delivery_id),
                    )
                    continue
            claimed.append(
                ClaimedDelivery(
                    delivery_id,
                    event_id,
                    event_type,
                    sub_id,
                    job_id,
                    url,
                    body,
                    secrets,
                    attempts,
                    event_created_at,
                    bool(ordered),
                )
            )
        if claimed:
            # The lease is the next due time: a claimed row is invisible until the lease runs out.
            # One statement for the batch: each statement step also costs this thread a GIL hand-off.
            conn.execute(
                "UPDATE deliveries SET next_attempt_at = ?, lease_until = ?"
                " WHERE id IN (SELECT value FROM json_each(?))",
                (now + lease, now + lease, json.dumps([c.id for c in claimed])),
            )
        return claimed

    def record_attempts(
        self, conn: sqlite3.Connection, outcomes: list[DeliveryOutcome], disable_after: float
    ) -> list[tuple[str, DeliveryStatus]]:
        now = self.clock.now()
        schedule = self.retry_schedule
        succeeded_subs: set[str] = set()
        # The common case, a 2xx, a few statements for the whole batch: mark every one delivered that still
        # waits (one UPDATE per status code), then log their attempts. Others go one by one below.
        delivered = self._record_successes(
            conn, [o for o in outcomes if o.status_code is not None and 200 <= o.status_code < 300], now
        )
        results: list[tuple[str, DeliveryStatus]] = []
        for out in outcomes:
            if out.status_code is not None and 200 <= out.status_code < 300:
                if out.delivery_id in delivered:
                    sub = delivered.pop(out.delivery_id)
                    if sub:
                        succeeded_subs.add(sub)
                    results.append((out.delivery_id, "succeeded"))
                continue
            row = conn.execute("SELECT * FROM deliveries WHERE id = ?", (out.delivery_id,)).fetchone()
            if row is None or row["status"] in ("succeeded", "dead"):
                continue
            error = out.error[:ERROR_TEXT_LIMIT] if out.error else None
            conn.execute(
                "INSERT INTO delivery_attempts (delivery_id, attempted_at, status_code, latency_ms, error,"
                " response_body) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    out.delivery_id,
                    now - out.latency,
                    out.status_code,
                    out.latency * 1000.0,
                    error,
                    _clip(out.response_body),
                ),
            )
            attempts = row["attempts"] + 1
            # The place in the schedule: a manual retry starts it again (retry_base) without
            # forgetting the attempts made before.
            step = attempts - row["retry_base"]
            sub_id = row["subscription_id"]
            code = out.status_code
            verdict = delivery_verdict(
                status_code=code,
                error=error,
                step=step,
                schedule=schedule,
                retry_after=out.retry_after,
                now=now,
                uniform=self.rng.uniform,
            )
            status: DeliveryStatus = verdict.status
            next_at, error = verdict.next_attempt_at, verdict.error
            if status == "succeeded" and sub_id:
                succeeded_subs.add(sub_id)
            if verdict.disable is not None and sub_id:
                self.disable_subscription(conn, sub_id, verdict.disable)
            if status != "succeeded" and sub_id:
                self.note_failure(conn, sub_id, now, disable_after)
            conn.execute(
                "UPDATE deliveries SET status = ?, attempts = ?, next_attempt_at = ?, lease_until = NULL,"
                " last_status_code = ?, last_error = ?, updated_at = ?, delivered_at = ? WHERE id = ?",
                (
                    status,
                    attempts,
                    next_at,
                    code,
                    error,
                    now,
                    now if status == "succeeded" else None,
                    out.delivery_id,
                ),
            )
            results.append((out.delivery_id, status))
        for sub_id in succeeded_subs:
            conn.execute(
                # Only write when it changes something that matters (not on every success).
                "UPDATE subscriptions SET last_success_at = ?, failing_since = NULL WHERE id = ?"
                " AND (failing_since IS NOT NULL OR last_success_at IS NULL OR last_success_at < ?)",
                (now, sub_id, now - 60.0),
            )
        return results

    @staticmethod
    def _record_successes(
        conn: sqlite3.Connection, outcomes: list[DeliveryOutcome], now: float
    ) -> dict[str, str | None]:
        """Mark 2xx outcomes succeeded where the row still waits and log their attempts.

        Returns {delivery id: subscription id} of the rows this changed; an outcome for a row already
        succeeded or dead (recorded before, or a duplicate in the batch) changes nothing and logs nothing.
        """
        by_code: dict[int, list[str]] = {}
        for out in outcomes:
            assert out.status_code is not None
            by_code.setdefault(out.status_code, []).append(out.delivery_id)
        delivered: dict[str, str | None] = {}
        cursor = conn.cursor()
        cursor.row_factory = None  # (id, subscription_id) tuples
        for code, delivery_ids in by_code.items():
            rows = cursor.execute(
                "UPDATE deliveries SET status = 'succeeded', attempts = attempts + 1, next_attempt_at = NULL,"
                " lease_until = NULL, last_status_code = ?, last_error = NULL, updated_at = ?, delivered_at = ?"
                " WHERE id IN (SELECT value FROM json_each(?)) AND status IN ('pending', 'failed')"
                " RETURNING id, subscription_id",
                (code, now, now, json.dumps(delivery_ids)),
            ).fetchall()
            delivered.update(rows)
        logged: set[str] = set()
        attempts = []
        for out in outcomes:
            if out.delivery_id in delivered and out.delivery_id not in logged:
                logged.add(out.delivery_id)
                attempts.append(
                    (
                        out.delivery_id,
                        now - out.latency,
                        out.status_code,
                        out.latency * 1000.0,
                        _clip(out.response_body),
                    )
                )
        conn.executemany(
            "INSERT INTO delivery_attempts (delivery_id, attempted_at, status_code, latency_ms, error,"
            " response_body) VALUES (?, ?, ?, ?, NULL, ?)",
            attempts,
        )
        return delivered

    def note_failure(self, conn: sqlite3.Connection, sub_id: str, now: float, disable_after: float) -> None:
        row = conn.execute(
            "SELECT failing_since, enabled FROM subscriptions WHERE id = ?", (sub_id,)
        ).fetchone()
        if row is None or not row["enabled"]:
            return
        if row["failing_since"] is None:
            conn.execute("UPDATE subscriptions SET failing_since = ? WHERE id = ?", (now, sub_id))
        elif should_disable(row["failing_since"], now, disable_after):
            self.disable_subscription(conn, sub_id, "no successful delivery for too long")

    def disable_subscription(self, conn: sqlite3.Connection, sub_id: str, reason: str) -> None:
        now = self.clock.now()
        row = conn.execute("SELECT * FROM subscriptions WHERE id = ?", (sub_id,)).fetchone()
        if row is None or not row["enabled"]:
            return
        conn.execute(
            "UPDATE subscriptions SET enabled = 0, disabled_reason = ?, updated_at = ? WHERE id = ?",
            (reason, now, sub_id),
        )
        conn.execute(
            "UPDATE deliveries SET status = 'dead', next_attempt_at = NULL, lease_until = NULL, last_error = ?,"
            " updated_at = ? WHERE subscription_id = ? AND status IN ('pending', 'failed') AND lease_until IS NULL",
            (f"subscription disabled: {reason}", now, sub_id),
        )
        self.forget_subscriptions()
        sub = _subscription(
            conn.execute("SELECT * FROM subscriptions WHERE id = ?", (sub_id,)).fetchone(), self.box
        )
        self.emit(
            conn,
            "sorahook.subscription.disabled",
            sub.to_api(),
            source="delivery",
            exclude_subscription=sub_id,
        )
