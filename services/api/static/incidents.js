// /incidents: incidents newest first, each with its reasons as rule chips. The filters are a GET form
// (the query string is the state); over Server-Sent Events a new incident comes in on top, a new
// reason or a higher severity updates its row in place, and so does a verdict.
import {
  api, byId, clear, filtersFromQuery, h, incidentPath, initPage, keepFiltersInUrl, loginUrl, relative, ruleChips,
  severityBadge, severityOf, showError, statusBadge, storeIndex, storeName, storeZone, timeNode,
} from "/static/common.js";

const PAGE_SIZE = 50;
const FIELDS = ["store_id", "region", "rule", "severity", "status", "period", "from", "until"];
const PERIODS = { "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3, "30d": 30 * 86400e3 };
const CHANGE_WORDS = { opened: "new incident", reason: "new reason", escalated: "severity raised" };

const form = byId("filters");
const list = byId("incidents");
const empty = byId("feed-empty");
const more = byId("load-more");
const errorBox = byId("feed-error");
const live = byId("live");

const rows = new Map(); // incident_id -> <li>
let stores = new Map();
let cursor = null;
let generation = 0; // bumps on every filter change, so a slow old page never lands in a new list
let unseen = 0;
let formTouched = false;
const baseTitle = document.title;

function fillForm(filters) {
  const active = Object.keys(filters).length;
  byId("filters-summary").textContent = active ? `Filters (${active})` : "Filters";
  if (active || window.matchMedia("(min-width: 721px)").matches) byId("filters-box").open = true;
  else if (!formTouched) byId("filters-box").open = false;
  for (const name of FIELDS) {
    const field = form.elements.namedItem(name);
    if (field) field.value = filters[name] || "";
  }
  byId("f-custom").open = !!(filters.from || filters.until);
}

function timeRange(filters) {
  const since = filters.from ? Date.parse(filters.from) : PERIODS[filters.period] ? Date.now() - PERIODS[filters.period] : NaN;
  const until = filters.until ? Date.parse(filters.until) : NaN;
  return { since: Number.isFinite(since) ? since : null, until: Number.isFinite(until) ? until : null };
}

/** The API's query for these filters; the time range is resolved to ms now. */
function apiQuery(filters) {
  const q = new URLSearchParams();
  for (const name of ["store_id", "region", "rule", "severity", "status"]) if (filters[name]) q.set(name, filters[name]);
  const range = timeRange(filters);
  if (range.since) q.set("since_ms", String(range.since));
  if (range.until) q.set("until_ms", String(range.until));
  return q;
}

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

function showEmpty() {
  empty.classList.toggle("hidden", rows.size > 0);
}

function highlight(row) {
  row.firstElementChild.classList.remove("fresh");
  void row.offsetWidth; // restart the highlight
  row.firstElementChild.classList.add("fresh");
}

async function loadPage(reset) {
  const filters = filtersFromQuery(FIELDS);
  const gen = reset ? ++generation : generation;
  const q = apiQuery(filters);
  q.set("limit", String(PAGE_SIZE));
  if (!reset && cursor) q.set("cursor", cursor);
  more.disabled = true;
  try {
    const page = await api(`/v1/incidents?${q}`);
    if (gen !== generation) return;
    if (reset) {
      rows.clear();
      clear(list);
      clear(errorBox);
    }
    for (const incident of page.incidents || []) {
      if (rows.has(incident.incident_id)) continue;
      const row = incidentRow(incident);
      rows.set(incident.incident_id, row);
      list.append(row);
    }
    cursor = page.next_cursor || null;
    more.classList.toggle("hidden", !cursor);
    showEmpty();
  } catch (err) {
    if (gen === generation) showError(err, errorBox);
  } finally {
    more.disabled = false;
  }
}

/** An incident as it stands now: a new row in its place by time, or its row redrawn (a new reason, a higher severity). */
function upsert(incident, change) {
  if (!incident?.incident_id) return;
  const known = rows.get(incident.incident_id);
  if (!matches(incident, filtersFromQuery(FIELDS))) {
    if (known && change) {
      known.remove();
      rows.delete(incident.incident_id);
      showEmpty();
    }
    return;
  }
  const row = incidentRow(incident);
  if (change) row.querySelector(".change").textContent = CHANGE_WORDS[change] || "";
  if (known) {
    known.replaceWith(row);
  } else {
    const t = Number(incident.time_ms || 0);
    const before = [...list.children].find((li) => Number(li.dataset.time) <= t);
    list.insertBefore(row, before || null);
    if (document.hidden) {
      unseen += 1;
      document.title = `(${unseen}) ${baseTitle}`;
    }
  }
  rows.set(incident.incident_id, row);
  if (change) highlight(row);
  showEmpty();
}

function updateStatus(change) {
  const row = rows.get(change?.incident_id);
  if (!row) return;
  clear(row.querySelector(".status-slot"), statusBadge(change.status));
  highlight(row);
}

// ---- live stream

let source = null;
let retryTimer = null;
let retryDelay = 2000;
let hadError = false;

function setLive(state, text) {
  live.className = `live ${state}`;
  live.textContent = text;
}

function parse(event) {
  try {
    return JSON.parse(event.data);
  } catch {
    return null;
  }
}

function connect() {
  clearTimeout(retryTimer);
  source?.close();
  setLive("retry", hadError ? "reconnecting…" : "connecting…");
  source = new EventSource("/v1/alerts/stream");
  source.addEventListener("open", () => {
    setLive("on", "live");
    retryDelay = 2000;
    hadError = false;
    catchUp();
  });
  source.addEventListener("incident", (event) => {
    const incident = parse(event);
    upsert(incident, incident?.change || "reason");
  });
  source.addEventListener("incident_status", (event) => updateStatus(parse(event)));
  source.addEventListener("expired", () => {
    source.close();
    setLive("off", "signed out");
    location.assign(loginUrl());
  });
  source.addEventListener("error", () => {
    hadError = true;
    if (source.readyState === EventSource.CONNECTING) {
      setLive("retry", "reconnecting…");
      return;
    }
    setLive("off", "offline, retrying…");
    api("/v1/auth/me").catch(() => {});
    retryTimer = setTimeout(connect, retryDelay);
    retryDelay = Math.min(retryDelay * 2, 30000);
  });
}

/** Incidents the stream could not have sent us (the first page holds the newest), as they stand now. */
async function catchUp() {
  const q = apiQuery(filtersFromQuery(FIELDS));
  q.set("limit", String(PAGE_SIZE));
  try {
    const page = await api(`/v1/incidents?${q}`);
    for (const incident of [...(page.incidents || [])].reverse()) upsert(incident, null);
  } catch (err) {
    showError(err);
  }
}

// ---- filters

function fillStoreOptions() {
  const storeSelect = byId("f-store");
  const regionSelect = byId("f-region");
  const sorted = [...stores.values()].sort((a, b) => String(a.name || a.store_id).localeCompare(String(b.name || b.store_id)));
  for (const st of sorted) storeSelect.append(h("option", { value: st.store_id }, st.name ? `${st.name} (${st.store_id})` : st.store_id));
  for (const region of [...new Set(sorted.map((st) => st.region).filter(Boolean))].sort()) regionSelect.append(h("option", { value: region }, region));
  const filters = filtersFromQuery(FIELDS);
  for (const [select, value] of [[storeSelect, filters.store_id], [regionSelect, filters.region]]) {
    if (value && ![...select.options].some((o) => o.value === value)) select.append(h("option", { value }, value));
    select.value = value || "";
  }
}

keepFiltersInUrl(form, byId("f-reset"), FIELDS, "/incidents", (how) => {
  if (how === "apply") formTouched = true;
  fillForm(filtersFromQuery(FIELDS));
  loadPage(true);
});

more.addEventListener("click", () => loadPage(false));

document.addEventListener("visibilitychange", () => {
  if (!document.hidden && unseen) {
    unseen = 0;
    document.title = baseTitle;
  }
});

setInterval(() => {
  for (const node of list.querySelectorAll("time[datetime]")) {
    const ms = Date.parse(node.getAttribute("datetime"));
    node.title = `${node.getAttribute("datetime")} UTC · ${relative(ms)}`;
  }
}, 60000);

fillForm(filtersFromQuery(FIELDS));
try {
  await initPage("incidents");
  stores = await storeIndex();
  fillStoreOptions();
  await loadPage(true);
  connect();
} catch (err) {
  showError(err, errorBox);
}
