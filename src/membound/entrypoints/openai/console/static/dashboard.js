// Live dashboard: polls GET /console/api/state (once a second) and draws the queues, tokens/s,
// the memory split, the KV block map (free / cached prefix / in use by which request) and the
// latency samples of the last minutes.
import {
  ApiError, apiJson, colorFor, drawTimeChart, el, fitCanvas, fmtBytes, fmtNum, fmtSeconds,
  initHeader,
} from "./common.js";

const $ = (id) => document.getElementById(id);
// ?interval=MS polls faster or slower (200 ms at least); 1 s by default.
const POLL_MS = Math.max(200, Number(new URLSearchParams(location.search).get("interval")) || 1000);
const FREE = -1;
const CACHED = -2;
let last = null; // the latest state document
let layout = null; // the block map's geometry, for hovering

async function poll() {
  if (!$("pause").checked) {
    try {
      last = await apiJson("/console/api/state");
      render(last);
      $("dash-error").textContent = "";
      $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (e) {
      $("dash-error").textContent = e instanceof ApiError && e.status === 401
        ? "enter the API key to see the engine" : `no data: ${e.message}`;
    }
  }
  setTimeout(poll, POLL_MS);
}

function render(s) {
  $("model-name").textContent = `serving ${s.model}`;
  $("stat-running").textContent = s.num_running;
  $("stat-waiting").textContent = s.num_waiting;
  $("stat-gen").textContent = fmtNum(s.tokens_per_s.generation);
  $("stat-prompt").textContent = fmtNum(s.tokens_per_s.prompt);
  $("stat-kv").textContent = `${s.kv.num_in_use} / ${s.kv.num_blocks}`;
  $("stat-hit").textContent = `${fmtNum(100 * s.counters.prefix_cache_hit_rate)} %`;
  $("stat-preempt").textContent = `${s.counters.num_preemptions} / ${s.counters.num_swaps_out}`;
  renderMemory(s.memory);
  renderBlocks(s.kv);
  renderRequests(s);
  renderCharts(s.series);
}

function renderMemory(m) {
  const parts = [
    ["weights", m.weights_bytes, "#3b5bdb"],
    ["activations (peak of one step)", m.activation_bytes, "#f59f00"],
    ["KV cache", m.kv_bytes, "#2b8a3e"],
  ];
  const used = parts.reduce((a, [, b]) => a + (b || 0), 0);
  const total = m.total_bytes || used;
  $("mem-device").textContent = m.total_bytes
    ? `${m.device}: ${fmtBytes(used)} of ${fmtBytes(m.total_bytes)}`
    : `${m.device}: ${fmtBytes(used)}`;
  const bar = $("membar");
  bar.replaceChildren();
  const legend = $("mem-legend");
  legend.replaceChildren();
  for (const [name, bytes, color] of parts) {
    if (bytes) {
      const seg = el("span", { title: `${name}: ${fmtBytes(bytes)}` });
      seg.style.width = `${(100 * bytes) / total}%`;
      seg.style.background = color;
      bar.append(seg);
    }
    const item = el("span");
    const sw = el("i", { class: "sw" });
    sw.style.background = color;
    item.append(sw, `${name}: ${bytes === null ? "not measured on CPU" : fmtBytes(bytes)}`);
    legend.append(item);
  }
  const extra = [];
  if (m.swap_bytes) extra.push(`swap space (CPU) ${fmtBytes(m.swap_bytes)}`);
  if (m.offloaded_bytes) extra.push(`weights offloaded to CPU ${fmtBytes(m.offloaded_bytes)}`);
  extra.push(`${m.num_blocks} blocks × ${m.block_size} tokens, max_model_len ${m.max_model_len}`);
  legend.append(el("span", {}, extra.join(" · ")));
}

function renderBlocks(kv) {
  const canvas = $("kv-map");
  const n = kv.blocks.length;
  const width = canvas.clientWidth || 800;
  // Square cells, as big as fit a map at most ~260 px tall (min 3 px).
  let cell = Math.floor(Math.sqrt((width * 260) / Math.max(n, 1)));
  cell = Math.max(3, Math.min(22, cell));
  const cols = Math.max(1, Math.floor(width / cell));
  const rows = Math.ceil(n / cols);
  const { ctx } = fitCanvas(canvas, rows * cell);
  ctx.clearRect(0, 0, width, rows * cell);
  const colors = kv.owners.map(colorFor);
  const gap = cell >= 6 ? 1 : 0;
  for (let i = 0; i < n; i++) {
    const code = kv.blocks[i];
    ctx.fillStyle = code === FREE ? "#e9ecf1" : code === CACHED ? "#9fd8cf" : colors[code];
    const x = (i % cols) * cell;
    const y = Math.floor(i / cols) * cell;
    ctx.fillRect(x, y, cell - gap, cell - gap);
  }
  ctx.strokeStyle = "#111827";
  ctx.lineWidth = Math.max(1, Math.floor(cell / 5));
  for (const i of kv.shared) {
    const x = (i % cols) * cell;
    const y = Math.floor(i / cols) * cell;
    const inset = ctx.lineWidth / 2;
    ctx.strokeRect(x + inset, y + inset, cell - gap - 2 * inset, cell - gap - 2 * inset);
  }
  layout = { cell, cols, n };
  canvas.dataset.numBlocks = String(n);
  canvas.dataset.numInUse = String(kv.num_in_use);
  canvas.dataset.numFree = String(kv.num_free);
  canvas.dataset.numCached = String(kv.num_cached_evictable);
  canvas.dataset.owners = kv.owners.join(" ");
  $("kv-summary").textContent = `${kv.num_in_use} in use · ${kv.num_cached_evictable} cached ` +
    `(evictable) · ${kv.num_free} free · ${kv.shared.length} shared · ${kv.block_size} ` +
    `tokens per block`;
}

function hover(ev) {
  if (!last || !layout) return;
  const rect = ev.target.getBoundingClientRect();
  const col = Math.floor((ev.clientX - rect.left) / layout.cell);
  const row = Math.floor((ev.clientY - rect.top) / layout.cell);
  const i = row * layout.cols + col;
  if (col >= layout.cols || i < 0 || i >= layout.n) return;
  const kv = last.kv;
  const code = kv.blocks[i];
  const shared = kv.shared.includes(i) ? " (shared with other requests: prefix cache hit)" : "";
  const what = code === FREE ? "free" : code === CACHED
    ? "cached prefix, evictable (a later prompt with the same prefix can reuse it)"
    : `in use by ${kv.owners[code]}${shared}`;
  $("kv-hover").textContent = `block ${i}: ${what}`;
}

function renderRequests(s) {
  const body = $("requests").tBodies[0];
  const rows = [...s.requests.running, ...s.requests.waiting].map((r) => {
    const tr = el("tr");
    const dot = el("span", { class: "dot" });
    dot.style.background = r.num_blocks ? colorFor(r.request_id) : "transparent";
    const td = el("td");
    td.append(dot);
    tr.append(td, el("td", {}, r.request_id), el("td", {}, r.status));
    for (const v of [r.num_prompt_tokens, r.num_output_tokens, r.num_computed_tokens,
      r.num_blocks, r.num_cpu_blocks, r.num_preemptions]) {
      tr.append(el("td", { class: "num" }, String(v)));
    }
    return tr;
  });
  if (!rows.length) {
    const tr = el("tr");
    tr.append(el("td", { colspan: "9", class: "hint" }, "no request running or waiting"));
    rows.push(tr);
  }
  body.replaceChildren(...rows);
}

function renderCharts(series) {
  const w = series.window_s;
  drawTimeChart($("chart-tps"), [{ points: series.tokens_per_s.map(([a, g]) => [a, g]),
    color: "#3b5bdb", kind: "bars" }], { windowS: w, unit: "tokens/s", format: (v) => fmtNum(v, 0) });
  drawTimeChart($("chart-ttft"), [{ points: series.ttft_s, color: "#e8590c", kind: "dots" }],
    { windowS: w, unit: "TTFT", format: fmtSeconds });
  drawTimeChart($("chart-itl"), [{ points: series.itl_s, color: "#2b8a3e", kind: "dots" }],
    { windowS: w, unit: "ITL", format: fmtSeconds });
}

function init() {
  initHeader();
  $("kv-map").addEventListener("mousemove", hover);
  window.addEventListener("resize", () => last && render(last));
  window.addEventListener("mb-key", () => $("dash-error").textContent = "");
  poll();
}

init();
