// /: the live alert feed. The filters are a GET form (the query string is the state, so a filtered
// feed can be bookmarked or sent); new alerts arrive over Server-Sent Events and are put on top when
// they match the filters; verdicts from anyone update rows in place.
import {
  alertApi, alertPath, byId, clear, formatScore, h, initPage, ruleLabel, severityBadge, severityOf, showError, statusBadge,
  storeIndex, storeName, storeZone, timeNode,
} from "/static/common.js";
import { fillStoreOptions, filterForm, filtersFromUrl, liveFeed, pagedList, timeRange, unseenInTitle } from "/static/lists.js";

const THUMB_TRIES = 24;
const THUMB_RETRY_MS = 5000;

let stores = new Map();
const feed = pagedList({ list: byId("feed"), path: "/v1/alerts", items: "alerts", id: "alert_id", row: alertRow, timeKey: "eventTime" });
const countUnseen = unseenInTitle();

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

/** A live alert: in its place by time (usually the top: it is the newest), highlighted for a moment. */
function addLive(alert) {
  if (!alert?.alert_id || feed.rows.has(alert.alert_id) || !matches(alert, filtersFromUrl())) return;
  const row = alertRow(alert);
  row.firstElementChild.classList.add("fresh");
  feed.rows.set(alert.alert_id, row);
  feed.insert(row, Number(alert.event_time_ms || 0));
  feed.showEmpty();
  countUnseen();
}

function updateStatus(change) {
  const row = feed.rows.get(change?.alert_id);
  if (!row) return;
  const slot = row.querySelector(".status-slot");
  clear(slot, statusBadge(change.status));
  row.firstElementChild.classList.remove("fresh");
  void row.offsetWidth; // restart the highlight
  row.firstElementChild.classList.add("fresh");
}

filterForm("/", () => feed.load(true));
const connect = liveFeed({
  on: { alert: addLive, status: updateStatus },
  opened: () => feed.catchUp(addLive),
});

try {
  await initPage("feed");
  stores = await storeIndex();
  fillStoreOptions(stores);
  await feed.load(true);
  connect();
} catch (err) {
  showError(err, byId("feed-error"));
}
