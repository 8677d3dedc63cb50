// /stores: each visible store's cameras with their status, last frame and frame rate, and where cameras
// count people across lines, the people in the store now and entries per hour; refreshed every 15 s.
import { api, barChart, byId, clear, formatStoreTime, h, initPage, relative, showError } from "/static/common.js";

const REFRESH_MS = 15000;
const STATES = ["live", "idle", "down", "unknown"];

function camera(cam, timeZone) {
  const state = STATES.includes(cam.status) ? cam.status : "unknown";
  const last = cam.last_frame_ms ? Number(cam.last_frame_ms) : null;
  const storeTime = last ? formatStoreTime(last, timeZone) : null;
  return h("li", { dataset: { cameraId: cam.camera_id, status: state } },
    h("span", { class: `dot ${state}`, title: state, role: "img", "aria-label": state }),
    h("div", null,
      h("div", { class: "mono" }, cam.camera_id),
      h("div", { class: "muted small" }, last
        ? ["last frame ", h("time", { datetime: new Date(last).toISOString(), title: new Date(last).toLocaleString() }, relative(last)), storeTime ? ` (store: ${storeTime})` : ""]
        : "no frame yet")),
    h("div", { class: "small nowrap" }, state, cam.fps !== null && cam.fps !== undefined ? h("div", { class: "muted" }, `${Number(cam.fps).toFixed(1)} fps`) : null));
}

function hourLabel(ms, timeZone) {
  try {
    return new Intl.DateTimeFormat("en-GB", { hour: "2-digit", minute: "2-digit", ...(timeZone ? { timeZone } : {}) }).format(new Date(Number(ms)));
  } catch {
    return new Date(Number(ms)).toISOString().slice(11, 16);
  }
}

/** People counts from the store's counting lines: in the store now, entries per hour, each line today. */
function traffic(t, timeZone) {
  const hours = t.hours || [];
  const labels = hours.map((x) => hourLabel(x.hour_ms, timeZone));
  return h("div", { class: "traffic", dataset: { testid: "traffic" } },
    t.in_store_now !== null && t.in_store_now !== undefined
      ? h("p", null, h("strong", { dataset: { testid: "in-store-now" } }, String(t.in_store_now)), " in the store now · ",
        h("span", { dataset: { testid: "entries-today" } }, String(t.entries_today)), ` entries since ${hourLabel(t.day_start_ms, timeZone)} (store time)`)
      : null,
    hours.some((x) => x.in || x.out) ? barChart(hours.map((x) => x.in), labels, "Entries", "hour") : null,
    (t.lines || []).length
      ? h("ul", { class: "muted small lines" }, t.lines.map((l) => h("li", { dataset: { lineId: l.line_id } },
        h("span", { class: "mono" }, `${l.camera_id} / ${l.line_id}`), ` (${l.kind}): ${l.in} in, ${l.out} out today`)))
      : null);
}

function storeCard(store) {
  const cams = store.cameras || [];
  const down = cams.filter((c) => c.status === "down").length;
  return h("section", { class: "panel", dataset: { storeId: store.store_id } },
    h("h2", null, store.name || store.store_id),
    h("p", { class: "muted small" }, [store.store_id, store.region, store.timezone].filter(Boolean).join(" · ")),
    down ? h("p", { class: "notice error" }, `${down} of ${cams.length} camera${cams.length === 1 ? "" : "s"} down`) : null,
    store.traffic ? traffic(store.traffic, store.timezone) : null,
    cams.length ? h("ul", { class: "cameras" }, cams.map((c) => camera(c, store.timezone))) : h("p", { class: "muted" }, "No cameras configured."),
    (store.registers || []).length
      ? h("p", { class: "muted small" }, `Registers: ${(store.registers || []).map((r) => (typeof r === "string" ? r : r.register_id || r.id)).join(", ")}`)
      : null);
}

async function load() {
  try {
    const { stores = [] } = await api("/v1/stores");
    clear(byId("stores-error"));
    clear(byId("stores"), stores.length ? stores.map(storeCard) : h("p", { class: "muted" }, "No stores are visible to you."));
    byId("stores-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    showError(err, byId("stores-error"));
  }
}

try {
  await initPage("stores");
  await load();
  setInterval(() => { if (!document.hidden) load(); }, REFRESH_MS);
} catch (err) {
  showError(err, byId("stores-error"));
}
