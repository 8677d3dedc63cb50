"""The Grafana dashboards that ship with the deployment (deploy/monitoring/grafana/), made here.

`python -m devplatform.dashboards` writes them; tests/integration/test_deployment.py fails while the
committed files differ, and `make deploy-check` decodes each with Grafana's own dashboard schema
(grafana-foundation-sdk, strict). One dashboard for the pipeline (frames per camera, lag per group,
refund to page, alerts per rule and their precision, dead letters) and one per service. Every query
reads a metric the services serve (or Kafka Exporter's lag), which the test checks too.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "deploy" / "monitoring" / "grafana"
SCHEMA_VERSION = 39
WIDTH = 12
HEIGHT = 8


@dataclass(frozen=True)
class Panel:
    title: str
    # (PromQL, legend) per series.
    queries: tuple[tuple[str, str], ...]
    unit: str = "short"
    description: str = ""


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...]
    tags: tuple[str, ...] = field(default=("shrinkwatch",))


def _panel(panel: Panel, index: int) -> dict[str, Any]:
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": panel.title,
        "description": panel.description,
        "gridPos": {"h": HEIGHT, "w": WIDTH, "x": (index % 2) * WIDTH, "y": (index // 2) * HEIGHT},
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "targets": [{"refId": chr(ord("A") + n), "expr": expr, "legendFormat": legend, "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                    for n, (expr, legend) in enumerate(panel.queries)],
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []}, "tooltip": {"mode": "multi", "sort": "desc"}},
    }


def render(dashboard: Dashboard) -> dict[str, Any]:
    """The dashboard as Grafana's JSON model; its data source is a variable, picked on import."""
    return {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": list(dashboard.tags),
        "schemaVersion": SCHEMA_VERSION,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "browser",
        "templating": {"list": [{"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus"}]},
        "annotations": {"list": []},
        "panels": [_panel(panel, n) for n, panel in enumerate(dashboard.panels)],
    }


def rate(metric: str, by: str, window: str = "5m") -> str:
    return f"sum by ({by}) (rate({metric}[{window}]))"


def p99(metric: str, by: str = "", window: str = "5m") -> str:
    group = f"le, {by}" if by else "le"
    return f"histogram_quantile(0.99, sum by ({group}) (rate({metric}_bucket[{window}])))"


PROCESSED = "sw_messages_processed_total"
DEAD_LETTERED = "sw_messages_dead_lettered_total"
RETRIES = "sw_batch_retries_total"
LAG = 'sum by (consumergroup) (kafka_consumergroup_lag{consumergroup=~"sw-.*"})'


def _consumer_panels(service: str) -> tuple[Panel, ...]:
    return (
        Panel("Messages handled", ((rate(PROCESSED + f'{{service="{service}"}}', "topic"), "{{topic}}"),), "ops"),
        Panel("Dead-lettered and retried", ((rate(DEAD_LETTERED + f'{{service="{service}"}}', "topic"), "DLQ {{topic}}"),
                                            (rate(RETRIES + f'{{service="{service}"}}', "topic"), "retried {{topic}}")), "ops"),
    )


def dashboards() -> list[Dashboard]:
    pipeline = Dashboard("sw-pipeline", "ShrinkWatch: pipeline", "From the cameras and tills to the pages: rates, lag, latency, rules.", (
        Panel("Frames per camera (sent after the motion gate)", (("sum by (camera) (sw_ingest_camera_sent_fps)", "{{camera}}"),), "fps"),
        Panel("Consumer lag per group", ((LAG, "{{consumergroup}}"),), "short", "Kafka Exporter (Strimzi); KEDA scales on the same lag."),
        Panel("Refund decided after its window (p99)", ((p99("sw_correlator_decision_delay_seconds"), "p99"),), "s"),
        Panel("Notification delivery (p99)", ((p99("sw_notifier_delivery_seconds", "channel_type"), "{{channel_type}}"),), "s"),
        Panel("Alerts per rule", ((rate("sw_correlator_alerts_total", "rule", "15m"), "{{rule}}"),), "ops"),
        Panel("Rule precision (from verdicts)", (("avg by (rule) (sw_correlator_rule_precision)", "{{rule}}"),), "percentunit"),
        Panel("Dead-lettered messages", ((rate(DEAD_LETTERED, "service, topic"), "{{service}} {{topic}}"),), "ops"),
        Panel("POS events by source and outcome", ((rate("sw_pos_events_total", "source, outcome", "15m"), "{{source}} {{outcome}}"),), "ops"),
    ))
    ingest = Dashboard("sw-ingest", "ShrinkWatch: ingest", "Cameras to sw.frames.v1.", (
        Panel("Frames taken and sent", (("sum by (camera) (sw_ingest_camera_fps)", "taken {{camera}}"), ("sum by (camera) (sw_ingest_camera_sent_fps)", "sent {{camera}}")), "fps"),
        Panel("Seconds since the last frame", (("max by (camera) (sw_ingest_camera_last_frame_age_seconds)", "{{camera}}"),), "s"),
        Panel("Reconnects and capture gaps", ((rate("sw_ingest_reconnects_total", "camera", "15m"), "reconnects {{camera}}"),
                                              (rate("sw_ingest_capture_gaps_total", "camera", "15m"), "gaps {{camera}}")), "ops"),
        Panel("Frames waiting for Kafka", (("sum by (camera) (sw_ingest_send_queue_frames)", "{{camera}}"),)),
    ))
    inference = Dashboard("sw-inference", "ShrinkWatch: inference", "sw.frames.v1 through the model server to sw.detections.v1.", (
        *_consumer_panels("inference"),
        Panel("Model server Predict per batch (p99)", ((p99("sw_inference_predict_seconds", "model"), "{{model}}"),), "s"),
        Panel("Optional stages failing", ((rate("sw_inference_stage_failures_total", "stage"), "{{stage}}"),), "ops"),
        Panel("People crossing counting lines, per hour", (("sum by (store, line, direction) (increase(sw_line_crossings_total[1h]))",
                                                            "{{store}} {{line}} {{direction}}"),), "short"),
    ))
    correlator = Dashboard("sw-correlator", "ShrinkWatch: correlator", "Detections and POS events to alerts.", (
        Panel("Alerts per rule", ((rate("sw_correlator_alerts_total", "rule"), "{{rule}}"),), "ops"),
        Panel("Refunds decided, by outcome", ((rate("sw_correlator_refunds_decided_total", "outcome"), "{{outcome}}"),), "ops"),
        Panel("Refund decided after its window (p99)", ((p99("sw_correlator_decision_delay_seconds"), "p99"),), "s"),
        Panel("Rule threshold factor (from verdicts)", (("avg by (rule) (sw_correlator_rule_threshold_factor)", "{{rule}}"),)),
    ))
    notifier = Dashboard("sw-notifier", "ShrinkWatch: notifier", "Alerts to pages, once each, escalated until acknowledged.", (
        *_consumer_panels("notifier"),
        Panel("Deliveries by channel and outcome", ((rate("sw_notifier_deliveries_total", "channel_type, outcome"), "{{channel_type}} {{outcome}}"),), "ops"),
        Panel("Given up, unrouted, escalated", ((rate("sw_notifier_undeliverable_total", "channel_type", "15m"), "given up {{channel_type}}"),
                                                ("sum (rate(sw_notifier_unrouted_alerts_total[15m]))", "unrouted"),
                                                ("sum (rate(sw_notifier_escalations_total[15m]))", "escalations")), "ops"),
        Panel("Notifications queued", (("sum (sw_notifier_queued)", "queued"),)),
        Panel("Delivery (p99)", ((p99("sw_notifier_delivery_seconds", "channel_type"), "{{channel_type}}"),), "s"),
    ))
    recorder = Dashboard("sw-recorder", "ShrinkWatch: recorder", "Each alert's evidence, from every camera's rolling buffer.", (
        *_consumer_panels("recorder"),
        Panel("Evidence written, expired, skipped", ((rate("sw_recorder_evidence_written_total", "status", "15m"), "written {{status}}"),
                                                     ("sum (rate(sw_recorder_evidence_expired_total[1h]))", "expired"),
                                                     (rate("sw_recorder_alerts_skipped_total", "reason", "15m"), "skipped {{reason}}")), "ops"),
        Panel("Frames held in the camera buffers", (("sum (sw_recorder_buffer_bytes)", "bytes"),), "bytes"),
        Panel("Alerts waiting for frames", (("sum (sw_recorder_pending_alerts)", "pending"),)),
    ))
    pos = Dashboard("sw-pos", "ShrinkWatch: pos", "The tills' service: POS events in, return decisions out.", (
        Panel("Requests by source and status", ((rate("sw_pos_requests_total", "source, status"), "{{source}} {{status}}"),), "reqps"),
        Panel("POS events by source and outcome", ((rate("sw_pos_events_total", "source, outcome"), "{{source}} {{outcome}}"),), "ops"),
        Panel("Return assessment (p99)", ((p99("sw_returns_assess_seconds"), "p99"),), "s"),
        Panel("Return decisions", ((rate("sw_returns_decisions_total", "outcome", "15m"), "{{outcome}}"),
                                   ("sum (rate(sw_returns_decisions_unpublished_total[15m]))", "not yet published")), "ops"),
    ))
    return [pipeline, ingest, inference, correlator, notifier, recorder, pos]


def files() -> dict[str, str]:
    """File name -> the JSON text written for it."""
    return {f"{d.uid}.json": json.dumps(render(d), indent=2) + "\n" for d in dashboards()}


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in files().items():
        (OUT / name).write_text(text)
        print(OUT / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
