// /alerts/<id>: one alert with its evidence (snapshot, detections overlay, frames, clip), the POS
// events behind it, its verdict history, the incident it belongs to, and the verdict buttons.
import {
  VERDICT_WORDS, alertApi, byId, clear, formatScore, h, incidentPath, initPage, ruleLabel, severityBadge, showError,
  statusBadge, storeIndex, storeName, storeZone, timeNode, toast,
} from "/static/common.js";
import { detailLoader, renderHistory, row, showVerdictButtons, stillRecording, verdictButtons } from "/static/detail.js";
import { downloadExport, renderEvidence, renderNotifications, renderPos } from "/static/evidence.js";

const alertId = decodeURIComponent(location.pathname.replace(/^\/alerts\//, "").replace(/\/+$/, ""));

let user = null;
let stores = new Map();
let current = null;

/** A fact as text; epoch milliseconds (names ending in _ms) as times. */
function factValue(name, value, zone) {
  const text = typeof value === "string" ? value : JSON.stringify(value);
  if (name.endsWith("_ms") && /^\d{12,14}$/.test(text)) return timeNode(Number(text), zone);
  return text;
}

/** The triage model's chance that HQ confirms the alert, and the facts that pushed it most. */
function triageNode(triage) {
  const pct = Math.round(Number(triage.probability || 0) * 100);
  return h("div", { "data-testid": "triage" },
    h("strong", null, `${pct}% likely to be confirmed`), " ", h("span", { class: "muted small" }, `(model ${triage.model}, ${triage.decision || "—"})`),
    (triage.reasons || []).length ? h("ul", { class: "reasons" }, triage.reasons.map((r) => h("li", null, r.text))) : null);
}

function renderDetails(alert) {
  const zone = storeZone(stores, alert.store_id);
  const store = storeName(stores, alert.store_id, alert.store_name);
  clear(byId("alert-title"), severityBadge(alert.severity), h("h1", null, ruleLabel(alert.rule)), statusBadge(alert.status || "new"));
  byId("explanation").textContent = alert.explanation || "";
  document.title = `${ruleLabel(alert.rule)} · ${store} · ShrinkWatch HQ`;
  clear(byId("details"),
    row("Store", store, alert.store_id && store !== alert.store_id ? h("span", { class: "muted small" }, ` (${alert.store_id})`) : null),
    alert.region || stores.get(alert.store_id)?.region ? row("Region", alert.region || stores.get(alert.store_id)?.region) : null,
    row("Register", alert.register_id || "—"),
    row("Camera", alert.camera_id || "—"),
    row("Happened", timeNode(alert.event_time_ms, zone)),
    row("Raised", timeNode(alert.raised_time_ms, zone)),
    row("Score", formatScore(alert.score)),
    alert.triage ? row("Triage", triageNode(alert.triage)) : null,
    row("Alert id", h("span", { class: "mono" }, alert.alert_id)),
    alert.incident_id ? row("Incident", h("a", { href: incidentPath(alert.incident_id), dataset: { testid: "incident-link" } }, "this alert's incident")) : null,
    (alert.evidence || []).length ? row("Evidence refs", (alert.evidence || []).map((e) => h("div", { class: "mono" }, `${e.kind}: ${e.ref}`))) : null);
  const facts = Object.entries(alert.facts || {}).sort(([a], [b]) => a.localeCompare(b));
  clear(byId("facts"), facts.length
    ? facts.map(([k, v]) => row(k.replace(/_ms$/, "").replaceAll("_", " "), factValue(k, v, zone)))
    : h("tr", null, h("td", { class: "muted" }, "No facts recorded.")));
}

function render(alert) {
  current = alert;
  byId("alert").classList.remove("hidden");
  renderDetails(alert);
  renderEvidence(alert, stores, user);
  renderPos(alert, stores);
  renderNotifications(alert, stores);
  renderHistory(alert.history?.length ? alert.history : alert.verdict ? [alert.verdict] : []);
  showVerdictButtons(user);
}

const load = detailLoader({
  url: alertApi(alertId),
  name: "alert",
  render,
  recording: (alert) => stillRecording(alert.evidence_package, alert.raised_time_ms || alert.event_time_ms),
  missing: "This alert does not exist, or it belongs to a store you cannot see.",
});

verdictButtons({
  url: alertApi(alertId, "/verdict"),
  saved: (verdict, updated) => {
    toast(`${VERDICT_WORDS[verdict] || verdict}: saved.`);
    if (updated?.status && current) clear(byId("alert-title"), severityBadge(current.severity), h("h1", null, ruleLabel(current.rule)), statusBadge(updated.status));
  },
  load,
});

byId("export").addEventListener("click", (event) => downloadExport(alertApi(alertId, "/export"), `${alertId}.zip`, event.currentTarget));

try {
  user = await initPage("feed");
  stores = await storeIndex();
  await load();
} catch (err) {
  showError(err, byId("alert-error"));
}
