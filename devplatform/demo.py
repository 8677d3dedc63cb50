"""The main job: the sample store through the whole pipeline on the local platform.

Starts the platform, replays the sample store's POS script against the api as the clip plays
(each event's time anchored to the clip's first frame), waits until the correlator has decided
every refund, and reports the alerts raised and where the notifier delivered them.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from devplatform import samplestore
from devplatform.devusers import dev_credentials, dev_pos_key
from devplatform.expected import REFUND_EXPECTED_NOTE, DemoExpectation, expect
from devplatform.kafkatools import TopicReader
from devplatform.launcher import ROOT, LaunchError, Platform
from services.correlator.rules import REFUND_WITHOUT_CUSTOMER
from services.shared import topics
from services.shared.contracts.frame_pb2 import Frame
from services.shared.correlation import CORRELATION_HEADER
from services.shared.storeconfig import load_store_config

SAMPLE_DIR = ROOT / "var" / "sample"


def ensure_sample_assets(echo=print) -> None:
    """Generate the sample store's media and build the models models.config names, if missing.

    `SW_DETECTOR_PROFILE` chooses the detector: `nanodet` (default, Apache-2.0) or `yolo11n-pose`
    (AGPL-3.0 weights, fetched only when chosen)."""
    from modeling.build import DEFAULT_DETECTOR_PROFILE, build_sample_models

    profile = os.environ.get("SW_DETECTOR_PROFILE", DEFAULT_DETECTOR_PROFILE)
    build_sample_models(ROOT / "models", samplestore.generate(SAMPLE_DIR), echo=echo, detector_profile=profile)
    ensure_risk_models(ROOT / "models", echo)


def ensure_risk_models(models_dir: Path, echo=print) -> None:
    """The return-risk and triage models the api scores with (`make train-risk`), trained once from
    the synthetic chain when none is there."""
    from services.shared.riskmodel import versions

    if versions(models_dir, "return") and versions(models_dir, "triage"):
        return
    from modeling.risk.train import TrainOptions, train_all

    echo(f"Training the return-risk and triage models into {models_dir / 'risk'} (once; `make train-risk` retrains)...")
    started = time.monotonic()
    train_all(TrainOptions(models_dir=models_dir), echo=lambda line: echo(f"  {line}"))
    echo(f"  trained in {time.monotonic() - started:.0f}s")


@dataclass
class DemoResult:
    anchor_ms: int = 0
    posted: list[dict] = field(default_factory=list)
    alerts: list[dict] = field(default_factory=list)
    deliveries: list[dict] = field(default_factory=list)
    # ntfy pushes to the on-call officer's phone topic
    pushes: list[dict] = field(default_factory=list)
    # the till's return assessments, one per refund, in script order
    assessments: list[dict] = field(default_factory=list)
    # alert id -> its evidence package as the HQ API shows it (None: nothing recorded)
    evidence: dict[str, dict | None] = field(default_factory=dict)
    dashboard: str = ""
    # the sample store's people counts as the dashboard's store page shows them (/v1/stores `traffic`)
    traffic: dict | None = None
    # the alerts to expect, from the store config and the clip's capture time (devplatform/expected.py)
    expected: DemoExpectation | None = None

    def problems(self, script: dict) -> list[str]:
        found = self.expected.problems(self.alerts) if self.expected else ["no expectation: the clip's first frame was never seen"]
        # One page per incident (alerts of one situation fold into one), under its opening alert.
        incidents = sorted({a.get("incident_id", "") for a in self.alerts})
        delivered = [d["body"]["alert"].get("facts", {}).get("incident_id", "") for d in self.deliveries]
        if sorted(delivered) != incidents:
            found.append(f"webhook deliveries {delivered} do not match incidents {incidents} one to one")
        if any(d.get("signature") != "valid" for d in self.deliveries):
            found.append("a webhook delivery was not validly signed")
        refunds = [e for e in script["events"] if e["type"] in ("refund", "return")]
        if len(self.assessments) != len(refunds):
            found.append(f"{len(self.assessments)} return assessments for {len(refunds)} refunds")
        for event, answer in zip(refunds, self.assessments, strict=False):
            nobody = REFUND_EXPECTED_NOTE in event.get("note", "")
            if nobody and answer["outcome"] == "accept":
                found.append(f"the till was told to accept {event['event_id']} with nobody at the counter")
        pushed = [p["message"].rsplit("/incidents/", 1)[-1] for p in self.pushes]
        if sorted(pushed) != incidents:
            found.append(f"phone pushes {pushed} do not match incidents {incidents} one to one")
        # The sample clip ends a few seconds after its last refund, so that alert's evidence may be
        # "partial" (no frames after the clip); frames around it and the snapshot must be there.
        for alert_id, package in self.evidence.items():
            if not package or package["status"] == "pending" or not package["snapshot_url"] or not package["frames"]:
                found.append(f"alert {alert_id}: evidence not recorded ({package and package['status']}, {package and package['missing']})")
        return found


def first_frame_time(bootstrap: str, camera_id: str, timeout_s: float = 60.0) -> int:
    reader = TopicReader(bootstrap, [topics.FRAMES], lambda msg: Frame.FromString(msg.value()))
    first = reader.first(lambda frame: frame.camera_id == camera_id and frame.sequence == 0, timeout_s)
    if first is not None:
        return first.capture_time_ms
    raise LaunchError(f"demo: no first frame from camera {camera_id} on {topics.FRAMES} within {timeout_s:.0f}s (see var/run/logs/ingest.log)")


def metric_total(metrics_url: str, name: str) -> float:
    text = httpx.get(metrics_url, timeout=5).text
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def post_as_a_till(url: str, body: dict, headers: dict[str, str], echo=print, give_up_s: float = 90.0) -> httpx.Response:
    """POST an event as a till does: a 503 (broker or Redis away) or a 409 (a copy being published) is
    tried again after its Retry-After, and the gateway's dedupe publishes the event once."""
    deadline = time.monotonic() + give_up_s
    while True:
        response = httpx.post(url, json=body, headers=headers, timeout=30)
        if response.status_code not in (409, 503) or time.monotonic() > deadline:
            response.raise_for_status()
            return response
        echo(f"  POS gateway answered {response.status_code} ({response.json().get('detail', '')}); the till tries again")
        time.sleep(float(response.headers.get("Retry-After", "1")))


def replay_pos_script(pos: str, script: dict, anchor_ms: int, pos_key: str, echo=print, assessments: list[dict] | None = None) -> list[dict]:
    posted = []
    for event in script["events"]:
        at_ms = anchor_ms + int(event["offset_s"] * 1000)
        wait = at_ms / 1000 - time.time()
        if wait > 0:
            time.sleep(wait)
        body = {k: v for k, v in event.items() if k not in ("offset_s", "note")}
        body.update(store_id=script["store_id"], register_id=script["register_id"], currency="GBP", employee_id="emp-042",
                    event_time=datetime.fromtimestamp(at_ms / 1000, UTC).isoformat())
        if event["type"] in ("refund", "return") and assessments is not None:
            # The till asks first, as the customer waits; then it rings the refund up.
            answer = httpx.post(f"{pos}/v1/returns/assess", json=body, headers={"Authorization": f"Bearer {pos_key}"}, timeout=10)
            answer.raise_for_status()
            assessments.append(answer.json())
            decided = answer.json()
            seen = {True: "yes", False: "no"}
            camera = (f"camera: customer {seen.get(decided['camera']['customer_present'], 'cannot tell')}, "
                      f"merchandise {seen.get(decided['camera']['merchandise_present'], 'cannot tell')}")
            reasons = "; ".join(r["text"] for r in decided["reasons"][:2])
            echo(f"  till asks about {event['event_id']}: {decided['outcome'].upper()} (score {decided['score']:.2f}, {decided['scored_by']}, {camera}): {reasons}")
        response = post_as_a_till(f"{pos}/v1/pos/events", body, {"Authorization": f"Bearer {pos_key}"}, echo)
        # The gateway's correlation id for the request: every service logs it with this event.
        correlation_id = response.headers.get(CORRELATION_HEADER, "")
        echo(f"  POS {event['type']:<7} {event['event_id']} at +{event['offset_s']:>4}s -> {response.status_code} {response.json()['topic']}"
             f" (correlation id {correlation_id})")
        posted.append({**body, "correlation_id": correlation_id})
    return posted


def run_demo(platform: Platform, echo=print, keep_running: bool = False) -> DemoResult:
    ensure_sample_assets(echo)
    script = json.loads((SAMPLE_DIR / "pos-script.json").read_text())
    echo("Starting the local platform (dev broker, redis-server, model server, webhook sink, 7 services):")
    platform.up(echo)
    result = DemoResult()
    try:
        comps = platform.components
        api = comps["api"]["http"]
        result.anchor_ms = first_frame_time(platform.env["SW_KAFKA_BOOTSTRAP_SERVERS"], script["camera_id"])
        echo(f"Camera {script['camera_id']} is streaming (first frame {datetime.fromtimestamp(result.anchor_ms / 1000, UTC):%H:%M:%S} UTC).")
        result.expected = expect(load_store_config(platform.store_config), script, result.anchor_ms, samplestore.CLIP_SECONDS)
        echo(result.expected.describe())
        echo("Replaying the POS script:")
        result.posted = replay_pos_script(comps["pos"]["http"], script, result.anchor_ms, dev_pos_key(platform.run_dir, script["store_id"]), echo, result.assessments)
        refunds = sum(1 for e in script["events"] if e["type"] in ("refund", "return"))
        clip_end = result.anchor_ms / 1000 + samplestore.CLIP_SECONDS
        deadline = max(time.time(), clip_end) + 90
        echo("Waiting for the correlator to decide every refund against the camera...")
        said = time.monotonic()
        while time.time() < deadline:
            decided = metric_total(comps["correlator"]["http"] + "/metrics", "sw_correlator_refunds_decided_total")
            if decided >= refunds:
                break
            if time.monotonic() - said >= 10:
                said = time.monotonic()
                echo(f"  {decided:.0f} of {refunds} refunds decided; the clip ends at {datetime.fromtimestamp(clip_end, UTC):%H:%M:%S} UTC...")
            time.sleep(0.5)
        else:
            raise LaunchError(f"demo: the correlator did not decide all {refunds} refunds in time (see var/run/logs/correlator.log)")
        # The HQ API, as an analyst signed in on the dashboard sees it.
        analyst = dev_credentials(platform.run_dir)["hq"]
        login = httpx.post(f"{api}/v1/auth/login", json={"username": "hq", "password": analyst["password"]}, timeout=10)
        login.raise_for_status()
        hq = httpx.Client(base_url=api, headers={"Authorization": f"Bearer {login.json()['token']}"}, timeout=5)
        result.dashboard = api + "/"
        # Let the notifier deliver, then a little longer so a duplicate delivery would show up.
        # The phone push waits up to SW_NOTIFIER_SNAPSHOT_WAIT_S for the evidence snapshot.
        sink = comps["webhook-sink"]["url"]
        settle = time.time() + 30

        def received() -> None:
            result.deliveries = httpx.get(sink, timeout=5).json()["deliveries"]
            result.pushes = [p for p in httpx.get(sink.removesuffix("/alerts") + "/", timeout=5).json()["deliveries"] if p["topic"] == "lp-officer"]

        while time.time() < settle:
            result.alerts = hq.get("/v1/alerts").json()["alerts"]
            received()
            incidents = len({a.get("incident_id") for a in result.alerts})
            if result.alerts and not result.expected.missing(result.alerts) \
                    and len(result.deliveries) >= incidents and len(result.pushes) >= incidents:
                time.sleep(3)
                received()
                break
            time.sleep(0.5)
        # The recorder writes an alert's evidence once its camera has run a few seconds past the event.
        evidence_deadline = time.time() + 40
        for alert in result.alerts:
            while True:
                package = hq.get(f"/v1/alerts/{alert['alert_id']}").json()["evidence_package"]
                if (package and package["status"] != "pending") or time.time() > evidence_deadline:
                    break
                time.sleep(0.5)
            result.evidence[alert["alert_id"]] = package
        # The passer-by walks down the aisle past its counting line late in the clip; the recorder
        # counts the crossing into Redis, and the store page shows it.
        traffic_deadline = max(time.time(), clip_end) + 20
        while True:
            result.traffic = next((s["traffic"] for s in hq.get("/v1/stores").json()["stores"] if s["store_id"] == script["store_id"]), None)
            if (result.traffic and any(line["in"] or line["out"] for line in result.traffic["lines"])) or time.time() > traffic_deadline:
                break
            time.sleep(0.5)
        if keep_running:
            echo(f"\nDashboard: {result.dashboard}  (users and passwords: {platform.run_dir / 'dev-credentials.json'})")
    finally:
        if not keep_running:
            echo("Stopping the platform:")
            platform.down(echo=lambda *_: None)
    return result


def settings_after_s() -> float:
    """When the refund rule's window closes after the refund: its `after_s` plus the POS clock skew."""
    from services.correlator.settings import CorrelatorSettings
    from services.shared.storeconfig import load_store_config

    script = json.loads((SAMPLE_DIR / "pos-script.json").read_text())
    config = load_store_config(CorrelatorSettings().store_config)
    rules = config.rules_for(config.stores[0].id, register_id=script.get("register_id", config.stores[0].registers[0].id))
    return rules.refund_without_customer.after_s + rules.timing.pos_clock_skew_s


def report(result: DemoResult, echo=print) -> list[str]:
    script = json.loads((SAMPLE_DIR / "pos-script.json").read_text())
    echo(f"\nAlerts raised: {len(result.alerts)}, in {len({a.get('incident_id') for a in result.alerts})} incident(s) (one page each)")
    for alert in result.alerts:
        echo(f"  [{alert['severity']}] {alert['rule']} store={alert['store_id']} register={alert['register_id']} id={alert['alert_id']} "
             f"incident={alert.get('incident_id', '')}")
        echo(f"      {alert['explanation']}")
        package = result.evidence.get(alert["alert_id"])
        if package:
            echo(f"      evidence ({package['status']}): {len(package['frames'])} frames, snapshot {package['snapshot_url']}, clip {package['clip_url']}")
            for reason in package["missing"]:
                echo(f"        missing: {reason}")
    if result.traffic is not None:
        counts = ", ".join(f"{line['camera_id']} / {line['line_id']}: {line['in']} in, {line['out']} out" for line in result.traffic["lines"])
        echo(f"People counted on the store's lines today (dashboard store page): {counts}")
    echo(f"Returns assessed at the till: {len(result.assessments)}")
    for answer in result.assessments:
        echo(f"  {answer['event_id']}: {answer['outcome']} (score {answer['score']:.2f}, {answer['scored_by']})")
        for reason in answer["reasons"]:
            echo(f"      {reason['text']}")
    echo(f"Deliveries: {len(result.deliveries)}")
    event_times = {a["alert_id"]: int(a["event_time_ms"]) for a in result.alerts}
    refund_alerts = {a["alert_id"] for a in result.alerts if a["rule"] == REFUND_WITHOUT_CUSTOMER}
    window_after_s = settings_after_s()

    def since(alert_id: str, received_ms: int) -> str:
        after = (received_ms - event_times[alert_id]) / 1000 if alert_id in event_times else float("nan")
        return f"{after:.1f}s after the refund" if alert_id in refund_alerts else f"{after:.1f}s after the frame it was seen in"

    for d in result.deliveries:
        window = f" (its camera window closes {window_after_s:.0f}s after it)" if d["alert_id"] in refund_alerts else ""
        reasons = d["body"]["alert"].get("facts", {}).get("reasons", "")
        echo(f"  webhook {d['path']} <- incident {reasons} (alert {d['alert_id']}) at {datetime.fromtimestamp(d['received_ms'] / 1000, UTC):%H:%M:%S} UTC, "
             f"{since(d['alert_id'], d['received_ms'])}{window}")
    opened_by = {d["body"]["alert"].get("facts", {}).get("incident_id", ""): d["alert_id"] for d in result.deliveries}
    for p in result.pushes:
        alert_id = opened_by.get(p["message"].rsplit("/incidents/", 1)[-1], "")
        snapshot = f"snapshot attached ({p['attachment_bytes']} bytes)" if p["attachment_bytes"] else "link only (the snapshot was not written yet)"
        echo(f"  phone (ntfy topic {p['topic']}) <- \"{p['title']}\" {since(alert_id, p['received_ms'])}, {snapshot}")
    echo("  log channel: var/run/logs/notifier.log (lines with \"ALERT\")" if result.deliveries else "")
    problems = result.problems(script)
    if not problems and result.expected:
        echo(f"\nResult: as expected ({result.expected.summary(result.alerts)}; each incident pushed and posted once)")
    else:
        echo("\nResult: UNEXPECTED: " + "; ".join(problems))
    return problems
