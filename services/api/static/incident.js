// /incidents/<id>: one situation on one page: its reasons (each an alert with its rule, linked to the
// alert's own page), the opening alert's evidence package, POS events and notifications (the
// notifier pages once per incident, under that alert), one verdict for all, and the verdicts given.
import {
  VERDICT_WORDS, alertApi, alertPath, byId, clear, h, incidentApi, initPage, ruleChips, ruleLabel, severityBadge, showError,
  statusBadge, storeIndex, storeName, storeZone, timeNode, toast,
} from "/static/common.js";
import { detailLoader, renderHistory, row, showVerdictButtons, stillRecording, verdictButtons } from "/static/detail.js";
import { downloadExport, renderEvidence, renderNotifications, renderPos } from "/static/evidence.js";

const incidentId = decodeURIComponent(location.pathname.replace(/^\/incidents\//, "").replace(/\/+$/, ""));

let user = null;
let stores = new Map();
let current = null;

function title(incident) {
  return (incident.rules || []).map(ruleLabel).join(" + ") || "Incident";
}

function renderTitle(incident, status) {
  clear(byId("incident-title"), severityBadge(incident.severity), h("h1", null, title(incident)), statusBadge(status || "new"));
}

function renderReasons(incident) {
  const zone = storeZone(stores, incident.store_id);
  const reasons = incident.reasons || [];
  const left = Number(incident.reason_count || reasons.length) - reasons.length;
  clear(byId("reasons"), h("table", null,
    h("thead", null, h("tr", null, ["Rule", "Severity", "When", "What", "Status", ""].map((c) => h("th", null, c)))),
    h("tbody", null, reasons.map((r, i) => h("tr", { dataset: { alertId: r.alert_id, rule: r.rule } },
      h("td", null, ruleChips([r.rule])),
      h("td", null, severityBadge(r.severity)),
      h("td", null, timeNode(r.event_time_ms, zone)),
      h("td", null, r.explanation || "—", i === 0 ? h("div", { class: "muted small" }, "opened the incident") : null),
      h("td", { class: "status-slot" }, statusBadge(r.status || "new")),
      h("td", null, h("a", { href: alertPath(r.alert_id) }, "alert"))))),
  ), left > 0 ? h("p", { class: "muted small" }, `${left} more reasons are not shown here.`) : null);
}

/** The verdicts given; one given on some of the incident's alerts only says on how many. */
function renderVerdicts(incident) {
  const total = (incident.reasons || []).length;
  renderHistory(incident.history || [], (v) => (v.alert_ids || []).length < total
    ? h("span", { class: "muted small" }, ` · on ${(v.alert_ids || []).length} of ${total} alerts`)
    : null);
}

function renderDetails(incident) {
  const zone = storeZone(stores, incident.store_id);
  const store = storeName(stores, incident.store_id, incident.store_name);
  clear(byId("details"),
    row("Store", store, incident.store_id && store !== incident.store_id ? h("span", { class: "muted small" }, ` (${incident.store_id})`) : null),
    incident.region || stores.get(incident.store_id)?.region ? row("Region", incident.region || stores.get(incident.store_id)?.region) : null,
    row("Registers", (incident.register_ids || []).join(", ") || "—"),
    row("Cameras", (incident.camera_ids || []).join(", ") || "—"),
    row("From", timeNode(incident.start_ms, zone)),
    row("Until", timeNode(incident.end_ms, zone)),
    row("Incident id", h("span", { class: "mono" }, incident.incident_id)));
}

function render(incident) {
  current = incident;
  byId("incident").classList.remove("hidden");
  renderTitle(incident, incident.status);
  const count = (incident.reasons || []).length;
  byId("incident-summary").textContent = count > 1
    ? `${count} alerts of one situation: ${(incident.reasons || []).map((r) => r.explanation).filter(Boolean).join("; ")}`
    : incident.reasons?.[0]?.explanation || "";
  document.title = `${title(incident)} · ${storeName(stores, incident.store_id, incident.store_name)} · ShrinkWatch HQ`;
  renderReasons(incident);
  const opening = incident.reasons?.[0]?.alert || { store_id: incident.store_id, event_time_ms: incident.time_ms };
  clear(byId("evidence-of"), "From the alert that opened the incident (", h("a", { href: alertPath(incident.opening_alert_id) }, ruleLabel(incident.reasons?.[0]?.rule)),
    "); the other reasons' evidence is on their alerts' pages.");
  renderEvidence({ ...opening, evidence_package: incident.evidence_package }, stores, user);
  renderPos(incident, stores);
  renderNotifications(incident, stores);
  renderVerdicts(incident);
  renderDetails(incident);
  showVerdictButtons(user);
}

const load = detailLoader({
  url: incidentApi(incidentId),
  name: "incident",
  render,
  recording: (incident) => stillRecording(incident.evidence_package, incident.reasons?.[0]?.alert?.raised_time_ms || incident.time_ms),
  missing: "This incident does not exist, or it belongs to a store you cannot see.",
});

verdictButtons({
  url: incidentApi(incidentId, "/verdict"),
  saved: (verdict, updated) => {
    toast(`${VERDICT_WORDS[verdict] || verdict}: saved on ${(updated?.reasons || []).length || "every"} alerts.`);
    if (updated?.status && current) renderTitle(current, updated.status);
  },
  load,
});

byId("export").addEventListener("click", (event) => {
  if (current) downloadExport(alertApi(current.opening_alert_id, "/export"), `${current.opening_alert_id}.zip`, event.currentTarget);
});

try {
  user = await initPage("incidents");
  stores = await storeIndex();
  await load();
} catch (err) {
  showError(err, byId("incident-error"));
}
