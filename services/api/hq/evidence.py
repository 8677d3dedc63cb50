"""An alert's evidence: one file of its package (snapshot, frame, clip), and the whole case as a zip."""

import asyncio
import json
import re
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response

from services.api.auth import Principal
from services.api.hq.base import AlertId, Hq
from services.shared.deliveries import read_deliveries
from services.shared.evidence import EvidenceNotFound, manifest_files

_EVIDENCE_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_./-]{0,199}$"
# A user's file views of one alert within this window are one audit entry (a clip is many requests).
FILE_AUDIT_WINDOW_S = 600


def routes(hq: Hq) -> APIRouter:
    router = APIRouter(tags=["alerts"])
    Signed = Annotated[Principal, Depends(hq.principal)]

    @router.get("/v1/alerts/{alert_id}/evidence/{name:path}")
    async def evidence_file(alert_id: AlertId, name: str, who: Signed, request: Request) -> Response:
        """One file of the alert's evidence (snapshot, frame, clip), by the name its package lists."""
        view = await asyncio.to_thread(hq.load_alert, who, alert_id)
        if not re.match(_EVIDENCE_NAME, name) or ".." in name:
            raise HTTPException(404, f"no evidence file {name!r}")
        manifest = await asyncio.to_thread(hq.read_manifest, view)
        if manifest is None or name not in manifest_files(manifest):
            raise HTTPException(404, f"no evidence file {name!r} for alert {alert_id}")
        try:
            data = await asyncio.to_thread(hq.evidence.read, view["store_id"], alert_id, name)
        except (EvidenceNotFound, ValueError):
            raise HTTPException(404, f"evidence file {name!r} is gone (retention)") from None
        first = await asyncio.to_thread(hq.redis.set, f"sw:audit:file-seen:{who.username}:{alert_id}", b"1", nx=True, ex=FILE_AUDIT_WINDOW_S)
        if first:
            await asyncio.to_thread(hq.record_audit, who, "evidence.file", request, view, name)
        media = "image/jpeg" if name.endswith(".jpg") else "video/x-msvideo" if name.endswith(".avi") else "application/octet-stream"
        return Response(data, media_type=media, headers={"Cache-Control": "private, no-store"})

    @router.get("/v1/alerts/{alert_id}/export")
    async def export(alert_id: AlertId, who: Annotated[Principal, Depends(hq.role("admin", "hq_analyst", "store_manager"))], request: Request) -> Response:
        """A zip for a case file: frames, snapshot, clip, POS events, the alert, its verdicts, notifications and audit trail."""
        view = await asyncio.to_thread(hq.load_alert, who, alert_id)
        await asyncio.to_thread(hq.record_audit, who, "evidence.export", request, view)
        trail = await asyncio.to_thread(hq.audit.for_alert, alert_id)
        history = await asyncio.to_thread(hq.alerts.history, alert_id)
        deliveries = await asyncio.to_thread(read_deliveries, hq.redis, alert_id)
        extra = {"alert.json": json.dumps(view, indent=2).encode(), "audit.json": json.dumps(trail, indent=2).encode(),
                 "verdicts.json": json.dumps(history, indent=2).encode(), "notifications.json": json.dumps(deliveries, indent=2).encode()}
        try:
            data = await asyncio.to_thread(hq.evidence.package, view["store_id"], alert_id, extra)
        except (EvidenceNotFound, ValueError):
            raise HTTPException(404, f"no evidence is kept for alert {alert_id} (never recorded, or past its store's retention)") from None
        return Response(data, media_type="application/zip", headers={"Content-Disposition": f'attachment; filename="evidence-{alert_id}.zip"'})

    return router
