// /stats: incidents and alerts per day per store and per rule (inline SVG bars), and how often analysts
// confirmed each rule's alerts (precision stays per rule: an incident's verdict is recorded on each alert).
import { api, barChart, byId, clear, formatPercent, h, initPage, ruleLabel, showError, storeIndex } from "/static/common.js";

const form = byId("filters");
let stores = new Map();

function filters() {
  const params = new URLSearchParams(location.search);
  const days = Number.parseInt(params.get("days") || "14", 10);
  return { store_id: params.get("store_id") || "", region: params.get("region") || "", days: Number.isFinite(days) && days > 0 ? days : 14 };
}

function precisionOf(row) {
  if (row.precision !== null && row.precision !== undefined) return Number(row.precision);
  const judged = (Number(row.confirmed) || 0) + (Number(row.false_alarm) || 0);
  return judged ? (Number(row.confirmed) || 0) / judged : null;
}

function table(rows, first, days, chart) {
  if (!rows.length) return h("p", { class: "muted" }, "No alerts in this period.");
  const num = (v) => h("td", { class: "num" }, String(Number(v) || 0));
  return h("table", null,
    h("thead", null, h("tr", null,
      first.headers.map((c) => h("th", null, c)),
      h("th", { class: "num", title: first.incidentsTitle }, "Incidents"), h("th", { class: "num" }, "Alerts"), h("th", { class: "num" }, "Confirmed"), h("th", { class: "num" }, "False alarms"),
      h("th", { class: "num hide-narrow" }, "Acknowledged"), h("th", { class: "num" }, "Precision"), h("th", null, `${chart.what} per day`))),
    h("tbody", null, rows.map((row) => h("tr", null,
      first.cells(row),
      h("td", { class: "num", dataset: { testid: "incidents" } }, String(Number(row.incidents) || 0)), num(row.alerts), num(row.confirmed), num(row.false_alarm), h("td", { class: "num hide-narrow" }, String(Number(row.acknowledged) || 0)),
      h("td", { class: "num nowrap", dataset: { testid: "precision" } }, formatPercent(precisionOf(row))),
      h("td", null, barChart(row[chart.key], days, chart.what))))));
}

async function load() {
  const f = filters();
  const q = new URLSearchParams({ days: String(f.days) });
  if (f.store_id) q.set("store_id", f.store_id);
  if (f.region) q.set("region", f.region);
  try {
    const stats = await api(`/v1/stats?${q}`);
    clear(byId("stats-error"));
    const days = stats.days || [];
    const totals = stats.totals || {};
    byId("stats-range").textContent = days.length ? `${days[0]} to ${days.at(-1)} (${days.length} days)` : "";
    byId("stats-totals").textContent = `${Number(totals.incidents) || 0} incidents from ${Number(totals.alerts) || 0} alerts`;
    const byStore = [...(stats.by_store || [])].sort((a, b) => (b.alerts || 0) - (a.alerts || 0));
    const byRule = [...(stats.by_rule || [])].sort((a, b) => (b.alerts || 0) - (a.alerts || 0));
    clear(byId("by-store"), table(byStore, {
      headers: ["Store", "Region"],
      cells: (r) => [h("td", null, r.store_name || stores.get(r.store_id)?.name || r.store_id, h("div", { class: "muted small" }, r.store_id)), h("td", null, r.region || "—")],
      incidentsTitle: "Incidents opened (the alerts of one situation are one incident)",
    }, days, { key: "incidents_per_day", what: "Incidents" }));
    clear(byId("by-rule"), table(byRule, {
      headers: ["Rule"], cells: (r) => [h("td", null, ruleLabel(r.rule))], incidentsTitle: "Incidents with this rule among their reasons",
    }, days, { key: "per_day", what: "Alerts" }));
  } catch (err) {
    showError(err, byId("stats-error"));
  }
}

function fillOptions() {
  const storeSelect = byId("f-store");
  const regionSelect = byId("f-region");
  const sorted = [...stores.values()].sort((a, b) => String(a.name || a.store_id).localeCompare(String(b.name || b.store_id)));
  for (const st of sorted) storeSelect.append(h("option", { value: st.store_id }, st.name ? `${st.name} (${st.store_id})` : st.store_id));
  for (const region of [...new Set(sorted.map((st) => st.region).filter(Boolean))].sort()) regionSelect.append(h("option", { value: region }, region));
}

/** Show the query string's filters in the form (a value no option has gets one). */
function fillForm() {
  const f = filters();
  const storeSelect = byId("f-store");
  const regionSelect = byId("f-region");
  const daysSelect = byId("f-days");
  for (const [select, value] of [[storeSelect, f.store_id], [regionSelect, f.region], [daysSelect, String(f.days)]]) {
    if (value && ![...select.options].some((o) => o.value === value)) select.append(h("option", { value }, value));
    select.value = value;
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const q = new URLSearchParams();
  for (const name of ["store_id", "region", "days"]) {
    const value = String(form.elements.namedItem(name).value || "");
    if (value) q.set(name, value);
  }
  history.pushState(null, "", `/stats?${q}`);
  load();
});
window.addEventListener("popstate", () => { fillForm(); load(); });

try {
  await initPage("stats");
  stores = await storeIndex();
  fillOptions();
  fillForm();
  await load();
} catch (err) {
  showError(err, byId("stats-error"));
}
