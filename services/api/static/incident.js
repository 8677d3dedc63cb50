// /incidents/<id>: one situation on one page: its reasons (each an alert with its rule, linked to the
// alert's own page), the opening alert's evidence package, POS events and notifications (the
// notifier pages once per incident, under that alert), one verdict for all, and the verdicts given.
import {
  ApiError, VERDICT_WORDS, alertApi, alertPath, api, byId, canJudge, clear, formatLocal, h, incidentApi, initPage,
  ruleChips, ruleLabel, severityBadge, showError, statusBadge, storeIndex, storeName, storeZone, timeNode, toast,
} from "/static/common.js";
import { downloadExport, renderEvidence, renderNotifications, renderPos } from "/static/evidence.js";

const REFETCH_MS = 4000;
const REFETCH_TRIES = 30;

const incidentId = decodeURIComponent(location.pathname.replace(/^\/incidents\//, "").replace(/\/+$/, ""));

let user = null;
let stores = new Map();
let current = null;
let tries = 0;
let refetchTimer = null;

function title(incident) {
  return (incident.rules || []).map(ruleLabel).join(" + ") || "Incident";
}

function renderTitle(incident, status) {
  clear(byId("incident-title"), severityBadge(incident.severity), h("h1", null, title(incident)), statusBadge(status || "new"));
}

function row(name, ...value) {
  return h("tr", null, h("th", { scope: "row" }, name), h("td", null, ...value));
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

function renderHistory(incident) {
  const history = incident.history || [];
  const total = (incident.reasons || []).length;
  clear(byId("history"), history.length
    ? history.map((v) => h("li", null,
      h("strong", null, VERDICT_WORDS[v.verdict] || v.verdict), " by ", v.user || "?", " · ", h("span", { class: "muted small" }, formatLocal(v.time_ms)),
      (v.alert_ids || []).length < total ? h("span", { class: "muted small" }, ` · on ${(v.alert_ids || []).length} of ${total} alerts`) : null,
      v.note ? h("div", null, v.note) : null))
    : h("li", { class: "muted" }, "No verdict yet."));
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
  renderHistory(incident);
  renderDetails(incident);
  const judge = canJudge(user);
  byId("btn-confirm").classList.toggle("hidden", !judge);
  byId("btn-dismiss").classList.toggle("hidden", !judge);
}

function stillRecording(incident) {
  const pkg = incident.evidence_package;
  if (pkg) return pkg.status === "pending";
  const opening = incident.reasons?.[0]?.alert;
  return Date.now() - Number(opening?.raised_time_ms || incident.time_ms || 0) < 90e3;
}

async function load() {
  clearTimeout(refetchTimer);
  try {
    const incident = await api(incidentApi(incidentId));
    render(incident);
    if (stillRecording(incident)) {
      tries += 1;
      if (tries < REFETCH_TRIES) refetchTimer = setTimeout(load, REFETCH_MS);
      else clear(byId("evidence-status"), h("p", { class: "notice warn" }, "Evidence is taking long to record; reload the page later."));
    }
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      clear(byId("incident-error"), h("div", { class: "notice error", role: "alert" }, "This incident does not exist, or it belongs to a store you cannot see."));
      byId("incident").classList.add("hidden");
    } else {
      showError(err, byId("incident-error"));
    }
  }
}

async function sendVerdict(verdict, button) {
  const buttons = [...document.querySelectorAll("[data-verdict]")];
  buttons.forEach((b) => { b.disabled = true; });
  try {
    const updated = await api(incidentApi(incidentId, "/verdict"), { method: "POST", body: { verdict, note: byId("verdict-note").value.trim() } });
    byId("verdict-note").value = "";
    toast(`${VERDICT_WORDS[verdict] || verdict}: saved on ${(updated?.reasons || []).length || "every"} alerts.`);
    if (updated?.status && current) renderTitle(current, updated.status);
    await load();
    button.focus();
  } catch (err) {
    showError(err);
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
}

for (const button of document.querySelectorAll("[data-verdict]")) {
  button.addEventListener("click", () => sendVerdict(button.dataset.verdict, button));
}

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
