// /: the live alert feed. The filters are a GET form (the query string is the state, so a filtered
// feed can be bookmarked or sent); new alerts arrive over Server-Sent Events and are put on top when
// they match the filters; verdicts from anyone update rows in place.
import {
  alertApi, alertPath, api, byId, clear, filtersFromQuery, formatScore, h, initPage, keepFiltersInUrl, loginUrl, ruleLabel,
  severityBadge, severityOf, showError, statusBadge, storeIndex, storeName, storeZone, timeNode, relative,
} from "/static/common.js";

const PAGE_SIZE = 50;
const THUMB_TRIES = 24;
const THUMB_RETRY_MS = 5000;
const FIELDS = ["store_id", "region", "rule", "severity", "status", "period", "from", "until"];
const PERIODS = { "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3, "30d": 30 * 86400e3 };

const form = byId("filters");
const list = byId("feed");
const empty = byId("feed-empty");
const more = byId("load-more");
const errorBox = byId("feed-error");
const live = byId("live");

const rows = new Map(); // alert_id -> <li>
let stores = new Map();
let cursor = null;
let generation = 0; // bumps on every filter change, so a slow old page never lands in a new list
let unseen = 0;
let formTouched = false;
const baseTitle = document.title;

function filtersFromUrl() {
  return filtersFromQuery(FIELDS);
}

function fillForm(filters) {
  const active = Object.keys(filters).length;
  byId("filters-summary").textContent = active ? `Filters (${active})` : "Filters";
  // Phones start with the filters folded unless some are set: the alerts matter more there.
  if (active || window.matchMedia("(min-width: 721px)").matches) byId("filters-box").open = true;
  else if (!formTouched) byId("filters-box").open = false;
  for (const name of FIELDS) {
    const field = form.elements.namedItem(name);
    if (field) field.value = filters[name] || "";
  }
  byId("f-custom").open = !!(filters.from || filters.until);
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

function timeRange(filters) {
  const since = filters.from ? Date.parse(filters.from) : PERIODS[filters.period] ? Date.now() - PERIODS[filters.period] : NaN;
  const until = filters.until ? Date.parse(filters.until) : NaN;
  return { since: Number.isFinite(since) ? since : null, until: Number.isFinite(until) ? until : null };
}

/** Would the list the API gave for these filters include this (new) alert? */
function matches(alert, filters) {
  if (filters.store_id && alert.store_id !== filters.store_id) return false;
  if (filters.region && (alert.region || stores.get(alert.store_id)?.region) !== filters.region) return false;
  if (filters.rule && alert.rule !== filters.rule) return false;
  if (filters.severity && severityOf(alert.severity) !== filters.severity) return false;
  if (filters.status && (alert.status || "new") !== filters.status) return false;
  const { since, until } = timeRange(filters);
  const t = Number(alert.event_time_ms);
  if (since && t < since) return false;
  if (until && t > until) return false;
  return true;
}

/**
 * The snapshot, once it exists: a new alert's evidence is still being recorded when it arrives, so
 * a missing snapshot is asked for again every few seconds (a while), and shown when it comes.
 */
function thumbnail(alert) {
  const slot = h("div", { class: "thumb none" }, alert.has_snapshot ? "…" : "no image");
  if (!alert.has_snapshot) return slot;
  const url = alertApi(alert.alert_id, "/evidence/snapshot.jpg");
  let tries = 0;
  const probe = () => {
    const img = h("img", { class: "thumb", src: tries ? `${url}?try=${tries}` : url, alt: "Snapshot", width: 96, height: 54 });
    img.addEventListener("load", () => slot.replaceWith(img), { once: true });
    img.addEventListener("error", () => {
      tries += 1;
      if (tries <= THUMB_TRIES && slot.isConnected) {
        slot.textContent = "recording…";
        setTimeout(probe, THUMB_RETRY_MS);
      } else {
        slot.textContent = "no image";
      }
    }, { once: true });
  };
  probe();
  return slot;
}

function alertRow(alert) {
  const sev = severityOf(alert.severity);
  const zone = storeZone(stores, alert.store_id);
  const where = [
    storeName(stores, alert.store_id, alert.store_name),
    alert.register_id ? `register ${alert.register_id}` : null,
    alert.camera_id ? `camera ${alert.camera_id}` : null,
  ].filter(Boolean).join(" · ");
  const link = h("a", { class: ["alert-row", `sev-border-${sev}`], href: alertPath(alert.alert_id) },
    thumbnail(alert),
    h("div", { class: "main" },
      h("div", { class: "title" }, severityBadge(alert.severity), h("span", { class: "rule" }, ruleLabel(alert.rule))),
      h("div", { class: "where" }, where),
      alert.explanation ? h("div", { class: "where expl hide-narrow" }, alert.explanation) : null),
    h("div", { class: "side" },
      h("span", { class: "status-slot" }, statusBadge(alert.status || "new")),
      timeNode(alert.event_time_ms, zone),
      h("span", { class: "score muted", title: "Rule score, 0 to 1" }, `score ${formatScore(alert.score)}`)));
  return h("li", { dataset: { alertId: alert.alert_id, eventTime: String(alert.event_time_ms || 0) } }, link);
}

function showEmpty() {
  empty.classList.toggle("hidden", rows.size > 0);
}

async function loadPage(reset) {
  const filters = filtersFromUrl();
  const gen = reset ? ++generation : generation;
  const q = apiQuery(filters);
  q.set("limit", String(PAGE_SIZE));
  if (!reset && cursor) q.set("cursor", cursor);
  more.disabled = true;
  try {
    const page = await api(`/v1/alerts?${q}`);
    if (gen !== generation) return;
    if (reset) {
      rows.clear();
      clear(list);
      clear(errorBox);
    }
    for (const alert of page.alerts || []) {
      if (rows.has(alert.alert_id)) continue;
      const row = alertRow(alert);
      rows.set(alert.alert_id, row);
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

/** A live alert: on top of the list (it is the newest), highlighted for a moment. */
function addLive(alert) {
  if (!alert?.alert_id || rows.has(alert.alert_id) || !matches(alert, filtersFromUrl())) return;
  const row = alertRow(alert);
  row.firstElementChild.classList.add("fresh");
  rows.set(alert.alert_id, row);
  // Newest first by event time: usually the top; a late alert slots in below newer ones.
  const t = Number(alert.event_time_ms || 0);
  const before = [...list.children].find((li) => Number(li.dataset.eventTime) <= t);
  list.insertBefore(row, before || null);
  showEmpty();
  if (document.hidden) {
    unseen += 1;
    document.title = `(${unseen}) ${baseTitle}`;
  }
}

function updateStatus(change) {
  const row = rows.get(change?.alert_id);
  if (!row) return;
  const slot = row.querySelector(".status-slot");
  clear(slot, statusBadge(change.status));
  row.firstElementChild.classList.remove("fresh");
  void row.offsetWidth; // restart the highlight
  row.firstElementChild.classList.add("fresh");
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
    // Whatever arrived between the page load (or the last connection) and now.
    catchUp();
  });
  source.addEventListener("alert", (event) => addLive(parse(event)));
  source.addEventListener("status", (event) => updateStatus(parse(event)));
  // The server ends the stream this way when the session expires or the user is removed.
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
    // Closed for good (a non-200 answer): signed out? api() goes to /login on 401.
    setLive("off", "offline, retrying…");
    api("/v1/auth/me").catch(() => {});
    retryTimer = setTimeout(connect, retryDelay);
    retryDelay = Math.min(retryDelay * 2, 30000);
  });
}

/** Add alerts the stream could not have sent us (the first page holds the newest). */
async function catchUp() {
  const q = apiQuery(filtersFromUrl());
  q.set("limit", String(PAGE_SIZE));
  try {
    const page = await api(`/v1/alerts?${q}`);
    for (const alert of [...(page.alerts || [])].reverse()) addLive(alert);
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
  const regions = [...new Set(sorted.map((st) => st.region).filter(Boolean))].sort();
  for (const region of regions) regionSelect.append(h("option", { value: region }, region));
  // A filter from a link for a store or region this list lacks still shows as chosen.
  const filters = filtersFromUrl();
  for (const [select, value] of [[storeSelect, filters.store_id], [regionSelect, filters.region]]) {
    if (value && ![...select.options].some((o) => o.value === value)) select.append(h("option", { value }, value));
    select.value = value || "";
  }
}

keepFiltersInUrl(form, byId("f-reset"), FIELDS, "/", (how) => {
  if (how === "apply") formTouched = true;
  fillForm(filtersFromUrl());
  loadPage(true);
});

more.addEventListener("click", () => loadPage(false));

document.addEventListener("visibilitychange", () => {
  if (!document.hidden && unseen) {
    unseen = 0;
    document.title = baseTitle;
  }
});

// Relative times in tooltips go stale; refresh them now and then.
setInterval(() => {
  for (const node of list.querySelectorAll("time[datetime]")) {
    const ms = Date.parse(node.getAttribute("datetime"));
    node.title = `${node.getAttribute("datetime")} UTC · ${relative(ms)}`;
  }
}, 60000);

fillForm(filtersFromUrl());
try {
  await initPage("feed");
  stores = await storeIndex();
  fillStoreOptions();
  await loadPage(true);
  connect();
} catch (err) {
  showError(err, errorBox);
}
