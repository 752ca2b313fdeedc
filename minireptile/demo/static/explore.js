// minireptile explore page: the (w, b) plane of y = tanh(w x + b), the tasks' loss contours,
// their inner trajectories and each algorithm's meta-update from theta. Every number is the
// server's (POST /explore/state, /explore/run: minireptile/demo/explore.py); this script only
// draws. Each arrow's end point is in the DOM as data-x / data-y (parameter coordinates,
// exactly the server's numbers), and the settings it was computed with as the plane's
// data-settings; the body's data-settled is "true" once the drawing matches the controls.
"use strict";

const ALGOS = ["reptile", "fomaml", "maml", "imaml"];
const NAMES = {reptile: "Reptile", fomaml: "FOMAML", maml: "MAML", imaml: "iMAML"};
const COLORS = {reptile: "#d62728", fomaml: "#1f77b4", maml: "#2ca02c", imaml: "#9467bd",
                "avg-grad": "#333", "avg-grad-inner": "#ff7f0e"};
const TASK_COLORS = ["#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#ff9896",
                     "#98df8a", "#c5b0d5"];
const SIZE = 400, LO = -4, HI = 4;                      // the plane: w and b in [LO, HI]
const MEAN_LEVELS = [0.01, 0.03, 0.1, 0.2, 0.4, 0.7, 1, 1.5, 2, 3];
const TASK_LEVELS = [0.05, 0.25];
const SVG = "http://www.w3.org/2000/svg";
const state = {theta: [1.5, 0], grid: null, gridKey: null, reply: null, busy: false,
               drawn: 0, runs: 0, dragging: null, heat: ""};

function $(id) { return document.getElementById(id); }
const px = (w) => (w - LO) / (HI - LO) * SIZE;          // parameter -> SVG coordinates
const py = (b) => (HI - b) / (HI - LO) * SIZE;
const fmt = (v) => v.toFixed(3);

function svg(tag, attrs, parent) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

function say(text, isError) {
  $("message").textContent = text;
  $("message").classList.toggle("error", Boolean(isError));
}

// ---- settings and requests ---------------------------------------------------------------

function settings() {
  const number = (id) => Number($(id).value);
  return {theta: state.theta.slice(), k: number("k"), alpha: number("alpha"),
          epsilon: number("epsilon"), optimizer: $("optimizer").value, lam: number("lam"),
          tasks: number("tasks"), points: number("points"), seed: number("seed")};
}

const tasksKey = (s) => [s.seed, s.tasks, s.points].join(",");

// One request at a time; when it comes back, another if the controls moved meanwhile.
async function refresh() {
  document.body.dataset.settled = "false";
  if (state.busy) return;
  state.busy = true;
  const s = settings();
  const wantGrid = state.gridKey !== tasksKey(s);
  try {
    const r = await post("/explore/state", {...s, grid: wantGrid});
    say("", false);
    if (r.grid) {
      state.grid = r.grid;
      state.gridKey = tasksKey(s);
      drawContours(r.tasks);
    }
    drawState(r, s);
    $("timing").textContent = "computed by the server in " + (1000 * r.seconds).toFixed(1) +
      " ms";
  } catch (err) {
    say(err.message, true);
  } finally {
    state.busy = false;
  }
  if (JSON.stringify(settings()) !== JSON.stringify(s)) return refresh();
  document.body.dataset.settled = "true";
}

// ---- the plane ---------------------------------------------------------------------------

function drawAxes() {
  const g = $("axes");
  svg("rect", {x: 0, y: 0, width: SIZE, height: SIZE, class: "frame"}, g);
  for (let v = LO; v <= HI; v += 2) {
    svg("line", {x1: px(v), y1: SIZE, x2: px(v), y2: SIZE + 5, class: "tick"}, g);
    svg("line", {x1: -5, y1: py(v), x2: 0, y2: py(v), class: "tick"}, g);
    svg("text", {x: px(v), y: SIZE + 18, class: "tick-label"}, g).textContent = v;
    svg("text", {x: -8, y: py(v) + 4, class: "tick-label left"}, g).textContent = v;
  }
  svg("text", {x: SIZE - 6, y: SIZE + 32, class: "axis-label"}, g).textContent = "w";
  svg("text", {x: -26, y: 12, class: "axis-label"}, g).textContent = "b";
}

// Line segments where the grid's values cross level, marching squares, as one path's "d".
function contourPath(values, axis, level) {
  const n = axis.length, out = [];
  const cross = (v0, v1, a0, a1) => a0 + (level - v0) / (v1 - v0) * (a1 - a0);
  for (let i = 0; i + 1 < n; i++) {
    for (let j = 0; j + 1 < n; j++) {
      const v = [values[i][j], values[i][j + 1], values[i + 1][j + 1], values[i + 1][j]];
      const c = [[axis[j], axis[i]], [axis[j + 1], axis[i]], [axis[j + 1], axis[i + 1]],
                 [axis[j], axis[i + 1]]];
      const pts = [];
      for (let e = 0; e < 4; e++) {
        const f = (e + 1) % 4;
        if ((v[e] < level) !== (v[f] < level)) {
          pts.push([cross(v[e], v[f], c[e][0], c[f][0]), cross(v[e], v[f], c[e][1], c[f][1])]);
        }
      }
      for (let p = 0; p + 1 < pts.length; p += 2) {
        out.push("M" + px(pts[p][0]).toFixed(1) + " " + py(pts[p][1]).toFixed(1) + "L" +
                 px(pts[p + 1][0]).toFixed(1) + " " + py(pts[p + 1][1]).toFixed(1));
      }
    }
  }
  return out.join("");
}

// The mean loss as an image (under either contours): low loss dark, log scale 0.003 to 4.
function heatImage(values) {
  const n = values.length, canvas = document.createElement("canvas");
  canvas.width = canvas.height = n;
  const ctx = canvas.getContext("2d"), img = ctx.createImageData(n, n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      const t = Math.min(1, Math.max(0, Math.log(values[i][j] / 0.003) / Math.log(4 / 0.003)));
      const o = 4 * ((n - 1 - i) * n + j);             // rows go down as b goes up
      img.data.set([Math.round(80 + 167 * t), Math.round(120 + 130 * t), Math.round(190 + 62 * t),
                    255], o);
    }
  }
  ctx.putImageData(img, 0, 0);
  return canvas.toDataURL();
}

function drawContours(tasks) {
  const g = $("contours"), marks = $("task-marks"), grid = state.grid;
  g.replaceChildren();
  marks.replaceChildren();
  state.heat = heatImage(grid.mean);
  const perTask = $("contour-mode").value === "tasks";
  $("heat").setAttribute("href", state.heat);
  state.meanPaths = MEAN_LEVELS.map((level) => contourPath(grid.mean, grid.axis, level));
  if (perTask) {
    grid.tasks.forEach((values, i) => TASK_LEVELS.forEach((level) => svg("path", {
      d: contourPath(values, grid.axis, level), class: "contour task",
      stroke: TASK_COLORS[i]}, g)));
  } else {
    state.meanPaths.forEach((d) => svg("path", {d, class: "contour"}, g));
  }
  tasks.forEach((t, i) => {
    const x = px(t.a), y = py(t.c);
    svg("path", {d: `M${x - 5} ${y - 5}L${x + 5} ${y + 5}M${x - 5} ${y + 5}L${x + 5} ${y - 5}`,
                 class: "task-mark", stroke: TASK_COLORS[i]}, marks);
  });
}

// An arrow from -> to (parameters), drawn with map = [x(w), y(b)]; its end point in data-x/y.
function arrow(parent, id, from, to, name, map = [px, py]) {
  const [mx, my] = map;
  const line = svg("line", {id, class: "arrow " + name, x1: mx(from[0]), y1: my(from[1]),
                            x2: mx(to[0]), y2: my(to[1]), stroke: COLORS[name],
                            "marker-end": `url(#head-${name})`}, parent);
  line.dataset.x = String(to[0]);
  line.dataset.y = String(to[1]);
  return line;
}

// The magnifier: the arrows around theta, scaled so that the longest of FOMAML's, MAML's and
// iMAML's spans 70% of its radius (Reptile's, about k times longer (Eq. 35), may leave it).
function drawZoom() {
  const g = $("zoom-arrows"), r = state.reply;
  g.replaceChildren();
  const ends = ALGOS.filter((a) => r.updates[a].end).map((a) => [a, r.updates[a].end]);
  const length = ([, e]) => Math.hypot(e[0] - r.theta[0], e[1] - r.theta[1]);
  const short = ends.filter(([a]) => a !== "reptile").map(length).filter((v) => v > 0);
  const longest = short.length ? Math.max(...short) : Math.max(0, ...ends.map(length));
  const scale = longest > 0 ? 70 / longest : 50;         // SVG units per parameter unit
  const map = [(w) => 100 + (w - r.theta[0]) * scale, (b) => 100 - (b - r.theta[1]) * scale];
  for (const [algo, end] of ends) arrow(g, "zoom-" + algo, r.theta, end, algo, map);
  if ($("overlay-toggle").checked && !r.section51.error) overlayArrows(g, "zoom-", map);
  svg("circle", {cx: 100, cy: 100, r: 5, class: "zoom-theta"}, g);
  $("zoom-label").textContent = "around θ, ×" + +(scale / (SIZE / (HI - LO))).toPrecision(2);
}

// Section 5.1's two terms of Reptile's step, head to tail from theta, dashed.
function overlayArrows(g, prefix, map) {
  const r = state.reply, o = r.section51;
  const mid = [r.theta[0] + o.terms[0][0], r.theta[1] + o.terms[0][1]];
  arrow(g, prefix + "avg-grad", r.theta, mid, "avg-grad", map).classList.add("dashed");
  arrow(g, prefix + "avg-grad-inner", mid, o.predicted, "avg-grad-inner", map)
    .classList.add("dashed");
}

function legendItem(id, color, text) {
  const li = document.createElement("li");
  li.id = id;
  li.style.setProperty("--c", color);
  li.textContent = text;
  $("legend").appendChild(li);
  return li;
}

function drawState(r, s) {
  state.reply = r;
  $("plane").dataset.settings = JSON.stringify(s);
  const traj = $("trajectories"), arrows = $("arrows"), legend = $("legend");
  [traj, arrows, legend].forEach((e) => e.replaceChildren());
  r.tasks.forEach((t, i) => {
    if (!t.trajectory) return;
    const points = t.trajectory.map(([w, b]) => px(w) + "," + py(b)).join(" ");
    svg("polyline", {points, class: "trajectory", stroke: TASK_COLORS[i]}, traj);
    const [w, b] = t.trajectory[t.trajectory.length - 1];
    svg("circle", {cx: px(w), cy: py(b), r: 3.5, fill: TASK_COLORS[i], class: "phi"}, traj);
  });
  for (const algo of ALGOS) {
    const u = r.updates[algo];
    if (u.end) arrow(arrows, "arrow-" + algo, r.theta, u.end, algo);
    legendItem("legend-" + algo, COLORS[algo], NAMES[algo] + ": " + (u.end ?
      `θ' = (${fmt(u.end[0])}, ${fmt(u.end[1])})` : u.error || "diverged (not finite)"))
      .classList.toggle("off", !u.end);
  }
  legendItem("legend-tasks", TASK_COLORS[0], "thin: each task's φ0 … φk; ×: its (a, c)");
  drawOverlay();
  const handle = $("theta");
  handle.dataset.x = String(r.theta[0]);
  handle.dataset.y = String(r.theta[1]);
  state.drawn += 1;
  document.body.dataset.state = String(state.drawn);
}

function drawOverlay() {
  const g = $("overlay"), r = state.reply;
  g.replaceChildren();
  $("legend-overlay")?.remove();
  if (!r) return;
  drawZoom();
  if (!$("overlay-toggle").checked) return;
  const o = r.section51;
  if (o.error) return say(o.error, false);
  overlayArrows(g, "overlay-", [px, py]);
  const c = o.coefficients;
  legendItem("legend-overlay", COLORS["avg-grad-inner"], "dashed: Reptile ≈ −εα(c1 AvgGrad + " +
    "c2 AvgGradInner); (c1, c2): " + ALGOS.slice(0, 3).map((a) =>
    `${NAMES[a]} (${c[a][0]}, ${+c[a][1].toFixed(4)})`).join(", "));
}

function placeTheta() {
  const h = $("theta");
  h.setAttribute("cx", px(state.theta[0]));
  h.setAttribute("cy", py(state.theta[1]));
  $("theta-label").textContent = `θ = (w, b) = (${fmt(state.theta[0])}, ${fmt(state.theta[1])})`;
}

// The pointer's place on the plane, in parameters, kept inside it, to 4 decimals.
function planePoint(e) {
  const plane = $("plane"), p = plane.createSVGPoint();
  p.x = e.clientX;
  p.y = e.clientY;
  const q = p.matrixTransform(plane.getScreenCTM().inverse());
  const clamp = (v) => Math.round(1e4 * Math.min(HI, Math.max(LO, v))) / 1e4;
  return [clamp(LO + q.x / SIZE * (HI - LO)), clamp(HI - q.y / SIZE * (HI - LO))];
}

function drag(e) {
  if (e.type === "pointerdown") {
    if (state.dragging !== null || (e.pointerType === "mouse" && e.button !== 0)) return;
    state.dragging = e.pointerId;
    $("plane").setPointerCapture(e.pointerId);
  } else if (e.pointerId !== state.dragging) {
    return;
  }
  e.preventDefault();
  if (e.type === "pointerup" || e.type === "pointercancel") {
    state.dragging = null;
    return;
  }
  state.theta = planePoint(e);
  placeTheta();
  refresh();
}

// ---- runs --------------------------------------------------------------------------------

async function run() {
  const button = $("run");
  button.disabled = true;
  try {
    const r = await post("/explore/run", {...settings(), steps: Number($("steps").value)});
    drawPaths(r);
    $("run-timing").textContent = "computed by the server in " + r.seconds.toFixed(2) + " s";
  } catch (err) {
    $("run-timing").textContent = err.message;
  } finally {
    button.disabled = false;
    state.runs += 1;
    document.body.dataset.runs = String(state.runs);
  }
}

function drawPaths(r) {
  const box = $("paths");
  box.replaceChildren();
  for (const algo of ALGOS) {
    const p = r.paths[algo], card = document.createElement("figure");
    card.className = "path-card";
    card.id = "path-" + algo;
    const plot = svg("svg", {viewBox: "0 0 400 400", class: "plane small-plane"}, card);
    svg("image", {href: state.heat, x: -5, y: -5, width: 410, height: 410,
                  preserveAspectRatio: "none"}, plot);
    (state.meanPaths || []).forEach((d) => svg("path", {d, class: "contour"}, plot));
    const caption = document.createElement("figcaption");
    caption.style.setProperty("--c", COLORS[algo]);
    if (p.error) {
      caption.textContent = NAMES[algo] + ": " + p.error;
    } else {
      svg("polyline", {points: p.path.map(([w, b]) => px(w) + "," + py(b)).join(" "),
                       class: "path", stroke: COLORS[algo]}, plot);
      const [w0, b0] = p.path[0], [w, b] = p.path[p.path.length - 1];
      svg("circle", {cx: px(w0), cy: py(b0), r: 5, class: "path-start"}, plot);
      const end = svg("circle", {cx: px(w), cy: py(b), r: 6, fill: COLORS[algo],
                                 class: "path-end"}, plot);
      end.dataset.x = String(w);
      end.dataset.y = String(b);
      caption.textContent = `${NAMES[algo]}: θ = (${fmt(w)}, ${fmt(b)}) after ` +
        `${p.path.length - 1} steps${p.diverged ? " (then diverged)" : ""}; mean train loss ` +
        `${fmt(p.train_loss)}, test loss after k steps ${fmt(p.test_loss_adapted)}`;
    }
    card.appendChild(caption);
    box.appendChild(card);
  }
}

// ---- start -------------------------------------------------------------------------------

// One arrowhead marker per colour of COLORS (an arrow of update NAME ends in #head-NAME).
function arrowHeads() {
  const defs = document.querySelector("#plane defs");
  for (const [name, color] of Object.entries(COLORS)) {
    const head = svg("marker", {id: "head-" + name, class: "head", viewBox: "0 0 10 10",
                                refX: 9, refY: 5, markerWidth: 3.6, markerHeight: 3.6,
                                orient: "auto-start-reverse"}, defs);
    svg("path", {d: "M0,0 L10,5 L0,10 z", fill: color}, head);
  }
}

function start() {
  arrowHeads();
  drawAxes();
  placeTheta();
  const plane = $("plane");
  for (const type of ["pointerdown", "pointermove", "pointerup", "pointercancel"]) {
    plane.addEventListener(type, drag);
  }
  for (const id of ["k", "tasks", "points"]) {            // sliders: as they move
    $(id).addEventListener("input", () => {
      $(id + "-value").textContent = $(id).value;
      refresh();
    });
  }
  for (const id of ["alpha", "epsilon", "optimizer", "lam", "seed"]) {
    $(id).addEventListener("change", refresh);
  }
  $("new-tasks").addEventListener("click", () => {
    $("seed").value = String(Number($("seed").value) + 1);
    refresh();
  });
  $("contour-mode").addEventListener("change", () => {
    if (state.reply) drawContours(state.reply.tasks);
  });
  $("overlay-toggle").addEventListener("change", drawOverlay);
  $("run").addEventListener("click", run);
  $("controls").addEventListener("submit", (e) => e.preventDefault());
  refresh().then(() => { document.body.dataset.ready = "true"; });
}

start();
