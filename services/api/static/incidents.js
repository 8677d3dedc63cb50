// /incidents: incidents newest first, each with its reasons as rule chips. The filters are a GET form
// (the query string is the state); over Server-Sent Events a new incident comes in on top, a new
// reason or a higher severity updates its row in place, and so does a verdict.
import {
  byId, clear, h, incidentPath, initPage, ruleChips, severityBadge, severityOf, showError, statusBadge, storeIndex, storeName,
  storeZone, timeNode,
} from "/static/common.js";
import { fillStoreOptions, filterForm, filtersFromUrl, liveFeed, pagedList, timeRange, unseenInTitle } from "/static/lists.js";

const CHANGE_WORDS = { opened: "new incident", reason: "new reason", escalated: "severity raised" };

let stores = new Map();
const incidents = pagedList({ list: byId("incidents"), path: "/v1/incidents", items: "incidents", id: "incident_id", row: incidentRow, timeKey: "time" });
const countUnseen = unseenInTitle();

/** Would the list the API gave for these filters include this incident (as it stands now)? */
function matches(incident, filters) {
  if (filters.store_id && incident.store_id !== filters.store_id) return false;
  if (filters.region && (incident.region || stores.get(incident.store_id)?.region) !== filters.region) return false;
  if (filters.rule && !(incident.rules || []).includes(filters.rule)) return false;
  if (filters.severity && severityOf(incident.severity) !== filters.severity) return false;
  if (filters.status && (incident.status || "new") !== filters.status) return false;
  const { since, until } = timeRange(filters);
  if (since && Number(incident.end_ms) < since) return false;
  if (until && Number(incident.start_ms) > until) return false;
  return true;
}

function incidentRow(incident) {
  const sev = severityOf(incident.severity);
  const zone = storeZone(stores, incident.store_id);
  const where = [
    storeName(stores, incident.store_id, incident.store_name),
    ...(incident.register_ids || []).map((r) => `register ${r}`),
    ...(incident.camera_ids || []).map((c) => `camera ${c}`),
  ].join(" · ");
  const count = Number(incident.reason_count || (incident.reasons || []).length || 1);
  const link = h("a", { class: ["alert-row", "incident-row", `sev-border-${sev}`], href: incidentPath(incident.incident_id) },
    h("div", { class: "main" },
      h("div", { class: "title" }, h("span", { class: "sev-slot" }, severityBadge(incident.severity)), ruleChips(incident.rules)),
      h("div", { class: "where" }, where),
      h("div", { class: "where hide-narrow", dataset: { testid: "reason-count" } }, count === 1 ? "1 reason" : `${count} reasons`)),
    h("div", { class: "side" },
      h("span", { class: "status-slot" }, statusBadge(incident.status || "new")),
      timeNode(incident.time_ms || incident.start_ms, zone),
      h("span", { class: "change muted small" })));
  return h("li", { dataset: { incidentId: incident.incident_id, time: String(incident.time_ms || 0), severity: sev } }, link);
}

function highlight(row) {
  row.firstElementChild.classList.remove("fresh");
  void row.offsetWidth; // restart the highlight
  row.firstElementChild.classList.add("fresh");
}

/** An incident as it stands now: a new row in its place by time, or its row redrawn (a new reason, a higher severity). */
function upsert(incident, change) {
  if (!incident?.incident_id) return;
  const known = incidents.rows.get(incident.incident_id);
  if (!matches(incident, filtersFromUrl())) {
    if (known && change) {
      known.remove();
      incidents.rows.delete(incident.incident_id);
      incidents.showEmpty();
    }
    return;
  }
  const row = incidentRow(incident);
  if (change) row.querySelector(".change").textContent = CHANGE_WORDS[change] || "";
  if (known) {
    known.replaceWith(row);
  } else {
    incidents.insert(row, Number(incident.time_ms || 0));
    countUnseen();
  }
  incidents.rows.set(incident.incident_id, row);
  if (change) highlight(row);
  incidents.showEmpty();
}

function updateStatus(change) {
  const row = incidents.rows.get(change?.incident_id);
  if (!row) return;
  clear(row.querySelector(".status-slot"), statusBadge(change.status));
  highlight(row);
}

filterForm("/incidents", () => incidents.load(true));
const connect = liveFeed({
  on: { incident: (incident) => upsert(incident, incident?.change || "reason"), incident_status: updateStatus },
  opened: () => incidents.catchUp((incident) => upsert(incident, null)),
});

try {
  await initPage("incidents");
  stores = await storeIndex();
  fillStoreOptions(stores);
  await incidents.load(true);
  connect();
} catch (err) {
  showError(err, byId("feed-error"));
}
