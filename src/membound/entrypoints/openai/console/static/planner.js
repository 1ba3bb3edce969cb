// The planner as a page: `membound plan` options as a form, POST /console/api/plan, results as
// a table, a roofline chart and the exact --json document.
import { apiJson, el, fitCanvas, fmtBytes, fmtNum, fmtSeconds, initHeader } from "./common.js";

const $ = (id) => document.getElementById(id);
const NUMBER_FIELDS = ["tp", "input_len", "output_len", "concurrency", "gpu_memory_utilization",
  "power_fraction"];
const TEXT_FIELDS = ["precision", "kv_dtype", "target_ttft", "target_tpot", "price_per_gpu_hour"];
const PALETTE = ["#3b5bdb", "#e8590c", "#2b8a3e", "#ae3ec9", "#0c8599", "#c92a2a", "#5c940d",
  "#862e9c"];
let options = null;
let config = null; // a config.json picked in the form, sent inline

async function loadOptions() {
  try {
    options = await apiJson("/console/api/plan/options");
  } catch (e) {
    $("plan-error").textContent = e.message;
    return;
  }
  const fill = (id, values, first) => {
    const items = values.map((v) => el("option", { value: v }, v));
    if (first) items.unshift(el("option", { value: "" }, first));
    $(id).replaceChildren(...items);
  };
  fill("f-model", options.models);
  $("f-model").value = options.models.includes("llama-3-8b") ? "llama-3-8b" : options.models[0];
  fill("f-precision", options.precisions, "checkpoint's, else bf16");
  fill("f-kv_dtype", options.kv_dtypes);
  const d = options.defaults;
  $("f-kv_dtype").value = d.kv_dtype;
  for (const name of ["input_len", "output_len", "concurrency", "gpu_memory_utilization"]) {
    $(`f-${name}`).value = d[name] ?? "";
  }
  $("f-gpus").replaceChildren(...options.gpus.map((g) => {
    const label = el("label", { title: `${g.memory_gib} GiB, ${g.bandwidth_gbs} GB/s` });
    label.append(el("input", { type: "checkbox", value: g.name, checked: "" }), g.label);
    return label;
  }));
}

function formBody() {
  const body = {};
  if (config) body.config = config.json;
  body.model = config ? config.name : $("f-model").value;
  for (const name of [...NUMBER_FIELDS, ...TEXT_FIELDS]) {
    const v = $(`f-${name}`).value.trim();
    if (v !== "") body[name] = NUMBER_FIELDS.includes(name) ? Number(v) : v;
  }
  const boxes = [...$("f-gpus").querySelectorAll("input[type=checkbox]")];
  const picked = boxes.filter((b) => b.checked).map((b) => b.value);
  if (picked.length && picked.length < boxes.length) body.gpu = picked.join(",");
  return body;
}

async function runPlan(ev) {
  ev.preventDefault();
  $("plan-error").textContent = "";
  $("plan-run").disabled = true;
  try {
    const out = await apiJson("/console/api/plan", { method: "POST", json: formBody() });
    render(out);
  } catch (e) {
    $("plan-error").textContent = e.message;
  } finally {
    $("plan-run").disabled = false;
  }
}

function render(out) {
  const plan = out.plan;
  $("plan-out").hidden = false;
  $("plan-command").textContent = out.command;
  $("plan-json").textContent = JSON.stringify(plan, null, 2);
  const rec = plan.recommendation;
  const box = $("plan-recommendation");
  box.classList.toggle("none", !rec);
  box.replaceChildren(el("strong", {}, rec ? `Recommended: ${rec.gpu} × ${rec.tp}. ` : "No recommendation. "),
    plan.recommendation_reason || "");
  const m = plan.model;
  $("roofline-title").textContent = `${m.name} ${m.precision}, KV ${m.kv_dtype}, ` +
    `concurrency ${plan.workload.concurrency}, ${plan.workload.input_len}+${plan.workload.output_len} tokens`;
  const rows = plan.results.map((r) => {
    const tr = el("tr");
    if (rec && rec.gpu === r.gpu && rec.tp === r.tp) tr.className = "best";
    const yes = (v) => (v === null ? el("td", {}, "-") : el("td", { class: v ? "yes" : "no" }, v ? "yes" : "no"));
    const num = (text) => el("td", { class: "num" }, text);
    tr.append(el("td", {}, r.gpu), num(String(r.tp)), yes(r.fits), num(fmtBytes(r.weight_bytes_per_gpu)),
      num(fmtNum(r.max_kv_tokens, 0)), num(fmtNum(r.max_concurrent_seqs, 0)), num(String(r.batch)),
      num(fmtSeconds(r.ttft_s)), num(fmtSeconds(r.tpot_s)), num(fmtNum(r.decode_tokens_per_s)),
      el("td", {}, r.bound), yes(r.meets_targets),
      num(r.cost_per_million_tokens === null ? "-" : `$${r.cost_per_million_tokens.toFixed(2)}`),
      num(r.joules_per_token === null ? "-" : fmtNum(r.joules_per_token, 3)));
    return tr;
  });
  $("plan-table").tBodies[0].replaceChildren(...rows);
  const notes = plan.results.flatMap((r) => r.notes.map((n) => `${r.gpu} TP${r.tp}: ${n}`));
  $("plan-notes").replaceChildren(...(notes.length ? notes : ["none"]).map((n) => el("li", {}, n)));
  drawRoofline(out.roofline);
}

// Log-log roofline: x = FLOP/byte, y = TFLOP/s per GPU.
function drawRoofline(roof) {
  const { ctx, width, height } = fitCanvas($("roofline"), 360);
  const pad = { l: 64, r: 30, t: 12, b: 40 };
  const w = width - pad.l - pad.r;
  const h = height - pad.t - pad.b;
  const xMin = 0.5;
  const xMax = 1e4;
  const peaks = roof.gpus.map((g) => g.peak_tflops);
  const ys = [...peaks, ...roof.points.map((p) => p.tflops)];
  const yMax = 10 ** Math.ceil(Math.log10(Math.max(...ys) * 1.2));
  const yMin = Math.min(10 ** Math.floor(Math.log10(Math.min(...ys, yMax / 1e3))), 1);
  const X = (x) => pad.l + (w * Math.log10(x / xMin)) / Math.log10(xMax / xMin);
  const Y = (y) => pad.t + h - (h * Math.log10(y / yMin)) / Math.log10(yMax / yMin);
  ctx.clearRect(0, 0, width, height);
  ctx.font = "11px system-ui, sans-serif";
  ctx.strokeStyle = "#e4e7ec";
  ctx.fillStyle = "#667085";
  ctx.textAlign = "center";
  for (let e = 0; 10 ** e <= xMax; e++) {
    ctx.beginPath(); ctx.moveTo(X(10 ** e), pad.t); ctx.lineTo(X(10 ** e), pad.t + h); ctx.stroke();
    ctx.fillText(fmtNum(10 ** e, 0), X(10 ** e), pad.t + h + 14);
  }
  ctx.fillText("arithmetic intensity of a decode step (FLOP / byte, per GPU)", pad.l + w / 2, height - 6);
  ctx.textAlign = "right";
  for (let y = yMin; y <= yMax * 1.001; y *= 10) {
    ctx.beginPath(); ctx.moveTo(pad.l, Y(y)); ctx.lineTo(pad.l + w, Y(y)); ctx.stroke();
    ctx.fillText(fmtNum(y, 3), pad.l - 6, Y(y) + 4);
  }
  ctx.save(); ctx.translate(14, pad.t + h / 2); ctx.rotate(-Math.PI / 2); ctx.textAlign = "center";
  ctx.fillText("TFLOP/s per GPU", 0, 0); ctx.restore();
  const color = {};
  const legend = roof.gpus.map((g) =>
    `${g.label}: ${fmtNum(g.peak_tflops, 0)} TFLOP/s, ${fmtNum(g.bandwidth_gbs, 0)} GB/s`);
  const legendW = Math.max(...legend.map((t) => ctx.measureText(t).width)) + 30;
  const lx = pad.l + w - legendW - 6;
  ctx.fillStyle = "rgba(255, 255, 255, 0.9)";
  ctx.fillRect(lx - 6, pad.t + h - 18 - 16 * roof.gpus.length, legendW + 10, 16 * roof.gpus.length + 8);
  roof.gpus.forEach((g, i) => {
    color[g.gpu] = PALETTE[i % PALETTE.length];
    ctx.strokeStyle = color[g.gpu];
    ctx.lineWidth = 2;
    ctx.beginPath();
    for (let k = 0; k <= 120; k++) {
      const x = xMin * (xMax / xMin) ** (k / 120);
      const y = Math.max(yMin, Math.min(g.peak_tflops, (g.bandwidth_gbs * x) / 1e3));
      if (k === 0) ctx.moveTo(X(x), Y(y)); else ctx.lineTo(X(x), Y(y));
    }
    ctx.stroke();
    // legend, bottom right
    const ly = pad.t + h - 10 - 16 * (roof.gpus.length - 1 - i);
    ctx.fillStyle = color[g.gpu];
    ctx.fillRect(lx, ly - 8, 14, 3);
    ctx.textAlign = "left";
    ctx.fillText(legend[i], lx + 20, ly - 3);
  });
  ctx.lineWidth = 2;
  ctx.textAlign = "left";
  const placed = []; // label boxes already drawn, to keep labels apart
  for (const p of roof.points) {
    const x = X(Math.max(xMin, p.intensity));
    const y = Y(Math.max(yMin, p.tflops));
    ctx.strokeStyle = ctx.fillStyle = color[p.gpu];
    if (p.fits) {
      ctx.beginPath(); ctx.arc(x, y, 4.5, 0, 2 * Math.PI); ctx.fill();
    } else {
      ctx.beginPath(); ctx.moveTo(x - 4, y - 4); ctx.lineTo(x + 4, y + 4);
      ctx.moveTo(x + 4, y - 4); ctx.lineTo(x - 4, y + 4); ctx.stroke();
    }
    const label = `${p.gpu} TP${p.tp} B=${p.batch}`;
    const lw = ctx.measureText(label).width;
    let ly = y - 6;
    while (placed.some((b) => x + 7 < b.x + b.w && b.x < x + 7 + lw && Math.abs(b.y - ly) < 12)) ly += 13;
    placed.push({ x: x + 7, y: ly, w: lw });
    ctx.fillText(label, x + 7, ly);
  }
}

async function pickConfig() {
  const file = $("f-config").files[0];
  config = null;
  $("f-model").disabled = false;
  if (!file) return;
  try {
    config = { name: file.name.replace(/\.json$/, ""), json: JSON.parse(await file.text()) };
    $("f-model").disabled = true;
  } catch (e) {
    $("plan-error").textContent = `${file.name} is not JSON: ${e.message}`;
  }
}

function init() {
  initHeader();
  $("plan-form").addEventListener("submit", runPlan);
  $("f-config").addEventListener("change", pickConfig);
  const setAll = (on) => $("f-gpus").querySelectorAll("input").forEach((b) => { b.checked = on; });
  $("gpu-all").addEventListener("click", () => setAll(true));
  $("gpu-none").addEventListener("click", () => setAll(false));
  window.addEventListener("mb-key", loadOptions);
  loadOptions();
}

init();
