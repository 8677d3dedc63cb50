"""The dashboard's pages and static files as the api serves them, without the pipeline: every page is
an HTML shell with the Content-Security-Policy, everything it loads comes from the api itself (store
back offices have no internet), and nothing in them needs what that policy forbids (inline scripts,
inline styles). A headless browser then checks that a signed-out visit ends on the sign-in form."""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import redis
import uvicorn
from fastapi import FastAPI, HTTPException

from devplatform.launcher import free_port
from services.api.pages import CONTENT_SECURITY_POLICY, PAGES, STATIC_DIR, mount_dashboard, pages_router

pytestmark = pytest.mark.integration

PAGE_URLS = {"/login": "login.html", "/": "feed.html", "/alerts/al-0123abcd:x.1": "alert.html", "/stats": "stats.html",
             "/stores": "stores.html", "/admin/audit": "audit.html"}
# XML namespaces are names, never fetched; any other absolute URL would be a request off the site.
NAMESPACES = {"http://www.w3.org/2000/svg"}
ABSOLUTE_URL = re.compile(r"(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}[^\s\"'<>)]*")


class Refs(HTMLParser):
    """What a page loads and what a CSP without 'unsafe-inline' would block."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self.inline_scripts = 0
        self.blocked_attrs: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name, _ in attrs:
            if name == "style" or name.startswith("on"):
                self.blocked_attrs.append(f"<{tag} {name}>")
        if tag == "script":
            if values.get("src"):
                self.scripts.append(values["src"] or "")
            else:
                self._in_script = True
        if tag == "link" and values.get("href"):
            self.styles.append(values["href"] or "")

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False


def dashboard_app() -> FastAPI:
    """The api's page wiring, and a signed-out /v1/auth/me."""
    app = FastAPI()
    mount_dashboard(app)

    @app.api_route("/v1/{rest:path}", methods=["GET", "POST"])
    async def signed_out(rest: str) -> None:
        raise HTTPException(401, "sign in first: no session")

    return app


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(dashboard_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the pages server did not start in 20 s"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_every_route_of_the_router_is_checked_here():
    assert sorted(PAGES.values()) == sorted(PAGE_URLS.values())


@pytest.mark.parametrize("path", list(PAGE_URLS))
def test_page_is_a_shell_with_the_csp_that_loads_only_its_own_files(site, path):
    response = httpx.get(site + path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"
    html = response.text
    assert html == (STATIC_DIR / "pages" / PAGE_URLS[path]).read_text()
    refs = Refs()
    refs.feed(html)
    assert refs.inline_scripts == 0 and refs.blocked_attrs == [], "the CSP forbids inline scripts, style attributes and on* handlers"
    assert refs.scripts and all(src.startswith("/static/") for src in refs.scripts), refs.scripts
    assert "/static/app.css" in refs.styles
    for url in refs.scripts + refs.styles:
        asset = httpx.get(site + url)
        assert asset.status_code == 200, url
        assert asset.headers["content-type"].split(";")[0] in ("text/javascript", "application/javascript", "text/css", "image/svg+xml"), url
    assert [u for u in ABSOLUTE_URL.findall(html) if u not in NAMESPACES] == []


def static_files() -> list[Path]:
    return sorted(p for p in STATIC_DIR.rglob("*") if p.is_file())


@pytest.mark.parametrize("path", static_files(), ids=lambda p: str(p.relative_to(STATIC_DIR)))
def test_static_file_is_served_and_reaches_nothing_off_the_site(site, path):
    relative = path.relative_to(STATIC_DIR).as_posix()
    response = httpx.get(f"{site}/static/{relative}")
    assert response.status_code == 200
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY  # page files fetched here too
    assert response.content == path.read_bytes()
    text = path.read_text()
    assert [u for u in ABSOLUTE_URL.findall(text) if u not in NAMESPACES] == [], f"{relative} refers to another site (no CDN, no web fonts)"
    if path.suffix == ".js":
        assert "innerHTML" not in text.replace('key === "innerHTML"', ""), f"{relative}: build DOM with h() (text nodes), not innerHTML"
        for module in re.findall(r"""\bfrom\s+["']([^"']+)["'];$""", text, re.M):
            assert module.startswith("/static/") and (STATIC_DIR / module.removeprefix("/static/")).is_file(), f"{relative} imports {module}"
    if path.suffix == ".css":
        assert "@import" not in text and "url(" not in text, f"{relative}: no external stylesheets or fonts"


def test_router_refuses_a_static_folder_without_the_pages(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"login\.html"):
        pages_router(tmp_path)


def test_signed_out_visit_ends_on_the_sign_in_form_without_policy_violations(site):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (`make setup` installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
            page.on("console", lambda msg: problems.append(msg.text) if "Content Security Policy" in msg.text else None)
            for path in ("/", "/stats", "/stores", "/admin/audit", "/alerts/al-1"):
                page.goto(site + path, timeout=15_000)
                page.wait_for_url(re.compile(r"/login(\?|$)"), timeout=15_000)
                page.wait_for_selector("#login-form", timeout=15_000)
                assert page.url.removeprefix(site) == ("/login" if path == "/" else f"/login?next={quote(path, safe='')}")
            page.fill("#username", "nobody")
            page.fill("#password", "wrong")
            page.click("#login-submit")
            page.wait_for_selector("#login-error .notice", timeout=15_000)
            assert "Wrong username or password" in page.inner_text("#login-error")
            assert problems == []
            # Where sign-in sends the user afterwards: only a path on this site (no open redirect).
            cases = ["/alerts/al-1", "/stats?days=7", "/\t/evil.example", "/\n/evil.example", "/\t\\evil.example", "//evil.example",
                     "/\\evil.example", "https://evil.example/", "javascript:alert(1)", "/login?next=/x"]
            sent = page.evaluate("async (cases) => { const m = await import('/static/common.js'); return cases.map((c) => m.safeNext(c)); }", cases)
            assert sent == ["/alerts/al-1", "/stats?days=7"] + ["/"] * 8
        finally:
            browser.close()


# ---- every page against the real api (broker and Redis, no pipeline) ------------------------------

PASSWORD = "dashboard pages test"


def _alert(alert_id: str, minutes_ago: float, severity: int):
    from services.shared.contracts.alert_pb2 import Alert, EvidenceRef

    event_ms = int(time.time() * 1000 - minutes_ago * 60_000)
    return Alert(alert_id=alert_id, rule="refund_without_customer", severity=severity, score=0.9, explanation="refund with nobody at the counter",  # type: ignore[arg-type]
                 store_id="store-001", camera_id="cam-counter-1", register_id="reg-1", event_time_ms=event_ms, raised_time_ms=event_ms + 7000,
                 evidence=[EvidenceRef(kind="pos_event", ref=f"pos-{alert_id}", time_ms=event_ms)], facts={"total": "29.99", "window_start_ms": str(event_ms)})


@pytest.fixture
def real_api(broker, redis_url, start_service, tmp_path):
    import yaml

    from services.api.auth import hash_password
    from services.shared import topics
    from services.shared.contracts.alert_pb2 import Severity
    from services.shared.kafka import make_producer

    users = tmp_path / "users.yaml"
    users.write_text(yaml.safe_dump({"users": [
        {"username": "admin", "role": "admin", "display_name": "Ada Admin", "password_hash": hash_password(PASSWORD)},
        {"username": "officer", "role": "officer", "stores": ["store-001"], "password_hash": hash_password(PASSWORD)},
    ]}))
    api = start_service("api", {"SW_KAFKA_BOOTSTRAP_SERVERS": broker, "SW_REDIS_URL": redis_url, "SW_API_USERS_FILE": str(users),
                                "SW_EVIDENCE_URL": str(tmp_path / "evidence")}).http
    producer = make_producer(broker)
    for alert in (_alert("al-dash-1", 30, Severity.SEVERITY_LOW), _alert("al-dash-2", 10, Severity.SEVERITY_CRITICAL)):
        producer.produce(topics.ALERTS, key=alert.store_id, value=alert.SerializeToString())
    producer.flush(10)
    # What the notifier records of the critical alert's pushes: one delivered, one still failing.
    from services.notifier.outbox import Job, Outbox

    outbox = Outbox(redis.Redis.from_url(redis_url), keep_ms=3_600_000)
    now = int(time.time() * 1000)
    outbox.enqueue("al-dash-2", "officer", [("officer/phone", "apprise"), ("officer/email", "apprise")], now, 0, 5, 300_000, 60_000, "route all, level 1")
    for channel, delivered in (("officer/phone", True), ("officer/email", False)):
        job = outbox.claim(channel, now, 20_000)
        assert isinstance(job, Job)
        if delivered:
            outbox.complete(job, now + 800, {"n": 1, "outcome": "delivered", "ms": 40}, "sent via ntfy")
        else:
            outbox.retry(job, now + 60_000, {"n": 1, "outcome": "failed", "error": "smtp: connection refused"}, "apprise email: smtp: connection refused")
    return api


def _sign_in(page, api: str, username: str) -> None:
    page.goto(f"{api}/login", timeout=15_000)
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.click("#login-submit")
    page.wait_for_url(f"{api}/", timeout=15_000)


def test_every_page_shows_the_real_apis_data_by_role(real_api):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (`make setup` installs it)")
    from playwright.sync_api import sync_playwright

    api = real_api
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            problems: list[str] = []
            admin = browser.new_context()
            admin.on("weberror", lambda err: problems.append(f"script error: {err.error}"))
            admin.on("console", lambda msg: problems.append(msg.text) if "Content Security Policy" in msg.text else None)
            page = admin.new_page()
            _sign_in(page, api, "admin")
            assert page.inner_text("[data-testid=user-name]") == "Ada Admin"
            # A function, not an expression: Playwright polls expressions with eval, which the CSP forbids.
            page.wait_for_function("() => document.querySelectorAll('#feed li[data-alert-id]').length === 2", timeout=30_000)
            assert [li.get_attribute("data-alert-id") for li in page.query_selector_all("#feed li")] == ["al-dash-2", "al-dash-1"]

            # Filters go into the query string and the API.
            page.select_option("#f-severity", "critical")
            page.click("#filters button[type=submit]")
            page.wait_for_function("() => document.querySelectorAll('#feed li[data-alert-id]').length === 1", timeout=15_000)
            assert page.url == f"{api}/?severity=critical"

            # The alert page: no evidence recorded for it; dismiss it as a false alarm.
            page.click("#feed li[data-alert-id='al-dash-2'] a")
            page.wait_for_selector("#details tr", timeout=15_000)
            assert "No evidence was recorded" in page.inner_text("#evidence-status")
            pushes = page.inner_text("#notifications")
            assert "officer/phone (apprise)" in pushes and "delivered" in pushes and "0.8 s" in pushes
            assert page.get_attribute("#notifications tr:has-text('officer/email')", "data-status") == "retrying" and "connection refused" in pushes
            page.fill("#verdict-note", "staff training refund")
            page.click("#btn-dismiss")
            page.wait_for_selector("#alert-title .status-dismissed", timeout=15_000)
            assert "False alarm" in page.inner_text("#history")

            page.goto(f"{api}/stats", timeout=15_000)
            page.wait_for_selector("#by-store table", timeout=15_000)
            assert "100%" not in page.inner_text("#by-store") and page.locator("#by-store [data-testid=precision]").first.inner_text() == "0%"
            assert page.locator("#by-rule svg.chart rect.bar:not(.zero)").count() >= 1

            page.goto(f"{api}/stores", timeout=15_000)
            page.wait_for_selector(".cameras li[data-camera-id='cam-counter-1']", timeout=15_000)
            assert page.get_attribute(".cameras li[data-camera-id='cam-counter-1']", "data-status") == "unknown"  # no recorder running

            page.goto(f"{api}/admin/audit", timeout=15_000)
            page.wait_for_selector("#audit-rows tr", timeout=15_000)
            actions = page.locator("#audit-rows td.mono:nth-child(4)").all_inner_texts()
            assert {"sign_in", "evidence.view", "verdict"} <= set(actions)

            # An officer: acknowledge only, no export, no audit log.
            officer = browser.new_context()
            officer.on("weberror", lambda err: problems.append(f"script error: {err.error}"))
            page = officer.new_page()
            _sign_in(page, api, "officer")
            page.goto(f"{api}/alerts/al-dash-1", timeout=15_000)
            page.wait_for_selector("#details tr", timeout=15_000)
            assert page.is_visible("#btn-ack") and not page.is_visible("#btn-confirm") and not page.is_visible("#btn-dismiss") and not page.is_visible("#export")
            assert page.locator("nav a[href='/admin/audit']").count() == 0
            page.goto(f"{api}/admin/audit", timeout=15_000)
            page.wait_for_selector("#audit-error .notice", timeout=15_000)
            assert "administrators only" in page.inner_text("#audit-error")
            page.goto(f"{api}/alerts/al-nonexistent", timeout=15_000)
            page.wait_for_selector("#alert-error .notice", timeout=15_000)
            assert "does not exist" in page.inner_text("#alert-error")

            # Sign out ends the session: the next page load goes to the sign-in form.
            page.click("#site-header button")
            page.wait_for_url(re.compile(r"/login$"), timeout=15_000)
            page.goto(f"{api}/stats", timeout=15_000)
            page.wait_for_url(re.compile(r"/login\?next=%2Fstats$"), timeout=15_000)
            assert problems == []
        finally:
            browser.close()
