// What the two live lists (/ the alerts, /incidents) share: the filter form kept in the URL and the
// API query it stands for, a list paged from the API that a filter change starts again, the live
// feed over Server-Sent Events with its indicator, and the count of unseen rows in the tab's title.
// The pages hold the same filter form (#filters) and list elements; what a row is stays theirs.
import { api, byId, clear, filtersFromQuery, h, keepFiltersInUrl, loginUrl, relative, showError } from "/static/common.js";

const PAGE_SIZE = 50;
const FIELDS = ["store_id", "region", "rule", "severity", "status", "period", "from", "until"];
const PERIODS = { "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3, "30d": 30 * 86400e3 };

export function filtersFromUrl() {
  return filtersFromQuery(FIELDS);
}

export function timeRange(filters) {
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

/**
 * The filter form (#filters) kept in the URL at `path`: shown now, and again with `reload()` after
 * each apply, reset, back or forward.
 */
export function filterForm(path, reload) {
  const form = byId("filters");
  let touched = false;
  const fill = () => {
    const filters = filtersFromUrl();
    const active = Object.keys(filters).length;
    byId("filters-summary").textContent = active ? `Filters (${active})` : "Filters";
    // Phones start with the filters folded unless some are set: the list matters more there.
    if (active || window.matchMedia("(min-width: 721px)").matches) byId("filters-box").open = true;
    else if (!touched) byId("filters-box").open = false;
    for (const name of FIELDS) {
      const field = form.elements.namedItem(name);
      if (field) field.value = filters[name] || "";
    }
    byId("f-custom").open = !!(filters.from || filters.until);
  };
  keepFiltersInUrl(form, byId("f-reset"), FIELDS, path, (how) => {
    if (how === "apply") touched = true;
    fill();
    reload();
  });
  fill();
}

/** The store and region choices of the filter form, from the user's stores. */
export function fillStoreOptions(stores) {
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

/**
 * The list `list` of `path`'s `items` (GET, filtered by the URL's filters, newest first), one
 * `row(item)` per item keyed by its `id`, with its #feed-empty, #load-more and #feed-error.
 * `timeKey` names the rows' data attribute with the time they are ordered by.
 */
export function pagedList({ list, path, items, id, row, timeKey }) {
  const empty = byId("feed-empty");
  const more = byId("load-more");
  const errorBox = byId("feed-error");
  const rows = new Map(); // id -> <li>
  let cursor = null;
  let generation = 0; // bumps on every filter change, so a slow old page never lands in a new list

  function showEmpty() {
    empty.classList.toggle("hidden", rows.size > 0);
  }

  async function load(reset) {
    const gen = reset ? ++generation : generation;
    const q = apiQuery(filtersFromUrl());
    q.set("limit", String(PAGE_SIZE));
    if (!reset && cursor) q.set("cursor", cursor);
    more.disabled = true;
    try {
      const page = await api(`${path}?${q}`);
      if (gen !== generation) return;
      if (reset) {
        rows.clear();
        clear(list);
        clear(errorBox);
      }
      for (const item of page[items] || []) {
        if (rows.has(item[id])) continue;
        const li = row(item);
        rows.set(item[id], li);
        list.append(li);
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

  /** A new row in its place by time: usually the top; a late one slots in below newer ones. */
  function insert(li, time) {
    const before = [...list.children].find((other) => Number(other.dataset[timeKey]) <= time);
    list.insertBefore(li, before || null);
  }

  /** Each item the stream could not have sent us (the first page holds the newest), oldest first. */
  async function catchUp(each) {
    const q = apiQuery(filtersFromUrl());
    q.set("limit", String(PAGE_SIZE));
    try {
      const page = await api(`${path}?${q}`);
      for (const item of [...(page[items] || [])].reverse()) each(item);
    } catch (err) {
      showError(err);
    }
  }

  more.addEventListener("click", () => load(false));
  // Relative times in tooltips go stale; refresh them now and then.
  setInterval(() => {
    for (const node of list.querySelectorAll("time[datetime]")) {
      const ms = Date.parse(node.getAttribute("datetime"));
      node.title = `${node.getAttribute("datetime")} UTC · ${relative(ms)}`;
    }
  }, 60000);
  return { rows, load, showEmpty, insert, catchUp };
}

/** Rows added while the tab is hidden count in its title, "(3) …", until it is shown again; call the result for each. */
export function unseenInTitle() {
  const baseTitle = document.title;
  let unseen = 0;
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && unseen) {
      unseen = 0;
      document.title = baseTitle;
    }
  });
  return () => {
    if (document.hidden) {
      unseen += 1;
      document.title = `(${unseen}) ${baseTitle}`;
    }
  };
}

function parse(event) {
  try {
    return JSON.parse(event.data);
  } catch {
    return null;
  }
}

/**
 * The live feed (/v1/alerts/stream), its state shown in #live: `on` maps the events a page wants to
 * their handlers (given the parsed data), `opened()` runs on each connection, to catch up on what
 * came meanwhile. Reconnects with backoff; returns the function that connects.
 */
export function liveFeed({ on, opened }) {
  const live = byId("live");
  let source = null;
  let retryTimer = null;
  let retryDelay = 2000;
  let hadError = false;

  function setLive(state, text) {
    live.className = `live ${state}`;
    live.textContent = text;
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
      opened();
    });
    for (const [name, handle] of Object.entries(on)) source.addEventListener(name, (event) => handle(parse(event)));
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

  return connect;
}
