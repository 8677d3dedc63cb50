"""Incidents: the alerts of one situation on one page, with one verdict for all of them.

The same roles as the alert routes: a store manager sees their stores' incidents only, an officer
acknowledges. A verdict on an incident is one Feedback on sw.feedback.v1 per reason alert, each with
its rule, so per-rule precision, the correlator's thresholds and the notifier's acknowledgement
work as they do for a verdict on the alert; the incident's status follows from them.
"""

import asyncio
import time
from typing import Annotated

from confluent_kafka import KafkaError
from fastapi import APIRouter, Depends, HTTPException, Request

from services.api.alerts import VERDICT_VALUES
from services.api.auth import Principal
from services.api.hq.alerts import _package_view
from services.api.hq.base import Hq, IncidentId, ListQuery
from services.api.hq.verdicts import VerdictIn
from services.api.incidents import IncidentFilter, merged_history
from services.api.index import BadCursor
from services.shared import topics
from services.shared.contracts.feedback_pb2 import Feedback
from services.shared.deliveries import read_deliveries
from services.shared.kafka import produce_all_and_wait
from services.shared.serde import encode

# An incident's page shows this many reasons with their alerts (the fold's one-hour span keeps
# incidents far smaller; the count says when more are left out). A verdict covers every reason, in
# batches of VERDICT_BATCH.
MAX_REASONS_SHOWN = 200
VERDICT_BATCH = 200


def routes(hq: Hq) -> APIRouter:
    router = APIRouter(tags=["incidents"])
    Signed = Annotated[Principal, Depends(hq.principal)]

    @router.get("/v1/incidents")
    async def list_incidents(who: Signed, query: Annotated[ListQuery, Depends()]) -> dict:
        """Newest first by the opening alert's event time; `rule` matches any of an incident's reasons, the
        time range any incident whose span overlaps it. Pass `next_cursor` back as `cursor` for the next page."""
        wanted = hq.list_filter(who, query, IncidentFilter)
        try:
            items, next_cursor = await asyncio.to_thread(hq.alerts.incidents.query, wanted, query.limit, query.cursor)
        except BadCursor as exc:
            raise HTTPException(400, str(exc)) from None
        return {"incidents": items, "count": len(items), "next_cursor": next_cursor}

    @router.get("/v1/incidents/{incident_id}")
    async def get_incident(incident_id: IncidentId, who: Signed, request: Request) -> dict:
        """The incident: its reasons, each with its alert; the opening alert's evidence package, POS events
        and notifications (the notifier pages once per incident, under the opening alert); the verdicts."""
        view = await asyncio.to_thread(hq.load_incident, who, incident_id)
        shown = view["reasons"][:MAX_REASONS_SHOWN]
        alert_ids = [r["alert_id"] for r in shown]
        alerts = await asyncio.to_thread(hq.alerts.views, alert_ids)
        opening = alerts[0]
        manifest = await asyncio.to_thread(hq.read_manifest, opening) if opening is not None else None
        if opening is not None:
            await asyncio.to_thread(hq.record_audit, who, "evidence.view", request, opening, f"incident {incident_id}")
        histories = await asyncio.to_thread(hq.alerts.histories, alert_ids)
        deliveries = await asyncio.to_thread(read_deliveries, hq.redis, view["opening_alert_id"])
        reasons = [{**reason, "status": alert["status"] if alert else None, "alert": alert} for reason, alert in zip(shown, alerts, strict=True)]
        return {**view, "reasons": reasons, "reasons_shown": len(reasons),
                "evidence_package": _package_view(view["opening_alert_id"], manifest), "pos_events": (manifest or {}).get("pos_events", []),
                "history": merged_history(histories), "deliveries": deliveries}

    @router.post("/v1/incidents/{incident_id}/verdict")
    async def incident_verdict(incident_id: IncidentId, body: VerdictIn, who: Signed, request: Request) -> dict:
        """One verdict for the incident: published to sw.feedback.v1 once per reason alert, each with its rule."""
        if who.role == "officer" and body.verdict != "acknowledged":
            raise HTTPException(403, "officers acknowledge incidents; confirming or dismissing is for store managers and HQ")
        view = await asyncio.to_thread(hq.load_incident, who, incident_id)
        now_ms = int(time.time() * 1000)
        feedbacks = [Feedback(alert_id=r["alert_id"], store_id=view["store_id"], verdict=VERDICT_VALUES[body.verdict],  # type: ignore[arg-type]
                              user=who.username, time_ms=now_ms, comment=body.note, rule=r["rule"]) for r in view["reasons"]]
        stored: list[Feedback] = []
        failed: list[str] = []
        for start in range(0, len(feedbacks), VERDICT_BATCH):
            batch = feedbacks[start:start + VERDICT_BATCH]
            results = await asyncio.to_thread(produce_all_and_wait, hq.producer, topics.FEEDBACK, [(f.store_id, encode(f)) for f in batch])
            for feedback, result in zip(batch, results, strict=True):
                if isinstance(result, KafkaError):
                    failed.append(str(result))
                else:
                    stored.append(feedback)
        for feedback in stored:
            await asyncio.to_thread(hq.alerts.apply_feedback, feedback)
            await asyncio.to_thread(hq.record_audit, who, "verdict", request, {"alert_id": feedback.alert_id, "store_id": feedback.store_id},
                                    f"{body.verdict} (incident {incident_id}): {body.note}")
        if failed:
            raise HTTPException(503, f"verdict stored for {len(stored)} of {len(feedbacks)} alerts of the incident, retry: {failed[0]}",
                                headers={"Retry-After": "1"})
        return await asyncio.to_thread(hq.load_incident, who, incident_id)

    return router
