// Shared by the console's pages: API calls with the key from sessionStorage, the key panel,
// number formatting and small canvas charts. No framework, no build step.

const KEY_NAME = "membound.apiKey";

export function getKey() {
  return sessionStorage.getItem(KEY_NAME) || "";
}

export function setKey(key) {
  if (key) sessionStorage.setItem(KEY_NAME, key);
  else sessionStorage.removeItem(KEY_NAME);
  updateKeyStatus();
  window.dispatchEvent(new CustomEvent("mb-key"));
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// fetch() with "Authorization: Bearer <key>"; a 401 opens the key panel and throws ApiError.
export async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = getKey();
  if (key) headers.set("Authorization", `Bearer ${key}`);
  const init = { ...options, headers };
  if (options.json !== undefined) {
    headers.set("Content-Type", "application/json");
    init.body = JSON.stringify(options.json);
    delete init.json;
  }
  const res = await fetch(path, init);
  if (res.status === 401) {
    showKeyPanel(key ? "The API key was refused; enter the right one."
                     : "This server needs an API key.");
    throw new ApiError(401, "invalid or missing API key");
  }
  return res;
}

// api() and the JSON body; an error status throws ApiError with the server's message.
export async function apiJson(path, options = {}) {
  const res = await api(path, options);
  const body = await res.json().catch(() => null);
  if (!res.ok) {
    const msg = body && body.error ? body.error.message : `HTTP ${res.status}`;
    throw new ApiError(res.status, msg);
  }
  return body;
}

// ---- the key panel (in every page's header) ------------------------------------------------
function updateKeyStatus() {
  const status = document.getElementById("key-status");
  if (status) status.textContent = getKey() ? "key set" : "no key";
}

export function showKeyPanel(message) {
  const panel = document.getElementById("key-panel");
  if (!panel) return;
  panel.hidden = false;
  document.getElementById("key-message").textContent = message || "";
  document.getElementById("key-input").focus();
}

export function initHeader() {
  const form = document.getElementById("key-form");
  const panel = document.getElementById("key-panel");
  document.getElementById("key-toggle").addEventListener("click", () => {
    panel.hidden = !panel.hidden;
    document.getElementById("key-message").textContent = "";
  });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = document.getElementById("key-input");
    setKey(input.value.trim());
    input.value = "";
    panel.hidden = true;
  });
  document.getElementById("key-clear").addEventListener("click", () => setKey(""));
  updateKeyStatus();
}

// ---- formatting ----------------------------------------------------------------------------
export function fmtBytes(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v.toFixed(i === 0 ? 0 : v < 10 ? 2 : 1)} ${units[i]}`;
}

export function fmtSeconds(s) {
  if (s === null || s === undefined) return "-";
  if (s === 0) return "0";
  if (s < 1) return `${(s * 1000).toFixed(s < 0.01 ? 2 : 1)} ms`;
  return `${s.toFixed(2)} s`;
}

export function fmtNum(v, digits = 1) {
  if (v === null || v === undefined || Number.isNaN(v)) return "-";
  return v.toLocaleString("en-US", { maximumFractionDigits: digits });
}

// A colour per request id, kept for the page's life; successive ids are a golden angle
// apart in hue, so requests running together look different.
const colors = new Map();
export function colorFor(id) {
  let c = colors.get(id);
  if (c === undefined) {
    if (colors.size > 10000) colors.clear();
    let hue = (220 + colors.size * 137.508) % 360;
    if (hue > 145 && hue < 200) hue += 60; // keep clear of the cached blocks' teal
    c = `hsl(${hue.toFixed(0)}, 65%, 50%)`;
    colors.set(id, c);
  }
  return c;
}

export function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  if (text !== undefined) node.textContent = text;
  return node;
}

// ---- canvas charts -------------------------------------------------------------------------
// A canvas sized to its CSS box at the device's pixel ratio; returns the 2D context.
export function fitCanvas(canvas, cssHeight) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || canvas.parentElement.clientWidth;
  canvas.style.height = `${cssHeight}px`;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(cssHeight * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  return { ctx, width, height: cssHeight };
}

// Samples over the last `windowS` seconds: series = [{points: [[ageS, value]], color,
// kind: "dots" | "bars"}]; x runs from -windowS (left) to now (right).
export function drawTimeChart(canvas, series, { windowS, unit, format }) {
  const { ctx, width, height } = fitCanvas(canvas, 150);
  const pad = { l: 74, r: 10, t: 10, b: 22 };
  const w = width - pad.l - pad.r;
  const h = height - pad.t - pad.b;
  let maxY = 0;
  for (const s of series) for (const [, v] of s.points) maxY = Math.max(maxY, v);
  maxY = maxY > 0 ? niceCeil(maxY) : 1;
  ctx.clearRect(0, 0, width, height);
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#667085";
  ctx.strokeStyle = "#e4e7ec";
  for (let i = 0; i <= 4; i++) {
    const y = pad.t + h - (h * i) / 4;
    ctx.beginPath();
    ctx.moveTo(pad.l, y);
    ctx.lineTo(pad.l + w, y);
    ctx.stroke();
    ctx.textAlign = "right";
    ctx.fillText(format((maxY * i) / 4), pad.l - 6, y + 4);
  }
  ctx.textAlign = "center";
  for (let s = 0; s <= windowS; s += windowS / 5) {
    const x = pad.l + w - (w * s) / windowS;
    ctx.fillText(s === 0 ? "now" : `-${Math.round(s / 60 * 10) / 10} min`, x, height - 6);
  }
  for (const s of series) {
    ctx.fillStyle = s.color;
    const barW = Math.max(1, w / windowS);
    for (const [age, v] of s.points) {
      if (age > windowS) continue;
      const x = pad.l + w - (w * age) / windowS;
      const y = pad.t + h - (h * v) / maxY;
      if (s.kind === "bars") ctx.fillRect(x - barW, y, barW, pad.t + h - y);
      else ctx.fillRect(x - 1.5, y - 1.5, 3, 3);
    }
  }
  ctx.save();
  ctx.translate(11, pad.t + h / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.fillStyle = "#667085";
  ctx.fillText(unit, 0, 0);
  ctx.restore();
}

export function niceCeil(v) {
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}
