// /returns: the returns assessed at the tills (accept, warn, deny, with the score and the reasons in
// words) and the return-risk model that scored them: its held-out metrics, its warn and deny
// thresholds, and which features it leans on. The filters are a GET form, as on the feed: the query
// string is the state. The API shows a store manager only their own stores' returns.
import {
  api, byId, clear, filtersFromQuery, formatLocal, formatMoney, formatPercent, formatScore, h, initPage, keepFiltersInUrl, s,
  showError, storeIndex, storeName, storeTimeNode, storeZone,
} from "/static/common.js";

const FIELDS = ["store_id", "outcome"];
const OUTCOMES = ["accept", "warn", "deny"];
const PAGE_SIZE = 100;
const MAX_LIMIT = 500; // the API's own limit
const REASONS_SHOWN = 4;
const TOP_FEATURES = 12;
const REFRESH_MS = 30000;

const form = byId("filters");
const list = byId("decisions");
const empty = byId("decisions-empty");
const more = byId("load-more");
const errorBox = byId("decisions-error");

let stores = new Map();
let limit = PAGE_SIZE;
let shownIds = null;
let generation = 0; // bumps on every filter change, so a slow old answer never lands in a new list

function filtersFromUrl() {
  const filters = filtersFromQuery(FIELDS);
  if (filters.outcome && !OUTCOMES.includes(filters.outcome)) delete filters.outcome;
  return filters;
}

function fillForm(filters) {
  for (const name of FIELDS) {
    const select = form.elements.namedItem(name);
    const value = filters[name] || "";
    // A store from a link that this user's list lacks still shows as chosen (the API says if it is not theirs).
    if (value && ![...select.options].some((o) => o.value === value)) select.append(h("option", { value }, value));
    select.value = value;
  }
}

function fillStoreOptions() {
  const select = byId("f-store");
  const sorted = [...stores.values()].sort((a, b) => String(a.name || a.store_id).localeCompare(String(b.name || b.store_id)));
  for (const st of sorted) select.append(h("option", { value: st.store_id }, st.name ? `${st.name} (${st.store_id})` : st.store_id));
}

// ---- decisions

function outcomeOf(value) {
  const v = String(value ?? "").toLowerCase().replace(/^return_outcome_/, "");
  return OUTCOMES.includes(v) ? v : "unknown";
}

function outcomeBadge(value) {
  const outcome = outcomeOf(value);
  return h("span", { class: `badge outcome outcome-${outcome}`, dataset: { testid: "outcome" } }, outcome);
}

/** A reason as a sentence: capital first letter, a full stop at the end. */
function sentence(text) {
  const t = String(text ?? "").trim();
  if (!t) return "";
  const capital = t.charAt(0).toUpperCase() + t.slice(1);
  return /[.!?]$/.test(capital) ? capital : `${capital}.`;
}

function reasonItem(reason) {
  const weight = Number(reason.weight);
  const from = reason.feature
    ? (reason.feature.startsWith("policy:") ? "store policy" : `${reason.feature}${weight ? `, adds ${weight.toFixed(2)} to the score` : ""}`)
    : null;
  return h("li", { title: from }, sentence(reason.text));
}

function reasonsList(reasons) {
  const items = (reasons || []).filter((r) => r && String(r.text ?? "").trim());
  if (!items.length) return h("p", { class: "muted small" }, "No reasons given.");
  const shown = items.slice(0, REASONS_SHOWN);
  const rest = items.slice(REASONS_SHOWN);
  return [
    h("ul", { class: "reasons", dataset: { testid: "reasons" } }, shown.map(reasonItem)),
    rest.length ? h("details", { class: "small" }, h("summary", null, `${rest.length} more reason${rest.length === 1 ? "" : "s"}`),
      h("ul", { class: "reasons" }, rest.map(reasonItem))) : null,
  ];
}

function byRules(decision) {
  return String(decision.scored_by || "").trim().toLowerCase() === "rules";
}

function decisionRow(decision) {
  const outcome = outcomeOf(decision.outcome);
  const zone = storeZone(stores, decision.store_id);
  const rules = byRules(decision);
  const warning = String(decision.warning || "").trim();
  const where = [
    decision.register_id ? `register ${decision.register_id}` : null,
    decision.employee_id ? `employee ${decision.employee_id}` : null,
  ].filter(Boolean).join(" · ");
  const receipt = decision.original_transaction_id ? `receipt ${decision.original_transaction_id}` : "no receipt";
  return h("li", { class: ["decision-row", `outcome-border-${outcome}`], dataset: { decisionId: decision.decision_id, outcome, scoredBy: rules ? "rules" : "model" } },
    h("div", { class: "verdict" },
      outcomeBadge(outcome),
      h("span", { class: "score", title: `Chance of abuse, 0 to 1 (warn at ${formatScore(decision.warn_at)}, deny at ${formatScore(decision.deny_at)})`, dataset: { testid: "score" } },
        formatScore(decision.score))),
    h("div", { class: "main" },
      h("div", { class: "title" },
        h("span", { class: "amount", dataset: { testid: "amount" } }, formatMoney(decision.total_minor, decision.currency)),
        h("span", null, storeName(stores, decision.store_id)),
        h("span", { class: "muted small" }, decision.store_id)),
      h("div", { class: "where" }, where || "—"),
      h("div", { class: "where", dataset: { testid: "time" } }, storeTimeNode(decision.decided_time_ms, zone)),
      reasonsList(decision.reasons),
      rules
        ? h("p", { class: "notice warn small rules-warning", role: "note", dataset: { testid: "rules-warning" } },
          `Decided by the rules: ${warning || "no return-risk model is loaded"}`)
        : warning ? h("p", { class: "muted small" }, `Model warning: ${warning}`) : null),
    h("div", { class: "side" },
      h("span", { class: ["scored-by", rules ? "by-rules" : null], dataset: { testid: "scored-by" } }, decision.scored_by || "—"),
      h("span", { class: "muted" }, `warn ≥ ${formatScore(decision.warn_at)} · deny ≥ ${formatScore(decision.deny_at)}`),
      h("span", { class: "muted mono" }, decision.transaction_id || ""),
      h("span", { class: "muted" }, receipt)));
}

async function loadDecisions(reset) {
  const filters = filtersFromUrl();
  const gen = reset ? ++generation : generation;
  if (reset) limit = PAGE_SIZE;
  const q = new URLSearchParams({ ...filters, limit: String(limit) });
  more.disabled = true;
  try {
    const { decisions = [] } = await api(`/v1/returns/decisions?${q}`);
    if (gen !== generation) return;
    clear(errorBox);
    // A refresh that brings nothing new leaves the rows (and any reasons opened) as they are.
    const shown = decisions.map((d) => d.decision_id).join("\n");
    if (reset || shown !== shownIds) clear(list, decisions.map(decisionRow));
    shownIds = shown;
    empty.classList.toggle("hidden", decisions.length > 0);
    more.classList.toggle("hidden", decisions.length < limit || limit >= MAX_LIMIT);
    byId("decisions-updated").textContent = `${decisions.length} shown · updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    if (gen === generation) showError(err, errorBox);
  } finally {
    more.disabled = false;
  }
}

// ---- the model card

/** A permutation importance as {mean, std}: metadata holds either a number or {mean, std}. */
function permutationOf(value) {
  if (value === null || value === undefined) return null;
  if (typeof value === "object") {
    const mean = Number(value.mean);
    return Number.isFinite(mean) ? { mean, std: Number(value.std) || 0 } : null;
  }
  const mean = Number(value);
  return Number.isFinite(mean) ? { mean, std: 0 } : null;
}

function formatNumber(value, digits) {
  const n = Number(value);
  return value === null || value === undefined || !Number.isFinite(n) ? "—" : n.toFixed(digits);
}

/** The top features by permutation importance (impurity where none), both kinds as bars on their own scale. */
function topFeatures(importances, top = TOP_FEATURES) {
  const impurity = importances?.impurity || {};
  const permutation = importances?.permutation || {};
  const names = [...new Set([...Object.keys(permutation), ...Object.keys(impurity)])];
  const rows = names.map((name) => ({ name, impurity: Number(impurity[name]) || 0, permutation: permutationOf(permutation[name]) }));
  const perm = (r) => (r.permutation ? r.permutation.mean : -Infinity);
  rows.sort((a, b) => perm(b) - perm(a) || b.impurity - a.impurity || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return rows.slice(0, top);
}

function importanceChart(importances) {
  const rows = topFeatures(importances);
  if (!rows.length) return h("p", { class: "muted" }, "The model's metadata lists no feature importances.");
  const width = 360;
  const labelAt = 12;
  const bar = 8;
  const group = 40;
  const span = width - 60; // room for the value after the longest bar
  const maxImpurity = Math.max(0, ...rows.map((r) => r.impurity));
  const maxPermutation = Math.max(0, ...rows.map((r) => (r.permutation ? r.permutation.mean + r.permutation.std : 0)));
  const scale = (value, max) => (max > 0 && value > 0 ? Math.max(1, (value / max) * span) : 0);
  const chart = s("svg", {
    class: "importance-chart", viewBox: `0 0 ${width} ${rows.length * group + 2}`, role: "img",
    "aria-label": `Feature importances, top ${rows.length} by permutation: ${rows.map((r) => r.name).join(", ")}`,
  });
  rows.forEach((row, i) => {
    const y = i * group;
    const g = s("g", { class: "importance-row", dataset: { feature: row.name } });
    g.append(s("text", { class: "feature", x: 0, y: y + labelAt }, row.name));
    const wImp = scale(row.impurity, maxImpurity);
    g.append(s("rect", { class: "bar-impurity", x: 0, y: y + 16, width: wImp, height: bar },
      s("title", null, `${row.name}: impurity ${formatPercent(row.impurity)} of the forest's split gain`)));
    g.append(s("text", { class: "value", x: wImp + 4, y: y + 16 + bar }, `${(row.impurity * 100).toFixed(1)}%`));
    const p = row.permutation;
    const wPerm = p ? scale(p.mean, maxPermutation) : 0;
    const yPerm = y + 27;
    g.append(s("rect", { class: "bar-permutation", x: 0, y: yPerm, width: wPerm, height: bar },
      s("title", null, p ? `${row.name}: ROC AUC lost when shuffled ${p.mean.toFixed(4)} ± ${p.std.toFixed(4)}` : `${row.name}: no permutation importance`)));
    if (p && p.std > 0) {
      const lo = scale(Math.max(0, p.mean - p.std), maxPermutation);
      const hi = scale(p.mean + p.std, maxPermutation);
      if (hi > lo) g.append(s("line", { class: "whisker", x1: lo, x2: hi, y1: yPerm + bar / 2, y2: yPerm + bar / 2 }));
    }
    const valueAt = p ? Math.max(wPerm, scale(p.mean + p.std, maxPermutation)) : 0;
    g.append(s("text", { class: "value", x: valueAt + 4, y: yPerm + bar }, p ? p.mean.toFixed(4) : "—"));
    chart.append(g);
  });
  return [
    chart,
    h("p", { class: "legend importance-legend" },
      h("span", { class: "l-impurity" }, "Impurity: share of the forest's split gain"),
      h("span", { class: "l-permutation" }, importances?.permutation_on ? `Permutation: ${importances.permutation_on}` : "Permutation: ROC AUC lost when the feature is shuffled")),
    h("p", { class: "muted small" }, "Each kind is drawn to its own scale (its largest value is the longest bar); the thin line is ± one standard deviation."),
  ];
}

function thresholdsTable(thresholds) {
  const rows = [...(thresholds || [])].sort((a, b) => Number(a.threshold) - Number(b.threshold));
  if (!rows.length) return h("p", { class: "muted" }, "The model's metadata lists no thresholds.");
  const pct = (v) => h("td", { class: "num" }, formatPercent(v));
  return h("div", { class: "table-wrap" }, h("table", { class: "thresholds" },
    h("thead", null, h("tr", null,
      h("th", null, "Decision"), h("th", { class: "num" }, "Score ≥"), h("th", { class: "num hide-narrow" }, "Precision target"),
      h("th", { class: "num" }, "Test precision"), h("th", { class: "num" }, "Test recall"),
      h("th", { class: "num hide-narrow" }, "Validation precision"), h("th", { class: "num hide-narrow" }, "Validation recall"))),
    h("tbody", null, rows.map((t) => h("tr", { dataset: { threshold: t.name } },
      h("td", null, OUTCOMES.includes(t.name) ? outcomeBadge(t.name) : t.name),
      h("td", { class: "num" }, formatNumber(t.threshold, 3)),
      h("td", { class: "num hide-narrow" }, formatPercent(t.precision_target)),
      pct(t.test?.precision), pct(t.test?.recall),
      h("td", { class: "num hide-narrow" }, formatPercent(t.validation?.precision)), h("td", { class: "num hide-narrow" }, formatPercent(t.validation?.recall)))))));
}

function patternWord(pattern) {
  const text = String(pattern).replaceAll("_", " ");
  return text.charAt(0).toUpperCase() + text.slice(1);
}

function recallByPattern(metrics) {
  const sections = [];
  for (const [source, m] of Object.entries(metrics || {})) {
    const byPattern = m?.test_recall_by_pattern;
    if (!byPattern || typeof byPattern !== "object" || !Object.keys(byPattern).length) continue;
    const rows = Object.entries(byPattern).sort(([a], [b]) => a.localeCompare(b));
    sections.push(h("h3", null, `Recall by abuse pattern (${source} test)`),
      h("div", { class: "table-wrap" }, h("table", { class: "patterns", dataset: { source } },
        h("thead", null, h("tr", null, h("th", null, "Pattern"), h("th", { class: "num" }, "Returns"), h("th", { class: "num", title: "Share scored at or above the warn threshold (warned or denied)" }, "≥ warn"),
          h("th", { class: "num", title: "Share scored at or above the deny threshold" }, "≥ deny"))),
        h("tbody", null, rows.map(([pattern, r]) => h("tr", { dataset: { pattern } },
          h("td", null, patternWord(pattern)), h("td", { class: "num" }, String(r?.rows ?? "—")),
          h("td", { class: "num" }, formatPercent(r?.warn)), h("td", { class: "num" }, formatPercent(r?.deny))))))));
  }
  return sections;
}

function createdText(created) {
  const ms = Date.parse(created || "");
  return Number.isFinite(ms) ? formatLocal(ms) : created || "—";
}

const SOURCE_WORDS = { synthetic: "Synthetic chain", hq: "HQ-judged cases" };

/** Held-out ROC AUC per data source (the synthetic chain, HQ's judged returns), with the test rows it was measured on. */
function metricsTable(metrics) {
  const sources = Object.entries(metrics || {}).filter(([, m]) => m && (m.test_roc_auc !== undefined || m.validation_roc_auc !== undefined));
  if (!sources.length) return h("p", { class: "muted" }, "The model's metadata holds no held-out metrics.");
  const testCount = (value) => (value && typeof value === "object" ? value.test : value);
  return h("div", { class: "table-wrap" }, h("table", { class: "metrics", dataset: { testid: "model-metrics" } },
    h("thead", null, h("tr", null,
      h("th", null, "Data"), h("th", { class: "num" }, "Held-out ROC AUC"), h("th", { class: "num hide-narrow" }, "Validation ROC AUC"),
      h("th", { class: "num" }, "Test returns (abusive)"))),
    h("tbody", null, sources.map(([source, m]) => {
      const rows = testCount(m.rows);
      const positives = testCount(m.positives);
      return h("tr", { dataset: { source } },
        h("td", null, SOURCE_WORDS[source] || source),
        h("td", { class: "num" }, formatNumber(m.test_roc_auc, 3)),
        h("td", { class: "num hide-narrow" }, formatNumber(m.validation_roc_auc, 3)),
        h("td", { class: "num" }, rows === undefined ? "—" : `${rows}${positives === undefined ? "" : ` (${positives})`}`));
    }))));
}

function modelCard(body) {
  const card = body?.return || {};
  if (!card.loaded) {
    return [
      h("p", { class: "notice warn", role: "note", dataset: { testid: "model-missing" } },
        `Decided by the rules: ${String(card.warning || "").trim() || "no return-risk model is loaded"}`),
      h("p", { class: "muted small" }, "Every return is scored by the rules until the api starts with a return-risk model."),
    ];
  }
  const warning = String(card.warning || "").trim();
  return [
    h("p", { class: "model-title" }, h("strong", { dataset: { testid: "model-version" } }, body.scored_by || `model ${card.version}`),
      h("span", { class: "muted small", dataset: { testid: "model-created" } }, ` · version ${card.version ?? "—"}, created ${createdText(card.created)}`)),
    warning ? h("p", { class: "notice warn small", role: "note" }, `Loaded with a warning: ${warning}`) : null,
    metricsTable(card.metrics),
    h("h3", null, "Thresholds"),
    thresholdsTable(card.thresholds),
    h("h3", null, `Feature importances (top ${TOP_FEATURES} by permutation)`),
    importanceChart(card.importances),
    recallByPattern(card.metrics),
    typeof card.split === "string" && card.split ? h("p", { class: "muted small" }, `Split: ${card.split}.`) : null,
  ];
}

async function loadModel() {
  try {
    const body = await api("/v1/returns/model");
    clear(byId("model-error"));
    clear(byId("model-card"), modelCard(body));
  } catch (err) {
    clear(byId("model-card"));
    showError(err, byId("model-error"));
  }
}

// ---- filters

keepFiltersInUrl(form, byId("f-reset"), FIELDS, "/returns", () => {
  fillForm(filtersFromUrl());
  loadDecisions(true);
});

more.addEventListener("click", () => {
  limit = Math.min(MAX_LIMIT, limit + PAGE_SIZE);
  loadDecisions(false);
});

try {
  await initPage("returns");
  stores = await storeIndex();
  fillStoreOptions();
  fillForm(filtersFromUrl());
  await Promise.all([loadDecisions(true), loadModel()]);
  // No live stream for returns: look again now and then while the page is in view.
  setInterval(() => { if (!document.hidden) loadDecisions(false); }, REFRESH_MS);
} catch (err) {
  showError(err, errorBox);
}
