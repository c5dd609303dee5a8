// difflab explore: the page's logic. The server computes (difflab's own functions); this file only
// asks for numbers and draws them on canvases. No framework, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
// What the browser test and the benchmark read: counters of finished updates and, for the 2-D lab,
// milliseconds from a control change to the redrawn plot (timings) and to the error shown.
const explore = (window.explore = {
  updates2d: 0, updatesError: 0, updatesCurve: 0, updatesImage: 0, timings: [], errorTimings: [], config: null, busy: 0,
});

// ------------------------------------------------------------------------------------ helpers

async function api(path, body) {
  const response = await fetch(path, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body || {}),
  });
  let data;
  try { data = await response.json(); } catch (e) { throw new Error(`the server answered ${response.status} without JSON`); }
  if (!response.ok) throw new Error(data.error || `the server answered ${response.status}`);
  return data;
}

// A packed tensor {shape, f32: base64 of little-endian float32} as {shape, data: Float32Array}.
function unpack(packed) {
  if (!packed) return null;
  const bytes = atob(packed.f32);
  const buffer = new Uint8Array(bytes.length);
  for (let i = 0; i < bytes.length; i++) buffer[i] = bytes.charCodeAt(i);
  return { shape: packed.shape, data: new Float32Array(buffer.buffer) };
}

function showError(page, message) {
  const box = $(`error-${page}`);
  box.textContent = message || "";
  box.hidden = !message;
}

let busy = 0;
function setBusy(delta) { busy += delta; explore.busy = busy; $("busy").hidden = busy <= 0; }

// Run an async update and drop its answer when a newer one for the same key has started since.
const latest = {};
async function fresh(key, work, draw, page) {
  const ticket = (latest[key] = (latest[key] || 0) + 1);
  setBusy(1);
  try {
    const result = await work();
    if (ticket === latest[key]) { showError(page, ""); draw(result); }
  } catch (e) {
    if (ticket === latest[key]) showError(page, e.message);
  } finally { setBusy(-1); }
}

function fill(select, items, selected) {
  select.innerHTML = "";
  for (const item of items) {
    const option = document.createElement("option");
    option.value = item.value; option.textContent = item.text;
    if (item.value === selected) option.selected = true;
    select.appendChild(option);
  }
}

const fmt = (x) => (x === null || x === undefined ? "n/a" : Math.abs(x) >= 0.01 && Math.abs(x) < 1000 ? x.toPrecision(3) : x.toExponential(2));

// Tick values between lo and hi: 1-2-5 steps, or on a log axis decades (with 2 and 5 when it spans
// less than three decades).
function ticks(lo, hi, log) {
  if (log && lo > 0) {
    const out = [], few = Math.log10(hi / lo) < 3;
    for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
      for (const k of few ? [1, 2, 5] : [1]) { const v = k * 10 ** e; if (v >= lo && v <= hi) out.push(v); }
    }
    if (out.length >= 2) return out;
  }
  const raw = (hi - lo) / 5 || 1, mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((k) => k * mag).find((k) => k >= raw), out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

function tickLabel(v) {
  if (v !== 0 && (Math.abs(v) < 0.01 || Math.abs(v) >= 1e4)) {
    const [mantissa, exponent] = v.toExponential(0).split("e");
    return mantissa === "1" ? `1e${+exponent}` : `${mantissa}e${+exponent}`;
  }
  return `${+v.toPrecision(3)}`;
}

// Log-log or semi-log axes on a canvas: returns {x(v), y(v)} mapping data to pixels.
function axes(ctx, w, h, xr, yr, { logx = true, logy = true, xlabel = "", ylabel = "" } = {}) {
  const m = { l: 56, r: 10, t: 10, b: 34 };
  const fx = logx ? Math.log10 : (v) => v, fy = logy ? Math.log10 : (v) => v;
  const [x0, x1] = xr.map(fx), [y0, y1] = yr.map(fy);
  const X = (v) => m.l + ((fx(v) - x0) / (x1 - x0 || 1)) * (w - m.l - m.r);
  const Y = (v) => h - m.b - ((fy(v) - y0) / (y1 - y0 || 1)) * (h - m.t - m.b);
  ctx.clearRect(0, 0, w, h);
  ctx.strokeStyle = "#d9dee5"; ctx.fillStyle = "#5f6b7a"; ctx.font = "11px sans-serif"; ctx.lineWidth = 1;
  for (const v of ticks(xr[0], xr[1], logx)) {
    ctx.beginPath(); ctx.moveTo(X(v), m.t); ctx.lineTo(X(v), h - m.b); ctx.stroke();
    ctx.textAlign = "center"; ctx.fillText(tickLabel(v), X(v), h - m.b + 13);
  }
  for (const v of ticks(yr[0], yr[1], logy)) {
    ctx.beginPath(); ctx.moveTo(m.l, Y(v)); ctx.lineTo(w - m.r, Y(v)); ctx.stroke();
    ctx.textAlign = "right"; ctx.fillText(tickLabel(v), m.l - 4, Y(v) + 4);
  }
  ctx.strokeStyle = "#8a94a3"; ctx.strokeRect(m.l, m.t, w - m.l - m.r, h - m.t - m.b);
  ctx.textAlign = "center"; ctx.fillText(xlabel, (m.l + w - m.r) / 2, h - 4);
  ctx.save(); ctx.translate(12, (m.t + h - m.b) / 2); ctx.rotate(-Math.PI / 2); ctx.fillText(ylabel, 0, 0); ctx.restore();
  return { x: X, y: Y };
}

function polyline(ctx, pts, color, width = 1.5) {
  ctx.strokeStyle = color; ctx.lineWidth = width; ctx.beginPath();
  pts.forEach(([px, py], i) => (i ? ctx.lineTo(px, py) : ctx.moveTo(px, py)));
  ctx.stroke();
}

// ------------------------------------------------------------------------------------- 2-D lab

const lab = { result: null, error: null, curve: null, frame: 0, colors: [], playing: null, started: 0 };

function params2d() {
  return {
    problem: $("problem").value, sampler: $("sampler").value, steps: $("steps").value,
    schedule: $("schedule").value, rho: $("rho").value, label: $("label").value,
    guidance: $("label").value === "none" ? 1 : $("guidance").value, n: $("npoints").value, seed: $("seed").value,
  };
}

function setup2dControls() {
  const cfg = explore.config;
  fill($("problem"), cfg.problems.map((p) => ({ value: p.id, text: p.exact ? p.id : p.title })), "ring");
  for (const option of $("problem").options) option.title = cfg.problems.find((p) => p.id === option.value).title;
  fill($("sampler"), cfg.samplers.map((s) => ({ value: s.name, text: s.stochastic ? `${s.name} (stochastic)` : s.name })), "dpmpp_2m");
  fill($("schedule"), cfg.schedules_2d.map((s) => ({ value: s, text: s })), "karras");
  setClasses2d();
}

function setClasses2d() {
  const problem = explore.config.problems.find((p) => p.id === $("problem").value);
  const classes = problem ? problem.classes : [];
  fill($("label"), [{ value: "none", text: "none (unconditional)" }, ...classes.map((c, k) => ({ value: `${k}`, text: `${k}: ${c}` }))], "none");
  $("label").disabled = classes.length === 0;
  syncOutputs2d();
}

function syncOutputs2d() {
  $("rho-out").textContent = $("rho").value;
  $("rho").disabled = $("schedule").value !== "karras";
  $("guidance").disabled = $("label").value === "none";
  $("guidance-out").textContent = $("guidance").disabled ? "(choose a class)" : $("guidance").value;
}

// A control changed: the plot first (/api/2d/run), then the error and its curve, which need the
// exact ODE solution (solved once per problem, class, guidance, points and seed).
function update2d() {
  syncOutputs2d();
  const started = performance.now(), p = params2d();
  fresh("run2d", () => api("/api/2d/run", p), (r) => {
    lab.result = { ...r, frames: unpack(r.frames), denoised: unpack(r.denoised), density: unpack(r.density),
      field: unpack(r.field) };
    lab.error = null; lab.curve = null;
    lab.colors = pointColors(lab.result.frames);
    const last = r.sigmas.length - 1;
    $("frame").max = last; $("frame").value = last; lab.frame = last;
    $("error-value").textContent = "solving the exact ODE for the error…";
    draw2d(); drawSigmas(); drawCurve();
    explore.timings.push(performance.now() - started);
    explore.updates2d += 1; document.body.dataset.updates2d = explore.updates2d;
    fresh("error2d", () => api("/api/2d/error", p), (e) => {
      lab.error = { ...e, reference: unpack(e.reference) };
      showErrorValue(); draw2d(); drawCurve();
      explore.errorTimings.push(performance.now() - started);
      explore.updatesError += 1; document.body.dataset.updatesError = explore.updatesError;
    }, "2d");
    fresh("curve2d", () => api("/api/2d/curve", p), (c) => {
      lab.curve = c; drawCurve();
      explore.updatesCurve += 1; document.body.dataset.updatesCurve = explore.updatesCurve;
    }, "2d");
  }, "2d");
}

function showErrorValue() {
  const e = lab.error;
  const problem = explore.config.problems.find((p) => p.id === lab.result.problem);
  const note = (e.stochastic ? " — a stochastic sampler leaves the ODE's path, so this stays large" : "") +
    (problem && !problem.exact ? " (against the network's own ODE)" : "");
  $("error-value").textContent = `error ${fmt(e.error)} at ${e.nfe} denoiser calls${note}`;
  $("error-value").dataset.error = e.error;
}

// Each point coloured by the angle of its end point, so one sees where every path goes.
function pointColors(frames) {
  const out = [], [steps, n] = frames.shape, end = (steps - 1) * n * 2;
  for (let i = 0; i < n; i++) {
    const a = Math.atan2(frames.data[end + 2 * i + 1], frames.data[end + 2 * i]);
    out.push(`hsl(${Math.round(((a + Math.PI) / (2 * Math.PI)) * 360)}, 70%, 42%)`);
  }
  return out;
}

const SHADES = [[255, 255, 255], [222, 235, 247], [158, 202, 225], [66, 146, 198], [8, 69, 148]];
function shade(t) {
  const s = Math.max(0, Math.min(1, t)) * (SHADES.length - 1), i = Math.min(Math.floor(s), SHADES.length - 2), f = s - i;
  return SHADES[i].map((c, k) => Math.round(c + f * (SHADES[i + 1][k] - c)));
}

function draw2d() {
  const r = lab.result; if (!r) return;
  const canvas = $("plot2d"), ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height;
  const i = lab.frame, h = r.views[i], n = r.frames.shape[1], last = r.sigmas.length - 1;
  const px = (x) => ((x + h) / (2 * h)) * W, py = (y) => H - ((y + h) / (2 * h)) * H;
  ctx.clearRect(0, 0, W, H);
  if ($("show-density").checked && r.density) drawDensity(ctx, r.density, i, W, H);
  if ($("show-field").checked) drawField(ctx, r.field, i, h, px, py);
  const F = r.frames.data, at = (f, j) => [F[(f * n + j) * 2], F[(f * n + j) * 2 + 1]];
  if ($("show-trails").checked && i > 0) {
    ctx.globalAlpha = 0.3;
    for (let j = 0; j < n; j++) {
      const pts = []; for (let f = 0; f <= i; f++) { const [x, y] = at(f, j); pts.push([px(x), py(y)]); }
      polyline(ctx, pts, lab.colors[j], 1);
    }
    ctx.globalAlpha = 1;
  }
  if ($("show-reference").checked && lab.error) {
    const ref = lab.error.reference.data;
    ctx.lineWidth = 1; ctx.strokeStyle = "rgba(0,0,0,0.4)";
    for (let j = 0; j < n; j++) { ctx.beginPath(); ctx.arc(px(ref[2 * j]), py(ref[2 * j + 1]), 4, 0, 2 * Math.PI); ctx.stroke(); }
  }
  const D = r.denoised.data, useD = $("show-denoised").checked && i < last;
  for (let j = 0; j < n; j++) {
    const [x, y] = useD ? [D[(i * n + j) * 2], D[(i * n + j) * 2 + 1]] : at(i, j);
    ctx.fillStyle = lab.colors[j]; ctx.beginPath(); ctx.arc(px(x), py(y), 2.2, 0, 2 * Math.PI); ctx.fill();
  }
  ctx.fillStyle = "#1d2330"; ctx.font = "12px sans-serif"; ctx.textAlign = "left";
  ctx.fillText(`view ±${fmt(h)}`, 8, 16);
  $("frame-out").textContent = `step ${i} of ${last}, σ = ${fmt(r.sigmas[i])}`;
}

function drawDensity(ctx, density, i, W, H) {
  const G = density.shape[1], off = i * G * G, vals = density.data.subarray(off, off + G * G);
  let max = -Infinity; for (const v of vals) if (v > max) max = v;
  const image = new ImageData(G, G), span = 8; // shade the top 8 nats of log density
  for (let iy = 0; iy < G; iy++) for (let ix = 0; ix < G; ix++) {
    const [red, green, blue] = shade(1 - (max - vals[iy * G + ix]) / span), k = ((G - 1 - iy) * G + ix) * 4;
    image.data[k] = red; image.data[k + 1] = green; image.data[k + 2] = blue; image.data[k + 3] = 255;
  }
  const tmp = document.createElement("canvas"); tmp.width = G; tmp.height = G;
  tmp.getContext("2d").putImageData(image, 0, 0);
  ctx.imageSmoothingEnabled = true; ctx.drawImage(tmp, 0, 0, W, H);
}

function drawField(ctx, field, i, h, px, py) {
  const S = field.shape[1], off = i * S * S * 2, d = field.data;
  const cell = (2 * h) / (S - 1);
  let longest = 0; const arrows = [];
  for (let iy = 0; iy < S; iy++) for (let ix = 0; ix < S; ix++) {
    const x = -h + ix * cell, y = -h + iy * cell, k = off + (iy * S + ix) * 2;
    const dx = d[k] - x, dy = d[k + 1] - y, len = Math.hypot(dx, dy);
    longest = Math.max(longest, len); arrows.push([x, y, dx, dy, len]);
  }
  if (longest === 0) return;  // sigma = 0: D(x) = x
  const scale = (0.9 * cell) / longest;
  ctx.strokeStyle = "rgba(40,40,40,0.55)"; ctx.lineWidth = 1;
  for (const [x, y, dx, dy] of arrows) {
    const x1 = x + dx * scale, y1 = y + dy * scale;
    ctx.beginPath(); ctx.moveTo(px(x), py(y)); ctx.lineTo(px(x1), py(y1)); ctx.stroke();
    const a = Math.atan2(py(y1) - py(y), px(x1) - px(x)), tip = 3;
    ctx.beginPath(); ctx.moveTo(px(x1), py(y1));
    ctx.lineTo(px(x1) - tip * Math.cos(a - 0.5), py(y1) - tip * Math.sin(a - 0.5));
    ctx.lineTo(px(x1) - tip * Math.cos(a + 0.5), py(y1) - tip * Math.sin(a + 0.5)); ctx.closePath(); ctx.stroke();
  }
}

function drawCurve() {
  const canvas = $("curve"), ctx = canvas.getContext("2d"), c = lab.curve, e = lab.error;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!c) { ctx.fillStyle = "#5f6b7a"; ctx.fillText("computing the error curve…", 60, 30); return; }
  const rows = [...c.curves.karras, ...c.curves.logsnr, ...(e ? [e] : [])].filter((p) => p.error > 0);
  if (!rows.length) return;
  const nfe = rows.map((p) => p.nfe), err = rows.map((p) => p.error);
  const A = axes(ctx, canvas.width, canvas.height, [1, Math.max(...nfe) * 1.1],
    [Math.min(...err) / 1.5, Math.max(...err) * 1.5], { xlabel: "denoiser calls (NFE)", ylabel: "RMS error" });
  for (const [name, color] of [["karras", "#2464c8"], ["logsnr", "#e07b00"]]) {
    const pts = c.curves[name].filter((p) => p.error > 0).map((p) => [A.x(p.nfe), A.y(p.error)]);
    polyline(ctx, pts, color);
    ctx.fillStyle = color; for (const [x, y] of pts) { ctx.beginPath(); ctx.arc(x, y, 2, 0, 2 * Math.PI); ctx.fill(); }
  }
  if (e && e.error > 0) {
    ctx.fillStyle = "#d62728"; ctx.beginPath(); ctx.arc(A.x(e.nfe), A.y(e.error), 5, 0, 2 * Math.PI); ctx.fill();
  }
}

function drawSigmas() {
  const s = lab.result.sigmas.slice(0, -1), canvas = $("sigmaplot"), ctx = canvas.getContext("2d");
  const A = axes(ctx, canvas.width, canvas.height, [0, Math.max(1, s.length - 1)], [Math.min(...s) / 1.5, Math.max(...s) * 1.5],
    { logx: false, xlabel: "step i", ylabel: "σ_i" });
  const pts = s.map((v, i) => [A.x(i), A.y(v)]);
  polyline(ctx, pts, "#2464c8");
  ctx.fillStyle = "#2464c8"; for (const [x, y] of pts) { ctx.beginPath(); ctx.arc(x, y, 2.5, 0, 2 * Math.PI); ctx.fill(); }
}

function play() {
  if (lab.playing) { clearInterval(lab.playing); lab.playing = null; return; }
  if (!lab.result) return;
  const last = lab.result.sigmas.length - 1;
  lab.frame = 0;
  lab.playing = setInterval(() => {
    $("frame").value = lab.frame; draw2d();
    if (lab.frame >= last) { clearInterval(lab.playing); lab.playing = null; } else lab.frame += 1;
  }, Math.max(60, 2400 / last));
}

// ----------------------------------------------------------------------------------- image lab

const edit = { mask: null, source: null, shape: null, drawing: false };

function imageModel() { return explore.config.image_models.find((m) => m.name === $("img-model").value); }

function paramsImage() {
  const model = imageModel();
  const body = { model: $("img-model").value, sampler: $("img-sampler").value, steps: $("img-steps").value,
    schedule: $("img-schedule").value, n: $("img-n").value, seed: $("img-seed").value };
  if (model && model.classes) {
    if ($("img-label").value !== "cycle") body.label = $("img-label").value;
    body.guidance = $("img-guidance").value;
  }
  return body;
}

function setupImageControls() {
  const cfg = explore.config, samplers = cfg.samplers.map((s) => ({ value: s.name, text: s.name }));
  fill($("img-model"), cfg.image_models.map((m) => ({ value: m.name, text: `${m.name} (${m.preset}, ${m.shape.join("×")})` })));
  fill($("img-sampler"), samplers, "dpmpp_2m");
  fill($("edit-sampler"), samplers, "ddpm");
  fill($("img-schedule"), cfg.schedules_image.map((s) => ({ value: s, text: s })), "auto");
  fill($("edit-method"), cfg.edit_methods.map((s) => ({ value: s, text: s })), "repaint");
  const boxes = $("compare-samplers"); boxes.innerHTML = "";
  for (const s of cfg.samplers) {
    const label = document.createElement("label"), box = document.createElement("input");
    box.type = "checkbox"; box.value = s.name; box.checked = ["euler", "heun", "dpmpp_2m", "ddpm"].includes(s.name);
    box.addEventListener("change", updateCompare);
    label.append(box, ` ${s.name}`); boxes.appendChild(label);
  }
  setImageClasses();
}

function setImageClasses() {
  const model = imageModel(), k = model && model.classes ? model.classes : 0;
  fill($("img-label"), [{ value: "cycle", text: k ? "cycle through the classes" : "none (unconditional)" },
    ...Array.from({ length: k }, (_, c) => ({ value: `${c}`, text: `${c}` }))], "cycle");
  $("img-label").disabled = !k; $("img-guidance").disabled = !k;
  $("img-guidance-out").textContent = k ? $("img-guidance").value : "(class-conditional models)";
}

// One image (C, H, W) of a packed batch as a canvas, values in [-1, 1] (times `gain`), `scale` pixels per pixel.
function imageCanvas(t, index, scale, gain = 1) {
  const [C, H, W] = t.shape.slice(-3), size = C * H * W, off = index * size;
  const canvas = document.createElement("canvas"); canvas.width = W * scale; canvas.height = H * scale;
  const small = new ImageData(W, H);
  for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) {
    for (let c = 0; c < 3; c++) {
      const v = t.data[off + (C === 1 ? 0 : c) * H * W + y * W + x] * gain;
      small.data[(y * W + x) * 4 + c] = Math.round(((Math.max(-1, Math.min(1, v)) + 1) / 2) * 255);
    }
    small.data[(y * W + x) * 4 + 3] = 255;
  }
  const tmp = document.createElement("canvas"); tmp.width = W; tmp.height = H; tmp.getContext("2d").putImageData(small, 0, 0);
  const ctx = canvas.getContext("2d"); ctx.imageSmoothingEnabled = false; ctx.drawImage(tmp, 0, 0, canvas.width, canvas.height);
  return canvas;
}

function scaleFor(shape) { return Math.max(1, Math.round(56 / shape[shape.length - 1])); }

function cell(row, content, tag = "td") { const c = document.createElement(tag); if (typeof content === "string") c.textContent = content; else c.appendChild(content); row.appendChild(c); return c; }

function updateReverse() {
  if (!$("img-model").value) return showError("image", "no image model: start 'difflab explore MODEL_DIR' with an image model's directory");
  fresh("reverse", () => api("/api/image/reverse", paramsImage()), (r) => {
    const x = unpack(r.x), d = unpack(r.denoised), out = unpack(r.output), scale = scaleFor(out.shape);
    const table = document.createElement("table"); table.className = "imgrid";
    const head = document.createElement("tr"); cell(head, "", "th");
    r.sigmas.forEach((s, i) => cell(head, `σ${i} = ${fmt(s)}`, "th")); cell(head, "output", "th"); table.appendChild(head);
    const steps = r.sigmas.length, n = out.shape[0];
    for (let j = 0; j < n; j++) {
      for (const [name, t] of [["x_i", x], ["D(x_i)", d]]) {
        const row = document.createElement("tr"); cell(row, name, "th");
        for (let i = 0; i < steps; i++) cell(row, imageCanvas(t, i * n + j, scale, name === "x_i" ? 1 / Math.sqrt(1 + r.sigmas[i] ** 2) : 1));
        cell(row, name === "x_i" ? imageCanvas(out, j, scale) : ""); table.appendChild(row);
      }
    }
    $("reverse").replaceChildren(table);
    explore.updatesImage += 1; document.body.dataset.updatesImage = explore.updatesImage;
  }, "image");
}

function updateCompare() {
  if (!$("img-model").value) return;
  const samplers = [...$("compare-samplers").querySelectorAll("input:checked")].map((b) => b.value);
  if (!samplers.length) return $("compare").replaceChildren();
  fresh("compare", () => api("/api/image/compare", { ...paramsImage(), samplers }), (r) => {
    const table = document.createElement("table"); table.className = "imgrid";
    const head = document.createElement("tr");
    for (const s of r.samplers) cell(head, `${s.sampler} · ${s.nfe} calls · ${fmt(s.seconds)} s`, "th");
    table.appendChild(head);
    const images = r.samplers.map((s) => unpack(s.images)), n = images[0].shape[0], scale = scaleFor(images[0].shape);
    for (let j = 0; j < n; j++) {
      const row = document.createElement("tr");
      for (const t of images) cell(row, imageCanvas(t, j, scale));
      table.appendChild(row);
    }
    $("compare").replaceChildren(table);
  }, "image");
}

function loadSource() {
  if (!$("img-model").value) return;
  const body = { model: $("img-model").value, source_seed: $("source-seed").value };
  fresh("source", () => api("/api/image/source", body), (r) => {
    edit.source = unpack(r.image); edit.shape = edit.source.shape.slice(-2);
    edit.mask = Array.from({ length: edit.shape[0] }, () => new Array(edit.shape[1]).fill(0));
    drawEditCanvas();
  }, "image");
}

function drawEditCanvas() {
  const canvas = $("draw"), ctx = canvas.getContext("2d"), [H, W] = edit.shape;
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(imageCanvas(edit.source, 0, 1), 0, 0, canvas.width, canvas.height);
  ctx.fillStyle = "rgba(230, 40, 40, 0.55)";
  for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) {
    if (edit.mask[y][x]) ctx.fillRect((x * canvas.width) / W, (y * canvas.height) / H, canvas.width / W, canvas.height / H);
  }
}

function paint(event) {
  if (!edit.mask) return;
  const canvas = $("draw"), box = canvas.getBoundingClientRect(), [H, W] = edit.shape;
  const x = Math.floor(((event.clientX - box.left) / box.width) * W), y = Math.floor(((event.clientY - box.top) / box.height) * H);
  const r = Math.max(0, Math.round(W / 16) - 1);
  for (let dy = -r; dy <= r; dy++) for (let dx = -r; dx <= r; dx++) {
    if (y + dy >= 0 && y + dy < H && x + dx >= 0 && x + dx < W) edit.mask[y + dy][x + dx] = 1;
  }
  drawEditCanvas();
}

function editBody() {
  return { ...paramsImage(), source_seed: $("source-seed").value, mask: edit.mask, sampler: $("edit-sampler").value };
}

function showImages(target, r, key, first, firstName, name) {
  const a = unpack(r[first]), b = unpack(r[key]), scale = scaleFor(b.shape);
  const table = document.createElement("table"); table.className = "imgrid";
  const head = document.createElement("tr"); cell(head, firstName, "th"); cell(head, name, "th").colSpan = b.shape[0]; table.appendChild(head);
  const row = document.createElement("tr"); cell(row, imageCanvas(a, 0, scale));
  for (let j = 0; j < b.shape[0]; j++) cell(row, imageCanvas(b, j, scale));
  table.appendChild(row); $(target).replaceChildren(table);
}

function runInpaint() {
  if (!edit.mask) return;
  fresh("inpaint", () => api("/api/image/inpaint", { ...editBody(), method: $("edit-method").value }),
    (r) => showImages("inpaint-out", r, "images", "source", "source", `inpainted (${$("edit-method").value})`), "image");
}

function runSdedit() {
  $("strength-out").textContent = $("strength").value;
  if (!edit.mask) return;
  fresh("sdedit", () => api("/api/image/sdedit", { ...editBody(), strength: $("strength").value }),
    (r) => showImages("sdedit-out", r, "images", "guide", "guide", `SDEdit, t0 = ${$("strength").value}`), "image");
}

function updateImageLab() { $("img-guidance-out").textContent = $("img-guidance").disabled ? "(class-conditional models)" : $("img-guidance").value; updateReverse(); updateCompare(); }

// ------------------------------------------------------------------------------------ training

const training = { view: null };

function updateTraining() {
  const run = $("run").value;
  if (!run) return showError("training", "no training run: start 'difflab explore RUN_DIR' with a folder from 'difflab train --out'");
  fresh("training", () => api("/api/training", { run }), (v) => {
    training.view = v; drawLoss(v);
    const grids = v.samples, slider = $("grid-step");
    slider.max = Math.max(0, grids.length - 1); slider.value = slider.max; showGrid();
    $("doctor").hidden = !v.doctor;
    $("doctor-list").replaceChildren();
    if (v.doctor) updateDoctor(v.name);
  }, "training");
}

function updateDoctor(run) {
  $("doctor-list").replaceChildren(Object.assign(document.createElement("li"), { textContent: "examining the run…" }));
  fresh("doctor", () => api("/api/training/doctor", { run }), (r) => {
    const items = r.findings && r.findings.length ? r.findings : [{ severity: "ok", message: "no findings" }];
    $("doctor-list").replaceChildren(...items.map((f) => {
      const li = document.createElement("li"), tag = document.createElement("b");
      tag.textContent = f.severity ? `${f.severity}: ` : ""; tag.className = `severity-${f.severity}`;
      li.append(tag, f.message); return li;
    }));
    $("doctor").dataset.run = run;
  }, "training");
}

function drawLoss(v) {
  const canvas = $("loss"), ctx = canvas.getContext("2d"), steps = v.log.step || [], loss = v.log.loss || [];
  const pts = steps.map((s, i) => [s, loss[i]]).filter(([s, l]) => l > 0);
  if (!pts.length) {
    ctx.clearRect(0, 0, canvas.width, canvas.height); ctx.fillText("no log rows yet", 20, 20);
    $("loss-caption").dataset.rows = 0; $("loss-caption").dataset.run = v.name; return;
  }
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  const A = axes(ctx, canvas.width, canvas.height, [Math.min(...xs), Math.max(...xs, Math.min(...xs) + 1)],
    [Math.min(...ys) / 1.1, Math.max(...ys) * 1.1], { logx: false, xlabel: "training step", ylabel: "loss (log scale)" });
  polyline(ctx, pts.map(([s, l]) => [A.x(s), A.y(l)]), "#2464c8");
  const planned = v.planned_steps ? ` of ${v.planned_steps} planned` : "";
  $("loss-caption").dataset.rows = pts.length; $("loss-caption").dataset.run = v.name;
  ctx.fillStyle = "#1d2330"; ctx.textAlign = "right"; ctx.fillText(`${v.preset || ""} · step ${xs[xs.length - 1]}${planned}`, canvas.width - 14, 24);
}

function showGrid() {
  const v = training.view; if (!v) return;
  const grid = v.samples[+$("grid-step").value];
  $("grid-step-out").textContent = grid ? grid.step : "(no sample grids yet)";
  $("grid-img").hidden = !grid;
  if (grid) $("grid-img").src = `/api/training/grid?run=${encodeURIComponent(v.name)}&file=${encodeURIComponent(grid.file)}`;
}

// --------------------------------------------------------------------------------------- start

function showTab(name) {
  for (const b of document.querySelectorAll("nav .tab")) b.classList.toggle("active", b.dataset.tab === name);
  for (const page of document.querySelectorAll(".page")) page.hidden = page.id !== name;
  if (name === "image" && !$("reverse").children.length) { updateImageLab(); loadSource(); }
  if (name === "training" && !training.view) updateTraining();
}

async function start() {
  try { explore.config = await api("/api/config"); } catch (e) { return showError("2d", e.message); }
  setup2dControls(); setupImageControls();
  const limits = explore.config.limits;
  for (const [id, key] of [["steps", "steps_2d"], ["npoints", "n_2d"], ["img-steps", "steps_image"], ["img-n", "n_image"]]) {
    [$(id).min, $(id).max] = limits[key];
  }
  fill($("run"), explore.config.runs.map((r) => ({ value: r.name, text: `${r.name} (${r.preset || "no model yet"})` })));
  for (const b of document.querySelectorAll("nav .tab")) b.addEventListener("click", () => showTab(b.dataset.tab));
  $("problem").addEventListener("change", () => { setClasses2d(); update2d(); });
  for (const id of ["sampler", "steps", "schedule", "rho", "label", "guidance", "npoints", "seed"]) $(id).addEventListener("change", update2d);
  for (const id of ["rho", "guidance"]) $(id).addEventListener("input", syncOutputs2d);
  $("frame").addEventListener("input", () => { lab.frame = +$("frame").value; draw2d(); });
  for (const id of ["show-density", "show-field", "show-trails", "show-denoised", "show-reference"]) $(id).addEventListener("change", draw2d);
  $("play").addEventListener("click", play);
  $("img-model").addEventListener("change", () => { setImageClasses(); updateImageLab(); loadSource(); });
  for (const id of ["img-sampler", "img-steps", "img-schedule", "img-n", "img-seed", "img-label", "img-guidance"]) $(id).addEventListener("change", updateImageLab);
  $("source-seed").addEventListener("change", loadSource);
  $("clear-mask").addEventListener("click", () => { if (edit.mask) { edit.mask.forEach((row) => row.fill(0)); drawEditCanvas(); } });
  $("draw").addEventListener("mousedown", (e) => { edit.drawing = true; paint(e); });
  $("draw").addEventListener("mousemove", (e) => { if (edit.drawing) paint(e); });
  window.addEventListener("mouseup", () => { edit.drawing = false; });
  $("run-inpaint").addEventListener("click", runInpaint);
  $("strength").addEventListener("change", runSdedit);
  $("strength").addEventListener("input", () => { $("strength-out").textContent = $("strength").value; });
  $("run").addEventListener("change", updateTraining);
  $("refresh").addEventListener("click", updateTraining);
  $("grid-step").addEventListener("input", showGrid);
  $("strength-out").textContent = $("strength").value;
  const tab = new URLSearchParams(location.search).get("tab");
  update2d();
  if (tab) showTab(tab);
}

start();
