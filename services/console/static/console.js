// The AURA console page: polls /api/state once a second and redraws, without a reload.
// Everything shown comes from the bus (through the console) and is written with textContent, never as HTML:
// a dead letter's error text is whatever a client put on the bus.
"use strict";

const POLL_MS = 1000;
const LWC = window.LightweightCharts;
const COLORS = { equity: "#1f4fd1", BTC: "#f7931a", SPY: "#2ca02c", GOLD: "#9467bd", drawdown: "#d62728" };
const NAMES = { equity: "AURA equity", BTC: "BTC buy & hold", SPY: "SPY buy & hold", GOLD: "Gold (GLD) buy & hold" };

const $ = (id) => document.getElementById(id);
const fmt = (x, digits = 2) => (x === null || x === undefined || Number.isNaN(x)) ? "–"
  : Number(x).toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
// Quantities and prices by significant digits: a fixed count of decimals printed a price of 0.00001234 as 0.0000,
// and trimming zeros off toPrecision's text cut 50,000,000 coins (a memecoin position) to "5".
const sig = (x, digits) => (x === null || x === undefined || Number.isNaN(x)) ? "–"
  : Number(x).toLocaleString("en-US", { maximumSignificantDigits: digits });
const qty = (x) => sig(x, 8);
const price = (x) => sig(x, 8);
const when = (ms) => ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) + "Z" : "–";

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

// A table from headers and rows; a cell is a value or [value, css class]; numbers are right-aligned.
function table(id, headers, rows, empty) {
  const t = $(id);
  t.replaceChildren();
  if (!rows.length) { t.append(el("caption", empty || "none", "muted")); return; }
  const head = el("tr");
  headers.forEach((h) => head.append(el("th", h)));
  t.append(head);
  rows.forEach((cells) => {
    const tr = el("tr");
    cells.forEach((c) => {
      const [value, cls] = Array.isArray(c) ? c : [c, typeof c === "number" ? "num" : ""];
      tr.append(el("td", value, cls));
    });
    t.append(tr);
  });
}

function kv(id, pairs) {
  const box = $(id);
  box.replaceChildren();
  pairs.forEach(([k, v, cls]) => { box.append(el("span", k, "k")); box.append(el("span", v, cls)); });
}

// --- charts ---------------------------------------------------------------------------------------------------

const charts = {};
function makeCharts() {
  if (!LWC) return;
  const options = { autoSize: true, layout: { attributionLogo: true, textColor: "#1d2330" },
    timeScale: { timeVisible: true, secondsVisible: false }, rightPriceScale: { borderVisible: false } };
  charts.main = LWC.createChart($("equity-chart"), options);
  charts.series = {};
  for (const name of ["BTC", "SPY", "GOLD", "equity"]) {
    charts.series[name] = charts.main.addSeries(LWC.LineSeries, { color: COLORS[name], title: name === "equity" ? "AURA" : name,
      lineWidth: name === "equity" ? 3 : 2, priceLineVisible: false });
  }
  charts.dd = LWC.createChart($("drawdown-chart"), options);
  charts.drawdown = charts.dd.addSeries(LWC.AreaSeries, { lineColor: COLORS.drawdown, topColor: "rgba(214,39,40,0.05)",
    bottomColor: "rgba(214,39,40,0.35)", priceFormat: { type: "custom", formatter: (v) => v.toFixed(1) + "%" } });
  const legend = $("legend");
  for (const name of ["equity", "BTC", "SPY", "GOLD"]) {
    const item = el("span", NAMES[name]);
    const swatch = el("i");
    swatch.style.background = COLORS[name];
    item.prepend(swatch);
    legend.append(item);
  }
}

let drawn = "";
function drawCharts(chart) {
  if (!charts.main || !chart) return;
  const eq = chart.equity;
  const signature = eq.length + ":" + (eq.length ? eq[eq.length - 1].time + ":" + eq[eq.length - 1].value : "");
  if (signature === drawn) return;  // unchanged: keep the user's zoom
  // Fitted again as points arrive while the whole history is in view (the chart would otherwise scroll the
  // oldest points out to the left); once the user has zoomed or scrolled in, their view is kept.
  const range = charts.main.timeScale().getVisibleLogicalRange();
  const showingAll = drawn === "" || !range || range.from <= 0.5;
  drawn = signature;
  charts.series.equity.setData(eq);
  for (const name of ["BTC", "SPY", "GOLD"]) charts.series[name].setData(chart.benchmarks[name] || []);
  charts.drawdown.setData(chart.drawdown);
  if (showingAll) { charts.main.timeScale().fitContent(); charts.dd.timeScale().fitContent(); }
}

// --- panels ---------------------------------------------------------------------------------------------------

function drawBanner(s, failure) {
  const banner = $("banner");
  let text = "", warn = false;
  if (failure) text = `The console does not answer (${failure}); the figures below are the last ones received.`;
  else if (!s.bus.connected) text = "The bus is down: the console cannot read it and is reconnecting. The figures below "
    + `are the last ones read (${when(s.bus.refreshed_at_ms)}).`;
  else if (s.bus.refresh_error) { text = `Reading the bus fails: ${s.bus.refresh_error}`; warn = true; }
  banner.hidden = !text;
  banner.textContent = text;
  banner.className = warn ? "banner warn" : "banner";
  document.body.dataset.bus = failure ? "unreachable" : (s.bus.connected ? "up" : "down");
}

function drawPortfolio(s) {
  const pf = s.portfolio || {};
  kv("summary", pf.equity === undefined ? [["portfolio", "no snapshot yet"]] : [
    ["equity", `${fmt(pf.equity)} USDT`], ["cash", `${fmt(pf.cash)} USDT`],
    ["exposure", `${fmt(pf.exposure * 100, 1)}%`], ["drawdown", `${fmt(pf.drawdown * 100, 1)}%`, pf.drawdown < -0.1 ? "bad" : ""],
    ["last cycle", `${pf.cycle_id} (${pf.status}) at ${when(pf.committed_at_ms)}`]]);
  table("positions", ["symbol", "qty", "entry", "price", "P&L USDT", "P&L %"], (pf.positions || []).map((p) => [
    p.symbol, [qty(p.qty), "num"], [price(p.entry), "num"], [price(p.price), "num"],
    [fmt(p.pnl), "num " + (p.pnl < 0 ? "bad" : "good")], [fmt(p.pnl_pct), "num"]]), "no positions: all in cash");
  $("cycle").textContent = pf.cycle_id ? `cycle ${pf.cycle_id}` : "";
}

function drawStatus(s) {
  const latch = s.latch || {}, data = s.data || {};
  const pairs = [["kill-switch", latch.halted ? `LATCHED (${latch.cycle_id || "?"}, drawdown ${fmt((latch.drawdown || 0) * 100, 1)}%)`
    : "armed", latch.halted ? "bad" : "good"]];
  if (latch.reset_at_ms) pairs.push(["last reset", when(latch.reset_at_ms)]);
  if (latch.reason) pairs.push(["latch note", latch.reason]);
  pairs.push(["regime", s.regime || "–"]);
  if (data.ready) pairs.push(["newest data", `${data.ready.cycle_id} (${data.ready.symbols} symbols)`]);
  if (data.stale) pairs.push(["last stale notice", `${data.stale.cycle_id}: ${data.stale.reason}`, "warn"]);
  kv("status", pairs);
}

function drawServices(s) {
  const rows = Object.entries(s.services || {}).map(([name, v]) => [name,
    [v.status, v.ready ? "good" : "bad"], when(v.since_ms), v.detail]);
  table("services", ["service", "status", "since", "checks"], rows, "not polled yet");
}

function drawOrders(s) {
  const o = s.open_orders || { known: false, why: "", rows: [] };
  $("orders-note").textContent = o.known ? "" : `Open orders are not known here: ${o.why}.`;
  table("orders", ["order", "symbol", "side", "qty", "ref price", "intent", "exchange", "filled"], o.rows.map((r) => [
    r.client_order_id, r.symbol, r.side, [qty(r.qty), "num"], [price(r.ref_price), "num"], r.intent, r.order || "–",
    [qty(r.filled_qty), "num"]]), o.known ? "no open orders" : "–");
}

function drawPlans(s) {
  table("plans", ["cycle", "gate", "legs", "reasons", "params"], (s.plans || []).map((p) => [
    p.cycle_id, [p.gate + (p.halted && p.gate !== "halted" ? " (kill-switch latched)" : ""),
      p.kind === "aborted" || p.halted ? "warn" : ""],
    p.legs.join(", ") || "no trade", p.reasons.join("; ") || "–", p.params_version ?? "–"]), "no plans yet");
}

function drawParams(s) {
  const p = s.params || {};
  const pairs = [["version in force", String(p.version ?? 0)], ["promoted by", p.promoted_by || "–"],
    ["why", p.reason || "–"], ["when", when(p.at_ms)]];
  if (p.refused) pairs.push(["newest refused", p.refused, "bad"]);
  kv("params", pairs);
  table("params-history", ["version", "bars", "by", "why", "when"], (p.history || []).map((h) => [
    [h.version, h.valid ? "num" : "num bad"], h.timeframe || "–", h.promoted_by || "(refused)", h.reason,
    when(h.at_ms)]), "no history");
}

// The console reads the decision's fields (view.py decision_summary); a document in another form is listed as it is,
// with a note, rather than shown as a verdict it does not hold.
function drawOptimizer(s) {
  const o = s.optimizer || {}, d = o.summary;
  if (!o.decision) { kv("optimizer", [["decision", "no decision yet"], ["read from", o.source || ""]]); return; }
  if (!d || d.problem) {
    kv("optimizer", [["note", d ? d.problem : "unreadable", "warn"], ...Object.entries(o.decision).slice(0, 12).map(
      ([k, v]) => [k, typeof v === "object" ? JSON.stringify(v).slice(0, 200) : String(v)])]);
    return;
  }
  const pairs = [["promoted", d.promoted ? "yes" : "no", d.promoted ? "good" : "bad"],
    ["new version", d.version !== null ? String(d.version) : "none: the live parameters are unchanged"],
    ["judged against", d.incumbent_version !== null ? `version ${d.incumbent_version}` : "–"]];
  if (d.failing.length) pairs.push(["failing tests", d.failing.join(", "), "bad"]);
  pairs.push(["verdict", d.verdict], ["parameters", d.parameters_digest.slice(0, 16) || "–"],
    ["report sha256", d.report_sha256.slice(0, 16) || "–"]);
  kv("optimizer", pairs);
}

function drawEvents(s) {
  $("alerts-note").textContent = s.alerts && s.alerts.targets ? `Alerts go to ${s.alerts.targets} target(s).`
    : "No alert target configured (AURA_NOTIFY_URLS): events are listed here only.";
  table("events", ["when", "service", "kind", "text"], (s.events || []).map((e) => [when(e.at_ms), e.service,
    [e.kind, e.severity === "error" ? "bad" : e.severity === "warning" ? "warn" : ""], e.text]), "no events");
  table("fills", ["cycle", "symbol", "side", "qty", "price", "fee"], (s.fills || []).map((f) => [f.cycle_id, f.symbol,
    f.side, [qty(f.qty), "num"], [price(f.price), "num"], [price(f.fee), "num"]]), "no fills");
  table("dead-letters", ["when", "service", "reason", "error"], (s.dead_letters || []).map((d) => [when(d.at_ms),
    d.service, d.reason, d.error]), "none");
}

// --- the poll -------------------------------------------------------------------------------------------------

const api = { state: null, polls: 0, failures: 0, equity: () => (charts.series ? charts.series.equity.data() : []),
  benchmark: (name) => (charts.series ? charts.series[name].data() : []),
  drawdown: () => (charts.drawdown ? charts.drawdown.data() : []) };
window.auraConsole = api;  // for the browser tests and for curious operators in the devtools

async function poll() {
  try {
    const answer = await fetch("/api/state", { cache: "no-store" });
    if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
    const s = await answer.json();
    api.state = s;
    api.polls += 1;
    drawBanner(s, null);
    const m = s.mode || {};
    $("mode").textContent = `${m.dry_run ? "dry run" : "LIVE"} · ${m.source || "?"} · ${m.timeframe || "?"}`;
    $("updated").textContent = `updated ${when(s.now_ms)}`;
    for (const draw of [drawPortfolio, drawStatus, drawServices, drawOrders, drawPlans, drawParams, drawOptimizer,
      drawEvents]) {
      try { draw(s); } catch (err) { console.error(draw.name, err); }
    }
    drawCharts(s.chart);
  } catch (err) {
    api.failures += 1;
    drawBanner(null, err.message || String(err));
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

makeCharts();
poll();
