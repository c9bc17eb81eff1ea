"""The operator console's pages and actions under /ui: server-rendered, signed in with the admin token.

Every change goes through the store operations (and the API's validators) the /v1 routes use, and is
logged with the operator's session id. Pages are plain HTML forms and links: no JavaScript is needed.
"""

from __future__ import annotations

import json
import logging
import re
import statistics
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args
from urllib.parse import parse_qsl, urlencode, urlsplit

from markupsafe import Markup, escape
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from service.api.common import Endpoint, Late, UrlCheck
from service.api.jobs import JobsApi
from service.api.subscriptions import ROTATION_OVERLAP, validate_event_types
from service.clock import Clock
from service.config import Settings, new_webhook_secret
from service.domain import KINDS, STATUSES, Origin
from service.errors import ApiError
from service.metrics import Metrics
from service.recent import RecentCounts
from service.reconciler import LastPass
from service.store.records import DELIVERY_STATUSES, Attempt, Subscription
from service.ui.sessions import COOKIE, Session, Sessions

if TYPE_CHECKING:
    from service.store.protocol import Store

log = logging.getLogger("sorahook.ui")

HERE = Path(__file__).parent
PAGE_SIZE = 50
STATS_WINDOW = 24 * 3600.0
MAX_DESCRIPTION = 500
MAX_FORM_BYTES = 65_536
MAX_TIME = 1e11  # the API's bound on a Unix time in seconds (replay's `since`)
# How much of a subscriber's answer (the store keeps the first 1 KiB) an attempt shows: a delivery's own
# page shows all of it, a job's page and the deliveries list a glimpse.
RESPONSE_SHOWN = 1024
RESPONSE_GLIMPSE = 200
RESPONSE_LIST = 80

Handler = Callable[[Request, Session], Awaitable[Response]]


def utc(value: float | int | None) -> str:
    """A Unix time as `YYYY-MM-DD HH:MM:SS UTC` (the console shows every time in UTC)."""
    if value is None:
        return "—"
    try:
        return datetime.fromtimestamp(float(value), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        # A webhook may carry any 64-bit created_at (a job's completed_at comes from it): show the number.
        return f"{value} (Unix seconds)"


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def code_spans(text: str) -> Markup:
    """The OpenAPI descriptions' `code` spans as <code>, everything else escaped."""
    return Markup(_CODE.sub(r"<code>\1</code>", str(escape(text))))


_CODE = re.compile(r"`([^`]+)`")


def excerpt(text: str | None, limit: int) -> str:
    """The first `limit` characters of a subscriber's answer, "…" when there is more, control characters
    written as `\\xNN` (a terminal escape or a NUL in a response is shown, not acted on)."""
    if not text:
        return ""
    shown = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text[:limit])
    return shown + ("…" if len(text) > limit else "")


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def make_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["utc"] = utc
    templates.env.filters["excerpt"] = excerpt
    templates.env.filters["pretty"] = pretty
    templates.env.filters["code_spans"] = code_spans
    return templates


def _split_types(raw: str) -> list[str] | None:
    return [part for part in raw.replace(",", " ").split() if part] or None


def _parse_utc(raw: str) -> float:
    """A `datetime-local` value (`YYYY-MM-DDTHH:MM[:SS]`) read as UTC, or Unix seconds (as the API's `since`)."""
    raw = raw.strip()
    try:
        value = float(raw)
    except ValueError:
        try:
            when = datetime.fromisoformat(raw)
            # A time without an offset is UTC, as the console shows every time; a given offset counts.
            value = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
        except ValueError:
            value = -1.0
    if not 0 <= value <= MAX_TIME:  # also refuses nan and inf
        raise ApiError(422, "invalid_field", f"not a time: {raw!r} (use YYYY-MM-DDTHH:MM, UTC)")
    return value


async def read_form(request: Request, limit: int = 0) -> FormData | None:
    """The urlencoded form of a POST, or None once it is larger than `limit` (MAX_FORM_BYTES) bytes.

    Read here rather than by request.form(), which reads an urlencoded body whole whatever its size: the
    sign-in form is open to anyone who can reach the port.
    """
    limit = limit or MAX_FORM_BYTES
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    fields = parse_qsl(body.decode("latin-1"), keep_blank_values=True, encoding="utf-8", errors="replace")
    return FormData([(name, value) for name, value in fields])


JOB_FILTERS = ("status", "kind", "origin", "created_from", "created_to", "metadata")
ORIGINS: tuple[str, ...] = get_args(Origin)


def _job_criteria(filters: dict[str, str]) -> dict[str, Any]:
    """The jobs page's query (status, kind, origin, created range in UTC, metadata `key=value`) for find_jobs."""
    out: dict[str, Any] = {}
    for name, allowed in (("status", STATUSES), ("kind", KINDS), ("origin", ORIGINS)):
        if name in filters:
            if filters[name] not in allowed:
                raise ApiError(422, "invalid_parameter", f"unknown {name} {filters[name]!r}")
            out[name] = filters[name]
    for name in ("created_from", "created_to"):
        if name in filters:
            out[name] = _parse_utc(filters[name])
    if "metadata" in filters:
        key, sep, value = filters["metadata"].partition("=")
        if not sep or not key.strip():
            raise ApiError(422, "invalid_parameter", "metadata must be key=value")
        out["metadata"] = (key.strip(), value.strip())
    return out


def subscription_stats(attempts: list[Attempt]) -> dict[str, Any]:
    """Success rate, latency percentiles and the last errors of a subscription's recent attempts."""

    def succeeded(a: Attempt) -> bool:
        return a.status_code is not None and 200 <= a.status_code < 300

    ok = [a for a in attempts if succeeded(a)]
    latencies = sorted(a.latency_ms for a in attempts)
    p95 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))] if latencies else None
    return {
        "attempts": len(attempts),
        "succeeded": len(ok),
        "success_rate": (100.0 * len(ok) / len(attempts)) if attempts else None,
        "p50_ms": statistics.median(latencies) if latencies else None,
        "p95_ms": p95,
        "errors": [a for a in attempts if not succeeded(a)][:5],
    }


class Console:
    """The console's routes, over the same store and checks as the API (its content page is the API's).

    `rejections` counts the webhooks the receiver refused in the last hour; `last_pass` is where the
    reconciler records its latest pass.
    """

    def __init__(
        self,
        *,
        store: Late[Store],
        settings: Settings,
        clock: Clock,
        metrics: Metrics,
        urls: UrlCheck,
        jobs_api: JobsApi,
        rejections: RecentCounts,
        last_pass: LastPass,
        templates: Jinja2Templates | None = None,
    ) -> None:
        self._store = store
        self.clock = clock
        self.metrics = metrics
        self.urls = urls
        self.templates = templates or make_templates()
        self.sessions = Sessions(settings.admin_token or "", settings.ui_session_ttl, clock.now)
        self.jobs_api = jobs_api
        self.rejections = rejections
        self.last_pass = last_pass

    @property
    def store(self) -> Store:
        return self._store.get()

    # -- plumbing ---------------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        page, act = self._page, self._action
        return [
            Route("/", page(self.overview), methods=["GET"]),
            Route("/signin", self.signin_form, methods=["GET"]),
            Route("/signin", self.signin, methods=["POST"]),
            Route("/signout", act(self.signout), methods=["POST"]),
            Route("/jobs", page(self.jobs), methods=["GET"]),
            Route("/jobs/{job_id}", page(self.job), methods=["GET"]),
            Route("/jobs/{job_id}/content", page(self.content), methods=["GET"]),
            Route("/subscriptions", page(self.subscriptions), methods=["GET"]),
            Route("/subscriptions", act(self.create_subscription), methods=["POST"]),
            Route("/subscriptions/{sub_id}", page(self.subscription), methods=["GET"]),
            Route("/subscriptions/{sub_id}/edit", act(self.edit_subscription), methods=["POST"]),
            Route("/subscriptions/{sub_id}/enabled", act(self.set_enabled), methods=["POST"]),
            Route("/subscriptions/{sub_id}/rotate", act(self.rotate), methods=["POST"]),
            Route("/subscriptions/{sub_id}/reveal", act(self.reveal), methods=["POST"]),
            Route("/subscriptions/{sub_id}/test", act(self.send_test), methods=["POST"]),
            Route("/subscriptions/{sub_id}/replay", act(self.replay), methods=["POST"]),
            Route("/subscriptions/{sub_id}/retry-dead", act(self.retry_dead), methods=["POST"]),
            Route("/deliveries", page(self.deliveries), methods=["GET"]),
            Route("/deliveries/retry-dead", act(self.retry_dead_since), methods=["POST"]),
            Route("/deliveries/{delivery_id}", page(self.delivery), methods=["GET"]),
            Route("/deliveries/{delivery_id}/retry", act(self.retry), methods=["POST"]),
            Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"),
        ]

    def _session(self, request: Request) -> Session | None:
        return self.sessions.get(request.cookies.get(COOKIE))

    def _to_signin(self, request: Request) -> Response:
        expired = COOKIE in request.cookies
        target = "/ui/signin" + ("?expired=1" if expired else "")
        response = RedirectResponse(target, status_code=303)
        if expired:
            response.delete_cookie(COOKIE, path="/ui")
        return response

    def _page(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            session = self._session(request)
            if session is None:
                return self._to_signin(request)
            return await handler(request, session)

        return endpoint

    def _action(
        self, handler: Callable[[Request, Session, FormData], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """A state-changing POST: a live session and its CSRF token, or no change at all."""

        async def endpoint(request: Request) -> Response:
            session = self._session(request)
            if session is None:
                return self._to_signin(request)
            form = await read_form(request)
            if form is None:
                return self.too_large(request, session)
            given = form.get("csrf")
            if not session.csrf_ok(given if isinstance(given, str) else None):
                log.warning(
                    "console change refused: CSRF token missing or wrong",
                    extra={"session_id": session.id, "path": request.url.path},
                )
                return self.render(
                    request,
                    "error.html",
                    None,
                    {"title": "Refused", "message": "The form's CSRF token is missing or wrong."},
                    status=403,
                )
            try:
                return await handler(request, session, form)
            except ApiError as err:
                session.flash(err.message, "error")
                return RedirectResponse(_back(request), status_code=303)

        return endpoint

    def render(
        self,
        request: Request,
        name: str,
        session: Session | None,
        context: dict[str, Any],
        status: int = 200,
    ) -> Response:
        context = {
            "session": session,
            "flashes": session.take_flashes() if session else [],
            "csrf": session.csrf if session else "",
            **context,
        }
        response = self.templates.TemplateResponse(request, name, context, status_code=status)
        response.headers["cache-control"] = "no-store"
        response.headers["x-frame-options"] = "DENY"
        response.headers["content-security-policy"] = (
            "default-src 'self'; style-src 'self'; img-src 'self'; media-src 'self'; "
            "frame-ancestors 'none'; form-action 'self'"
        )
        return response

    def too_large(self, request: Request, session: Session | None) -> Response:
        message = f"A console form is at most {MAX_FORM_BYTES} bytes."
        return self.render(request, "error.html", session, {"title": "Too large", "message": message}, 413)

    def audit(self, session: Session, action: str, target: str, **details: Any) -> None:
        log.info(
            "console change",
            extra={"session_id": session.id, "action": action, "target": target, **details},
        )

    def not_found(self, request: Request, session: Session, what: str) -> Response:
        return self.render(request, "error.html", session, {"title": "Not found", "message": what}, 404)

    # -- sign in and out --------------------------------------------------------------------------

    async def signin_form(self, request: Request) -> Response:
        message = None
        if request.query_params.get("expired"):
            message = "Your session has expired or ended. Sign in again."
        return self.render(request, "signin.html", None, {"message": message})

    async def signin(self, request: Request) -> Response:
        form = await read_form(request)
        if form is None:
            return self.too_large(request, None)
        given = form.get("token")
        if not isinstance(given, str) or not self.sessions.token_ok(given):
            log.warning("console sign-in refused", extra={"client": request.client and request.client.host})
            return self.render(
                request, "signin.html", None, {"message": "That is not the admin token."}, status=401
            )
        key, session = self.sessions.create()
        log.info("console sign-in", extra={"session_id": session.id})
        response = RedirectResponse("/ui/", status_code=303)
        response.set_cookie(
            COOKIE,
            key,
            max_age=int(self.sessions.ttl),
            path="/ui",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def signout(self, request: Request, session: Session, form: FormData) -> Response:
        self.sessions.end(request.cookies.get(COOKIE))
        log.info("console sign-out", extra={"session_id": session.id})
        response = RedirectResponse("/ui/signin", status_code=303)
        response.delete_cookie(COOKIE, path="/ui")
        return response

    # -- overview ---------------------------------------------------------------------------------

    async def overview(self, request: Request, session: Session) -> Response:
        store, now = self.store, self.clock.now()
        by_kind: dict[str, dict[str, int]] = {}
        for kind, status, n in await store.job_counts():
            by_kind.setdefault(kind, {})[status] = n
        counts = await store.console_counts(now - 3600)
        subs = await store.list_subscriptions()
        rejected = self.rejections.totals(now)
        reconciled = _counter_by_label(self.metrics.reconciliations, "outcome")
        passes = _observations(self.metrics.reconcile_calls)
        return self.render(
            request,
            "overview.html",
            session,
            {
                "title": "Overview",
                "statuses": STATUSES,
                "by_kind": by_kind,
                "counts": counts,
                "rejected": rejected,
                # Counted in memory: within an hour of a start, the figure covers only the time since.
                "rejected_since": self.rejections.started_at
                if now - self.rejections.started_at < 3600
                else None,
                "last_pass": self.last_pass.record,
                "reconciled": reconciled,
                "reconcile_passes": passes,
                "disabled": [s for s in subs if not s.enabled],
                "failing": [s for s in subs if s.enabled and s.failing_since is not None],
                "subscription_total": len(subs),
            },
        )

    # -- jobs -------------------------------------------------------------------------------------

    async def jobs(self, request: Request, session: Session) -> Response:
        q = request.query_params
        store = self.store
        find = q.get("find", "").strip()
        message = None
        if find:
            found = await store.get_job(find)
            keyed = [] if found is not None else await store.jobs_by_idempotency_key(find)
            if found is not None or len(keyed) == 1:
                return RedirectResponse(f"/ui/jobs/{(found or keyed[0]).id}", status_code=303)
            if keyed:  # a batch's Idempotency-Key: its jobs
                return self.render(
                    request,
                    "jobs.html",
                    session,
                    {
                        "title": "Jobs",
                        "jobs": keyed,
                        "statuses": STATUSES,
                        "kinds": KINDS,
                        "origins": ORIGINS,
                        "filters": {},
                        "find": find,
                        "note": f"The {len(keyed)} jobs of the batch made with Idempotency-Key {find!r}.",
                    },
                )
            message = f"No job has the id, resource id or Idempotency-Key {find!r}."
        filters = {name: q[name].strip() for name in JOB_FILTERS if q.get(name, "").strip()}
        try:
            criteria = _job_criteria(filters)
        except ApiError as err:
            message, filters, criteria = f"{err.message}; showing every job.", {}, {}
        after = q.get("after") or None
        found_jobs, has_more = await store.find_jobs(**criteria, limit=PAGE_SIZE, after=after)
        next_url = None
        if has_more and found_jobs:
            next_url = "/ui/jobs?" + urlencode({**filters, "after": found_jobs[-1].id})
        return self.render(
            request,
            "jobs.html",
            session,
            {
                "title": "Jobs",
                "jobs": found_jobs,
                "statuses": STATUSES,
                "kinds": KINDS,
                "origins": ORIGINS,
                "filters": filters,
                "find": find,
                "message": message,
                "next_url": next_url,
                "first_url": ("/ui/jobs?" + urlencode(filters)) if after else None,
            },
        )

    async def job(self, request: Request, session: Session) -> Response:
        store = self.store
        job = await store.get_job(request.path_params["job_id"])
        if job is None:
            return self.not_found(request, session, "No job with that id or resource id.")
        events = await store.job_events(job.id)
        deliveries, more = await store.list_deliveries(
            subscription_id=None, job_id=job.id, status=None, limit=100, after=None
        )
        archives = await store.list_archives(job.id)
        return self.render(
            request,
            "job.html",
            session,
            {
                "title": f"Job {job.id}",
                "job": job,
                "events": events,
                "deliveries": deliveries,
                "more_deliveries": more,
                "archives": archives,
                "has_content": job.kind == "video" and job.status == "completed",
                "response_chars": RESPONSE_GLIMPSE,
            },
        )

    async def content(self, request: Request, session: Session) -> Response:
        """The job's asset through the API's own content handler (archive first, with Range support)."""
        try:
            return await self.jobs_api.content(request)
        except ApiError as err:
            return err.response()

    # -- subscriptions ----------------------------------------------------------------------------

    async def _sub(self, sub_id: str) -> Subscription:
        sub = await self.store.get_subscription(sub_id)
        if sub is None:
            raise ApiError(404, "not_found", f"no subscription {sub_id!r}")
        return sub

    async def subscriptions(self, request: Request, session: Session) -> Response:
        subs = await self.store.list_subscriptions()
        return self.render(request, "subscriptions.html", session, {"title": "Subscriptions", "subs": subs})

    async def _fields(self, form: FormData) -> dict[str, Any]:
        """The create/edit form's fields, checked by the API's own validators."""
        url = str(form.get("url") or "").strip()
        if not url:
            raise ApiError(422, "invalid_field", "url is required", param="url")
        description = str(form.get("description") or "").strip() or None
        if description is not None and len(description) > MAX_DESCRIPTION:
            raise ApiError(422, "invalid_field", f"description must be at most {MAX_DESCRIPTION} characters")
        return {
            "url": await self.urls(url, param="url"),
            "event_types": validate_event_types(_split_types(str(form.get("event_types") or ""))),
            "description": description,
            "ordered": form.get("ordered") == "on",
        }

    async def create_subscription(self, request: Request, session: Session, form: FormData) -> Response:
        fields = await self._fields(form)
        sub = await self.store.create_subscription(secret=new_webhook_secret(), **fields)
        self.audit(session, "subscription.create", sub.id, url=sub.url)
        session.flash(f"Created {sub.id}. Reveal its secret below to configure the receiver.")
        return RedirectResponse(f"/ui/subscriptions/{sub.id}", status_code=303)

    async def subscription(
        self, request: Request, session: Session, *, reveal: bool = False, status: int = 200
    ) -> Response:
        store, now = self.store, self.clock.now()
        sub = await store.get_subscription(request.path_params["sub_id"])
        if sub is None:
            return self.not_found(request, session, "No such subscription.")
        stats = subscription_stats(await store.subscription_attempts(sub.id, now - STATS_WINDOW))
        overlap_until = sub.previous_secret_until if (sub.previous_secret_until or 0) > now else None
        return self.render(
            request,
            "subscription.html",
            session,
            {
                "title": f"Subscription {sub.id}",
                "sub": sub,
                "stats": stats,
                "reveal": reveal,
                "overlap_until": overlap_until,
                "response_chars": RESPONSE_LIST,
                "replay_default": datetime.fromtimestamp(now - 3600, UTC).strftime("%Y-%m-%dT%H:%M"),
            },
        )

    async def edit_subscription(self, request: Request, session: Session, form: FormData) -> Response:
        sub = await self._sub(request.path_params["sub_id"])
        fields = await self._fields(form)
        await self.store.update_subscription(sub.id, fields)
        self.audit(session, "subscription.update", sub.id, fields=sorted(fields))
        session.flash("Saved.")
        return RedirectResponse(f"/ui/subscriptions/{sub.id}", status_code=303)

    async def set_enabled(self, request: Request, session: Session, form: FormData) -> Response:
        sub = await self._sub(request.path_params["sub_id"])
        enabled = form.get("enabled") == "true"
        await self.store.update_subscription(sub.id, {"enabled": enabled})
        self.audit(session, "subscription.enable" if enabled else "subscription.disable", sub.id)
        session.flash("Enabled." if enabled else "Disabled: no new deliveries are made to it.")
        return RedirectResponse(f"/ui/subscriptions/{sub.id}", status_code=303)

    async def rotate(self, request: Request, session: Session, form: FormData) -> Response:
        sub_id = request.path_params["sub_id"]
        sub = await self.store.rotate_secret(sub_id, new_webhook_secret(), ROTATION_OVERLAP)
        if sub is None:
            raise ApiError(404, "not_found", f"no subscription {sub_id!r}")
        self.audit(session, "subscription.rotate_secret", sub.id)
        session.flash(
            f"Secret rotated. Until {utc(sub.previous_secret_until)} every delivery is signed with both "
            "the old and the new secret."
        )
        return RedirectResponse(f"/ui/subscriptions/{sub.id}", status_code=303)

    async def reveal(self, request: Request, session: Session, form: FormData) -> Response:
        sub = await self._sub(request.path_params["sub_id"])
        self.audit(session, "subscription.reveal_secret", sub.id)
        return await self.subscription(request, session, reveal=True)

    async def send_test(self, request: Request, session: Session, form: FormData) -> Response:
        sub = await self._sub(request.path_params["sub_id"])
        if not sub.enabled:
            raise ApiError(
                409, "subscription_disabled", "Enable the subscription before sending a test event."
            )
        event_id = await self.store.enqueue_test(sub.id)
        self.audit(session, "subscription.test", sub.id, event_id=event_id)
        session.flash(f"Test event {event_id} enqueued.")
        return RedirectResponse(f"/ui/subscriptions/{sub.id}", status_code=303)

    async def replay(self, request: Request, session: Session, form: FormData) -> Response:
        """The API's replay: every matching event since a time, or in a range when `until` is given."""
        sub = await self._sub(request.path_params["sub_id"])
        since = _parse_utc(str(form.get("since") or ""))
        raw_until = str(form.get("until") or "").strip()
        until = _parse_utc(raw_until) if raw_until else None
        if until is not None and until <= since:
            raise ApiError(
                422, "invalid_field", "The end of the range must be after its start.", param="until"
            )
        count = await self.store.replay(sub.id, since, until=until)
        self.audit(session, "subscription.replay", sub.id, since=since, until=until, enqueued=count)
        span = f"from {utc(since)} to {utc(until)}" if until is not None else f"since {utc(since)}"
        session.flash(f"Replay enqueued {count or 0} events {span}.")
        return RedirectResponse(f"/ui/subscriptions/{sub.id}", status_code=303)

    async def retry_dead(self, request: Request, session: Session, form: FormData) -> Response:
        """Retry the subscription's dead deliveries (all, or those made since a time)."""
        sub = await self._sub(request.path_params["sub_id"])
        return await self._retry_dead(session, sub, str(form.get("since") or "").strip())

    async def retry_dead_since(self, request: Request, session: Session, form: FormData) -> Response:
        """Retry the dead deliveries of one subscription, made since a time, or both (one filter needed)."""
        sub_id = str(form.get("subscription_id") or "").strip()
        raw_since = str(form.get("since") or "").strip()
        if not sub_id and not raw_since:
            raise ApiError(422, "missing_filter", "Choose a subscription, a time, or both.")
        sub = await self._sub(sub_id) if sub_id else None
        return await self._retry_dead(session, sub, raw_since)

    async def _retry_dead(self, session: Session, sub: Subscription | None, raw_since: str) -> Response:
        """The bulk retry POST /v1/deliveries/retry makes: on a fresh schedule, in chunks, one store call."""
        since = _parse_utc(raw_since) if raw_since else None
        if sub is not None and not sub.enabled:
            raise ApiError(
                409,
                "subscription_disabled",
                "Enable the subscription first: its dead deliveries would die again.",
            )
        retried = await self.store.retry_dead_deliveries(subscription_id=sub.id if sub else None, since=since)
        target = sub.id if sub else "*"
        self.audit(session, "deliveries.retry_dead", target, retried=retried, since=since)
        session.flash(
            f"Retrying {retried} dead deliveries now"
            + (f" (made since {utc(since)})" if since is not None else "")
            + ("." if sub else "; those of disabled subscriptions stay dead.")
        )
        query = urlencode({"subscription_id": sub.id} if sub else {"status": "pending"})
        return RedirectResponse(f"/ui/deliveries?{query}", status_code=303)

    # -- deliveries -------------------------------------------------------------------------------

    async def deliveries(self, request: Request, session: Session) -> Response:
        q = request.query_params
        status = q.get("status") or None
        message = None
        if status not in (None, *DELIVERY_STATUSES):
            message, status = "Unknown status; showing every delivery.", None
        sub_id = q.get("subscription_id") or None
        job_id = q.get("job_id") or None
        after = q.get("after") or None
        found, has_more = await self.store.list_deliveries(
            subscription_id=sub_id, job_id=job_id, status=status, limit=PAGE_SIZE, after=after
        )
        filters = {
            k: v for k, v in (("status", status), ("subscription_id", sub_id), ("job_id", job_id)) if v
        }
        next_url = None
        if has_more and found:
            next_url = "/ui/deliveries?" + urlencode({**filters, "after": found[-1].id})
        return self.render(
            request,
            "deliveries.html",
            session,
            {
                "title": "Deliveries",
                "deliveries": found,
                "statuses": DELIVERY_STATUSES,
                "status": status,
                "subscription_id": sub_id,
                "job_id": job_id,
                "subs": await self.store.list_subscriptions(),
                "response_chars": RESPONSE_LIST,
                "message": message,
                "next_url": next_url,
                "first_url": ("/ui/deliveries?" + urlencode(filters)) if after else None,
            },
        )

    async def delivery(self, request: Request, session: Session) -> Response:
        found = await self.store.get_delivery(request.path_params["delivery_id"])
        if found is None:
            return self.not_found(request, session, "No such delivery.")
        return self.render(
            request,
            "delivery.html",
            session,
            {"title": f"Delivery {found.id}", "d": found, "response_chars": RESPONSE_SHOWN},
        )

    async def retry(self, request: Request, session: Session, form: FormData) -> Response:
        delivery_id = request.path_params["delivery_id"]
        previous = await self.store.retry_delivery(delivery_id)
        if previous is None:
            raise ApiError(404, "not_found", "no such delivery")
        if previous in ("dead", "failed"):
            self.audit(session, "delivery.retry", delivery_id, previous=previous)
            session.flash("Retrying now.")
        else:
            session.flash(f"The delivery is {previous}; only dead or failed ones are retried.", "error")
        return RedirectResponse(f"/ui/deliveries/{delivery_id}", status_code=303)


def _back(request: Request) -> str:
    """The console page the form was on (from Referer), to show a refusal there; the overview otherwise."""
    parts = urlsplit(request.headers.get("referer", ""))
    if parts.path.startswith("/ui/") and parts.netloc in ("", request.url.netloc):
        return parts.path + (f"?{parts.query}" if parts.query else "")
    return "/ui/"


def _observations(histogram: Any) -> int:
    """How many values a prometheus Histogram has observed since start."""
    return int(
        sum(
            sample.value
            for family in histogram.collect()
            for sample in family.samples
            if sample.name.endswith("_count")
        )
    )


def _counter_by_label(counter: Any, label: str) -> dict[str, float]:
    """A labelled prometheus Counter's totals since start, by one label's value (the ones above zero)."""
    out: dict[str, float] = {}
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = sample.labels.get(label, "")
                out[key] = out.get(key, 0.0) + sample.value
    return {key: value for key, value in out.items() if value}


def console_routes(console: Console, models: Sequence[str]) -> tuple[Endpoint, BaseRoute]:
    """The `/docs` endpoint (the API reference, an operation of the route table) and the `/ui/…` mount
    (the console), for create_app."""
    from service.ui.docs import DocsPage

    return DocsPage(models, console.templates).endpoint, Mount("/ui", routes=console.routes())
