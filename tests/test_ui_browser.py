"""The operator console in a real browser: Playwright driving the system Chromium against `serve --emulator`.

Skipped, with the reason, when the `playwright` package or Chromium (`apt-get install chromium`) is missing.
Playwright's own browser download is not used: the Debian build is launched by path.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.screenshots import CHROMIUM_ARGS  # the flags this closed machine needs, in one place
from tests.subscriber import Subscriber
from tests.support import auth, live_server, wait_until

CHROMIUM = os.environ.get("SORAHOOK_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
TOKEN = "test-admin-token"

try:
    from playwright.async_api import Browser, Page, async_playwright
except ImportError:  # pragma: no cover - depends on the environment
    pytest.skip("playwright is not installed (pip install -e '.[dev]')", allow_module_level=True)
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)", allow_module_level=True)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "SORAHOOK_DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'sorahook.db'}",
        "SORAHOOK_ADMIN_TOKEN": TOKEN,
        "SORAHOOK_ALLOW_PRIVATE_TARGETS": "true",
        "SORAHOOK_LOG_FORMAT": "console",
        "SORAHOOK_EMULATOR_DURATION": "0.5",
        # Two quick attempts, then dead: a failing subscriber's delivery dies in well under a second.
        "SORAHOOK_RETRY_SCHEDULE": "0,0.05",
        "OPENAI_API_KEY": "",
        **extra,
    }


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


async def sign_in(page: Page, base: str, token: str = TOKEN) -> None:
    await page.goto(f"{base}/ui/")
    assert page.url == f"{base}/ui/signin"
    await page.get_by_label("Admin token").fill(token)
    await page.get_by_role("button", name="Sign in").click()


async def reload_until(page: Page, selector: str, text: str, timeout: float = 15.0) -> None:
    """Reload the page until `selector`'s text is `text` (the console has no live updates)."""

    async def shown() -> bool:
        await page.goto(page.url)
        return (await page.inner_text(selector)).strip() == text

    await wait_until(shown, timeout=timeout, interval=0.2)


async def test_an_operator_finds_a_job_retries_a_dead_delivery_and_rotates_a_secret(
    tmp_path: Path, service_process: Any, browser: Browser
) -> None:
    subscriber = Subscriber()
    subscriber.defaults["/hook"] = 500
    async with live_server(subscriber.app()) as hook_base:
        svc = service_process(_env(tmp_path), emulator=True)
        svc.start()
        api = httpx.AsyncClient(base_url=svc.url, headers=auth(TOKEN))
        job = (await api.post("/v1/jobs", json={"prompt": "a red fox in the snow"})).json()

        async def archived() -> bool:
            found = (await api.get(f"/v1/jobs/{job['id']}")).json()
            return "video" in ((found.get("result") or {}).get("assets") or {})

        await wait_until(archived, timeout=30)

        context = await browser.new_context(viewport={"width": 1280, "height": 800})
        page = await context.new_page()

        # A wrong token is refused; the right one opens the overview.
        await sign_in(page, svc.url, token="not-the-token")
        assert "not the admin token" in await page.inner_text("main")
        await page.get_by_label("Admin token").fill(TOKEN)
        await page.get_by_role("button", name="Sign in").click()
        assert await page.inner_text("h1") == "Overview"

        # Find the job by its id and open its timeline, with the raw webhook body.
        await page.get_by_role("link", name="Jobs", exact=True).click()
        await page.get_by_label("Find by job id, resource id or Idempotency-Key").fill(job["id"])
        await page.get_by_role("button", name="Find").click()
        assert page.url == f"{svc.url}/ui/jobs/{job['id']}"
        assert job["id"] in await page.inner_text("h1")
        timeline = page.locator("ol.timeline")
        assert "video.completed" in await timeline.inner_text()
        raw = timeline.locator("details", has_text="Raw webhook body").first
        await raw.locator("summary").click()
        assert '"type":"video.completed"' in re.sub(r"\s", "", await raw.locator("pre").inner_text())
        thumbnail = page.get_by_alt_text(f"Thumbnail of {job['id']}")
        await thumbnail.wait_for()
        assert await thumbnail.evaluate("img => img.complete && img.naturalWidth > 0")

        # A subscription whose endpoint fails: its test event goes dead, and "Retry now" delivers it.
        await page.get_by_role("link", name="Subscriptions", exact=True).click()
        await page.get_by_label("URL").fill(f"{hook_base}/hook")
        await page.get_by_label("Event types").fill("sorahook.test")
        await page.get_by_role("button", name="Create subscription").click()
        sub_id = page.url.rsplit("/", 1)[-1]
        assert sub_id.startswith("sub_")
        await page.get_by_role("button", name="Send test event").click()
        assert "Test event" in await page.inner_text("[role=status]")
        deliveries = (await api.get("/v1/deliveries", params={"subscription_id": sub_id})).json()["data"]
        assert len(deliveries) == 1
        await page.goto(f"{svc.url}/ui/deliveries/{deliveries[0]['id']}")
        await reload_until(page, "#delivery-status", "dead")
        subscriber.defaults["/hook"] = 200
        await page.get_by_role("button", name="Retry now").click()
        await reload_until(page, "#delivery-status", "succeeded")
        assert "200" in await page.inner_text("table.attempts")

        # Rotate the secret: the page shows the overlap, and the API sees the new secret.
        before = (await api.get(f"/v1/subscriptions/{sub_id}")).json()["secret"]
        await page.goto(f"{svc.url}/ui/subscriptions/{sub_id}")
        await page.get_by_role("button", name="Rotate secret").click()
        assert "Secret rotated" in await page.inner_text("[role=status]")
        assert "Overlap" in await page.inner_text("main")
        await page.get_by_role("button", name="Reveal secret").click()
        shown = (await page.inner_text("#secret")).strip()
        after = (await api.get(f"/v1/subscriptions/{sub_id}")).json()["secret"]
        assert shown == after != before

        # A POST without the CSRF token, with the session cookie, is refused and changes nothing.
        refused = await page.request.post(f"{svc.url}/ui/subscriptions/{sub_id}/rotate", form={"x": "1"})
        assert refused.status == 403
        assert (await api.get(f"/v1/subscriptions/{sub_id}")).json()["secret"] == after

        # On a phone the pages reflow: nothing is wider than the screen (wide tables scroll inside their box).
        phone = await browser.new_context(viewport={"width": 390, "height": 844})
        await phone.add_cookies(await context.cookies())
        small = await phone.new_page()
        for path in (
            "/ui/",
            "/ui/jobs",
            f"/ui/jobs/{job['id']}",
            f"/ui/subscriptions/{sub_id}",
            "/ui/deliveries",
        ):
            await small.goto(svc.url + path)
            width = await small.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, (path, width)
        await phone.close()

        # The keyboard reaches the skip link first, and it moves focus past the navigation.
        await page.goto(f"{svc.url}/ui/jobs")
        await page.keyboard.press("Tab")
        assert await page.evaluate("document.activeElement.textContent") == "Skip to content"

        # Sign out: the console is closed again.
        await page.get_by_role("button", name="Sign out").click()
        assert page.url == f"{svc.url}/ui/signin"
        await page.goto(f"{svc.url}/ui/jobs")
        assert page.url.startswith(f"{svc.url}/ui/signin")
        await context.close()
        await api.aclose()
        svc.stop()


async def test_an_expired_session_is_sent_back_to_sign_in(
    tmp_path: Path, service_process: Any, browser: Browser
) -> None:
    svc = service_process(_env(tmp_path, SORAHOOK_UI_SESSION_TTL="2"), emulator=True)
    svc.start()
    context = await browser.new_context()
    page = await context.new_page()
    await sign_in(page, svc.url)
    assert await page.inner_text("h1") == "Overview"
    (cookie,) = [c for c in await context.cookies() if c["name"] == "sorahook_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"

    async def expired() -> bool:
        await page.goto(f"{svc.url}/ui/jobs")
        return page.url.startswith(f"{svc.url}/ui/signin")

    await wait_until(expired, timeout=15, interval=0.3)
    # The browser drops the cookie at its Max-Age; the server refuses a copy kept past it as well.
    kept = await page.request.get(
        f"{svc.url}/ui/jobs", headers={"cookie": f"sorahook_session={cookie['value']}"}, max_redirects=0
    )
    assert kept.status == 303 and kept.headers["location"] == "/ui/signin?expired=1"
    await page.goto(f"{svc.url}/ui/signin?expired=1")
    assert "expired" in await page.inner_text("main")
    await context.close()
    svc.stop()
