// minireptile demo page: drawing pads (mouse, pen, touch through pointer events), the
// 28x28 images the server makes of them, and the learning results replayed step by step.
// Strokes are sent as points in units of the pad's width; the server crops, centres and
// renders them (minireptile/demo/preprocess.py), so only their shape matters.
"use strict";

const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
                "#17becf", "#bcbd22", "#7f7f7f"];
const REPLAY_MS = 1500;
// Pointer positions closer than this (in pad widths) to a stroke's last point are left out:
// a fast mouse or pen reports hundreds a second, and the server takes at most 2000 points a
// drawing. For a character over 1/12 of a pad wide, the step is under a pixel of its 28x28.
const MIN_STEP = 0.005;
const state = {support: [], query: null, result: null, timer: null, learned: 0};

function $(id) { return document.getElementById(id); }

function element(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

function color(c) { return COLORS[c % COLORS.length]; }

function className(c) { return "class " + (c + 1); }

// ---- drawing pads ------------------------------------------------------------------------

function makePad(parent, label, classIndex) {
  const card = element("figure", "card");
  if (classIndex !== null) card.style.setProperty("--class-color", color(classIndex));
  card.appendChild(element("figcaption", "", label));
  const canvas = element("canvas", "pad");
  canvas.setAttribute("aria-label", "drawing pad: " + label);
  const foot = element("div", "card-foot");
  const seen = element("canvas", "seen");
  seen.width = seen.height = 28;
  seen.title = "what the network sees (28x28)";
  const clear = element("button", "clear", "Clear");
  clear.type = "button";
  foot.append(seen, clear);
  card.append(canvas, foot);
  parent.appendChild(card);
  const pad = {label, canvas, seen, strokes: [], current: null, pointer: null, version: 0};
  canvas.addEventListener("pointerdown", (e) => startStroke(pad, e));
  canvas.addEventListener("pointermove", (e) => extendStroke(pad, e));
  canvas.addEventListener("pointerup", (e) => endStroke(pad, e));
  canvas.addEventListener("pointercancel", (e) => endStroke(pad, e));
  clear.addEventListener("click", () => clearPad(pad));
  new ResizeObserver(() => redraw(pad)).observe(canvas);
  return pad;
}

// The pointer's position in units of the pad's width (the pad is square).
function padPoint(pad, e) {
  const r = pad.canvas.getBoundingClientRect();
  const round = (v) => Math.round(v * 1000) / 1000;
  return [round((e.clientX - r.left) / r.width), round((e.clientY - r.top) / r.width)];
}

function startStroke(pad, e) {
  if (pad.current !== null || (e.pointerType === "mouse" && e.button !== 0)) return;
  e.preventDefault();
  pad.canvas.setPointerCapture(e.pointerId);
  pad.pointer = e.pointerId;
  pad.current = [padPoint(pad, e)];
  pad.strokes.push(pad.current);
  pad.version += 1;
  redraw(pad);
}

function extendStroke(pad, e) {
  if (pad.current === null || e.pointerId !== pad.pointer) return;
  e.preventDefault();
  const coalesced = e.getCoalescedEvents ? e.getCoalescedEvents() : [];
  for (const ev of coalesced.length ? coalesced : [e]) addPoint(pad.current, padPoint(pad, ev));
  redraw(pad);
}

function addPoint(stroke, p) {
  const last = stroke[stroke.length - 1];
  if (Math.max(Math.abs(p[0] - last[0]), Math.abs(p[1] - last[1])) >= MIN_STEP) stroke.push(p);
}

function endStroke(pad, e) {
  if (pad.current === null || e.pointerId !== pad.pointer) return;
  pad.current = null;
  preview(pad);
}

function clearPad(pad) {
  pad.strokes = [];
  pad.current = null;
  pad.version += 1;
  redraw(pad);
  showImage(pad.seen, null);
}

function redraw(pad) {
  const c = pad.canvas, dpr = window.devicePixelRatio || 1;
  const w = Math.round(c.clientWidth * dpr);
  if (c.width !== w || c.height !== w) c.width = c.height = w;
  const ctx = c.getContext("2d");
  ctx.clearRect(0, 0, w, w);
  ctx.strokeStyle = ctx.fillStyle = "#000";
  ctx.lineWidth = 0.045 * w;
  ctx.lineCap = ctx.lineJoin = "round";
  for (const stroke of pad.strokes) {
    ctx.beginPath();
    ctx.moveTo(stroke[0][0] * w, stroke[0][1] * w);
    for (const [x, y] of stroke.length > 1 ? stroke.slice(1) : stroke) ctx.lineTo(x * w, y * w);
    ctx.stroke();
  }
}

// 28 rows of 28 values, 0 ink and 1 background, as the network's input; null clears.
function showImage(canvas, image) {
  const ctx = canvas.getContext("2d");
  const data = ctx.createImageData(28, 28);
  for (let i = 0; i < 28 * 28; i++) {
    const v = image ? 255 * image[Math.floor(i / 28)][i % 28] : 255;
    data.data.set([v, v, v, 255], 4 * i);
  }
  ctx.putImageData(data, 0, 0);
}

// ---- talking to the server ---------------------------------------------------------------

// Shows the server's 28x28 image of the pad, unless the pad changed while it was coming.
async function preview(pad) {
  const version = pad.version;
  try {
    const image = (await post("/preview", {drawing: pad.strokes})).image;
    if (pad.version === version) showImage(pad.seen, image);
  } catch (err) {
    say(err.message, true);
  }
}

function say(text, isError) {
  const m = $("message");
  m.textContent = text;
  m.classList.toggle("error", Boolean(isError));
}

async function learn() {
  const button = $("learn");
  button.disabled = true;
  say("learning...", false);
  const t0 = performance.now();
  try {
    const r = await post("/learn", {support: state.support.map((p) => p.strokes),
                                    query: state.query.strokes});
    const roundTrip = (performance.now() - t0) / 1000;
    state.support.forEach((p, i) => showImage(p.seen, r.support[i]));
    showImage(state.query.seen, r.query);
    say("", false);
    showResult(r, roundTrip);
  } catch (err) {
    say(err.message, true);
  } finally {
    button.disabled = false;
    state.learned += 1;
    document.body.dataset.learned = String(state.learned);
  }
}

// ---- results -----------------------------------------------------------------------------

function showResult(r, roundTrip) {
  state.result = r;
  const k = r.meta.steps.length - 1;
  $("results").hidden = false;
  $("step").max = String(k);
  for (const name of ["meta", "scratch"]) {
    const panel = $(name), p = r[name].predicted;
    panel.dataset.predicted = String(p);
    panel.querySelector(".verdict").textContent =
      "after " + k + " steps: " + className(p) + " (" + percent(r[name].steps[k][p]) + ")";
    drawChart(panel.querySelector(".chart"), r[name].steps);
  }
  $("timing").textContent = "Learned in " + r.seconds.toFixed(2) + " s on the server " +
    "(meta-learned " + r.meta.seconds.toFixed(2) + " s, random " +
    r.scratch.seconds.toFixed(2) + " s; " + k + " steps each), " + roundTrip.toFixed(2) +
    " s round trip.";
  replay();
}

function percent(p) { return (100 * p).toFixed(0) + "%"; }

function showStep(step) {
  const r = state.result;
  $("step").value = String(step);
  $("step-label").textContent = String(step);
  for (const name of ["meta", "scratch"]) {
    const probs = r[name].steps[step], bars = $(name).querySelector(".bars");
    bars.replaceChildren(...probs.map((p, c) => {
      const li = element("li");
      li.style.setProperty("--class-color", color(c));
      const bar = element("div", "bar"), fill = element("span");
      fill.style.width = percent(p);
      bar.appendChild(fill);
      li.append(element("span", "", className(c)), bar, element("span", "value", percent(p)));
      return li;
    }));
    const marker = $(name).querySelector(".marker");
    const x = String(100 * step / (r[name].steps.length - 1));
    marker.setAttribute("x1", x);
    marker.setAttribute("x2", x);
  }
}

function drawChart(svg, steps) {
  const ns = "http://www.w3.org/2000/svg", k = steps.length - 1;
  svg.replaceChildren();
  for (let c = 0; c < steps[0].length; c++) {
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", steps.map((p, i) => (100 * i / k) + "," + (40 - 38 * p[c]))
      .join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", color(c));
    line.setAttribute("stroke-width", "1.5");
    line.setAttribute("vector-effect", "non-scaling-stroke");
    svg.appendChild(line);
  }
  const marker = document.createElementNS(ns, "line");
  marker.setAttribute("class", "marker");
  marker.setAttribute("y1", "0");
  marker.setAttribute("y2", "40");
  marker.setAttribute("stroke", "#888");
  marker.setAttribute("vector-effect", "non-scaling-stroke");
  svg.appendChild(marker);
}

function replay() {
  clearInterval(state.timer);
  const k = state.result.meta.steps.length - 1;
  let step = 0;
  showStep(0);
  state.timer = setInterval(() => {
    step += 1;
    showStep(Math.min(step, k));
    if (step >= k) clearInterval(state.timer);
  }, REPLAY_MS / Math.max(k, 1));
}

// ---- page setup --------------------------------------------------------------------------

async function init() {
  let config;
  try {
    config = await (await fetch("/config")).json();
  } catch (err) {
    return say("cannot reach the demo server", true);
  }
  $("model").textContent = "Model: " + config.model + ".";
  if (config.shots > 1) $("support-title").textContent =
    "Classes: " + config.shots + " drawings each";
  for (let c = 0; c < config.classes; c++) {
    for (let s = 0; s < config.shots; s++) {
      const label = className(c) + (config.shots > 1 ? ", example " + (s + 1) : "");
      state.support.push(makePad($("support"), label, c));
    }
  }
  state.query = makePad($("query"), "query", null);
  $("learn").addEventListener("click", learn);
  $("clear-all").addEventListener("click", () => {
    state.support.concat([state.query]).forEach(clearPad);
    say("", false);
  });
  $("step").addEventListener("input", (e) => {
    clearInterval(state.timer);
    showStep(Number(e.target.value));
  });
  $("replay").addEventListener("click", replay);
  document.body.dataset.ready = "true";
}

init();
