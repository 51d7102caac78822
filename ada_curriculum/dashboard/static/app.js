// The ada-curriculum dashboard: polls the JSON API every POLL_MS and redraws the panels as
// SVG. No libraries, nothing from other origins; data only ever reaches the DOM as text.
"use strict";

(() => {
  const POLL_MS = 2000;
  const MAX_POINTS = 5000; // per series kept in the page; older points are thinned
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777",
                  "#4b5563", "#65a30d"];
  const SVG_NS = "http://www.w3.org/2000/svg";
  const params = new URLSearchParams(location.search);

  const state = {
    run: params.get("run"),
    series: new Map(), // scalar name -> [[step, wall_time, value], ...]
    since: -1, // newest scalar step received
    snapshots: [], // curriculum snapshots (bounds only), by step
    curriculumSince: -1,
    writerOpenedAt: null,
    rendered: new Map(), // panel id -> key of the data it shows (skip identical redraws)
    otherScalar: null, // the learning panel's chosen extra curve
    compareScalar: null,
    busy: false,
  };

  // ---- DOM helpers ---------------------------------------------------------------------------
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") node.textContent = v;
      else if (k === "testid") node.dataset.testid = v;
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  function svg(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function fmt(v, digits = 3) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    if (Number.isInteger(v)) return Math.abs(v) >= 1e6 ? v.toExponential(2) : String(v);
    const a = Math.abs(v);
    if (a >= 1e5 || (a > 0 && a < 1e-3)) return v.toExponential(2);
    if (a >= 100) return v.toFixed(0);
    if (a >= 1) return v.toFixed(2);
    return v.toPrecision(digits);
  }

  // min and max without spreading (long series overflow the argument list)
  function extent(values) {
    let lo = Infinity, hi = -Infinity;
    for (const v of values) { if (v < lo) lo = v; if (v > hi) hi = v; }
    return [lo, hi];
  }

  const pct = (v) => (v === null || v === undefined ? "–" : `${(100 * v).toFixed(0)}%`);

  function ago(wallTime) {
    if (!wallTime) return "";
    const s = Math.max(0, Date.now() / 1000 - wallTime);
    if (s < 90) return `${s.toFixed(0)} s ago`;
    if (s < 5400) return `${(s / 60).toFixed(0)} min ago`;
    return `${(s / 3600).toFixed(1)} h ago`;
  }

  function successColor(rate) {
    // red (0) -> amber -> green (1)
    const hue = Math.round(120 * Math.max(0, Math.min(1, rate)));
    return `hsl(${hue}, 70%, 62%)`;
  }

  function legend(items) {
    return el("div", { class: "legend" }, ...items.map(([label, color]) => {
      const sw = el("span", { class: "swatch" });
      sw.style.background = color;
      return el("span", {}, sw, label);
    }));
  }

  // Replace a panel's content; `content` null shows the panel's "no data yet" state.
  function setPanel(id, content, emptyText = "no data yet") {
    const panel = document.getElementById(id);
    const body = panel.querySelector(".body");
    if (content) {
      body.replaceChildren(content);
      panel.dataset.state = "ready";
    } else {
      body.replaceChildren(el("div", { class: "empty", testid: "empty", text: emptyText }));
      panel.dataset.state = "empty";
    }
  }

  // Redraw only when the data behind a panel changed (keeps videos playing, selects open).
  function changed(id, data) {
    const key = JSON.stringify(data);
    if (state.rendered.get(id) === key) return false;
    state.rendered.set(id, key);
    return true;
  }

  // ---- API -----------------------------------------------------------------------------------
  async function api(endpoint, query = {}, run = state.run) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) if (v !== null && v !== undefined) q.set(k, v);
    if (run) q.set("run", run);
    const response = await fetch(`/api/${endpoint}?${q}`);
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
    return body;
  }

  // ---- charts --------------------------------------------------------------------------------
  function niceTicks(lo, hi, n) {
    const span = hi - lo;
    if (!(span > 0)) return [lo];
    const raw = span / n;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map((f) => f * mag).find((s) => span / s <= n) || 10 * mag;
    const ticks = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(+t.toPrecision(12));
    return ticks;
  }

  // series: [{label, points: [[x, y], ...], color?}]; markers: x positions drawn as red lines.
  function lineChart(series, opts = {}) {
    const W = 520, H = opts.height || 190, m = { l: 52, r: 12, t: 10, b: 30 };
    const pts = series.flatMap((s) => s.points.filter((p) => p[1] !== null && Number.isFinite(p[1])));
    if (!pts.length) return null;
    let [x0, x1] = extent(pts.map((p) => p[0]));
    const [ylo, yhi] = extent(pts.map((p) => p[1]));
    let y0 = opts.yMin ?? ylo;
    let y1 = opts.yMax ?? yhi;
    if (opts.yMin === undefined && opts.yMax === undefined && y0 > 0 && y0 < 0.25 * y1) y0 = 0;
    if (x1 === x0) x1 = x0 + 1;
    if (y1 === y0) { y0 -= Math.abs(y0) * 0.1 || 0.5; y1 += Math.abs(y1) * 0.1 || 0.5; }
    const sx = (x) => m.l + ((x - x0) / (x1 - x0)) * (W - m.l - m.r);
    const sy = (y) => H - m.b - ((y - y0) / (y1 - y0)) * (H - m.t - m.b);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img" });
    if (opts.title) root.append(svg("title", {}, opts.title));
    for (const t of niceTicks(y0, y1, 4)) {
      root.append(svg("line", { class: "gridline", x1: m.l, x2: W - m.r, y1: sy(t), y2: sy(t) }));
      root.append(svg("text", { x: m.l - 5, y: sy(t) + 3, "text-anchor": "end" }, fmt(t)));
    }
    for (const t of niceTicks(x0, x1, 5)) {
      root.append(svg("text", { x: sx(t), y: H - m.b + 13, "text-anchor": "middle" }, fmt(t)));
    }
    root.append(svg("text", { x: W - m.r, y: H - 3, "text-anchor": "end" }, opts.xLabel || "update"));
    root.append(svg("line", { class: "axis", x1: m.l, x2: m.l, y1: m.t, y2: H - m.b }));
    root.append(svg("line", { class: "axis", x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b }));
    for (const x of opts.markers || []) {
      root.append(svg("line", { class: "clip", x1: sx(x), x2: sx(x), y1: m.t, y2: H - m.b }));
    }
    const items = [];
    series.forEach((s, i) => {
      const color = s.color || COLORS[i % COLORS.length];
      items.push([s.label, color]);
      let run = [];
      const flush = () => {
        if (run.length === 1) {
          root.append(svg("circle", { cx: run[0][0], cy: run[0][1], r: 2.5, fill: color }));
        } else if (run.length > 1) {
          root.append(svg("polyline", { class: "series", stroke: color,
                                         points: run.map((p) => `${p[0].toFixed(1)},${p[1].toFixed(1)}`).join(" ") }));
        }
        run = [];
      };
      for (const [x, y] of s.points) {
        if (y === null || !Number.isFinite(y)) flush();
        else run.push([sx(x), sy(y)]);
      }
      flush();
    });
    if (opts.markers && opts.markers.length) items.push([opts.markerLabel || "clip event", "#dc2626"]);
    return el("div", { testid: opts.testid }, opts.title ? el("h3", { text: opts.title }) : null, root, legend(items));
  }

  // values: [{label, value in [0, 1]}] as vertical bars.
  function barChart(values, opts = {}) {
    const W = 360, H = 160, m = { l: 36, r: 8, t: 18, b: 26 };
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img" });
    const bw = (W - m.l - m.r) / Math.max(values.length, 1);
    for (const t of [0, 0.5, 1]) {
      const y = H - m.b - t * (H - m.t - m.b);
      root.append(svg("line", { class: "gridline", x1: m.l, x2: W - m.r, y1: y, y2: y }));
      root.append(svg("text", { x: m.l - 4, y: y + 3, "text-anchor": "end" }, pct(t)));
    }
    values.forEach((v, i) => {
      const h = (v.value ?? 0) * (H - m.t - m.b);
      const x = m.l + i * bw + bw * 0.15;
      root.append(svg("rect", { x, y: H - m.b - h, width: bw * 0.7, height: Math.max(h, 0.5),
                                fill: successColor(v.value ?? 0) }));
      root.append(svg("text", { x: x + bw * 0.35, y: H - m.b - h - 3, "text-anchor": "middle",
                                class: "cell-label" }, pct(v.value)));
      root.append(svg("text", { x: x + bw * 0.35, y: H - 8, "text-anchor": "middle" }, v.label));
    });
    return el("div", { testid: opts.testid }, root);
  }

  // A success grid: rows by y bin (drawn bottom-up), columns by x bin; cells "wins/n".
  function heatmap(grid, opts = {}) {
    const rows = grid.counts.length, cols = rows ? grid.counts[0].length : 0;
    const cell = 62, m = { l: 48, r: 6, t: 6, b: 34 };
    const W = m.l + cols * cell + m.r, H = m.t + rows * cell + m.b;
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img" });
    for (let j = 0; j < rows; j++) {
      for (let i = 0; i < cols; i++) {
        const n = grid.counts[j][i], wins = grid.successes[j][i];
        const x = m.l + i * cell, y = m.t + (rows - 1 - j) * cell;
        root.append(svg("rect", { x: x + 1, y: y + 1, width: cell - 2, height: cell - 2, rx: 3,
                                  fill: n ? successColor(wins / n) : "#eef0f3" }));
        root.append(svg("text", { x: x + cell / 2, y: y + cell / 2 - 2, "text-anchor": "middle",
                                  class: "cell-label" }, n ? pct(wins / n) : "–"));
        root.append(svg("text", { x: x + cell / 2, y: y + cell / 2 + 12, "text-anchor": "middle" },
                        `${wins}/${n}`));
      }
    }
    const xe = grid.x_edges, ye = grid.y_edges;
    if (xe && ye) {
      xe.forEach((v, i) => root.append(svg("text", { x: m.l + i * cell, y: m.t + rows * cell + 12,
                                                     "text-anchor": "middle" }, fmt(v))));
      ye.forEach((v, j) => root.append(svg("text", { x: m.l - 4, y: m.t + (rows - j) * cell + 3,
                                                     "text-anchor": "end" }, fmt(v))));
    }
    root.append(svg("text", { x: m.l + (cols * cell) / 2, y: H - 4, "text-anchor": "middle" }, grid.x || "x"));
    root.append(svg("text", { x: 10, y: m.t + (rows * cell) / 2, "text-anchor": "middle",
                              transform: `rotate(-90 10 ${m.t + (rows * cell) / 2})` }, grid.y || "y"));
    return el("div", { testid: opts.testid }, el("h3", { text: opts.title || "" }), root);
  }

  function scatter(points, opts = {}) {
    const W = 460, H = 300, m = { l: 40, r: 10, t: 10, b: 26 };
    const xs = points.map((p) => p.x), ys = points.map((p) => p.y);
    let [x0, x1] = extent(xs);
    let [y0, y1] = extent(ys);
    if (x1 === x0) { x0 -= 1; x1 += 1; }
    if (y1 === y0) { y0 -= 1; y1 += 1; }
    const sx = (x) => m.l + ((x - x0) / (x1 - x0)) * (W - m.l - m.r);
    const sy = (y) => H - m.b - ((y - y0) / (y1 - y0)) * (H - m.t - m.b);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img" });
    root.append(svg("line", { class: "axis", x1: m.l, x2: m.l, y1: m.t, y2: H - m.b }));
    root.append(svg("line", { class: "axis", x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b }));
    root.append(svg("text", { x: W - m.r, y: H - 4, "text-anchor": "end" }, "PC 1"));
    root.append(svg("text", { x: m.l + 4, y: m.t + 8 }, "PC 2"));
    const labels = [...new Set(points.map((p) => p.label))].sort();
    const color = new Map(labels.map((l, i) => [l, COLORS[i % COLORS.length]]));
    for (const p of points) {
      const c = svg("circle", { cx: sx(p.x).toFixed(1), cy: sy(p.y).toFixed(1), r: 3, fill: color.get(p.label),
                                "fill-opacity": 0.75 });
      c.append(svg("title", {}, p.label));
      root.append(c);
    }
    const counts = new Map();
    for (const p of points) counts.set(p.label, (counts.get(p.label) || 0) + 1);
    return el("div", { testid: opts.testid }, root,
              legend(labels.map((l) => [`${l} (${counts.get(l)})`, color.get(l)])));
  }

  // ---- panels --------------------------------------------------------------------------------
  function renderCurriculum(latest) {
    if (!changed("curriculum", [latest && latest.step, state.snapshots.length])) return;
    if (!latest) return setPanel("panel-curriculum", null);
    const dims = Object.entries(latest.bounds);
    const rows = dims.map(([name, b]) => {
      const span = b.full_hi - b.full_lo || 1;
      const fill = el("div", { class: "fill" });
      fill.style.left = `${(100 * (b.lo - b.full_lo)) / span}%`;
      fill.style.width = `${(100 * (b.hi - b.lo)) / span}%`;
      return el("div", { class: "range-row", testid: `bounds-${name}` },
                el("span", { text: name }), el("div", { class: "track" }, fill),
                el("span", { class: "nums", text: `${fmt(b.lo)} – ${fmt(b.hi)} of [${fmt(b.full_lo)}, ${fmt(b.full_hi)}]` }));
    });
    const coverage = dims.map(([name]) => ({
      label: name,
      points: state.snapshots.filter((s) => s.bounds[name]).map((s) => {
        const b = s.bounds[name];
        return [s.step, b.full_hi > b.full_lo ? (b.hi - b.lo) / (b.full_hi - b.full_lo) : 1];
      }),
    }));
    const stage = latest.stage === null ? "" : `stage ${latest.stage}, `;
    setPanel("panel-curriculum", el("div", {},
      el("div", { class: "sub", testid: "curriculum-stage", text: `${stage}update ${latest.step}` }),
      el("h3", { text: "current bounds within the full range" }), ...rows,
      lineChart(coverage, { title: "fraction of the full range covered", yMin: 0, yMax: 1,
                            testid: "curriculum-chart" })));
  }

  // evaluate.task_bin keys "x<i>_y<j>": banana x/y on a 3 x 3 grid over the full task space,
  // whose ranges the curriculum snapshot knows (if there is one).
  function evalGrid(perBin, bounds) {
    const cells = Object.entries(perBin).map(([k, v]) => [/^x(\d+)_y(\d+)$/.exec(k), v]).filter(([m]) => m);
    if (!cells.length) return null;
    const n = Math.max(3, 1 + Math.max(...cells.flatMap(([m]) => [+m[1], +m[2]])));
    const counts = Array.from({ length: n }, () => Array(n).fill(0));
    const successes = Array.from({ length: n }, () => Array(n).fill(0));
    for (const [m, v] of cells) {
      counts[+m[2]][+m[1]] = v.episodes;
      successes[+m[2]][+m[1]] = v.successes;
    }
    const edges = (b) => (b ? Array.from({ length: n + 1 }, (_, i) => b.full_lo + (i * (b.full_hi - b.full_lo)) / n) : null);
    const bx = bounds && bounds.banana_x, by = bounds && bounds.banana_y;
    return { x: "banana_x", y: "banana_y", counts, successes,
             x_edges: bx && by ? edges(bx) : null, y_edges: bx && by ? edges(by) : null };
  }

  function renderHeatmap(latestCurriculum, latestEval) {
    const grids = latestCurriculum ? latestCurriculum.bins || {} : {};
    const evalBins = latestEval ? evalGrid(latestEval.per_bin, latestCurriculum && latestCurriculum.bounds) : null;
    if (!changed("heatmap", [grids, evalBins])) return;
    const parts = Object.entries(grids).map(([name, g]) =>
      heatmap(g, { title: `training episodes: ${name} (${g.x} × ${g.y})`, testid: `heatmap-${name}` }));
    if (evalBins) {
      parts.push(heatmap(evalBins, { title: `evaluation at update ${latestEval.step} (banana_x × banana_y)`,
                                     testid: "heatmap-eval" }));
    }
    setPanel("panel-heatmap", parts.length ? el("div", { class: "heatmaps" }, ...parts) : null);
  }

  function seriesFor(filter) {
    return [...state.series.keys()].filter(filter).sort().map((name) => ({
      label: name, points: state.series.get(name).map((p) => [p[0], p[2]]),
    }));
  }

  function clipMarkers() {
    const clipped = state.series.get("clipped");
    if (clipped) return clipped.filter((p) => p[2] > 0).map((p) => p[0]);
    const count = state.series.get("clip_count") || [];
    return count.filter((p, i) => i > 0 && p[2] > count[i - 1][2]).map((p) => p[0]);
  }

  function renderLearning() {
    const names = [...state.series.keys()].sort();
    const size = [...state.series.values()].reduce((a, s) => a + s.length, 0);
    if (!changed("learning", [names, size, state.since, state.otherScalar])) return;
    if (!names.length) return setPanel("panel-learning", null);
    const charts = [];
    const isLoss = (n) => n.includes("loss");
    const isSuccess = (n) => n.includes("success") && !n.startsWith("actor");
    const isGrad = (n) => n.startsWith("grad_norm");
    const losses = seriesFor(isLoss);
    if (losses.length) charts.push(lineChart(losses, { title: "losses", testid: "chart-loss" }));
    const success = seriesFor(isSuccess);
    if (success.length) {
      charts.push(lineChart(success, { title: "success", yMin: 0, yMax: 1, testid: "chart-success" }));
    }
    const grads = seriesFor(isGrad);
    if (grads.length) {
      charts.push(lineChart(grads, { title: "gradient norms (red: clip events)", markers: clipMarkers(),
                                     testid: "chart-grad-norm" }));
    }
    if (!state.otherScalar || !state.series.has(state.otherScalar)) {
      state.otherScalar = names.find((n) => !isLoss(n) && !isSuccess(n) && !isGrad(n)) || names[0];
    }
    const select = el("select", { testid: "scalar-select", "aria-label": "scalar" },
                      ...names.map((n) => el("option", { value: n, text: n, selected: n === state.otherScalar })));
    select.addEventListener("change", () => { state.otherScalar = select.value; renderLearning(); });
    charts.push(el("div", {}, el("div", { class: "controls" }, el("span", { class: "sub", text: "any scalar:" }), select),
                   lineChart(seriesFor((n) => n === state.otherScalar), { testid: "chart-other" })));
    setPanel("panel-learning", el("div", { class: "charts" }, ...charts));
  }

  function tile(label, value, testid) {
    return el("div", { class: "tile" }, el("div", { class: "label", text: label }),
              el("div", { class: "value", testid, text: value }));
  }

  function renderHealth(health) {
    const rates = health.rates || {};
    const latest = health.latest;
    const v = (name) => (rates[name] ? rates[name].value : null);
    const speed = seriesFor((n) => n === "learner/updates_per_s" || n === "actors/env_steps_per_s");
    if (!changed("health", [health, speed.map((s) => s.points.length)])) return;
    if (!latest && !Object.keys(rates).length) return setPanel("panel-health", null);
    const tiles = [];
    if (latest) {
      tiles.push(tile("actors alive", `${latest.actors_alive} / ${latest.actors_total}`, "health-actors"));
      tiles.push(tile("actor restarts", fmt(latest.actor_restarts), "health-restarts"));
      const ckpt = latest.last_checkpoint_step === null ? "none yet"
        : `update ${latest.last_checkpoint_step}${latest.last_checkpoint_time ? ", " + ago(latest.last_checkpoint_time) : ""}`;
      tiles.push(tile("last checkpoint", ckpt, "health-checkpoint"));
    }
    tiles.push(tile("learner updates/s", fmt(v("learner/updates_per_s")), "health-updates-per-s"));
    tiles.push(tile("env steps/s", fmt(v("actors/env_steps_per_s")), "health-env-steps-per-s"));
    if (v("success/recent") !== null) tiles.push(tile("recent success", pct(v("success/recent")), "health-recent-success"));
    const parts = [el("div", { class: "tiles" }, ...tiles)];
    // Replay: from the health record's table info, else from replay/<table>/* scalars.
    const tables = new Map();
    for (const [name, info] of Object.entries(latest ? latest.replay || {} : {})) {
      tables.set(name, { size: info.size, max: info.max_size });
    }
    for (const [name, r] of Object.entries(rates)) {
      const m = /^replay\/([^/]+)\/(.+)$/.exec(name);
      if (!m) continue;
      const t = tables.get(m[1]) || {};
      if (m[2] === "size") t.size ??= r.value;
      else if (m[2] === "max_size") t.max ??= r.value;
      else if (m[2] === "inserts_per_s") t.inserts = r.value;
      else if (m[2] === "samples_per_s") t.samples = r.value;
      tables.set(m[1], t);
    }
    if (tables.size) {
      parts.push(el("h3", { text: "replay" }));
      parts.push(el("table", {}, el("tr", {}, ...["table", "fill", "inserts/s", "samples/s"].map((h) => el("th", { text: h }))),
        ...[...tables].map(([name, t]) => el("tr", { testid: `health-replay-${name}` },
          el("td", { text: name }),
          el("td", { class: "num", text: `${fmt(t.size)} / ${fmt(t.max)}${t.max ? ` (${pct(t.size / t.max)})` : ""}` }),
          el("td", { class: "num", text: fmt(t.inserts) }), el("td", { class: "num", text: fmt(t.samples) })))));
    }
    const actors = latest ? latest.actors : [];
    const rated = Object.keys(rates).map((n) => /^actor\/(\d+)\/env_steps_per_s$/.exec(n)).filter(Boolean);
    const count = Math.max(actors.length, 1 + extent(rated.map((m) => +m[1]))[1]);
    const actorRows = Array.from({ length: Math.max(count, 0) }, (_, i) => {
      const a = actors[i] || {};
      const rate = rates[`actor/${i}/env_steps_per_s`];
      const status = a.dead ? "dead" : a.failures ? `restarted ×${a.failures}` : "ok";
      return el("tr", { testid: `health-actor-${i}` }, el("td", { text: `actor ${i}` }), el("td", { text: status }),
                el("td", { class: "num", text: fmt(rate ? rate.value : null) }),
                el("td", { class: "num", text: fmt(a.episodes ?? null) }));
    });
    if (actorRows.length) {
      parts.push(el("h3", { text: "actors" }));
      parts.push(el("table", {}, el("tr", {}, ...["actor", "status", "env steps/s", "episodes"].map((h) => el("th", { text: h }))),
                    ...actorRows));
    }
    if (speed.length) parts.push(lineChart(speed, { title: "throughput", height: 150, testid: "chart-throughput" }));
    setPanel("panel-health", el("div", {}, ...parts));
  }

  function renderMeta(evals) {
    const withTrials = evals.filter((e) => e.success_per_trial && e.success_per_trial.length);
    const latest = evals.length ? evals[evals.length - 1] : null;
    if (!changed("meta", [withTrials.map((e) => [e.step, e.success_per_trial]), latest && latest.step])) return;
    if (!latest) return setPanel("panel-meta", null);
    const [lo, hi] = latest.ci95 || [null, null];
    const parts = [el("div", { class: "sub", testid: "eval-latest",
      text: `latest evaluation at update ${latest.step}: success ${pct(latest.success_rate)} ` +
            `(95% CI ${pct(lo)}–${pct(hi)}, ${latest.successes ?? "?"}/${latest.episodes ?? "?"} episodes)` })];
    const last = withTrials.length ? withTrials[withTrials.length - 1] : null;
    if (last) {
      parts.push(el("h3", { text: `success per trial index (update ${last.step})` }));
      parts.push(barChart(last.success_per_trial.map((v, i) => ({ label: `trial ${i + 1}`, value: v })),
                          { testid: "chart-trials" }));
      const k = Math.max(...withTrials.map((e) => e.success_per_trial.length));
      if (withTrials.length > 1) {
        parts.push(lineChart(Array.from({ length: k }, (_, i) => ({
          label: `trial ${i + 1}`,
          points: withTrials.filter((e) => e.success_per_trial.length > i).map((e) => [e.step, e.success_per_trial[i]]),
        })), { title: "per-trial success over evaluations", yMin: 0, yMax: 1, height: 150, testid: "chart-trials-time" }));
      }
    } else {
      parts.push(el("div", { class: "empty", text: "no per-trial results yet" }));
    }
    setPanel("panel-meta", el("div", {}, ...parts));
  }

  function renderDistillation(stages) {
    if (!changed("distillation", stages)) return;
    if (!stages.length) return setPanel("panel-distillation", null);
    const cols = [["update", "step"], ["gen", "generation"], ["preset", "preset"], ["params", "params"],
                  ["teacher", "teacher_success"], ["student", "student_success"],
                  ["distance", "distance_to_teacher"], ["weight", "weight"]];
    const show = (key, v) => (key.endsWith("_success") ? pct(v) : typeof v === "number" ? fmt(v) : v ?? "–");
    const table = el("table", { testid: "distill-table" }, el("tr", {}, ...cols.map(([h]) => el("th", { text: h }))),
      ...stages.slice(-8).map((s) => el("tr", {}, ...cols.map(([, k]) =>
        el("td", { class: typeof s[k] === "number" ? "num" : null, text: show(k, s[k]) })))));
    const current = stages[stages.length - 1];
    setPanel("panel-distillation", el("div", {},
      el("div", { class: "sub", testid: "distill-current",
                  text: `generation ${current.generation}${current.preset ? ` (${current.preset})` : ""}` }),
      table,
      lineChart([{ label: "teacher success", points: stages.map((s) => [s.step, s.teacher_success]) },
                 { label: "student success", points: stages.map((s) => [s.step, s.student_success]) }],
                { title: "teacher vs student success", yMin: 0, yMax: 1, height: 150, testid: "chart-distill" }),
      lineChart([{ label: "distance to teacher", points: stages.map((s) => [s.step, s.distance_to_teacher]) }],
                { title: "distance to teacher", height: 130, testid: "chart-distance" })));
  }

  function renderVideos(evals) {
    const latest = [...evals].reverse().find((e) => e.videos && e.videos.length);
    if (!changed("videos", latest ? [latest.step, latest.videos] : null)) return;
    if (!latest) return setPanel("panel-videos", null, "no evaluation videos yet");
    const figures = latest.videos.map((v) => {
      let media;
      if (!v.url) media = el("div", { class: "empty", text: "file missing" });
      else if (v.kind === "image") media = el("img", { src: v.url, alt: v.name });
      else media = el("video", { src: v.url, controls: true, muted: true, loop: true, playsinline: true, preload: "metadata" });
      if (media.tagName === "VIDEO") media.muted = true;
      return el("figure", { testid: "video" }, media, el("figcaption", { text: v.name }));
    });
    setPanel("panel-videos", el("div", {}, el("div", { class: "sub", text: `evaluation at update ${latest.step}` }),
                                el("div", { class: "videos" }, ...figures)));
  }

  function renderEmbedding(body) {
    const e = body.embedding;
    if (!changed("embedding", e ? [e.step, e.wall_time, e.points.length] : null)) return;
    if (!e || !e.points.length) return setPanel("panel-embedding", null);
    const explained = (e.explained || []).map((v) => pct(v)).join(" + ");
    setPanel("panel-embedding", el("div", {},
      el("div", { class: "sub", testid: "embedding-info",
                  text: `${e.method || "projection"} at update ${e.step}, ${e.points.length} points` +
                        (explained ? `, variance explained ${explained}` : "") }),
      scatter(e.points, { testid: "embedding-plot" })));
  }

  function lastScalarTime() {
    return [...state.series.values()].reduce((t, s) => Math.max(t, s.length ? s[s.length - 1][1] : 0), 0);
  }

  function renderHeader(health) {
    const badge = document.getElementById("run-status");
    let status = "no data yet";
    if (health.live) {
      const lastWrite = Math.max(lastScalarTime(), health.latest ? health.latest.wall_time : 0);
      status = lastWrite && Date.now() / 1000 - lastWrite > 300 ? "stalled" : "live";
    } else if (health.finished) status = "finished";
    else if (health.last_step !== null) status = "stopped";
    badge.textContent = status;
    badge.className = `badge ${status.replace(/ /g, "-")}`;
    document.getElementById("last-step").textContent = health.last_step ?? "–";
    document.getElementById("run-name").textContent = state.run || "";
    const lastScalar = lastScalarTime();
    document.getElementById("updated").textContent = lastScalar ? `last write ${ago(lastScalar)}` : "";
  }

  // ---- polling -------------------------------------------------------------------------------
  function resetRunData() {
    state.series.clear();
    state.since = -1;
    state.snapshots = [];
    state.curriculumSince = -1;
    state.rendered.clear();
  }

  function absorbScalars(body) {
    for (const [name, points] of Object.entries(body.scalars)) {
      const have = state.series.get(name) || [];
      const lastStep = have.length ? have[have.length - 1][0] : -Infinity;
      let merged = have.concat(points.filter((p) => p[0] > lastStep));
      while (merged.length > MAX_POINTS) merged = merged.filter((p, i) => i % 2 === 0 || i === merged.length - 1);
      state.series.set(name, merged);
    }
    if (body.last_step !== null) state.since = Math.max(state.since, body.last_step);
  }

  async function refreshRun() {
    const health = await api("health");
    if (state.writerOpenedAt !== null && health.writer_opened_at !== state.writerOpenedAt) {
      resetRunData(); // a writer reopened the store (a resume may have rewound the curves)
    }
    state.writerOpenedAt = health.writer_opened_at;
    const [scalars, curriculum, evals, distill, embedding] = await Promise.all([
      api("scalars", { since: state.since }), api("curriculum", { since: state.curriculumSince }),
      api("evaluations"), api("distillation"), api("embedding"),
    ]);
    absorbScalars(scalars);
    for (const s of curriculum.snapshots) state.snapshots.push(s);
    if (curriculum.snapshots.length) state.curriculumSince = curriculum.snapshots[curriculum.snapshots.length - 1].step;
    const list = evals.evaluations;
    renderHeader(health);
    renderCurriculum(curriculum.latest);
    const binned = list.filter((e) => e.per_bin && Object.keys(e.per_bin).length);
    renderHeatmap(curriculum.latest, binned.length ? binned[binned.length - 1] : null);
    renderLearning();
    renderHealth(health);
    renderMeta(list);
    renderDistillation(distill.stages);
    renderVideos(list);
    renderEmbedding(embedding);
  }

  function renderRunList(body) {
    if (!changed("runs", body.runs)) return;
    if (!body.runs.length) return setPanel("run-list", null, "no runs in this folder yet");
    const picked = new Set();
    const button = el("button", { type: "button", testid: "compare-button", disabled: true, text: "compare selected" });
    button.addEventListener("click", () => { location.search = `?compare=${encodeURIComponent([...picked].join(","))}`; });
    const rows = body.runs.map((r) => {
      const box = el("input", { type: "checkbox", "aria-label": `compare ${r.name}` });
      box.addEventListener("change", () => {
        if (box.checked) picked.add(r.name); else picked.delete(r.name);
        button.disabled = picked.size < 1;
      });
      const status = r.live ? "live" : r.finished ? "finished" : r.has_metrics ? "stopped" : "no metrics";
      return el("tr", { testid: `run-${r.name}` }, el("td", {}, box),
                el("td", {}, el("a", { href: `/?run=${encodeURIComponent(r.name)}`, text: r.name })),
                el("td", { text: status }), el("td", { class: "num", text: fmt(r.last_step) }),
                el("td", { class: "num", text: pct(r.eval_success) }),
                el("td", { class: "num", text: pct(r.recent_success) }), el("td", { class: "num", text: fmt(r.stage) }));
    });
    setPanel("run-list", el("div", {},
      el("table", {}, el("tr", {}, ...["", "run", "status", "update", "eval success", "recent success", "stage"]
        .map((h) => el("th", { text: h }))), ...rows),
      el("div", { class: "controls" }, button)));
  }

  async function refreshCompare(names) {
    const lists = await Promise.all(names.map((run) => api("scalars/names", {}, run)));
    const all = [...new Set(lists.flatMap((l) => l.names))].sort();
    if (!all.length) return setPanel("compare", null);
    if (!all.includes(state.compareScalar)) {
      state.compareScalar = ["eval/success_rate", "success/recent", "loss"].find((n) => all.includes(n)) || all[0];
    }
    const data = await Promise.all(names.map((run) => api("scalars", { name: state.compareScalar }, run)));
    if (!changed("compare", [all, state.compareScalar, data])) return;
    const select = el("select", { testid: "compare-select", "aria-label": "scalar" },
                      ...all.map((n) => el("option", { value: n, text: n, selected: n === state.compareScalar })));
    select.addEventListener("change", () => { state.compareScalar = select.value; tick(); });
    const series = names.map((run, i) => ({
      label: run, points: (data[i].scalars[state.compareScalar] || []).map((p) => [p[0], p[2]]),
    }));
    setPanel("compare", el("div", {}, el("div", { class: "controls" }, el("span", { class: "sub", text: "scalar:" }), select),
      lineChart(series, { title: state.compareScalar, testid: "compare-chart" }) ||
        el("div", { class: "empty", text: "no data yet" })));
  }

  let view = null; // "run" | "runs" | "compare", decided on the first answer of /api/runs

  async function tick() {
    if (state.busy) return;
    state.busy = true;
    const conn = document.getElementById("connection");
    try {
      if (view === null) {
        const runs = await api("runs", {}, null);
        const compare = params.get("compare");
        if (runs.mode === "single") {
          state.run = runs.runs[0].name;
          view = "run";
        } else if (compare) {
          view = "compare";
        } else {
          view = state.run ? "run" : "runs";
        }
        document.getElementById("back").hidden = runs.mode === "single" || view === "runs";
        document.getElementById("run-view").hidden = view !== "run";
        document.getElementById("run-list").hidden = view !== "runs";
        document.getElementById("compare").hidden = view !== "compare";
        if (view !== "run") {
          document.getElementById("run-name").textContent = view === "runs" ? `runs in ${runs.root}` : `compare: ${compare}`;
          document.getElementById("run-status").textContent = runs.mode;
        }
      }
      if (view === "run") await refreshRun();
      else if (view === "runs") renderRunList(await api("runs", {}, null));
      else await refreshCompare(params.get("compare").split(",").filter(Boolean));
      conn.hidden = true;
    } catch (err) {
      conn.hidden = false;
      conn.textContent = `cannot load: ${err.message}; retrying`;
    } finally {
      state.busy = false;
    }
  }

  tick();
  setInterval(tick, POLL_MS);
})();
