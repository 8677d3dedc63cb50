"""The dashboard's pages and static files as the api serves them, without the pipeline: every page is
an HTML shell with the Content-Security-Policy, everything it loads comes from the api itself (store
back offices have no internet), and nothing in them needs what that policy forbids (inline scripts,
inline styles). A headless browser then checks that a signed-out visit ends on the sign-in form."""

from __future__ import annotations

import contextlib
import math
import re
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote
from zoneinfo import ZoneInfo

import httpx
import pytest
import redis
import uvicorn
from fastapi import FastAPI, HTTPException, Query, Request

from devplatform.launcher import free_port
from services.api.pages import CONTENT_SECURITY_POLICY, PAGES, STATIC_DIR, mount_dashboard, pages_router
from tests.conftest import at_store_time

pytestmark = pytest.mark.integration

PAGE_URLS = {"/login": "login.html", "/": "feed.html", "/alerts/al-0123abcd:x.1": "alert.html", "/incidents": "incidents.html",
             "/incidents/in-0123456789abcdef01234567": "incident.html", "/returns": "returns.html",
             "/stats": "stats.html", "/stores": "stores.html", "/admin/audit": "audit.html"}
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


@contextlib.contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """The app on a free loopback port, in a thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
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


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    with serving(dashboard_app()) as url:
        yield url


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
            for path in ("/", "/returns", "/stats", "/stores", "/admin/audit", "/alerts/al-1", "/incidents", "/incidents/in-0123456789abcdef01234567"):
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
def real_api(broker, redis_url, start_service, risk_models, tmp_path):
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
                                "SW_EVIDENCE_URL": str(tmp_path / "evidence"), "SW_API_MODELS_DIR": str(risk_models)}).http
    # A return the rules decided, and the return model's card, kept where the store-facing service keeps them.
    from services.shared.returndecisions import model_card, publish_model_card
    from services.shared.riskmodel import load_latest

    _keep_decisions(redis.Redis.from_url(redis_url), [_return_decision("real-api", "store-001", 2, 2599, abusive=True, receipt=False, model=None)])
    publish_model_card(redis.Redis.from_url(redis_url), model_card(load_latest(risk_models, "return"), "return"))
    # Someone counted walking down the aisle past the sample counter (what the recorder writes from inference's line crossings).
    from services.shared.traffic import LineCount, record_counts

    record_counts(redis.Redis.from_url(redis_url), [LineCount("store-001", "cam-counter-1", "aisle-east", "count", "out", 7, int(time.time() * 1000))])
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

    from services.pos.returns import decision_id
    from services.shared.contracts.pos_event_pb2 import PosEvent

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
            # The title changes on the answer; the history when the page has loaded the alert again.
            page.wait_for_selector("#history li:has-text('False alarm')", timeout=15_000)

            page.goto(f"{api}/stats", timeout=15_000)
            page.wait_for_selector("#by-store table", timeout=15_000)
            assert "100%" not in page.inner_text("#by-store") and page.locator("#by-store [data-testid=precision]").first.inner_text() == "0%"
            assert page.locator("#by-rule svg.chart rect.bar:not(.zero)").count() >= 1

            page.goto(f"{api}/stores", timeout=15_000)
            page.wait_for_selector(".cameras li[data-camera-id='cam-counter-1']", timeout=15_000)
            assert page.get_attribute(".cameras li[data-camera-id='cam-counter-1']", "data-status") == "unknown"  # no recorder running
            assert page.inner_text("[data-testid=traffic] li[data-line-id='aisle-east']") == "cam-counter-1 / aisle-east (count): 0 in, 1 out today"
            assert page.locator("[data-testid=in-store-now]").count() == 0  # no door line: nobody counted into the store

            # Returns: the decision kept in Redis, and the card of the model the api loaded at start.
            page.goto(f"{api}/returns", timeout=15_000)
            page.wait_for_selector("#decisions li[data-decision-id]", timeout=15_000)
            page.wait_for_selector("#model-card svg.importance-chart", timeout=15_000)
            assert _decision_ids(page) == [decision_id(PosEvent(event_id="pos-real-api", store_id="store-001"))]
            assert page.inner_text("#decisions [data-testid=rules-warning]") == f"Decided by the rules: {RULES_WARNING}"
            assert page.inner_text("[data-testid=model-version]").startswith("model ")
            assert page.locator("#model-card svg.importance-chart g.importance-row").count() == 12

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


def test_incidents_page_lists_an_incident_with_two_reasons_live_and_its_page_takes_one_verdict(real_api, broker):
    """Two alerts of one refund arrive while the incidents page is open: one row, both rules as chips,
    raised to critical; its page shows both reasons and one evidence package, and one Confirm
    publishes a verdict for each reason under its rule."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (`make setup` installs it)")
    from playwright.sync_api import sync_playwright

    from services.shared import topics
    from services.shared.contracts.alert_pb2 import Alert, EvidenceRef, Severity
    from services.shared.contracts.feedback_pb2 import Feedback, Verdict
    from services.shared.incidents import incident_id
    from services.shared.kafka import make_producer
    from tests.conftest import consume_all

    api = real_api
    now = int(time.time() * 1000)
    refund = [Alert(alert_id=f"al-inc-{rule}", rule=rule, severity=severity, score=0.9, explanation=f"{rule.replace('_', ' ')} at reg-1",
                    store_id="store-001", camera_id="cam-counter-1", register_id="reg-1", event_time_ms=now - 60_000 + i * 2_000,
                    raised_time_ms=now - 55_000 + i * 2_000, evidence=[EvidenceRef(kind="pos_event", ref="pos-refund-7", time_ms=now - 60_000)])
              for i, (rule, severity) in enumerate((("refund_without_customer", Severity.SEVERITY_HIGH), ("refund_without_merchandise", Severity.SEVERITY_MEDIUM)))]
    the_id = incident_id("store-001", refund[0].alert_id)
    row = f"#incidents li[data-incident-id='{the_id}']"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            problems: list[str] = []

            def watch(context) -> None:  # a 404 answered on purpose is no problem; script errors and the CSP are
                context.on("weberror", lambda err: problems.append(f"script error: {err.error}"))
                context.on("console", lambda msg: problems.append(msg.text) if "Content Security Policy" in msg.text else None)

            admin = browser.new_context()
            watch(admin)
            page = admin.new_page()
            _sign_in(page, api, "admin")
            page.goto(f"{api}/incidents", timeout=15_000)
            # The fixture's two alerts, twenty minutes apart: two incidents of one reason each.
            page.wait_for_function("() => document.querySelectorAll('#incidents li[data-incident-id]').length === 2", timeout=30_000)
            page.wait_for_selector("#live.on", timeout=15_000)
            assert page.get_attribute("nav a[href='/incidents']", "aria-current") == "page"
            producer = make_producer(broker)
            for alert in refund:
                producer.produce(topics.ALERTS, key=alert.store_id, value=alert.SerializeToString())
            producer.flush(10)
            page.wait_for_function(f"() => document.querySelectorAll(\"{row} .chip\").length === 2", timeout=30_000)
            assert page.locator(f"{row} .chip").all_inner_texts() == ["Refund without customer", "Refund without merchandise"]
            assert page.inner_text(f"{row} .sev-slot").lower() == "critical" and page.inner_text(f"{row} [data-testid=reason-count]") == "2 reasons"
            assert "register reg-1" in page.inner_text(row) and "camera cam-counter-1" in page.inner_text(row)
            assert page.locator("#incidents li[data-incident-id]").first.get_attribute("data-incident-id") == the_id  # the newest, on top

            page.click(f"{row} a")
            page.wait_for_url(f"{api}/incidents/{the_id}", timeout=15_000)
            page.wait_for_function("() => document.querySelectorAll('#reasons tr[data-alert-id]').length === 2", timeout=15_000)
            assert page.eval_on_selector_all("#reasons tr[data-alert-id]", "(rs) => rs.map((r) => r.dataset.rule)") == [
                "refund_without_customer", "refund_without_merchandise"]
            assert "No evidence was recorded" in page.inner_text("#evidence-status") or "being recorded" in page.inner_text("#evidence-status")
            assert page.get_attribute("#evidence-of a", "href") == f"/alerts/{refund[0].alert_id}"
            page.fill("#verdict-note", "both rules right: nobody at the till")
            page.click("#btn-confirm")
            page.wait_for_selector("#incident-title .status-confirmed", timeout=15_000)
            page.wait_for_function("() => document.querySelectorAll('#reasons .status-confirmed').length === 2", timeout=15_000)
            assert "Confirmed" in page.inner_text("#history") and "nobody at the till" in page.inner_text("#history")
            feedbacks = [Feedback.FromString(m.value()) for m in consume_all(broker, topics.FEEDBACK, expect=2)]
            assert {(f.alert_id, f.rule, f.verdict) for f in feedbacks} == {(a.alert_id, a.rule, Verdict.VERDICT_CONFIRMED) for a in refund}

            # The list follows the verdict; an alert of the incident links back to it.
            page.goto(f"{api}/incidents?status=confirmed", timeout=15_000)
            page.wait_for_function("() => document.querySelectorAll('#incidents li[data-incident-id]').length === 1", timeout=15_000)
            assert page.get_attribute("#incidents li[data-incident-id]", "data-incident-id") == the_id
            page.goto(f"{api}/alerts/{refund[1].alert_id}", timeout=15_000)
            page.wait_for_selector("[data-testid=incident-link]", timeout=15_000)
            assert page.get_attribute("[data-testid=incident-link]", "href") == f"/incidents/{the_id}"

            # Statistics count incidents (three) beside the alerts (four), and precision per rule.
            page.goto(f"{api}/stats", timeout=15_000)
            page.wait_for_selector("#by-store table", timeout=15_000)
            assert page.inner_text("#stats-totals") == "3 incidents from 4 alerts"
            assert page.locator("#by-store [data-testid=incidents]").first.inner_text() == "3"

            # An officer acknowledges the incident only.
            officer = browser.new_context()
            watch(officer)
            page = officer.new_page()
            _sign_in(page, api, "officer")
            page.goto(f"{api}/incidents/{the_id}", timeout=15_000)
            page.wait_for_selector("#reasons tr[data-alert-id]", timeout=15_000)
            assert page.is_visible("#btn-ack") and not page.is_visible("#btn-confirm") and not page.is_visible("#btn-dismiss")
            page.goto(f"{api}/incidents/in-{'0' * 24}", timeout=15_000)
            page.wait_for_selector("#incident-error .notice", timeout=15_000)
            assert "does not exist" in page.inner_text("#incident-error")
            assert problems == []
        finally:
            browser.close()


# ---- the Returns page ------------------------------------------------------------------------------
#
# The page reads GET /v1/returns/decisions and GET /v1/returns/model. Here a small app serves those two
# routes as the api documents them: the decisions stored in Redis as the store-facing service stores
# them (returndecisions.keep_decision) and read back as the HQ api reads them (recent_decisions), and
# the card returndecisions.model_card() makes of a real trained return-risk model.

RETURN_STORES = [
    {"store_id": "store-001", "name": "High Street", "region": "south", "timezone": "Europe/London", "cameras": [], "registers": []},
    {"store_id": "store-002", "name": "Harbour Mall", "region": "east", "timezone": "America/New_York", "cameras": [], "registers": []},
]
RETURN_USERS = {
    "hq": {"username": "hq", "role": "hq_analyst", "stores": [], "display_name": "Hana HQ"},
    "manager2": {"username": "manager2", "role": "store_manager", "stores": ["store-002"], "display_name": "Mo Manager"},
}
DAY_MS = 86_400_000
# The returns are decided minutes before a fixed store time (a Wednesday, 15:00 in London, 10:00 or
# 11:00 in New York): the return-risk model scores the store's local hour and weekday.
RETURNS_AT_MS = at_store_time("Europe/London")
RULES_WARNING = "no return risk model in models/risk/return (build one with `make train-risk`); deciding by the rules alone"


def _return_decision(name: str, store_id: str, minutes_ago: float, total_minor: int, abusive: bool, receipt: bool, model, policy=None):
    """A return assessed as the api assesses one (features, decide(), the ReturnDecision it keeps)."""
    from services.pos.returns import decide, decision_id
    from services.shared.contracts.pos_event_pb2 import PosEvent, PosEventType, PosItem
    from services.shared.contracts.return_decision_pb2 import ReturnDecision, ReturnReason
    from services.shared.returnpolicy import ReturnPolicy
    from services.shared.riskfeatures import CameraView, OriginalSale, PastReturn, ReturnContext, return_features

    now = int(RETURNS_AT_MS - minutes_ago * 60_000)
    store = next(s for s in RETURN_STORES if s["store_id"] == store_id)
    event = PosEvent(event_id=f"pos-{name}", type=PosEventType.POS_EVENT_TYPE_REFUND, store_id=store_id, register_id="reg-1",
                     transaction_id=f"T-{name}", employee_id="emp-042", event_time_ms=now, currency="GBP" if store_id == "store-001" else "USD",
                     total_minor=total_minor, items=[PosItem(sku="SKU-1", quantity=1, unit_price_minor=total_minor)], tender="card",
                     card_token=f"tok-{name}", original_transaction_id="T-8001" if receipt else "")
    history = [PastReturn(now - (i + 1) * 3 * DAY_MS, f"store-00{i % 4 + 1}", 15000, with_receipt=False) for i in range(6)] if abusive else []
    context = ReturnContext(event, str(store["timezone"]), token_history=history, camera=CameraView(not abusive, not abusive),
                            original_sale=OriginalSale(now - 4 * DAY_MS, store_id, total_minor) if receipt else None)
    values = return_features(context)
    a = decide(values, policy or ReturnPolicy(), model, "" if model is not None else RULES_WARNING)
    return ReturnDecision(
        decision_id=decision_id(event), event_id=event.event_id, store_id=store_id, register_id=event.register_id, employee_id=event.employee_id,
        transaction_id=event.transaction_id, original_transaction_id=event.original_transaction_id, total_minor=total_minor, currency=event.currency,
        outcome={"accept": 1, "warn": 2, "deny": 3}[a.outcome], score=a.score,  # type: ignore[arg-type]
        reasons=[ReturnReason(text=r.text, feature=r.feature, weight=r.weight) for r in a.reasons], scored_by=a.scored_by, warning=a.warning,
        decided_time_ms=now, features={k: float(v) for k, v in values.items()}, warn_at=a.warn_at, deny_at=a.deny_at)


def _keep_decisions(client: redis.Redis, decisions) -> None:
    """As the till's service keeps a decision (its view() by id, listed by time in its store's list)."""
    from services.shared.returndecisions import keep_decision

    for d in decisions:
        keep_decision(client, d)


def returns_app(client: redis.Redis, state: dict) -> FastAPI:
    """The dashboard plus the routes the Returns page reads; the user comes from a test cookie."""
    from services.shared.returndecisions import recent_decisions

    app = FastAPI()
    mount_dashboard(app)

    def who(request: Request) -> dict:
        user = RETURN_USERS.get(request.cookies.get("sw_test_user", ""))
        if user is None:
            raise HTTPException(401, "sign in first: no session")
        return user

    def visible(user: dict, store_id: str | None = None) -> set[str]:
        mine = {str(s["store_id"]) for s in RETURN_STORES if not user["stores"] or s["store_id"] in user["stores"]}
        if store_id is not None and store_id not in mine:
            raise HTTPException(404, f"no store {store_id}")
        return {store_id} if store_id else mine

    @app.get("/v1/auth/me")
    async def me(request: Request) -> dict:
        return who(request)

    @app.get("/v1/stores")
    async def stores(request: Request) -> dict:
        mine = visible(who(request))
        return {"stores": [s for s in RETURN_STORES if s["store_id"] in mine]}

    @app.get("/v1/returns/decisions")
    async def decisions(request: Request, store_id: str | None = None, outcome: Literal["accept", "warn", "deny"] | None = None,
                        limit: Annotated[int, Query(ge=1, le=500)] = 100) -> dict:
        return {"decisions": recent_decisions(client, visible(who(request), store_id), limit, outcome)}

    @app.get("/v1/returns/model")
    async def model(request: Request) -> dict:
        who(request)
        card = state["card"]
        return {"return": card, "scored_by": f"model {card['version']}" if card["loaded"] else "rules"}

    return app


@pytest.fixture
def returns_site(redis_url, risk_models, tmp_path):
    from services.shared.returndecisions import model_card
    from services.shared.returnpolicy import ReturnPolicy
    from services.shared.riskmodel import load_latest

    result = load_latest(risk_models, "return")
    assert result.model is not None, result.error
    model = result.model
    decisions = {
        "deny": _return_decision("deny", "store-001", 1, 14999, abusive=True, receipt=False, model=model),
        "rules": _return_decision("rules", "store-002", 3, 8999, abusive=True, receipt=False, model=None),
        "accept": _return_decision("accept", "store-001", 5, 18999, abusive=False, receipt=True, model=model),
        "warn": _return_decision("warn", "store-002", 7, 4550, abusive=False, receipt=False, model=model, policy=ReturnPolicy(always_warn=["no_receipt"])),
    }
    from services.shared.contracts.return_decision_pb2 import ReturnOutcome

    assert {k: ReturnOutcome.Name(d.outcome) for k, d in decisions.items()} == {
        "deny": "RETURN_OUTCOME_DENY", "rules": "RETURN_OUTCOME_DENY", "accept": "RETURN_OUTCOME_ACCEPT", "warn": "RETURN_OUTCOME_WARN"}
    client = redis.Redis.from_url(redis_url)
    _keep_decisions(client, decisions.values())
    state = {"card": model_card(result, "return"), "loaded": model_card(result, "return"),
             "rules": model_card(load_latest(tmp_path / "no-models", "return"), "return")}
    with serving(returns_app(client, state)) as url:
        yield url, state, decisions, model


def _sentence(text: str) -> str:
    capital = text[:1].upper() + text[1:]
    return capital if capital.endswith((".", "!", "?")) else capital + "."


def _percent(value: float) -> str:
    return f"{math.floor(value * 100 + 0.5)}%"  # JavaScript's Math.round


def _permutation_mean(value) -> float:
    return float(value["mean"] if isinstance(value, dict) else value)


def _top_features(importances: dict) -> list[str]:
    impurity, permutation = importances["impurity"], importances["permutation"]
    names = set(impurity) | set(permutation)
    return sorted(names, key=lambda n: (-_permutation_mean(permutation[n]) if n in permutation else math.inf, -impurity.get(n, 0), n))[:12]


def _watch(context, problems: list[str]) -> None:
    context.on("weberror", lambda err: problems.append(f"script error: {err.error}"))
    context.on("console", lambda msg: problems.append(msg.text) if "Content Security Policy" in msg.text or msg.type == "error" else None)


def _decision_ids(page) -> list[str]:
    return [li.get_attribute("data-decision-id") for li in page.query_selector_all("#decisions li[data-decision-id]")]


def test_returns_page_shows_the_tills_decisions_and_the_model_card(returns_site):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (`make setup` installs it)")
    from playwright.sync_api import sync_playwright

    url, state, decisions, model = returns_site
    card = state["loaded"]
    newest_first = [decisions[k].decision_id for k in ("deny", "rules", "accept", "warn")]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            problems: list[str] = []
            # The browser in Tokyo: the rows must show each store's own clock, not the browser's.
            hq = browser.new_context(locale="en-US", timezone_id="Asia/Tokyo")
            hq.add_cookies([{"name": "sw_test_user", "value": "hq", "url": url}])
            _watch(hq, problems)
            page = hq.new_page()
            page.goto(f"{url}/returns", timeout=15_000)
            page.wait_for_function("() => document.querySelectorAll('#decisions li[data-decision-id]').length === 4", timeout=15_000)
            assert _decision_ids(page) == newest_first
            assert page.get_attribute("nav a[href='/returns']", "aria-current") == "page"

            row = {k: page.locator(f"#decisions li[data-decision-id='{d.decision_id}']") for k, d in decisions.items()}
            colours = {k: row[k].locator("[data-testid=outcome]").evaluate("(b) => getComputedStyle(b).backgroundColor") for k in row}
            assert colours == {"deny": "rgb(179, 38, 30)", "rules": "rgb(179, 38, 30)", "accept": "rgb(30, 122, 60)", "warn": "rgb(154, 98, 0)"}
            assert [row[k].locator("[data-testid=outcome]").inner_text().lower() for k in ("deny", "accept", "warn")] == ["deny", "accept", "warn"]

            deny = row["deny"]
            assert deny.locator("[data-testid=score]").inner_text() == f"{decisions['deny'].score:.2f}"
            assert deny.locator("[data-testid=scored-by]").inner_text() == f"model {model.version}"
            assert deny.locator("[data-testid=amount]").inner_text() == "£149.99"
            assert "register reg-1" in deny.inner_text() and "employee emp-042" in deny.inner_text() and "High Street" in deny.inner_text()
            reasons = deny.locator("[data-testid=reasons] li").all_inner_texts()
            assert reasons and reasons == [_sentence(r.text) for r in decisions["deny"].reasons[:4]]
            assert deny.locator("[data-testid=rules-warning]").count() == 0

            rules = row["rules"]
            assert rules.locator("[data-testid=scored-by]").inner_text() == "rules"
            assert rules.locator("[data-testid=rules-warning]").is_visible()
            assert rules.locator("[data-testid=rules-warning]").inner_text() == f"Decided by the rules: {RULES_WARNING}"
            assert rules.locator("[data-testid=reasons] li").all_inner_texts() == [_sentence(r.text) for r in decisions["rules"].reasons[:4]]
            assert rules.locator("[data-testid=amount]").inner_text() == "$89.99"
            ny = datetime.fromtimestamp(decisions["rules"].decided_time_ms / 1000, ZoneInfo("America/New_York"))
            shown = rules.locator("[data-testid=time] time").inner_text()
            assert str(ny.tzname()) in shown and ny.strftime("%M:%S") in shown and "GMT+9" not in shown, shown
            assert "Store policy: returns without a receipt are checked." in row["warn"].locator("[data-testid=reasons]").inner_text()

            # Filters: the query string and the API.
            page.select_option("#f-outcome", "deny")
            page.click("#filters button[type=submit]")
            page.wait_for_function("() => document.querySelectorAll('#decisions li[data-decision-id]').length === 2", timeout=15_000)
            assert page.url == f"{url}/returns?outcome=deny" and _decision_ids(page) == newest_first[:2]
            page.select_option("#f-store", "store-002")
            page.click("#filters button[type=submit]")
            page.wait_for_function("() => document.querySelectorAll('#decisions li[data-decision-id]').length === 1", timeout=15_000)
            assert page.url == f"{url}/returns?store_id=store-002&outcome=deny" and _decision_ids(page) == [decisions["rules"].decision_id]

            # The model card: version, held-out ROC AUC, thresholds, importances (top 12 by permutation), recall by pattern.
            page.wait_for_selector("#model-card svg.importance-chart", timeout=15_000)
            assert page.inner_text("[data-testid=model-version]") == f"model {model.version}"
            assert f"version {model.version}, created " in page.inner_text("[data-testid=model-created]")
            for source, metrics in card["metrics"].items():
                cells = page.locator(f"table.metrics tr[data-source='{source}'] td").all_inner_texts()
                assert cells[1:3] == [f"{metrics['test_roc_auc']:.3f}", f"{metrics['validation_roc_auc']:.3f}"], cells
            assert "synthetic" in card["metrics"]
            assert {t["name"] for t in card["thresholds"]} == {"warn", "deny"}
            for t in card["thresholds"]:
                cells = page.locator(f"table.thresholds tr[data-threshold='{t['name']}'] td").all_inner_texts()
                assert cells[0].lower() == t["name"] and cells[1] == f"{t['threshold']:.3f}", cells
                assert cells[3:5] == [_percent(t["test"]["precision"]), _percent(t["test"]["recall"])], cells
            top = _top_features(card["importances"])
            assert len(top) == 12 and isinstance(next(iter(card["importances"]["permutation"].values())), dict)  # the nested form
            chart = "#model-card svg.importance-chart"
            assert page.eval_on_selector_all(f"{chart} g.importance-row", "(gs) => gs.map((g) => g.dataset.feature)") == top
            impurity = page.eval_on_selector_all(f"{chart} rect.bar-impurity", "(rs) => rs.map((r) => Number(r.getAttribute('width')))")
            permutation = page.eval_on_selector_all(f"{chart} rect.bar-permutation", "(rs) => rs.map((r) => Number(r.getAttribute('width')))")
            assert len(impurity) == len(permutation) == 12 and permutation[0] > 0
            # Impurity bars to scale (the largest shown is the longest; a bar is at least 1 unit wide).
            shares = [card["importances"]["impurity"][n] for n in top]
            assert all(abs(w / max(impurity) - max(v / max(shares), 1 / max(impurity))) < 1e-6 for w, v in zip(impurity, shares, strict=True) if v > 0)
            assert permutation == sorted(permutation, reverse=True)
            patterns = card["metrics"]["synthetic"]["test_recall_by_pattern"]
            assert sorted(page.eval_on_selector_all("table.patterns tr[data-pattern]", "(rs) => rs.map((r) => r.dataset.pattern)")) == sorted(patterns)

            # Permutation importances as plain numbers (older metadata) draw the same chart.
            importances = card["importances"]
            state["card"] = {**card, "importances": {**importances, "permutation": {k: _permutation_mean(v) for k, v in importances["permutation"].items()}}}
            page.reload(timeout=15_000)
            page.wait_for_selector(f"{chart} g.importance-row", timeout=15_000)
            assert page.eval_on_selector_all(f"{chart} g.importance-row", "(gs) => gs.map((g) => g.dataset.feature)") == top

            # No model loaded: the card says the rules decide, and why.
            state["card"] = state["rules"]
            page.reload(timeout=15_000)
            page.wait_for_selector("[data-testid=model-missing]", timeout=15_000)
            assert page.inner_text("[data-testid=model-missing]") == f"Decided by the rules: {state['rules']['warning']}"
            assert "no return risk model" in state["rules"]["warning"] and page.locator(chart).count() == 0
            state["card"] = card

            # A store manager sees only their store's returns, and only their store to filter by.
            manager = browser.new_context(locale="en-US")
            manager.add_cookies([{"name": "sw_test_user", "value": "manager2", "url": url}])
            _watch(manager, problems)
            page = manager.new_page()
            page.goto(f"{url}/returns", timeout=15_000)
            page.wait_for_function("() => document.querySelectorAll('#decisions li[data-decision-id]').length === 2", timeout=15_000)
            assert _decision_ids(page) == [decisions["rules"].decision_id, decisions["warn"].decision_id]
            assert page.eval_on_selector_all("#f-store option", "(os) => os.map((o) => o.value)") == ["", "store-002"]

            # On a phone: one column, nothing wider than the screen, the rules' warning still in view.
            phone = browser.new_context(locale="en-US", viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True)
            phone.add_cookies([{"name": "sw_test_user", "value": "hq", "url": url}])
            _watch(phone, problems)
            page = phone.new_page()
            page.goto(f"{url}/returns", timeout=15_000)
            page.wait_for_function("() => document.querySelectorAll('#decisions li[data-decision-id]').length === 4", timeout=15_000)
            page.wait_for_selector(chart, timeout=15_000)
            assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
            # The model's tables fit too (no sideways scrolling inside the card).
            assert page.eval_on_selector_all("#model .table-wrap", "(ws) => ws.filter((w) => w.scrollWidth > w.clientWidth).length") == 0
            first = page.locator("#decisions li[data-decision-id]").first
            verdict, main = first.locator(".verdict").bounding_box(), first.locator(".main").bounding_box()
            assert verdict and main and main["y"] >= verdict["y"] + verdict["height"] - 1, (verdict, main)
            listed, card_box, drawn = (page.locator(sel).bounding_box() for sel in ("#decisions", "#model", chart))
            assert listed and card_box and drawn and card_box["y"] > listed["y"] + listed["height"] - 1
            assert drawn["x"] >= 0 and drawn["x"] + drawn["width"] <= 390
            page.locator(f"#decisions li[data-decision-id='{decisions['rules'].decision_id}'] [data-testid=rules-warning]").scroll_into_view_if_needed()
            assert page.is_visible(f"#decisions li[data-decision-id='{decisions['rules'].decision_id}'] [data-testid=rules-warning]")
            assert page.is_visible("nav a[href='/returns']")
            assert problems == []
        finally:
            browser.close()
