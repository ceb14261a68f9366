/* The modcoord dashboard page: reads its layout from /api/layout, polls /api/live every
 * poll_ms, the insights every insights_poll_ms and the history (/api/history) at most as
 * often as its resolution changes,
 * and draws what it gets. Every request carries the HttpOnly cookie the first,
 * token-carrying request set; the token is then removed from the address bar.
 *
 * For tests and the benchmark, <body> carries:
 *   data-ready="1"        once the history is drawn and the live figures shown (the
 *                         insights are asked for then),
 *   data-ready-ms=T       when that was, in ms since the navigation started,
 *   data-live-updates=N   live answers shown so far,
 *   data-history-points=N points drawn over all charts,
 *   data-range=S          the range shown, in seconds.
 */
"use strict";

const state = {
  layout: null,
  range: 3600,
  series: {},          // metric -> [[ts, mean], ...] (the history's bucket means)
  resolution: 1,
  historyAt: 0,        // Date.now() of the last history answer
  historyNow: 0,       // the daemon's clock ("now") of that answer
  liveUpdates: 0,
  charts: new Map(),   // panel id -> {chart, card, legend}
  historyOff: false,
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(path) {
  const response = await fetch(path, {credentials: "same-origin", cache: "no-store"});
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error || message; } catch (e) { /* text */ }
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return response.json();
}

// -- formatting ----------------------------------------------------------------------------

function formatNumber(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toFixed(1) + "G";
  if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
  if (a >= 100 || Number.isInteger(v)) return v.toFixed(0);
  if (a >= 10) return v.toFixed(1);
  return v.toPrecision(3).replace(/\.?0+$/, "");
}

function formatValue(v, unit) {
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (typeof v === "string") return v;
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  switch (unit) {
    case "bytes": return formatNumber(v / (1024 * 1024)) + " MiB";
    case "ratio": return formatNumber(v * 100) + " %";
    case "s": return formatDuration(v);
    case "": return formatNumber(v);
    default: return formatNumber(v) + " " + unit;
  }
}

/* A y-axis label: the number alone (the unit is in the chart's title), in MiB or %. */
function axisLabel(v, unit) {
  if (unit === "bytes") return formatNumber(v / (1024 * 1024)) + "M";
  if (unit === "ratio") return formatNumber(v * 100) + "%";
  return formatNumber(v);
}

function formatDuration(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return "–";
  if (s < 1) return "now";
  if (s < 90) return Math.round(s) + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  if (s < 172800) return (s / 3600).toFixed(1) + " h";
  return (s / 86400).toFixed(1) + " d";
}

function statusField(status, path) {
  return path.split(".").reduce((o, k) => (o === null || o === undefined ? undefined : o[k]), status);
}

// -- the layout ----------------------------------------------------------------------------

function globToRegExp(pattern) {
  const escaped = pattern.replace(/[.+?^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*");
  return new RegExp("^" + escaped + "$");
}

function panelMetrics(panel) {
  const known = Object.keys(state.series).sort();
  const out = [];
  for (const pattern of panel.metrics) {
    if (!pattern.includes("*")) {
      if (known.includes(pattern)) out.push(pattern);
      continue;
    }
    const re = globToRegExp(pattern);
    for (const metric of known) if (re.test(metric) && !out.includes(metric)) out.push(metric);
  }
  return out;
}

function buildLayout() {
  const tiles = $("tiles");
  for (const tile of state.layout.tiles) {
    tiles.append(el("div", {class: "tile", "data-tile": tile.id},
      el("div", {class: "label"}, tile.label), el("div", {class: "value"}, "–")));
  }
  const charts = $("charts");
  for (const panel of state.layout.panels) {
    const canvas = el("canvas", {"data-panel": panel.id, role: "img", "aria-label": panel.title});
    const legend = el("div", {class: "legend"});
    const empty = el("div", {class: "empty", hidden: ""}, "no data yet");
    const card = el("div", {class: "chart", "data-chart": panel.id},
      el("h3", {}, el("span", {}, panel.title), el("span", {class: "muted"}, panel.unit)),
      canvas, empty, legend);
    charts.append(card);
    state.charts.set(panel.id, {chart: new LineChart(canvas), card, legend, canvas, empty, panel});
  }
  const nav = $("ranges");
  for (const range of state.layout.ranges) {
    const button = el("button", {type: "button", "data-range": range.seconds,
                                 "aria-pressed": String(range.seconds === state.range)},
                      range.label);
    button.addEventListener("click", () => setRange(range.seconds));
    nav.append(button);
  }
  $("poll").textContent = String(state.layout.poll_ms / 1000);
  $("version").textContent = state.layout.version;
}

function setRange(seconds) {
  state.range = seconds;
  state.series = {};
  state.historyAt = 0;
  document.body.dataset.range = String(seconds);
  for (const button of $("ranges").querySelectorAll("button")) {
    button.setAttribute("aria-pressed", String(Number(button.dataset.range) === seconds));
  }
  const label = state.layout.ranges.find((r) => r.seconds === seconds);
  if (label) window.history.replaceState(null, "", "#" + label.label.replace(/\s/g, ""));
  refreshHistory(true).catch(showError);
}

/* The range the address asks for (#15min, #1h, #6h, #1d, #30d), read before the layout
 * is in, so that the first history request goes out at once. */
function rangeFromHash() {
  const match = /^#(\d+)(min|h|d)$/.exec(window.location.hash.replace(/\s|%20/g, ""));
  if (!match) return state.range;
  return Number(match[1]) * {min: 60, h: 3600, d: 86400}[match[2]];
}

// -- the history ---------------------------------------------------------------------------

/* Fetch the range (first time) or only what is new since the last answer, and merge.
 * Only ranges the history answers at 1 s (up to an hour) are fetched piecemeal: a short
 * `since` is always answered at the finest resolution, so a longer range is read whole
 * again (once per resolution step, see tick). */
async function refreshHistory(full, draw = true) {
  const range = state.range;
  const incremental = !full && state.historyNow > 0 && state.resolution === 1 && range <= 3600;
  const elapsed = (Date.now() - state.historyAt) / 1000;
  const since = incremental
    ? Math.min(state.range, Math.ceil(elapsed + 3 * state.resolution))
    : state.range;
  let answer;
  try {
    answer = await api(`/api/history?since=${since}&columns=ts,mean`);
  } catch (error) {
    if (error.status === 400 && /history is off/.test(error.message)) {
      state.historyOff = true;
      if (draw) drawCharts();
      return;
    }
    throw error;
  }
  if (range !== state.range) return; // the range changed meanwhile: that answer is stale
  state.historyOff = false;
  state.resolution = answer.resolution_s;
  state.historyAt = Date.now();
  state.historyNow = answer.now;
  const cutoff = answer.now - state.range;
  for (const [metric, points] of Object.entries(answer.series)) {
    const old = incremental ? (state.series[metric] || []) : [];
    const first = points.length ? points[0][0] : Infinity;
    const merged = old.filter((p) => p[0] < first && p[0] >= cutoff).concat(points);
    state.series[metric] = merged;
  }
  $("resolution").textContent = `· ${state.resolution} s resolution`;
  if (draw) drawCharts();
}

function drawCharts() {
  let total = 0;
  const to = state.historyNow || Date.now() / 1000;
  const from = to - state.range;
  for (const {chart, legend, canvas, empty, panel} of state.charts.values()) {
    const metrics = panelMetrics(panel);
    legend.replaceChildren();
    const series = metrics.map((metric, i) => ({
      name: metric,
      color: CHART_COLORS[i % CHART_COLORS.length],
      points: state.series[metric],
    }));
    const hasData = series.some((s) => s.points.length > 0);
    canvas.hidden = !hasData;
    empty.hidden = hasData;
    empty.textContent = state.historyOff ? "history is off (history.enabled: false)" : "no data yet";
    if (!hasData) { canvas.dataset.points = "0"; continue; }
    total += chart.draw(series, {from, to, resolution: state.resolution,
                                 format: (v) => axisLabel(v, panel.unit)});
    for (const s of series) {
      const last = s.points.length ? s.points[s.points.length - 1][1] : null;
      const swatch = el("i");
      swatch.style.background = s.color; // a property, not a style attribute (the CSP)
      legend.append(el("span", {}, swatch,
        `${s.name.replace(/^module\.|\.updates_per_s$|^adaptive\./g, "")} ${formatValue(last, panel.unit)}`));
    }
  }
  document.body.dataset.historyPoints = String(total);
}

// -- the live figures ----------------------------------------------------------------------

function renderLive(live) {
  const status = live.status;
  const health = $("health");
  health.textContent = status.is_coordinating ? "coordinating" : "not coordinating";
  health.className = "badge " + (status.is_coordinating ? "good" : "bad");
  $("updated").textContent = "updated " + new Date(live.now * 1000).toLocaleTimeString();
  for (const tile of state.layout.tiles) {
    const [kind, key] = tile.source.split(/:(.*)/s);
    const value = kind === "history" ? live.latest[key] : statusField(status, key);
    const node = document.querySelector(`[data-tile="${tile.id}"] .value`);
    const text = formatValue(value, tile.unit);
    const space = text.indexOf(" ");
    node.replaceChildren(space < 0 ? text : text.slice(0, space));
    if (space >= 0) node.append(el("small", {}, text.slice(space)));
    node.classList.toggle("good", value === true);
    node.classList.toggle("bad", value === false);
  }
  renderModules(live.modules);
  renderActors(status.actors || {});
  renderAdaptive(((status.adaptive || {}).parameters) || {});
  const dash = status.dashboard || {};
  state.liveUpdates += 1;
  document.body.dataset.liveUpdates = String(state.liveUpdates);
  if (dash.error) showError(new Error(dash.error));
}

function renderInsights(insights) {
  const list = $("insights");
  list.replaceChildren(...insights.map((i) => {
    const item = el("li", {class: i.severity, "data-insight": i.id},
      el("strong", {}, `[${i.severity}] ${i.id}`), " ", i.message);
    if (i.threshold !== null && i.threshold !== undefined) {
      item.append(el("div", {class: "muted"},
        `observed ${formatNumber(i.observed)} vs threshold ${formatNumber(i.threshold)}` +
        (i.window_s ? ` over ${formatDuration(i.window_s)}` : "")));
    }
    if (i.recommendation) item.append(el("div", {class: "rec"}, "→ " + i.recommendation));
    return item;
  }));
}

function fillTable(id, rows) {
  const body = $(id).querySelector("tbody");
  body.replaceChildren(...rows.map((cells) => el("tr", {},
    ...cells.map(([text, cls]) => el("td", cls ? {class: cls} : {}, text)))));
  if (!rows.length) {
    const columns = $(id).querySelectorAll("th").length;
    body.append(el("tr", {}, el("td", {colspan: String(columns), class: "muted"}, "none")));
  }
}

function renderModules(modules) {
  fillTable("modules", modules.map((m) => [
    [m.module_id], [m.name], [m.supported_modes.join(", ")],
    [m.updates_per_s === null ? "–" : formatNumber(m.updates_per_s), "num"],
    [m.idle_s === null ? "–" : (m.idle_s < 1 ? "now" : formatDuration(m.idle_s) + " ago"), "num"],
  ]));
}

function renderActors(actors) {
  fillTable("actors", Object.entries(actors).sort().map(([name, a]) => [
    [name], [a.alive ? a.state : `down (${a.state})`], [String(a.restarts), "num"],
  ]));
}

function renderAdaptive(parameters) {
  fillTable("adaptive", Object.entries(parameters).sort().map(([name, p]) => [
    [name + (p.pinned ? " (pinned)" : "")], [formatValue(p.configured, "")],
    [formatValue(p.effective, ""), "num"], [p.reason || ""],
  ]));
}

function showError(error) {
  const banner = $("banner");
  banner.hidden = false;
  banner.textContent = error.status === 403
    ? "access refused: open the URL that 'modcoord dashboard' prints"
    : `cannot reach the daemon: ${error.message} (retrying)`;
}

function clearError() {
  $("banner").hidden = true;
}

// -- the loop ------------------------------------------------------------------------------

async function refreshInsights() {
  try {
    renderInsights((await api("/api/insights")).insights || []);
  } catch (error) {
    showError(error);
  }
}

async function tick() {
  try {
    renderLive(await api("/api/live"));
    const due = Math.max(state.layout.poll_ms, state.resolution * 1000);
    if (Date.now() - state.historyAt >= due) await refreshHistory(false);
    clearError();
  } catch (error) {
    showError(error);
  }
}

async function main() {
  // The token is in the cookie now: take it out of the address bar (and the history).
  if (window.location.search.includes("token=")) {
    window.history.replaceState(null, "", "/" + window.location.hash);
  }
  state.range = rangeFromHash();
  document.body.dataset.range = String(state.range);
  // The three first requests go out together; the charts are drawn once all are in.
  const layout = api("/api/layout");
  const live = api("/api/live");
  const history = refreshHistory(true, false);
  try {
    state.layout = await layout;
  } catch (error) {
    showError(error);
    return;
  }
  if (!state.layout.ranges.some((r) => r.seconds === state.range)) state.range = 3600;
  buildLayout();
  try {
    await history;
    drawCharts();
    renderLive(await live);
    document.body.dataset.ready = "1";
    document.body.dataset.readyMs = String(Math.round(performance.now()));
  } catch (error) {
    showError(error);
  }
  setInterval(tick, state.layout.poll_ms);
  // The insights after the first paint (their rules are the dearest answer), then seldom.
  refreshInsights();
  setInterval(refreshInsights, state.layout.insights_poll_ms);
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(drawCharts, 150);
  });
}

main();
