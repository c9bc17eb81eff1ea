"""create_app: the routes, the middleware and the lifespan that opens the store and runs the workers."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import ssrf
from service.api.common import Late, UrlCheck
from service.api.jobs import JobsApi
from service.api.routes import build_routes
from service.api.subscriptions import DeliveriesApi, SubscriptionsApi
from service.api.usage import UsageApi
from service.archive import Archiver
from service.clock import Clock, SystemClock
from service.config import Settings
from service.delivery import Deliverer
from service.errors import error_response
from service.metrics import Metrics
from service.openai_client import OpenAIClient
from service.openapi import openapi_endpoint
from service.processor import Processor
from service.progress import ProgressPoller
from service.receiver import Receiver
from service.recent import RecentCounts
from service.reconciler import LastPass, Reconciler
from service.retention import Pruner
from service.secretbox import SecretBox
from service.sender import Sender
from service.signing import Verifier
from service.storage import Storage, storage_from_settings
from service.store import open_store
from service.store.protocol import Store
from service.submitter import Refresher, Submitter
from service.ui import Console, console_routes
from service.workers import CallBudget, Worker

log = logging.getLogger("sorahook.app")

RECONCILE_MAX_CALLS = 150  # OpenAI calls per reconcile interval, shared by the reconciler and progress
# Allocations between two young-generation collections. CPython's 700 ran a collection every few
# deliveries at full speed, each walking every request object in flight: 10,000 took ~9 us of CPU off
# each delivery (outbox-only rounds, 142 -> 133 us) for a few more MB of young objects between passes.
GC_GEN0_THRESHOLD = 10_000
# How long the delivery sender keeps a subscriber host's addresses (ssrf.CachingResolver): every send is
# still vetted, against answers at most this old, instead of a getaddrinfo per delivery.
DELIVERY_DNS_TTL = 10.0
INBOX_DRAIN_ON_STOP = 5.0  # seconds the shutdown waits for the processor to empty the inbox


def settle_gc() -> None:
    """Tune the collector once the service has started (the lifespan calls it; so do the benchmarks).

    Everything built so far (modules, routes, the OpenAPI document, metrics) lives as long as the
    process: moved out of the collector's reach, a full collection stops costing ~60 ms of stalled
    requests (measured at 1,000 webhooks/s) and only walks what requests allocate.
    """
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


@dataclass
class Runtime:
    """Everything the routes and the workers share; the store and clients exist once the lifespan starts."""

    settings: Settings
    clock: Clock
    metrics: Metrics
    resolver: ssrf.Resolver
    openai_transport: httpx.AsyncBaseTransport | None = None
    store: Store = field(init=False)
    storage: Storage = field(init=False)
    openai: OpenAIClient = field(init=False)
    sender: Sender = field(init=False)
    processor: Processor = field(init=False)
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    ready: bool = False


class RequestIdMiddleware:
    """Give every response an `x-request-id`, honouring the caller's own when it sends one.

    `direct` maps (method, path) to an ASGI endpoint that gets the request without the router, the
    route and the exception middleware in between: the webhook receiver, the hot path. Anything it
    raises still reaches Starlette's server-error middleware outside this one (a JSON 500).
    """

    def __init__(self, app: ASGIApp, direct: Mapping[tuple[str, str], ASGIApp] | None = None) -> None:
        self.app = app
        self.direct = direct or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = ""
        for name, value in scope.get("headers", []):
            if name == b"x-request-id":
                request_id = value.decode("latin-1")[:128]
                break
        if not request_id or not request_id.isprintable():
            # Not a secret, and random.getrandbits makes no system call: os.urandom here releases the GIL,
            # and taking it back behind the store's writer thread cost more than the rest of this middleware.
            request_id = f"{random.getrandbits(96):024x}"

        # Starlette's server-error middleware sits outside this one and answers a 500 with the original
        # `send`; its handler (`server_error` below) finds the id here, in the request's state.
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode("latin-1"))]
            await send(message)

        endpoint = self.direct.get((scope["method"], scope["path"]), self.app)
        await endpoint(scope, receive, send_with_id)


def _slash_twin(routes: list[BaseRoute], scope: Scope) -> str | None:
    """Where to redirect a path that only its trailing-slash twin serves: that twin, as a path (and query)
    on this server. Never built from the Host header, never "//…" (another host to a browser), and only
    printable ASCII without spaces, so nothing decoded from the path can end up in the header."""
    path: str = scope.get("path", "")
    if scope.get("type") != "http" or not path.startswith("/") or path == "/":
        return None
    twin = path[:-1] if path.endswith("/") else path + "/"
    candidate = {**scope, "path": twin}
    if not any(route.matches(candidate)[0] != Match.NONE for route in routes):
        return None
    raw = (scope.get("raw_path") or path.encode()).decode("latin-1")
    location = raw[:-1] if raw.endswith("/") else raw + "/"
    query = scope.get("query_string", b"").decode("latin-1")
    if query:
        location = f"{location}?{query}"
    if not location.startswith("/") or location.startswith("//") or "\\" in location:
        return None
    if not (location.isascii() and location.isprintable()) or " " in location:
        return None
    return location


class AsgiEndpoint:
    """Wraps an ASGI callable so that Starlette's Route passes it the raw scope (not a Request)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def create_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    resolver: ssrf.Resolver | None = None,
    openai_transport: httpx.AsyncBaseTransport | None = None,
    extra_routes: list[BaseRoute] | None = None,
    background: list[Callable[[], Awaitable[None]]] | None = None,
    start_workers: bool = True,
    on_ready: Callable[[Runtime], None] | None = None,
    store: Store | None = None,
) -> Starlette:
    """Build the sorahook ASGI app. `settings` must already hold the admin token and secrets.

    `store` is an open store the caller owns (it stays open after shutdown); without one the lifespan
    opens the store named by the settings and closes it on the way out.
    """
    assert settings.admin_token is not None, "resolve secrets before create_app"
    rt = Runtime(
        settings=settings,
        clock=clock or SystemClock(),
        metrics=Metrics(settings.models),
        resolver=resolver or ssrf.SystemResolver(),
        openai_transport=openai_transport,
    )
    verifier = Verifier(settings.webhook_secrets, settings.webhook_tolerance)
    # What the console's overview shows of the receiver and the reconciler, handed to each of them.
    rejections = RecentCounts(rt.clock.now())
    last_pass = LastPass()
    receiver_holder: dict[str, Receiver] = {}

    async def receive_webhook(scope: Scope, receive: Receive, send: Send) -> None:
        # A plain ASGI endpoint (Starlette routes a non-function endpoint straight to it): the receiver
        # is the hot path and skips Starlette's request and response objects.
        receiver = receiver_holder.get("receiver")
        if receiver is None:
            await error_response(503, "starting", "sorahook is starting; retry shortly")(scope, receive, send)
            return
        await receiver(scope, receive, send)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        problems = []
        if not rt.ready:
            problems.append("starting")
        elif not await rt.store.ping():
            problems.append("store")
        for name, task in rt.tasks.items():
            if task.done():
                problems.append(f"worker {name} stopped")
        if problems:
            return JSONResponse({"status": "unavailable", "problems": problems}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def metrics(request: Request) -> Response:
        if rt.ready:
            with contextlib.suppress(Exception):
                rt.metrics.set_job_counts(await rt.store.job_counts())
                rt.metrics.set_backlog(await rt.store.delivery_backlog())
                rt.metrics.set_subscription_counts(*await rt.store.subscription_counts())
        return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # What the lifespan opens, handed to the routes one by one (a route gets what it uses, not the Runtime).
    late_store: Late[Store] = Late("the store")
    openai: Late[OpenAIClient] = Late("the OpenAI client")
    storage: Late[Storage] = Late("the archive storage")
    urls = UrlCheck(rt.resolver, allow_private=settings.allow_private_targets)
    jobs = JobsApi(
        store=late_store,
        openai=openai,
        storage=storage,
        settings=settings,
        metrics=rt.metrics,
        clock=rt.clock,
        urls=urls,
    )
    subs = SubscriptionsApi(store=late_store, urls=urls)
    deliveries = DeliveriesApi(store=late_store)
    usage = UsageApi(store=late_store, quota_key=settings.quota_key)
    docs, console = console_routes(
        Console(
            store=late_store,
            settings=settings,
            clock=rt.clock,
            metrics=rt.metrics,
            urls=urls,
            jobs_api=jobs,
            rejections=rejections,
            last_pass=last_pass,
        ),
        settings.models,
    )
    # Every operation comes from the one route table (service/api/routes.py), which /openapi.json
    # describes; the /v1 handlers are bound to the API objects above, the rest are the app's own.
    routes: list[BaseRoute] = [
        *build_routes(
            {JobsApi: jobs, SubscriptionsApi: subs, DeliveriesApi: deliveries, UsageApi: usage},
            {
                "receiveOpenAIWebhook": AsgiEndpoint(receive_webhook),
                "healthz": healthz,
                "readyz": readyz,
                "metrics": metrics,
                "openapi": openapi_endpoint,
                "docs": docs,
            },
            settings.admin_token,
        ),
        console,  # /ui/, the operator console
        *(extra_routes or []),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if store is not None:
            rt.store = store
        else:
            rt.store = await open_store(
                settings.database_url,
                clock=rt.clock,
                retry_schedule=settings.retry_schedule,
                callback_secret=settings.callback_secret,
                disable_after=settings.disable_after,
                box=SecretBox(settings.secret_key) if settings.secret_key else None,
                pool_size=settings.db_pool_size,
                statement_timeout=settings.db_statement_timeout,
            )
        rt.store.on_job_finished = lambda kind, status, seconds: rt.metrics.job_duration.labels(
            kind=kind, status=status
        ).observe(seconds)
        rt.openai = OpenAIClient(
            base_url=settings.openai_base_url,
            api_keys=settings.openai_api_keys,
            metrics=rt.metrics,
            transport=openai_transport,
            timeout=settings.openai_timeout,
            max_retries=settings.openai_max_retries,
        )
        rt.sender = Sender(
            resolver=ssrf.CachingResolver(rt.resolver, ttl=DELIVERY_DNS_TTL, now=rt.clock.now),
            allow_private=settings.allow_private_targets,
        )
        receiver = Receiver(
            store=rt.store,
            verifier=verifier,
            clock=rt.clock,
            metrics=rt.metrics,
            max_body_bytes=settings.max_body_bytes,
            rejections=rejections,
        )
        receiver_holder["receiver"] = receiver
        rt.storage = storage_from_settings(settings)
        late_store.set(rt.store)
        openai.set(rt.openai)
        storage.set(rt.storage)
        await rt.store.configure_archive(settings.archive_variants if settings.archive else ())
        workers: list[Worker] = []
        # One ceiling on polling calls to OpenAI per reconcile interval, for the reconciler and progress.
        budget = CallBudget(RECONCILE_MAX_CALLS, settings.reconcile_interval, rt.clock.now)
        if start_workers:
            workers = [
                Submitter(store=rt.store, openai=rt.openai, clock=rt.clock, moderation=settings.moderation),
                Refresher(store=rt.store, openai=rt.openai, clock=rt.clock, budget=budget),
                Deliverer(
                    store=rt.store,
                    sender=rt.sender,
                    clock=rt.clock,
                    metrics=rt.metrics,
                    timeout=settings.delivery_timeout,
                    concurrency=settings.delivery_concurrency,
                    per_subscription=settings.per_subscription_concurrency,
                ),
                Pruner(store=rt.store, clock=rt.clock, keep=settings.retention),
                Reconciler(
                    store=rt.store,
                    openai=rt.openai,
                    clock=rt.clock,
                    metrics=rt.metrics,
                    interval=settings.reconcile_interval,
                    stale_after=settings.reconcile_after,
                    max_calls=RECONCILE_MAX_CALLS,
                    budget=budget,
                    last_pass=last_pass,
                ),
            ]
            if settings.progress_interval > 0:
                workers.append(
                    ProgressPoller(
                        store=rt.store,
                        openai=rt.openai,
                        clock=rt.clock,
                        budget=budget,
                        interval=settings.progress_interval,
                        step=settings.progress_step,
                    )
                )
        # The processor is part of the webhook's path, not an optional worker: without it no job follows.
        rt.processor = Processor(store=rt.store, clock=rt.clock)
        workers.insert(0, rt.processor)
        if start_workers and settings.archive:
            archiver = Archiver(
                store=rt.store, openai=rt.openai, storage=rt.storage, clock=rt.clock, metrics=rt.metrics
            )
            rt.store.on_job_finished = archiver.wake_on_completion(rt.store.on_job_finished)
            workers.append(archiver)
        for worker in workers:
            rt.tasks[worker.name] = asyncio.create_task(worker.run(), name=f"sorahook-{worker.name}")
        for i, job in enumerate(background or []):
            rt.tasks[f"background-{i}"] = asyncio.create_task(job(), name=f"sorahook-background-{i}")  # type: ignore[arg-type]
        rt.ready = True
        settle_gc()
        if on_ready is not None:
            on_ready(rt)
        log.info("sorahook ready", extra={"database": settings.database_name})
        try:
            yield
        finally:
            rt.ready = False
            receiver.accepting = False
            # Apply what was acknowledged before stopping (what is left waits in the inbox for the next start).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(rt.processor.idle(), timeout=INBOX_DRAIN_ON_STOP)
            for task in rt.tasks.values():
                task.cancel()
            await asyncio.gather(*rt.tasks.values(), return_exceptions=True)
            rt.tasks.clear()
            await rt.sender.aclose()
            await rt.openai.aclose()
            await rt.storage.aclose()
            if store is None:
                await rt.store.aclose()
            log.info("sorahook stopped; store closed")

    # The one exception to routing in the router: the webhook receiver, the hot path, is dispatched by
    # RequestIdMiddleware before the router, route matching and exception middleware (the route table
    # still lists it, for the router's 405s and for /openapi.json). With a trailing slash too: the router
    # would answer 307, and a webhook sender that does not follow redirects (most do not, for POST) would
    # only see its deliveries fail.
    direct = {("POST", "/webhooks/openai"): receive_webhook, ("POST", "/webhooks/openai/"): receive_webhook}
    app = Starlette(
        routes=routes, lifespan=lifespan, middleware=[Middleware(RequestIdMiddleware, direct=direct)]
    )
    app.state.runtime = rt
    # Starlette's own trailing-slash redirect builds an absolute URL from the Host header, so any client
    # could have it point elsewhere (`GET /v1/jobs/` with `Host: evil.example`). not_found redirects
    # with a path only instead.
    app.router.redirect_slashes = False

    async def not_found(request: Request, exc: Exception) -> Response:
        location = _slash_twin(app.router.routes, request.scope)
        if location is not None:
            return Response(status_code=307, headers={"location": location})
        return error_response(404, "not_found", f"no route for {request.url.path}")

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        headers = getattr(exc, "headers", None)  # Starlette's 405 carries the Allow header
        return error_response(
            405, "method_not_allowed", f"{request.method} is not allowed here", headers=headers
        )

    async def server_error(request: Request, exc: Exception) -> Response:
        request_id = getattr(request.state, "request_id", None)
        log.exception("unhandled error", exc_info=exc, extra={"request_id": request_id})
        headers = {"x-request-id": request_id} if request_id else None
        return error_response(500, "internal_error", "sorahook hit an unexpected error", headers=headers)

    async def client_gone(request: Request, exc: Exception) -> Response:
        # The client left mid-body, or the server closed it for stalling (SORAHOOK_BODY_TIMEOUT): not an
        # error of ours, and there is no one left to read an answer.
        return error_response(400, "client_disconnected", "the client closed the connection mid-request")

    app.add_exception_handler(ClientDisconnect, client_gone)
    app.add_exception_handler(404, not_found)
    app.add_exception_handler(405, method_not_allowed)
    app.add_exception_handler(500, server_error)
    return app
