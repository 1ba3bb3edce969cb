// Chat playground: /v1/chat/completions with stream=true, tokens shown as they arrive, and
// per-reply figures (time to first token, decode tokens/s, token count, finish reason).
import { ApiError, api, apiJson, el, fmtNum, fmtSeconds, initHeader } from "./common.js";

const $ = (id) => document.getElementById(id);
const history = []; // [{role, content}] of the conversation so far
let controller = null; // AbortController of the reply being streamed

async function loadModels() {
  try {
    const list = await apiJson("/v1/models");
    const select = $("model");
    select.replaceChildren(...list.data.map((m) => el("option", { value: m.id }, m.id)));
    $("model-name").textContent = list.data.length ? `serving ${list.data[0].id}` : "";
    const max = list.data.length ? list.data[0].max_model_len : null;
    if (max) $("max-tokens").max = String(max);
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) console.error(e);
  }
}

function addMessage(role, text) {
  $("empty-hint")?.remove();
  const node = el("div", { class: `msg ${role}` });
  node.append(el("div", { class: "who" }, role === "user" ? "you" : "assistant"));
  const body = el("div", { class: "text" }, text);
  node.append(body);
  $("messages").append(node);
  node.scrollIntoView({ block: "end" });
  return { node, body };
}

function requestBody(prompt) {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...history, { role: "user", content: prompt });
  return {
    model: $("model").value || undefined,
    messages,
    stream: true,
    stream_options: { include_usage: true },
    temperature: Number($("temperature").value),
    top_p: Number($("top-p").value),
    max_tokens: Number($("max-tokens").value) || undefined,
  };
}

// Reads "data: {...}\n\n" events; calls onEvent(obj) per JSON event, stops at [DONE].
async function readEvents(res, onEvent) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        onEvent(JSON.parse(data));
      }
    }
  }
}

async function send(prompt) {
  const body = requestBody(prompt);
  history.push({ role: "user", content: prompt });
  addMessage("user", prompt);
  const reply = addMessage("assistant", "");
  reply.node.dataset.state = "streaming";
  reply.node.dataset.chunks = "0";
  const figures = el("div", { class: "figures" }, "waiting for the first token…");
  reply.node.append(figures);
  setBusy(true);
  controller = new AbortController();
  const t0 = performance.now();
  let tFirst = null;
  let text = "";
  let finish = null;
  let usage = null;
  let state = "streaming";
  let errorText = "";
  try {
    const res = await api("/v1/chat/completions", { method: "POST", json: body, signal: controller.signal });
    if (!res.ok) {
      const err = await res.json().catch(() => null);
      throw new Error(err && err.error ? err.error.message : `HTTP ${res.status}`);
    }
    await readEvents(res, (chunk) => {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        const piece = choice.delta && choice.delta.content;
        if (piece) {
          if (tFirst === null) tFirst = performance.now();
          text += piece;
          reply.body.textContent = text;
          reply.node.dataset.chunks = String(Number(reply.node.dataset.chunks) + 1);
          reply.node.scrollIntoView({ block: "end" });
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    });
    state = "done";
  } catch (e) {
    const aborted = e.name === "AbortError";
    state = aborted ? "stopped" : "error";
    if (aborted) finish = "stopped";
    else {
      errorText = String(e.message || e);
      reply.node.classList.add("error");
      reply.body.textContent = text || errorText;
    }
  } finally {
    setBusy(false);
    controller = null;
  }
  if (state === "error") history.pop(); // the turn failed: drop it
  else history.push({ role: "assistant", content: text });
  figures.textContent = state === "error" ? `error: ${errorText}`
    : describe(t0, tFirst, performance.now(), usage, finish);
  reply.node.dataset.state = state; // last: "done" means text and figures are final
}

function describe(t0, tFirst, tEnd, usage, finish) {
  const parts = [];
  if (tFirst !== null) parts.push(`TTFT ${fmtSeconds((tFirst - t0) / 1000)}`);
  const n = usage ? usage.completion_tokens : null;
  if (n !== null && n > 1 && tFirst !== null && tEnd > tFirst) {
    parts.push(`${fmtNum((n - 1) / ((tEnd - tFirst) / 1000))} tokens/s`);
  }
  if (n !== null) parts.push(`${n} tokens`);
  if (usage) parts.push(`prompt ${usage.prompt_tokens} tokens`);
  if (finish) parts.push(`finish: ${finish}`);
  return parts.join(" · ");
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

function init() {
  initHeader();
  for (const [input, out] of [["temperature", "temperature-out"], ["top-p", "top-p-out"]]) {
    $(input).addEventListener("input", () => { $(out).textContent = $(input).value; });
  }
  $("composer").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const prompt = $("prompt").value.trim();
    if (!prompt || controller) return;
    $("prompt").value = "";
    send(prompt);
  });
  $("prompt").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) {
      ev.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => controller && controller.abort());
  $("clear").addEventListener("click", () => {
    if (controller) controller.abort();
    history.length = 0;
    $("messages").replaceChildren(el("p", { class: "empty", id: "empty-hint" }, "New conversation."));
  });
  window.addEventListener("mb-key", loadModels);
  loadModels();
}

init();
