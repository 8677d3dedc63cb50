"""The HQ dashboard in a real headless browser (Debian's chromium through Playwright) against the
whole pipeline started by the launcher: an analyst signs in through the form, the sample store's
alert appears in the open feed without a reload, its page shows the recorded evidence, and the
analyst's confirmation reaches sw.feedback.v1 and updates a second open feed in place. The store
config is written for the moment the test runs, with the store open for hours either side, so the
refund alert is the only one at any hour (test_sample_store.py plays the clip with it closed).

Screenshots (feed, alert, phone-sized feed) go to $SW_TEST_ARTIFACTS or the test's tmp folder; with
SW_UPDATE_DOCS_SCREENSHOT=1 the alert page's also replaces docs/dashboard.png (shown in docs/dashboard.md)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import cv2
import pytest

from devplatform import samplestore
from devplatform.demo import SAMPLE_DIR, first_frame_time, replay_pos_script
from devplatform.devusers import dev_credentials, dev_pos_key
from devplatform.expected import expect, store_config_for_the_moment
from devplatform.kafkatools import TopicReader
from devplatform.launcher import ROOT, Platform, free_port
from services.shared import topics
from services.shared.contracts.feedback_pb2 import Feedback, Verdict
from services.shared.storeconfig import load_store_config

pytestmark = pytest.mark.e2e

DOCS_SCREENSHOT = ROOT / "docs" / "dashboard.png"
DOCS_MAX_BYTES = 300_000
NOTE = "Seen on the counter camera: refund with nobody at the counter. Case opened."


def artifacts_dir(tmp_path: Path) -> Path:
    out = Path(os.environ.get("SW_TEST_ARTIFACTS") or tmp_path / "artifacts") / "dashboard"
    out.mkdir(parents=True, exist_ok=True)
    print(f"dashboard screenshots: {out}")
    return out


def feedback_for(bootstrap: str, alert_id: str, timeout_s: float) -> Feedback:
    """The first Feedback on sw.feedback.v1 for this alert (read from the beginning, fresh group)."""
    reader = TopicReader(bootstrap, [topics.FEEDBACK], lambda msg: Feedback.FromString(msg.value()))
    feedback = reader.first(lambda f: f.alert_id == alert_id, timeout_s)
    if feedback is not None:
        return feedback
    raise AssertionError(f"no feedback for {alert_id} on {topics.FEEDBACK} within {timeout_s:.0f}s")


def save_docs_screenshot(png: Path) -> None:
    """A copy small enough for the repository: scaled down until it is under DOCS_MAX_BYTES."""
    image = cv2.imread(str(png))
    assert image is not None, png
    width = min(image.shape[1], 1280)
    while True:
        scaled = cv2.resize(image, (width, round(image.shape[0] * width / image.shape[1])), interpolation=cv2.INTER_AREA)
        ok, data = cv2.imencode(".png", scaled, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        assert ok
        if len(data) < DOCS_MAX_BYTES or width <= 480:
            break
        width = int(width * 0.85)
    DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
    DOCS_SCREENSHOT.write_bytes(data.tobytes())
    print(f"docs screenshot: {DOCS_SCREENSHOT} ({len(data) // 1024} KiB, {width} px wide)")


@pytest.mark.timeout(540)
def test_analyst_sees_the_alert_live_opens_its_evidence_and_confirms_it(tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (`make setup` installs it); the dashboard test drives it through Playwright")
    from playwright.sync_api import sync_playwright

    out = artifacts_dir(tmp_path)
    script = json.loads((SAMPLE_DIR / "pos-script.json").read_text())
    store_config = store_config_for_the_moment(ROOT / "config" / "sample-store.yaml", tmp_path / "store-open.yaml", store_open=True, now=datetime.now(UTC))
    platform = Platform(run_dir=tmp_path / "run", api_port=free_port(), store_config=store_config)
    replay_errors: list[BaseException] = []
    try:
        platform.up(echo=lambda *_: None)
        api = platform.components["api"]["http"]
        bootstrap = platform.env["SW_KAFKA_BOOTSTRAP_SERVERS"]
        password = dev_credentials(platform.run_dir)["hq"]["password"]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            desk = browser.new_context(viewport={"width": 1280, "height": 860})
            problems: list[str] = []
            desk.on("weberror", lambda err: problems.append(f"script error: {err.error}"))
            desk.on("console", lambda msg: problems.append(msg.text) if "Content Security Policy" in msg.text else None)
            try:
                page = desk.new_page()

                # Sign in through the form; a signed-out visit to / lands there first.
                page.goto(api + "/", timeout=30_000)
                page.wait_for_url(f"{api}/login", timeout=15_000)
                page.fill("#username", "hq")
                page.fill("#password", password)
                page.click("#login-submit")
                page.wait_for_url(f"{api}/", timeout=15_000)
                page.wait_for_selector("#live.on", timeout=30_000)
                assert page.inner_text("[data-testid=user-role]") == "HQ analyst"
                assert page.locator("#feed li").count() == 0
                page.evaluate("window.swNotReloaded = true")

                # Play the sample store: its camera is streaming; replay the till's events against it.
                anchor_ms = first_frame_time(bootstrap, script["camera_id"])
                expectation = expect(load_store_config(store_config), script, anchor_ms, samplestore.CLIP_SECONDS)
                assert expectation.store_open, expectation.describe()

                def replay() -> None:
                    try:
                        replay_pos_script(platform.components["pos"]["http"], script, anchor_ms, dev_pos_key(platform.run_dir, script["store_id"]), echo=lambda *_: None)
                    except BaseException as exc:  # handed to the test thread below
                        replay_errors.append(exc)

                replayer = threading.Thread(target=replay, daemon=True)
                replayer.start()
                wait_ms = int(max(0.0, anchor_ms / 1000 + samplestore.CLIP_SECONDS - time.time()) * 1000) + 90_000
                row = page.wait_for_selector("#feed li[data-alert-id]", timeout=wait_ms)
                assert row is not None
                alert_id = row.get_attribute("data-alert-id")
                assert alert_id
                assert page.evaluate("window.swNotReloaded === true"), "the feed reloaded instead of receiving the alert live"
                assert "Refund without customer" in row.inner_text()
                page.wait_for_timeout(600)  # let the highlight settle for the screenshot
                page.screenshot(path=str(out / "feed.png"))

                phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True,
                                            storage_state=desk.storage_state())
                phone_page = phone.new_page()
                phone_page.goto(api + "/", timeout=30_000)
                phone_page.wait_for_selector(f"#feed li[data-alert-id='{alert_id}']", timeout=15_000)
                assert phone_page.evaluate("document.documentElement.scrollWidth") <= 390, "the phone feed scrolls sideways"
                phone_page.screenshot(path=str(out / "feed-phone.png"))

                # A second feed stays open: the verdict must reach it live too.
                watcher = desk.new_page()
                watcher.goto(api + "/", timeout=30_000)
                watcher.wait_for_selector(f"#feed li[data-alert-id='{alert_id}']", timeout=15_000)
                watcher.wait_for_selector("#live.on", timeout=15_000)

                # The alert page: the recorded snapshot is shown and loaded (evidence may still be pending).
                row.click()
                page.wait_for_url(f"**/alerts/{alert_id}", timeout=15_000)
                page.wait_for_function(
                    """() => { const i = document.getElementById('evidence-image');
                               return i && i.complete && i.naturalWidth > 0 && !document.querySelector('[data-testid=evidence-pending]'); }""",
                    timeout=90_000)
                view = page.request.get(f"{api}/v1/alerts/{alert_id}").json()
                assert view["rule"] == "refund_without_customer" and view["evidence"][0]["ref"] == "pos-store-001-0003"
                package = view["evidence_package"]
                assert package and package["snapshot_url"], f"no snapshot recorded: {package}"
                assert page.eval_on_selector("#evidence-image", "i => i.getAttribute('src').split('?')[0]") == package["snapshot_url"]
                detections = package.get("detections") or {}
                expected = sum(len(detections.get(k) or []) for k in ("persons", "objects", "zones"))
                page.wait_for_function(f"() => document.querySelectorAll('#evidence-overlay rect, #evidence-overlay polygon').length === {expected}", timeout=10_000)
                assert page.locator("#pos-events tbody tr").count() == len(view["pos_events"]) >= 1
                assert page.is_visible("#btn-confirm") and page.is_visible("#export")
                page.screenshot(path=str(out / "alert.png"), full_page=True)
                if os.environ.get("SW_UPDATE_DOCS_SCREENSHOT") == "1":
                    page.screenshot(path=str(out / "alert-viewport.png"))
                    save_docs_screenshot(out / "alert-viewport.png")

                # Confirm with a note.
                page.fill("#verdict-note", NOTE)
                page.click("#btn-confirm")
                page.wait_for_selector("#alert-title .status-confirmed", timeout=15_000)
                # The title follows the verdict's answer at once; the history comes with the alert's reload after it.
                page.wait_for_function("() => document.querySelector('#history').innerText.includes('Confirmed')", timeout=15_000)
                assert NOTE in page.inner_text("#history")
                watcher.wait_for_selector(f"#feed li[data-alert-id='{alert_id}'] .status-confirmed", timeout=15_000)

                feedback = feedback_for(bootstrap, alert_id, timeout_s=30)
                assert feedback.verdict == Verdict.VERDICT_CONFIRMED
                assert feedback.user == "hq" and feedback.comment == NOTE and feedback.store_id == "store-001"
                # The store was open: the refund's alert is the only one.
                listed = page.request.get(f"{api}/v1/alerts").json()["alerts"]
                assert expectation.problems(listed) == [] and [a["alert_id"] for a in listed] == [alert_id], listed
                assert problems == []
            except BaseException:
                for i, open_page in enumerate(desk.pages):
                    open_page.screenshot(path=str(out / f"failure-{i}.png"), full_page=True)
                print(f"failure screenshots in {out}; browser problems: {problems}")
                raise
            finally:
                browser.close()
        replayer.join(timeout=60)
        if replay_errors:
            raise replay_errors[0]
    finally:
        platform.down(echo=lambda *_: None)
