// Shared by every dashboard page: the JSON API wrapper, safe DOM building, time and money formats,
// and the common header. Nothing here writes server data as HTML: text goes in through text nodes
// (h() below), so a store name or a note cannot become markup.

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** Where the browser should go to sign in, coming back here afterwards. */
export function loginUrl() {
  const here = location.pathname + location.search;
  return here === "/" ? "/login" : `/login?next=${encodeURIComponent(here)}`;
}

function detailText(detail, fallback) {
  if (typeof detail === "string" && detail) return detail;
  if (Array.isArray(detail)) {
    // FastAPI's validation errors: [{loc: [...], msg}, ...]
    return detail.map((e) => {
      const loc = Array.isArray(e?.loc) ? e.loc.filter((p) => p !== "body" && p !== "query").join(".") : "";
      return loc ? `${loc}: ${e?.msg ?? ""}` : String(e?.msg ?? JSON.stringify(e));
    }).join("; ");
  }
  if (detail && typeof detail === "object") return JSON.stringify(detail);
  return fallback;
}

const STATUS_WORDS = { 400: "Bad request", 403: "Not allowed", 404: "Not found", 409: "Conflict", 422: "Invalid input", 429: "Too many requests", 503: "Service unavailable" };

/**
 * fetch() for the JSON API with the session cookie. 401 sends the user to /login (unless
 * `redirect: false`); other failures throw ApiError carrying the server's `detail`.
 */
export async function api(path, { method = "GET", body, raw = false, redirect = true } = {}) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch {
    throw new ApiError(0, "The ShrinkWatch server cannot be reached. Check the connection and try again.");
  }
  if (res.status === 401 && redirect) {
    location.assign(loginUrl());
    throw new ApiError(401, "Your session has ended; signing in again.");
  }
  if (!res.ok) {
    let detail = null;
    try {
      detail = (await res.json()).detail;
    } catch {
      // Not JSON (a proxy's error page): the status line says enough.
    }
    const word = STATUS_WORDS[res.status] || `Error ${res.status}`;
    throw new ApiError(res.status, `${word}: ${detailText(detail, res.statusText || "request failed")}`);
  }
  if (raw) return res;
  if (res.status === 204) return null;
  return res.json();
}

/** A same-origin path from the server, or null: never a javascript: or foreign URL. */
export function safeUrl(url) {
  if (typeof url !== "string" || !url.startsWith("/") || url.startsWith("//") || url.startsWith("/\\")) return null;
  // Browsers drop tabs and newlines from URLs (slash, tab, slash becomes two slashes: another host)
  // and read a backslash as a slash: refuse both, then make sure the browser resolves it to this site.
  if (/[\u0000-\u001f\u007f\\]/.test(url)) return null;
  try {
    if (new URL(url, location.origin).origin !== location.origin) return null;
  } catch {
    return null;
  }
  return url;
}

/** Where /login should send the user afterwards: a path on this site, else "/". */
export function safeNext(next) {
  return safeUrl(next) && !next.startsWith("/login") ? next : "/";
}

function append(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.setAttribute("class", Array.isArray(value) ? value.filter(Boolean).join(" ") : value);
    else if (key === "text") node.textContent = String(value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (key === "style" || key === "innerHTML") throw new Error(`h(): ${key} is not allowed (CSP and escaping)`);
    else if ((key === "href" || key === "src") && typeof value === "string" && !value.startsWith("blob:") && !value.startsWith("data:image/") && safeUrl(value) === null) continue;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
}

/** Build an HTML element; strings become text nodes, so server data is never parsed as markup. */
export function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  return append(node, children);
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** Build an SVG element (same rules as h()). */
export function s(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  return append(node, children);
}

/** Bars of counts per day (or per `per`); the tallest fills the chart, each bar has its count as a tooltip. */
export function barChart(perDay, days, what = "Alerts", per = "day") {
  const counts = (perDay || []).map((n) => Number(n) || 0);
  const width = 400;
  const height = 64;
  const base = height - 12;
  const max = Math.max(1, ...counts);
  const step = width / Math.max(1, counts.length);
  const bar = Math.max(1, step * 0.75);
  const chart = s("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `${what} per ${per}: ${counts.join(", ")}`, dataset: { what: what.toLowerCase() } });
  chart.append(s("line", { class: "axis", x1: 0, x2: width, y1: base + 0.5, y2: base + 0.5 }));
  counts.forEach((n, i) => {
    const hgt = n ? Math.max(2, (n / max) * (base - 10)) : 1;
    chart.append(s("rect", { class: n ? "bar" : "bar zero", x: i * step + (step - bar) / 2, y: base - hgt, width: bar, height: hgt },
      s("title", null, `${days?.[i] ?? `${per} ${i + 1}`}: ${n}`)));
  });
  chart.append(s("text", { x: 0, y: height - 1 }, days?.[0] ?? ""), s("text", { x: width, y: height - 1, "text-anchor": "end" }, days?.at(-1) ?? ""));
  const peak = Math.max(0, ...counts);
  if (peak) chart.append(s("text", { x: width, y: 9, "text-anchor": "end" }, `max ${peak}/${per}`));
  return chart;
}

export function clear(node, ...children) {
  node.replaceChildren();
  return append(node, children);
}

export function byId(id) {
  return document.getElementById(id);
}

// ---- messages

let toastTimer = null;

/** A short message at the bottom of the screen. */
export function toast(message, kind = "info", ms = 5000) {
  let node = byId("toast");
  if (!node) {
    node = h("div", { id: "toast", role: "status", "aria-live": "polite" });
    document.body.append(node);
  }
  node.className = `toast ${kind}`;
  node.textContent = message;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => node.remove(), ms);
}

/** Show an error from api(): in `where` (an element) when given, else as a toast. */
export function showError(err, where = null) {
  if (err?.status === 401) return; // on the way to /login already
  const message = err instanceof Error ? err.message : String(err);
  if (where) clear(where, h("div", { class: "notice error", role: "alert" }, message));
  else toast(message, "error", 8000);
}

// ---- formats

const browserZone = Intl.DateTimeFormat().resolvedOptions().timeZone;

function dateTimeFormat(timeZone, withDate) {
  const opts = withDate
    ? { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" }
    : { hour: "2-digit", minute: "2-digit", second: "2-digit" };
  try {
    return new Intl.DateTimeFormat(undefined, timeZone ? { ...opts, timeZone, timeZoneName: "short" } : opts);
  } catch {
    return new Intl.DateTimeFormat(undefined, opts); // an unknown zone name
  }
}

export function formatLocal(ms) {
  return ms ? dateTimeFormat(null, true).format(new Date(Number(ms))) : "—";
}

/** "14:03:22 GMT" in the store's zone, or null when the browser's clock reads the same then (or the zone is unknown). */
export function formatStoreTime(ms, timeZone, withDate = false) {
  if (!ms || !timeZone || timeZone === browserZone) return null;
  const when = new Date(Number(ms));
  const wall = (zone) => {
    try {
      return new Intl.DateTimeFormat("en-GB", { dateStyle: "short", timeStyle: "medium", ...(zone ? { timeZone: zone } : {}) }).format(when);
    } catch {
      return null;
    }
  };
  const there = wall(timeZone);
  if (there === null || there === wall(null)) return null;
  return dateTimeFormat(timeZone, withDate).format(when);
}

export function relative(ms) {
  if (!ms) return "";
  const secs = Math.round((Date.now() - Number(ms)) / 1000);
  const rtf = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
  const abs = Math.abs(secs);
  if (abs < 60) return rtf.format(-secs, "second");
  if (abs < 3600) return rtf.format(-Math.round(secs / 60), "minute");
  if (abs < 86400) return rtf.format(-Math.round(secs / 3600), "hour");
  return rtf.format(-Math.round(secs / 86400), "day");
}

/** A <time> in the browser's local time, plus the store's local time where it differs. */
export function timeNode(ms, timeZone, { withDate = true } = {}) {
  if (!ms) return h("span", { class: "muted" }, "—");
  const iso = new Date(Number(ms)).toISOString();
  const store = formatStoreTime(ms, timeZone, withDate);
  return h("span", { class: "time" },
    h("time", { datetime: iso, title: `${iso} UTC · ${relative(ms)}` }, withDate ? formatLocal(ms) : dateTimeFormat(null, false).format(new Date(Number(ms)))),
    store ? h("span", { class: "muted small" }, ` (store: ${store})`) : null);
}

/** A <time> on the store's own clock ("1 Dec 2026, 14:03:22 GMT"); UTC, the browser's time and how long ago in its tooltip. */
export function storeTimeNode(ms, timeZone) {
  if (!ms) return h("span", { class: "muted" }, "—");
  const when = new Date(Number(ms));
  const iso = when.toISOString();
  // Without the store's zone (its store list did not load) the browser's own clock is the best there is, and says so.
  const text = timeZone ? dateTimeFormat(timeZone, true).format(when) : `${formatLocal(ms)} (your time)`;
  return h("time", { datetime: iso, title: `${iso} UTC · your time ${formatLocal(ms)} · ${relative(ms)}` }, text);
}

export function formatMoney(minor, currency) {
  if (minor === null || minor === undefined || minor === "") return "—";
  const amount = Number(minor);
  if (!Number.isFinite(amount)) return String(minor);
  if (!currency) return (amount / 100).toFixed(2); // most currencies have cents; the POS gave none
  try {
    const fmt = new Intl.NumberFormat(undefined, { style: "currency", currency });
    const digits = fmt.resolvedOptions().maximumFractionDigits;
    return fmt.format(amount / 10 ** digits);
  } catch {
    return `${(amount / 100).toFixed(2)} ${currency}`;
  }
}

export function formatScore(score) {
  const n = Number(score);
  return Number.isFinite(n) ? n.toFixed(2) : "—";
}

export function formatPercent(value) {
  return value === null || value === undefined || !Number.isFinite(Number(value)) ? "—" : `${Math.round(Number(value) * 100)}%`;
}

// ---- alert vocabulary

export const SEVERITIES = ["low", "medium", "high", "critical"];
export const STATUSES = ["new", "acknowledged", "confirmed", "dismissed"];
export const VERDICT_WORDS = { acknowledged: "Acknowledged", confirmed: "Confirmed", false_alarm: "False alarm" };

/** "high" from "high", "HIGH" or the protobuf name "SEVERITY_HIGH". */
export function severityOf(value) {
  const v = String(value ?? "").toLowerCase().replace(/^severity_/, "");
  return SEVERITIES.includes(v) ? v : "unknown";
}

export function ruleLabel(rule) {
  const text = String(rule ?? "").replaceAll("_", " ");
  return text.charAt(0).toUpperCase() + text.slice(1);
}

export function severityBadge(value) {
  const sev = severityOf(value);
  return h("span", { class: `badge sev-${sev}` }, sev);
}

export function statusBadge(status) {
  const st = STATUSES.includes(status) ? status : "new";
  return h("span", { class: `badge status status-${st}`, dataset: { role: "status" } }, st);
}

export function alertPath(alertId) {
  return `/alerts/${encodeURIComponent(alertId)}`;
}

export function alertApi(alertId, rest = "") {
  return `/v1/alerts/${encodeURIComponent(alertId)}${rest}`;
}

export function incidentPath(incidentId) {
  return `/incidents/${encodeURIComponent(incidentId)}`;
}

export function incidentApi(incidentId, rest = "") {
  return `/v1/incidents/${encodeURIComponent(incidentId)}${rest}`;
}

/** An incident's reasons as chips, one per rule, in the order they came. */
export function ruleChips(rules) {
  return h("span", { class: "chips", dataset: { testid: "rules" } }, (rules || []).map((rule) => h("span", { class: "chip", dataset: { rule } }, ruleLabel(rule))));
}

// ---- session and stores

let mePromise = null;

/** The signed-in user (GET /v1/auth/me), once per page; 401 goes to /login. */
export function currentUser() {
  mePromise ??= api("/v1/auth/me");
  return mePromise;
}

let storesPromise = null;

/** store_id -> store (name, region, timezone, cameras) for the stores the user can see; empty on failure. */
export function storeIndex() {
  storesPromise ??= api("/v1/stores")
    .then((r) => new Map((r.stores || []).map((st) => [st.store_id, st])))
    .catch((err) => {
      if (err?.status !== 401) console.warn("stores:", err.message);
      return new Map();
    });
  return storesPromise;
}

export function storeName(stores, storeId, fallback) {
  return stores.get(storeId)?.name || fallback || storeId || "—";
}

export function storeZone(stores, storeId) {
  return stores.get(storeId)?.timezone || null;
}

const ROLE_WORDS = { admin: "Admin", hq_analyst: "HQ analyst", store_manager: "Store manager", officer: "Officer" };

export function roleLabel(role) {
  return ROLE_WORDS[role] || String(role ?? "");
}

/** May this role confirm, dismiss and export? Officers only acknowledge. */
export function canJudge(user) {
  return !!user && user.role !== "officer";
}

async function signOut() {
  try {
    await api("/v1/auth/logout", { method: "POST", redirect: false });
  } catch (err) {
    if (err?.status !== 401) console.warn("logout:", err.message);
  }
  location.assign("/login");
}

/** Fill the page's <header id="site-header"> with the navigation and the signed-in user. */
export async function initPage(active) {
  const header = byId("site-header");
  const link = (href, key, label) => h("a", { href, class: key === active ? "active" : null, "aria-current": key === active ? "page" : null }, label);
  const nav = h("nav", { "aria-label": "Main" }, link("/incidents", "incidents", "Incidents"), link("/", "feed", "Alerts"), link("/returns", "returns", "Returns"), link("/stats", "stats", "Stats"), link("/stores", "stores", "Stores"));
  clear(header, h("a", { href: "/", class: "brand" }, "ShrinkWatch HQ"), nav);
  const user = await currentUser();
  if (user.role === "admin") nav.append(link("/admin/audit", "audit", "Audit"));
  header.append(h("div", { class: "user" },
    h("span", { class: "name", dataset: { testid: "user-name" } }, user.display_name || user.username),
    h("span", { class: "role", dataset: { testid: "user-role" } }, roleLabel(user.role)),
    h("button", { type: "button", onclick: signOut }, "Sign out")));
  return user;
}

// ---- filter forms kept in the URL: the query string is the state, so a filtered list can be bookmarked or sent

/** The filters in the page's query string, for these field names (blank ones left out). */
export function filtersFromQuery(fields) {
  const params = new URLSearchParams(location.search);
  const filters = {};
  for (const name of fields) {
    const value = (params.get(name) || "").trim();
    if (value) filters[name] = value;
  }
  return filters;
}

/**
 * Applying the form puts its fields in `path`'s query, reset clears them, back and forward bring
 * earlier ones back; each time `changed(how)` runs ("apply", "reset" or "history") to show them.
 */
export function keepFiltersInUrl(form, resetButton, fields, path, changed) {
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const q = new URLSearchParams();
    for (const name of fields) {
      const value = String(form.elements.namedItem(name)?.value || "").trim();
      if (value) q.set(name, value);
    }
    const query = q.toString();
    history.pushState(null, "", query ? `${path}?${query}` : path);
    changed("apply");
  });
  resetButton.addEventListener("click", (event) => {
    event.preventDefault();
    history.pushState(null, "", path);
    changed("reset");
  });
  window.addEventListener("popstate", () => changed("history"));
}
