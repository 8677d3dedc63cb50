// What an alert's page and an incident's page share besides the evidence (evidence.js): their
// tables' rows, the verdicts given (#history), the verdict buttons, and loading the page again
// while its evidence is still being recorded.
import { ApiError, VERDICT_WORDS, api, byId, canJudge, clear, formatLocal, h, showError } from "/static/common.js";

const REFETCH_MS = 4000;
const REFETCH_TRIES = 30; // about two minutes of "still recording" before asking for a reload

export function row(name, ...value) {
  return h("tr", null, h("th", { scope: "row" }, name), h("td", null, ...value));
}

/** The verdicts given, oldest first; `covered(v)` adds what one of them applied to, where it says more. */
export function renderHistory(history, covered = () => null) {
  clear(byId("history"), history.length
    ? history.map((v) => h("li", null,
      h("strong", null, VERDICT_WORDS[v.verdict] || v.verdict), " by ", v.user || "?", " · ", h("span", { class: "muted small" }, formatLocal(v.time_ms)),
      covered(v),
      v.note ? h("div", null, v.note) : null))
    : h("li", { class: "muted" }, "No verdict yet."));
}

/** Confirming and dismissing are for those who may judge; officers only acknowledge. */
export function showVerdictButtons(user) {
  const judge = canJudge(user);
  byId("btn-confirm").classList.toggle("hidden", !judge);
  byId("btn-dismiss").classList.toggle("hidden", !judge);
}

/** Is the evidence still being recorded? Its package says; before there is one, for 90 s after `raisedMs`. */
export function stillRecording(pkg, raisedMs) {
  if (pkg) return pkg.status === "pending";
  return Date.now() - Number(raisedMs || 0) < 90e3;
}

/**
 * The page's load(): GET `url` and `render` it, again every few seconds while `recording(view)`.
 * Errors go in #`name`-error; a 404 says `missing` there and hides #`name`.
 */
export function detailLoader({ url, name, render, recording, missing }) {
  let tries = 0;
  let refetchTimer = null;
  async function load() {
    clearTimeout(refetchTimer);
    try {
      const view = await api(url);
      render(view);
      if (recording(view)) {
        tries += 1;
        if (tries < REFETCH_TRIES) refetchTimer = setTimeout(load, REFETCH_MS);
        else clear(byId("evidence-status"), h("p", { class: "notice warn" }, "Evidence is taking long to record; reload the page later."));
      }
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) {
        clear(byId(`${name}-error`), h("div", { class: "notice error", role: "alert" }, missing));
        byId(name).classList.add("hidden");
      } else {
        showError(err, byId(`${name}-error`));
      }
    }
  }
  return load;
}

/**
 * The [data-verdict] buttons: each POSTs its verdict and #verdict-note to `url`, then `saved(verdict,
 * answer)` says so and `load()` shows the page as it stands.
 */
export function verdictButtons({ url, saved, load }) {
  async function send(verdict, button) {
    const buttons = [...document.querySelectorAll("[data-verdict]")];
    buttons.forEach((b) => { b.disabled = true; });
    try {
      const updated = await api(url, { method: "POST", body: { verdict, note: byId("verdict-note").value.trim() } });
      byId("verdict-note").value = "";
      saved(verdict, updated);
      await load();
      button.focus();
    } catch (err) {
      showError(err);
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
  }
  for (const button of document.querySelectorAll("[data-verdict]")) {
    button.addEventListener("click", () => send(button.dataset.verdict, button));
  }
}
