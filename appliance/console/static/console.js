// The appliance console: status over one SSE stream, admin actions, a chat playground.
// No framework, no build step. The API key lives in sessionStorage only and travels as a
// Bearer header; every POST is JSON. The DOM is built with textContent (never innerHTML),
// so nothing the server or a model sends is ever run as markup.
"use strict";

const KEY_STORE = "appliance.key";
const $ = (sel) => document.querySelector(sel);

const state = {
  key: sessionStorage.getItem(KEY_STORE) || "",
  status: null,
  stream: null, // AbortController of the status stream
  retry: 1000,
  chat: { messages: [], abort: null },
};

// ---- helpers -------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(n < 10 ? 2 : 1)) + " " + units[i];
}

function secs(s) {
  if (s === null || s === undefined) return "–";
  if (s < 1) return Math.round(s * 1000) + " ms";
  if (s < 120) return s.toFixed(s < 10 ? 1 : 0) + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}

function headers(json) {
  const hd = {};
  if (state.key) hd["Authorization"] = "Bearer " + state.key;
  if (json) hd["Content-Type"] = "application/json";
  return hd;
}

class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || "HTTP " + status);
    this.status = status;
    this.code = err.code;
  }
}

async function api(method, path, body) {
  const init = { method, headers: headers(body !== undefined) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const r = await fetch(path, init);
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}

function showError(msg) {
  const el = $("#error");
  el.textContent = msg;
  el.hidden = !msg;
}

// Server-sent events over fetch (EventSource cannot send an Authorization header).
async function readSSE(response, onEvent) {
  const reader = response.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += dec.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(event, data.join("\n"));
    }
  }
}

// ---- connecting ------------------------------------------------------------------------

async function connect() {
  if (state.stream) state.stream.abort();
  state.stream = null;
  try {
    const doc = await api("GET", "/console/api/status");
    state.retry = 1000;
    showError("");
    render(doc);
    openStream();
  } catch (e) {
    state.status = null;
    $("#server-state").textContent = "not connected";
    $("#server-state").className = "badge bad";
    $("#key-who").textContent = "";
    if (e instanceof ApiError && e.status === 401) {
      showError(state.key ? e.message : "This appliance needs an API key: type it above and press Connect.");
      if (state.key) forgetKey(false);
    } else {
      // starting (pinned models loading), draining, or unreachable: say so and try again
      showError("Cannot reach the appliance: " + e.message + " (retrying)");
      const wait = state.retry;
      state.retry = Math.min(state.retry * 2, 30000);
      setTimeout(() => { if (!state.stream) connect(); }, wait);
    }
  }
}

async function openStream() {
  const ctl = new AbortController();
  state.stream = ctl;
  try {
    const r = await fetch("/console/api/events", { headers: headers(false), signal: ctl.signal });
    if (!r.ok) {
      let body = null;
      try { body = await r.json(); } catch (e) { body = null; }
      throw new ApiError(r.status, body);
    }
    state.retry = 1000;
    await readSSE(r, (event, data) => {
      const obj = JSON.parse(data);
      if (event === "status") render(obj);
      else if (event === "error") {
        showError(obj.error.message);
        $("#server-state").textContent = "not connected";
        $("#server-state").className = "badge bad";
        ctl.abort();
      }
    });
  } catch (e) {
    if (ctl.signal.aborted && state.stream !== ctl) return; // replaced by a newer connection
    if (e instanceof ApiError && e.status === 401) { showError(e.message); return; }
  }
  if (state.stream !== ctl || ctl.signal.aborted) return;
  // The stream ended (restart, drain, network): reconnect with backoff.
  $("#server-state").textContent = "reconnecting";
  $("#server-state").className = "badge warn";
  setTimeout(() => { if (state.stream === ctl) openStream(); }, state.retry);
  state.retry = Math.min(state.retry * 2, 30000);
}

function forgetKey(reconnect) {
  state.key = "";
  sessionStorage.removeItem(KEY_STORE);
  $("#key-input").value = "";
  if (reconnect) connect();
}

// ---- rendering the status ------------------------------------------------------------

function render(doc) {
  state.status = doc;
  const srv = doc.server;
  const badge = $("#server-state");
  badge.textContent = srv.draining ? "draining" : srv.ready ? "serving" : "starting";
  badge.className = "badge " + (srv.draining ? "warn" : srv.ready ? "ok" : "warn");
  const who = doc.key.name ? doc.key.name + (doc.key.admin ? " (admin)" : " (inference)") : "open mode (no keys)";
  $("#key-who").textContent = who;
  for (const el of document.querySelectorAll(".admin-only")) el.hidden = !doc.key.admin;
  if (!doc.key.admin && currentTab() === "keys") selectTab("status");

  const t = doc.traffic;
  $("#t-rps").textContent = t.requests_per_s.toFixed(2);
  $("#t-errors").textContent = String(t.errors);
  $("#t-errors").title = t.last_errors.map((e) => e.status + " " + (e.code || "") + " " + e.path).join("\n");
  $("#t-inflight").textContent = String(srv.in_flight);
  $("#t-uptime").textContent = secs(srv.uptime_s);

  renderDevices(doc.devices);
  renderModels(doc);
  renderModelPicker(doc.models);
  if (doc.key.admin) { renderUsage(doc.usage || {}); renderKeys(doc.keys || []); }
}

function renderDevices(devices) {
  const box = $("#devices");
  box.replaceChildren(...devices.map((d) => {
    const pct = (n) => Math.max(0, Math.min(100, (100 * n) / d.total));
    const others = Math.max(0, d.total - d.free - d.models);
    const segModels = h("div", { class: "seg models" });
    segModels.style.width = pct(d.models) + "%";
    const segOthers = h("div", { class: "seg others" });
    segOthers.style.width = pct(others) + "%";
    const mark = h("div", { class: "budget", title: "budget" });
    mark.style.left = pct(d.budget) + "%";
    const sensors = [];
    if (d.utilisation_pct !== null) sensors.push(d.utilisation_pct + "% busy");
    if (d.temperature_c !== null) sensors.push(d.temperature_c + " °C");
    return h("div", { class: "device", "data-device": d.label },
      h("div", { class: "device-head" },
        h("strong", {}, d.label), " ", h("span", { class: "muted" }, d.name),
        sensors.length ? h("span", { class: "sensors" }, sensors.join(" · ")) : null),
      h("div", { class: "bar", role: "img", "aria-label": d.label + " memory" }, segModels, segOthers, mark),
      h("div", { class: "legend" },
        h("span", { class: "dot models" }), "models " + bytes(d.models), "  ",
        h("span", { class: "dot others" }), "other " + bytes(others), "  ",
        h("span", { class: "dot free" }), "free " + bytes(d.free), "  ",
        h("span", { class: "dot budget" }), "budget " + bytes(d.budget) + (d.budget_auto ? " (auto)" : ""),
        h("span", { class: "muted" }, " of " + bytes(d.total))));
  }));
}

function pullFor(doc, id) {
  return (doc.pulls || []).find((p) => p.model === id) || null;
}

// A table cell: one wrapper inside, so a phone's card layout keeps the label on the left
// and all of the value on the right.
function td(label, ...children) {
  return h("td", { "data-label": label }, h("div", { class: "cell" }, ...children));
}

function renderModels(doc) {
  const body = $("#models tbody");
  const now = Date.now();
  body.replaceChildren(...doc.models.map((m) => {
    const pull = pullFor(doc, m.id);
    const pulling = pull && pull.state === "running";
    const stateParts = [h("span", { class: "state " + m.state, "data-testid": "state" }, pulling ? "pulling" : m.state)];
    if (pulling) {
      stateParts.push(" ", h("progress", { max: pull.total || 1, value: pull.done }), " ",
        h("span", { class: "muted" }, pull.total ? Math.floor((100 * pull.done) / pull.total) + "%" : bytes(pull.done)));
    } else if (pull && pull.state === "failed") {
      stateParts.push(h("div", { class: "bad-text" }, "pull failed: " + pull.error));
    }
    const r = m.recent || {};
    const unload = td("Unload in", m.pinned ? "pinned" : "–");
    if (m.unload_in_s !== null) unload.dataset.unloadAt = String(now + m.unload_in_s * 1000);
    const actions = h("td", { class: "admin-only actions" });
    actions.hidden = !doc.key.admin;
    if (doc.key.admin) {
      const act = (label, fn, cls) => h("button", { type: "button", class: cls || "small", onclick: fn }, label);
      if (m.store === "missing") actions.append(act("Pull", () => pullModel(m.id)));
      else if (m.residency === "unloaded") actions.append(act("Load", () => modelAction(m.id, "load")));
      else actions.append(act("Unload", () => modelAction(m.id, "unload"), "small secondary"));
    }
    return h("tr", { "data-model": m.id },
      td("Model", h("strong", {}, m.id),
        m.aliases.length ? h("div", { class: "muted" }, m.aliases.join(", ")) : null,
        m.embedding ? h("span", { class: "tag" }, "embedding") : null),
      td("State", ...stateParts),
      td("Memory", m.memory ? bytes(m.memory) + (m.memory_measured ? "" : " est.") : "–",
        m.device ? h("div", { class: "muted" }, m.device) : null),
      td("Slots", m.slots_busy + " / " + m.slots_total),
      td("Queue", String(m.queue_depth)),
      td("tok/s", r.tokens_per_s ? r.tokens_per_s.toFixed(1) : "–"),
      td("TTFT", r.ttft_s !== undefined && r.ttft_s !== null ? secs(r.ttft_s) : "–"),
      unload,
      actions);
  }));
  tickCountdowns();
}

// The "unload in" countdown moves between status events without asking the server.
function tickCountdowns() {
  for (const cell of document.querySelectorAll("[data-unload-at]")) {
    cell.firstChild.textContent = secs(Math.max(0, (Number(cell.dataset.unloadAt) - Date.now()) / 1000));
  }
}

function renderUsage(usage) {
  $("#usage tbody").replaceChildren(...Object.entries(usage).map(([name, u]) =>
    h("tr", {}, td("Key", name), td("Requests", String(u.requests)), td("Errors", String(u.errors)),
      td("Prompt tokens", String(u.prompt_tokens)), td("Completion tokens", String(u.completion_tokens)))));
}

function renderKeys(keys) {
  $("#keys tbody").replaceChildren(...keys.map((k) =>
    h("tr", { "data-key": k.name },
      td("Name", h("strong", {}, k.name)),
      td("Scope", k.scopes.join(", ")),
      td("Models", k.models.length ? k.models.join(", ") : "all"),
      td("rpm", k.rpm ? String(k.rpm) : "∞"),
      td("Created", k.created ? k.created.replace("T", " ").replace("+00:00", " UTC") : "–"),
      h("td", { class: "actions" }, h("button", { type: "button", class: "small danger", onclick: () => revokeKey(k.name) }, "Revoke")))));
}

function renderModelPicker(models) {
  const sel = $("#c-model");
  const chat = models.filter((m) => !m.embedding && m.store !== "missing");
  const ids = chat.map((m) => m.id).join("\n");
  if (sel.dataset.ids === ids) return;
  const keep = sel.value;
  sel.replaceChildren(...chat.map((m) => h("option", { value: m.id }, m.id)));
  if (chat.some((m) => m.id === keep)) sel.value = keep;
  sel.dataset.ids = ids;
}

// ---- admin actions -------------------------------------------------------------------

async function modelAction(id, what) {
  try { showError(""); await api("POST", "/admin/models/" + encodeURIComponent(id) + "/" + what, {}); }
  catch (e) { showError(what + " " + id + ": " + e.message); }
}

async function pullModel(id) {
  try { showError(""); await api("POST", "/admin/pulls", { model: id }); }
  catch (e) { showError("pull " + id + ": " + e.message); }
}

async function revokeKey(name) {
  if (!confirm("Revoke the key " + name + "? Clients using it fail from their next request.")) return;
  try { showError(""); await api("POST", "/admin/keys/" + encodeURIComponent(name) + "/revoke", {}); }
  catch (e) { showError("revoke " + name + ": " + e.message); }
}

async function createKey(ev) {
  ev.preventDefault();
  const models = $("#k-models").value.split(",").map((s) => s.trim()).filter(Boolean);
  const body = { name: $("#k-name").value.trim(), scope: $("#k-scope").value, models,
    rpm: parseInt($("#k-rpm").value || "0", 10) };
  try {
    showError("");
    const r = await api("POST", "/admin/keys", body);
    $("#k-token-value").textContent = r.token;
    $("#k-token").hidden = false;
    $("#k-form").reset();
  } catch (e) { showError("create key: " + e.message); }
}

// ---- chat --------------------------------------------------------------------------

function addMessage(role, text) {
  const body = h("div", { class: "body" }, text || "");
  const el = h("div", { class: "msg " + role, "data-role": role }, h("div", { class: "role" }, role), body);
  $("#c-messages").append(el);
  el.scrollIntoView({ block: "end" });
  return { el, body };
}

function numberParam(sel) {
  const v = $(sel).value;
  return v === "" ? undefined : Number(v);
}

function chatRequest() {
  const messages = [];
  const system = $("#c-system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...state.chat.messages);
  const req = { model: $("#c-model").value, messages, stream: true, stream_options: { include_usage: true },
    temperature: numberParam("#c-temperature"), top_p: numberParam("#c-top-p"),
    max_tokens: numberParam("#c-max-tokens"), seed: numberParam("#c-seed") };
  if ($("#c-json").checked) req.response_format = { type: "json_object" };
  const tools = $("#c-tools").value.trim();
  if (tools) {
    req.tools = JSON.parse(tools); // a syntax error is reported before sending
    req.tool_choice = $("#c-tool-choice").value;
  }
  return req;
}

// Runs `paint` at most once per animation frame however often `request` is called; `flush`
// paints now. A reply streams a token per SSE event, often many per network read, and the
// reader's loop runs them all in microtasks: painting (and laying out the growing reply)
// for each one kept the page's main thread busy for the whole reply on a slow machine, so
// even the Stop button went unanswered until the model had finished.
function framePainter(paint) {
  let frame = 0;
  return {
    request() { if (!frame) frame = requestAnimationFrame(() => { frame = 0; paint(); }); },
    flush() { if (frame) cancelAnimationFrame(frame); frame = 0; paint(); },
  };
}

function renderToolCalls(box, calls) {
  box.replaceChildren(...calls.filter(Boolean).map((c) =>
    h("div", { class: "tool-call", "data-testid": "tool-call" },
      h("span", { class: "tag" }, "tool call"), " ", h("strong", {}, c.function.name || "?"),
      h("pre", {}, c.function.arguments || ""))));
}

async function sendChat(ev) {
  ev.preventDefault();
  const text = $("#c-input").value;
  if (!text.trim() || state.chat.abort) return;
  if (!$("#c-model").value) { showError("no model to chat with (pull one first)"); return; }
  let req;
  state.chat.messages.push({ role: "user", content: text });
  try { req = chatRequest(); } catch (e) {
    state.chat.messages.pop();
    showError("tools: not valid JSON: " + e.message);
    return;
  }
  showError("");
  addMessage("user", text);
  $("#c-input").value = "";
  const out = addMessage("assistant", "");
  out.el.classList.add("streaming");
  const reasoning = h("div", { class: "reasoning" });
  const toolBox = h("div", { class: "tools" });
  out.el.insertBefore(reasoning, out.body);
  out.el.append(toolBox);
  const ctl = new AbortController();
  state.chat.abort = ctl;
  $("#c-send").disabled = true;
  $("#c-stop").disabled = false;
  const stats = $("#c-stats");
  stats.textContent = "waiting for the first token…";
  const t0 = performance.now();
  let tFirst = null;
  let chunks = 0;
  let usage = null;
  let content = "";
  let thinking = "";
  let finish = null;
  let note = "";
  const calls = [];
  const showStats = () => {
    const now = performance.now();
    const n = usage ? usage.completion_tokens : chunks;
    const parts = [];
    if (tFirst !== null) parts.push("TTFT " + secs((tFirst - t0) / 1000));
    if (tFirst !== null && now > tFirst && n > 1) parts.push(((n - 1) / ((now - tFirst) / 1000)).toFixed(1) + " tok/s");
    parts.push(n + " tokens");
    if (note) parts.push(note);
    stats.textContent = parts.join(" · ");
  };
  const painter = framePainter(() => {
    out.body.textContent = content;
    reasoning.textContent = thinking;
    if (calls.length) renderToolCalls(toolBox, calls);
    out.el.scrollIntoView({ block: "end" });
    showStats();
  });
  try {
    const r = await fetch("/v1/chat/completions", { method: "POST", headers: headers(true),
      body: JSON.stringify(req), signal: ctl.signal });
    if (!r.ok) {
      let body = null;
      try { body = await r.json(); } catch (e) { body = null; }
      throw new ApiError(r.status, body);
    }
    await readSSE(r, (event, data) => {
      if (data === "[DONE]") return;
      const obj = JSON.parse(data);
      if (obj.error) throw new ApiError(500, obj);
      if (obj.usage) usage = obj.usage;
      for (const ch of obj.choices || []) {
        const d = ch.delta || {};
        if (d.content || d.reasoning_content || d.tool_calls) {
          if (tFirst === null) tFirst = performance.now();
          chunks++;
        }
        if (d.content) content += d.content;
        if (d.reasoning_content) thinking += d.reasoning_content;
        for (const tc of d.tool_calls || []) {
          const c = calls[tc.index] || (calls[tc.index] = { id: tc.id, type: "function", function: { name: "", arguments: "" } });
          if (tc.id) c.id = tc.id;
          if (tc.function && tc.function.name) c.function.name += tc.function.name;
          if (tc.function && tc.function.arguments) c.function.arguments += tc.function.arguments;
        }
        if (ch.finish_reason) finish = ch.finish_reason;
      }
      painter.request();
    });
    note = finish ? "finished: " + finish : "";
    if (req.response_format && content) {
      try { JSON.parse(content); note += " · valid JSON"; } catch (e) { note += " · not valid JSON"; }
    }
    painter.flush();
    const msg = { role: "assistant", content };
    if (calls.length) msg.tool_calls = calls.filter(Boolean);
    state.chat.messages.push(msg);
  } catch (e) {
    if (ctl.signal.aborted) {
      note = "stopped";
      painter.flush();
      state.chat.messages.push({ role: "assistant", content });
    } else {
      state.chat.messages.pop(); // the user's turn failed: let them edit and resend
      painter.flush();
      out.el.classList.add("failed");
      out.body.textContent = content || "(no reply)";
      stats.textContent = "";
      showError("chat: " + e.message);
    }
  } finally {
    out.el.classList.remove("streaming");
    state.chat.abort = null;
    $("#c-send").disabled = false;
    $("#c-stop").disabled = true;
  }
}

function stopChat() {
  // Aborting closes the connection; the server cancels the request and frees its slot.
  if (state.chat.abort) state.chat.abort.abort();
}

// ---- tabs and wiring ---------------------------------------------------------------

function currentTab() {
  const sel = document.querySelector('[role="tab"][aria-selected="true"]');
  return sel ? sel.dataset.tab : "status";
}

function selectTab(name) {
  for (const b of document.querySelectorAll('[role="tab"]')) b.setAttribute("aria-selected", String(b.dataset.tab === name));
  for (const s of document.querySelectorAll(".tab")) s.hidden = s.id !== "tab-" + name;
}

function init() {
  $("#key-input").value = state.key;
  $("#key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.key = $("#key-input").value.trim();
    if (state.key) sessionStorage.setItem(KEY_STORE, state.key);
    else sessionStorage.removeItem(KEY_STORE);
    connect();
  });
  $("#key-forget").addEventListener("click", () => forgetKey(true));
  for (const b of document.querySelectorAll('[role="tab"]')) b.addEventListener("click", () => selectTab(b.dataset.tab));
  $("#c-form").addEventListener("submit", sendChat);
  $("#c-input").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); $("#c-form").requestSubmit(); }
  });
  $("#c-stop").addEventListener("click", stopChat);
  $("#c-clear").addEventListener("click", () => {
    state.chat.messages = [];
    $("#c-messages").replaceChildren();
    $("#c-stats").textContent = "";
  });
  $("#k-form").addEventListener("submit", createKey);
  $("#k-token-copy").addEventListener("click", () => navigator.clipboard.writeText($("#k-token-value").textContent));
  setInterval(tickCountdowns, 1000);
  connect();
}

document.addEventListener("DOMContentLoaded", init);
