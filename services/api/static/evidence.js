// The evidence of an alert as its page and its incident's page show it: the snapshot with the
// detections overlay, the frames around the event, the clip, the POS events and who was notified.
// The page holds the evidence panel's elements (the ids below) once.
import { api, byId, canJudge, clear, formatMoney, h, s, safeUrl, showError, storeZone, timeNode } from "/static/common.js";

const OVERLAY_KEY = "sw.overlay";
const image = byId("evidence-image");
const overlay = byId("evidence-overlay");
const figure = byId("evidence-figure");
const overlayToggle = byId("overlay-toggle");
const showSnapshot = byId("show-snapshot");

let shownPackage = null;
let snapshotUrl = null;
let imageTries = 0;
let pickedFrame = false; // the user chose a frame: refreshes keep it on screen

function pct(value) {
  return Math.round(Number(value) * 100);
}

/** Boxes and zones from evidence_package.detections (normalised 0..1), in the image's own pixels. */
function drawOverlay(detections) {
  const w = image.naturalWidth;
  const hgt = image.naturalHeight;
  overlay.replaceChildren();
  if (!detections || !w || !hgt) return;
  overlay.setAttribute("viewBox", `0 0 ${w} ${hgt}`);
  overlay.setAttribute("preserveAspectRatio", "none");
  // Labels about 12 CSS pixels high whatever the image's size on screen.
  const font = Math.round(12 * (w / Math.max(1, image.clientWidth || w)));
  const label = (x, y, text) => s("text", { class: "overlay-label", x: x * w + 3, y: Math.max(y * hgt - 4, font), "font-size": font }, text);
  for (const zone of detections.zones || []) {
    const points = (zone.polygon || []).filter((p) => Array.isArray(p) && p.length >= 2);
    if (points.length < 3) continue;
    overlay.append(s("polygon", { class: "overlay-zone", points: points.map(([x, y]) => `${x * w},${y * hgt}`).join(" "), "vector-effect": "non-scaling-stroke" }));
    const [lx, ly] = points.reduce(([ax, ay], [x, y]) => [Math.min(ax, x), Math.min(ay, y)], [1, 1]);
    overlay.append(label(lx, ly + font / hgt + 0.01, [zone.id, zone.kind].filter(Boolean).join(" · ")));
  }
  const box = (b, cls) => s("rect", {
    class: cls, x: b[0] * w, y: b[1] * hgt, width: Math.max(0, (b[2] - b[0]) * w), height: Math.max(0, (b[3] - b[1]) * hgt), "vector-effect": "non-scaling-stroke",
  });
  for (const obj of detections.objects || []) {
    if (!Array.isArray(obj.box) || obj.box.length !== 4) continue;
    overlay.append(box(obj.box, "overlay-object"), label(obj.box[0], obj.box[1], `${obj.label || "object"} ${pct(obj.score)}%`));
  }
  for (const person of detections.persons || []) {
    if (!Array.isArray(person.box) || person.box.length !== 4) continue;
    const id = person.track_id !== undefined && person.track_id !== null && person.track_id !== "" ? `#${person.track_id}` : "person";
    overlay.append(box(person.box, "overlay-person"), label(person.box[0], person.box[1], `${id} ${pct(person.score)}%`));
  }
}

function overlayWanted() {
  return overlayToggle.checked && image.dataset.kind === "snapshot";
}

function refreshOverlay() {
  const detections = shownPackage?.detections;
  overlay.classList.toggle("hidden", !overlayWanted());
  if (overlayWanted()) drawOverlay(detections);
}

function shownUrl() {
  return (image.getAttribute("src") || "").split("?")[0];
}

function showImage(url, kind, caption) {
  image.dataset.kind = kind;
  if (shownUrl() !== url) {
    image.src = url;
  } else if (image.dataset.failed) {
    // Asked for before the recorder had written it: ask again, past any cached failure.
    imageTries += 1;
    image.src = `${url}?try=${imageTries}`;
  }
  figure.classList.remove("hidden");
  clear(byId("evidence-caption"), caption);
  showSnapshot.classList.toggle("hidden", kind === "snapshot" || !snapshotUrl);
  for (const btn of byId("frame-strip").children) btn.classList.toggle("current", btn.dataset.url === url);
  refreshOverlay();
}

image.addEventListener("load", () => {
  delete image.dataset.failed;
  refreshOverlay();
});
new ResizeObserver(() => { if (image.complete && image.naturalWidth) refreshOverlay(); }).observe(image);
image.addEventListener("error", () => {
  image.dataset.failed = "1";
  clear(byId("evidence-caption"), "The image could not be loaded.");
});
overlayToggle.checked = localStorage.getItem(OVERLAY_KEY) !== "off";
overlayToggle.addEventListener("change", () => {
  localStorage.setItem(OVERLAY_KEY, overlayToggle.checked ? "on" : "off");
  refreshOverlay();
});
showSnapshot.addEventListener("click", () => {
  pickedFrame = false;
  showImage(snapshotUrl, "snapshot", "Snapshot at the alert");
});

export function renderEvidence(alert, stores, user) {
  const pkg = alert.evidence_package;
  shownPackage = pkg;
  const statusBox = byId("evidence-status");
  const zone = storeZone(stores, alert.store_id);
  clear(statusBox);
  if (!pkg) {
    const fresh = Date.now() - Number(alert.raised_time_ms || alert.event_time_ms || 0) < 90e3;
    statusBox.append(h("p", { class: fresh ? "notice info" : "notice" }, fresh ? "Evidence is being recorded…" : "No evidence was recorded for this alert."));
  } else if (pkg.status === "pending") {
    statusBox.append(h("p", { class: "notice info", dataset: { testid: "evidence-pending" } }, "Evidence is still being recorded; this page refreshes by itself."));
  } else if (pkg.status === "partial") {
    const missing = (pkg.missing || []).join(", ");
    statusBox.append(h("p", { class: "notice warn" }, `Some evidence is missing${missing ? `: ${missing}` : ""}.`));
  }
  snapshotUrl = safeUrl(pkg?.snapshot_url);
  const frames = (pkg?.frames || []).filter((f) => safeUrl(f.url));
  const strip = byId("frame-strip");
  clear(strip, frames.map((f) => h("button", {
    type: "button", dataset: { url: f.url }, title: `Frame ${f.sequence ?? ""}`,
    onclick: () => {
      pickedFrame = true;
      showImage(f.url, "frame", [`Frame ${f.sequence ?? ""} at `, timeNode(f.capture_time_ms, zone)]);
    },
  }, h("img", { src: f.url, alt: `Frame ${f.sequence ?? ""}`, loading: "lazy", width: 112, height: 63 }),
  h("span", { class: "time" }, f.capture_time_ms ? new Date(Number(f.capture_time_ms)).toLocaleTimeString() : ""))));
  const shownFrame = pickedFrame && frames.some((f) => f.url === shownUrl());
  if (!shownFrame) {
    if (snapshotUrl) showImage(snapshotUrl, "snapshot", "Snapshot at the alert");
    else if (frames.length) showImage(frames[0].url, "frame", "First recorded frame");
    else figure.classList.add("hidden");
  }
  const hasDetections = !!pkg?.detections && !!snapshotUrl;
  byId("overlay-toggle-label").classList.toggle("hidden", !hasDetections);
  byId("overlay-legend").classList.toggle("hidden", !hasDetections);
  const clip = byId("clip-link");
  const clipUrl = safeUrl(pkg?.clip_url);
  clip.classList.toggle("hidden", !clipUrl);
  if (clipUrl) clip.href = clipUrl;
  // A person followed across cameras: a clip of each other camera that saw them.
  document.getElementById("other-clips")?.remove();
  const others = (pkg?.other_cameras || []).filter((o) => safeUrl(o.clip_url));
  if (others.length) {
    clip.after(h("span", { id: "other-clips" }, others.map((o) => h("a", {
      class: "button", href: safeUrl(o.clip_url), target: "_blank", rel: "noopener", dataset: { cameraId: o.camera_id },
    }, `Clip of ${o.camera_id}`))));
  }
  byId("export").classList.toggle("hidden", !canJudge(user));
}

// ---- point of sale and notifications

function posType(type) {
  return String(type ?? "").toLowerCase().replace(/^pos_event_type_/, "").replaceAll("_", " ");
}

export function renderPos(alert, stores) {
  const events = alert.pos_events || [];
  const zone = storeZone(stores, alert.store_id);
  if (!events.length) {
    clear(byId("pos-events"), h("p", { class: "muted" }, "No POS events are linked to this alert."));
    return;
  }
  const items = (ev) => (ev.items || []).map((it) => `${it.quantity ?? 1} × ${[it.sku, it.description].filter(Boolean).join(" ")}`).join("; ");
  clear(byId("pos-events"), h("table", null,
    h("thead", null, h("tr", null, ["Time", "Type", "Transaction", "Employee", "Amount", "Items", "Tender"].map((c) => h("th", { class: c === "Amount" ? "num" : null }, c)))),
    h("tbody", null, events.map((ev) => h("tr", null,
      h("td", null, timeNode(ev.event_time_ms, zone)),
      h("td", null, posType(ev.type)),
      h("td", { class: "mono" }, ev.transaction_id || ev.event_id || "—"),
      h("td", null, ev.employee_id || "—"),
      h("td", { class: "num nowrap" }, formatMoney(ev.total_minor, ev.currency)),
      h("td", null, items(ev) || "—"),
      h("td", null, ev.tender || "—"))))));
}

const DELIVERY_WORDS = { delivered: "delivered", failed: "undeliverable (kept in the DLQ)", retrying: "retrying", queued: "queued",
  sending: "sending", waiting: "waiting for the snapshot", held: "held for a digest" };

function deliveryAttempts(d) {
  const log = d.attempt_log || [];
  return log.map((a) => `#${a.n} ${a.outcome}${a.ms != null ? ` in ${a.ms} ms` : ""}${a.error ? `: ${a.error}` : ""}`).join("\n");
}

export function renderNotifications(alert, stores) {
  const deliveries = alert.deliveries || [];
  if (!deliveries.length) {
    clear(byId("notifications"), h("p", { class: "muted" }, "Nobody has been notified of this alert (yet)."));
    return;
  }
  const zone = storeZone(stores, alert.store_id);
  clear(byId("notifications"), h("table", null,
    h("thead", null, h("tr", null, ["Recipient", "Channel", "Why", "Status", "Attempts", "Latency", "Delivered"].map((c) => h("th", { class: c === "Attempts" || c === "Latency" ? "num" : null }, c)))),
    h("tbody", null, deliveries.map((d) => h("tr", { "data-status": d.status },
      h("td", null, d.recipient),
      h("td", { class: "mono" }, `${d.channel}${d.channel_type ? ` (${d.channel_type})` : ""}`),
      h("td", null, d.kind === "digest" ? `digest of ${d.alerts_in_digest ?? "held"} alerts: ${d.reason}` : d.reason || "—"),
      h("td", { title: d.last_error || "" }, DELIVERY_WORDS[d.status] || d.status, d.last_error && d.status !== "delivered" ? h("div", { class: "muted small" }, d.last_error) : null),
      h("td", { class: "num", title: deliveryAttempts(d) }, String(d.attempts)),
      h("td", { class: "num nowrap" }, d.latency_ms != null ? `${(d.latency_ms / 1000).toFixed(1)} s` : "—"),
      h("td", null, d.delivered_ms ? timeNode(d.delivered_ms, zone) : "—"))))));
}

/** Download an alert's evidence export (a zip), named as the server names it. */
export async function downloadExport(path, fallbackName, button) {
  button.disabled = true;
  try {
    const res = await api(path, { raw: true });
    const blob = await res.blob();
    const named = /filename="?([^";]+)"?/.exec(res.headers.get("Content-Disposition") || "");
    const url = URL.createObjectURL(blob);
    const a = h("a", { href: url, download: named ? named[1] : fallbackName, class: "hidden" });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60e3);
  } catch (err) {
    showError(err);
  } finally {
    button.disabled = false;
  }
}
