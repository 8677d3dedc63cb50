// /admin/audit: who signed in, viewed and exported evidence, and gave verdicts (admins only).
import { alertPath, api, byId, clear, formatLocal, h, initPage, roleLabel, showError } from "/static/common.js";

const FIELDS = ["user", "action", "alert_id"];
const form = byId("filters");
const tbody = byId("audit-rows");
const more = byId("load-more");
let cursor = null;
let generation = 0;

function filters() {
  const params = new URLSearchParams(location.search);
  return Object.fromEntries(FIELDS.map((f) => [f, (params.get(f) || "").trim()]).filter(([, v]) => v));
}

function detailText(detail) {
  if (detail === null || detail === undefined || detail === "") return "";
  return typeof detail === "string" ? detail : JSON.stringify(detail);
}

function entryRow(e) {
  return h("tr", null,
    h("td", { class: "nowrap" }, formatLocal(e.time_ms)),
    h("td", null, e.user || "—"),
    h("td", null, roleLabel(e.role) || "—"),
    h("td", { class: "mono" }, e.action || ""),
    h("td", { class: "mono" }, e.alert_id ? h("a", { href: alertPath(e.alert_id) }, e.alert_id) : "—"),
    h("td", null, e.store_id || "—"),
    h("td", { class: "small" }, detailText(e.detail)),
    h("td", { class: "mono hide-narrow" }, e.ip || ""));
}

async function load(reset) {
  const gen = reset ? ++generation : generation;
  const q = new URLSearchParams({ ...filters(), limit: "100" });
  if (!reset && cursor) q.set("cursor", cursor);
  more.disabled = true;
  try {
    const page = await api(`/v1/audit?${q}`);
    if (gen !== generation) return;
    if (reset) clear(tbody);
    clear(byId("audit-error"));
    for (const e of page.entries || []) tbody.append(entryRow(e));
    cursor = page.next_cursor || null;
    more.classList.toggle("hidden", !cursor);
    byId("audit-empty").classList.toggle("hidden", tbody.children.length > 0);
  } catch (err) {
    if (gen === generation) showError(err, byId("audit-error"));
  } finally {
    more.disabled = false;
  }
}

function fillForm() {
  const f = filters();
  for (const name of FIELDS) form.elements.namedItem(name).value = f[name] || "";
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const q = new URLSearchParams();
  for (const name of FIELDS) {
    const value = String(form.elements.namedItem(name).value || "").trim();
    if (value) q.set(name, value);
  }
  history.pushState(null, "", q.toString() ? `/admin/audit?${q}` : "/admin/audit");
  load(true);
});
window.addEventListener("popstate", () => { fillForm(); load(true); });
more.addEventListener("click", () => load(false));

try {
  const user = await initPage("audit");
  if (user.role !== "admin") {
    clear(byId("audit-error"), h("div", { class: "notice error", role: "alert" }, "The audit log is for administrators only. Ask an admin if you need an entry from it."));
  } else {
    byId("audit-body").classList.remove("hidden");
    fillForm();
    await load(true);
  }
} catch (err) {
  showError(err, byId("audit-error"));
}
