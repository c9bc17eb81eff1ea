"""`make screenshots`: a 1280x800 PNG of each console page (and one on a phone) into docs/screenshots/.

Starts `python -m service serve --emulator` on a temporary data directory, gives it a few jobs, a healthy
subscription and one whose endpoint answers 503 (so there are dead deliveries to show), then drives
the system Chromium through Playwright (`apt-get install chromium`; `pip install -e '.[dev]'`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "screenshot-admin-token"
# Headless as root on a machine with no network: without the background-networking flags Chromium keeps
# trying to reach Google's hosts. The browser tests launch with the same flags.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(check: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"screenshots: timed out waiting for {what}")
        time.sleep(0.2)


class _Accept(BaseHTTPRequestHandler):
    """A subscriber that accepts every delivery, but under /failing answers 503 with a body."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.path.startswith("/failing"):
            body = b'{"error": "maintenance", "message": "the receiver is down for maintenance until 04:00"}'
            self.send_response(503)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def populate(api: httpx.Client, hook: str) -> dict[str, str]:
    """A few jobs, a healthy subscription and one that ends dead; returns the ids of the pages to visit."""
    healthy = api.post("/v1/subscriptions", json={"url": hook, "event_types": ["video.*"]}).json()
    broken = api.post(
        "/v1/subscriptions", json={"url": hook.replace("/hooks", "/failing"), "description": "answers 503"}
    ).json()
    jobs = [
        api.post("/v1/jobs", json={"prompt": p, "metadata": {"client": "demo"}}).json()
        for p in ("a red fox in the snow", "a lighthouse at dusk", "waves on a pebble beach")
    ]
    api.post("/v1/jobs/track", json={"resource_id": "batch_abc123"})
    api.post("/v1/subscriptions/" + broken["id"] + "/test")
    httpx.post(str(api.base_url.join("/webhooks/openai")), content=b"{}")  # unsigned: a rejection to show
    job_id = jobs[0]["id"]

    def archived() -> bool:
        found = api.get(f"/v1/jobs/{job_id}").json()
        return "video" in ((found.get("result") or {}).get("assets") or {})

    def dead() -> bool:
        found = api.get("/v1/deliveries", params={"subscription_id": broken["id"], "status": "dead"}).json()
        return len(found["data"]) > 0

    _wait(archived, "the first video to be archived")
    _wait(dead, "a dead delivery")
    delivery = api.get("/v1/deliveries", params={"subscription_id": broken["id"], "status": "dead"}).json()
    return {
        "job": job_id,
        "healthy": healthy["id"],
        "broken": broken["id"],
        "delivery": delivery["data"][0]["id"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--chromium", default=os.environ.get("SORAHOOK_CHROMIUM") or "/usr/bin/chromium")
    args = parser.parse_args()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("screenshots: playwright is not installed (pip install -e '.[dev]')", file=sys.stderr)
        return 1
    if not Path(args.chromium).exists():
        print(f"screenshots: no Chromium at {args.chromium} (apt-get install -y chromium)", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    data = Path(tempfile.mkdtemp(prefix="sorahook-screenshots-"))
    port = _port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "SORAHOOK_DATABASE_URL": f"sqlite:///{data / 'sorahook.db'}",
        "SORAHOOK_ADMIN_TOKEN": TOKEN,
        "SORAHOOK_ALLOW_PRIVATE_TARGETS": "true",
        "SORAHOOK_EMULATOR_DURATION": "1",
        "SORAHOOK_RETRY_SCHEDULE": "0,0.1",
        "SORAHOOK_LOG_LEVEL": "warning",
        "OPENAI_API_KEY": "",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--emulator", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(ready, "the service to start")
        subscriber = ThreadingHTTPServer(("127.0.0.1", 0), _Accept)
        threading.Thread(target=subscriber.serve_forever, daemon=True).start()
        hook = f"http://127.0.0.1:{subscriber.server_address[1]}/hooks"
        with httpx.Client(base_url=base, headers={"authorization": f"Bearer {TOKEN}"}) as api:
            ids = populate(api, hook)
        pages = [
            ("overview", "/ui/"),
            ("jobs", "/ui/jobs"),
            ("job", f"/ui/jobs/{ids['job']}"),
            ("subscriptions", "/ui/subscriptions"),
            ("subscription", f"/ui/subscriptions/{ids['broken']}"),
            ("deliveries", "/ui/deliveries"),
            ("delivery", f"/ui/deliveries/{ids['delivery']}"),
            ("docs", "/docs"),
        ]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            page = context.new_page()
            page.goto(f"{base}/ui/signin")
            page.screenshot(path=str(args.out / "signin.png"))
            page.get_by_label("Admin token").fill(TOKEN)
            page.get_by_role("button", name="Sign in").click()
            for name, path in pages:
                page.goto(base + path)
                page.wait_for_load_state("networkidle")
                page.screenshot(path=str(args.out / f"{name}.png"))
                print(f"wrote {args.out / name}.png")
            phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=1)
            phone.add_cookies(context.cookies())
            mobile = phone.new_page()
            mobile.goto(f"{base}/ui/jobs/{ids['job']}")
            mobile.wait_for_load_state("networkidle")
            mobile.screenshot(path=str(args.out / "job-phone.png"))
            print(f"wrote {args.out / 'job-phone.png'}")
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
