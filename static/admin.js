// Admin dashboard: knowledge base, audio clips, live request log. No framework, no build step.
// User text is only ever put into the page with textContent, never as HTML.
"use strict";

const xsrfToken = document.querySelector('meta[name="xsrf-token"]').content;

// ---------------------------------------------------------------------------------------------------------------
// Helpers

async function api(method, path, body) {
  const options = { method, credentials: "same-origin", headers: { "X-XSRFToken": xsrfToken } };
  if (body instanceof FormData) {
    options.body = body;
  } else if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  if (response.status === 401) {
    window.location.assign("/admin");
    throw new Error("Signed out: the admin token is needed again.");
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    // Not this server's JSON (a proxy's error page, say): the status says what happened.
  }
  if (!response.ok) {
    const error = new Error((data && data.error && data.error.message) || `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function button(label, onClick, className) {
  const node = element("button", label, className);
  node.type = "button";
  node.addEventListener("click", onClick);
  return node;
}

function show(node, message) {
  node.textContent = message || "";
  node.hidden = !message;
  if (message) node.scrollIntoView({ block: "nearest" });
}

function plural(count, word) {
  return `${count} ${word}${count === 1 ? "" : "s"}`;
}

function ms(value) {
  if (value === null || value === undefined) return "—";
  return `${Number(value).toFixed(value < 10 ? 2 : value < 100 ? 1 : 0)} ms`;
}

// ---------------------------------------------------------------------------------------------------------------
// Tabs

const tabs = ["log", "knowledge", "audio"];
function selectTab(name) {
  for (const tab of tabs) {
    document.getElementById(`tab-${tab}`).setAttribute("aria-selected", String(tab === name));
    document.getElementById(`panel-${tab}`).hidden = tab !== name;
  }
  if (name === "knowledge") loadKnowledge();
  if (name === "audio") loadClips();
  if (name === "log") drawChart();
}
for (const tab of tabs) {
  document.getElementById(`tab-${tab}`).addEventListener("click", () => selectTab(tab));
}

// ---------------------------------------------------------------------------------------------------------------
// Status header

function formatUptime(seconds) {
  const s = Math.floor(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h ? `${h} h ${m} min` : m ? `${m} min ${s % 60} s` : `${s} s`;
}

async function refreshStatus() {
  try {
    const status = await api("GET", "/admin/api/status");
    const upstream = status.upstream.base_url ? `${status.upstream.mode} · ${status.upstream.base_url}` : status.upstream.mode;
    document.getElementById("status-upstream").textContent = upstream;
    document.getElementById("status-uptime").textContent = formatUptime(status.uptime_seconds);
    document.getElementById("status-in-flight").textContent = status.in_flight;
    for (const outcome of ["ok", "error", "cancelled"]) {
      document.getElementById(`status-${outcome}`).textContent = status.totals[outcome];
    }
  } catch (error) {
    document.getElementById("status-upstream").textContent = `unavailable (${error.message})`;
  }
}
refreshStatus();
setInterval(refreshStatus, 2000);

// ---------------------------------------------------------------------------------------------------------------
// Live request log

const MAX_ROWS = 500;
const CHART_POINTS = 120;
const records = []; // newest last
const seen = new Set(); // record keys already shown or held: the server resends the latest on every connection
const MAX_HELD = 2000; // while paused; past that, records are counted as missed
let paused = false;
let heldWhilePaused = [];
const rows = document.getElementById("log-rows");
const filterEndpoint = document.getElementById("filter-endpoint");
const filterOutcome = document.getElementById("filter-outcome");

function retrievalOrClip(record) {
  const details = record.details || {};
  if (details.retrieval) {
    const hits = details.retrieval.hits;
    return hits.length ? hits.map((hit) => `${hit.id} (${hit.score})`).join(", ") : "no hits";
  }
  if (details.audio) return details.audio.simulated ? "simulated" : `${details.audio.clip} (${details.audio.duration} s)`;
  return record.error || "";
}

function visible(record) {
  return (!filterEndpoint.value || record.endpoint === filterEndpoint.value) &&
    (!filterOutcome.value || record.outcome === filterOutcome.value);
}

function rowFor(record) {
  const row = element("tr");
  row.dataset.requestId = record.request_id;
  row.className = `outcome-${record.outcome}`;
  const time = new Date(record.started_at * 1000).toLocaleTimeString();
  const cells = [
    time, record.endpoint, record.model || "", record.last_user_message, record.outcome,
    ms(record.first_chunk_ms), ms(record.total_ms), record.chunks, retrievalOrClip(record),
  ];
  for (const value of cells) row.appendChild(element("td", value));
  row.children[4].className = record.outcome;
  row.title = record.error || "";
  if (record.key === selectedId) row.classList.add("selected");
  row.addEventListener("click", () => openRecord(record, row));
  return row;
}

let selectedId = null;
function openRecord(record, row) {
  selectedId = record.key;
  for (const other of rows.querySelectorAll("tr.selected")) other.classList.remove("selected");
  row.classList.add("selected");
  const started = new Date(record.started_at * 1000).toISOString();
  document.getElementById("log-detail-body").textContent = `${started}\n\n${JSON.stringify(record, null, 2)}`;
  document.getElementById("log-detail").hidden = false;
}
document.getElementById("log-detail-close").addEventListener("click", () => {
  document.getElementById("log-detail").hidden = true;
  selectedId = null;
  for (const other of rows.querySelectorAll("tr.selected")) other.classList.remove("selected");
});

function addRecord(record) {
  records.push(record);
  if (records.length > MAX_ROWS) seen.delete(records.shift().key);
  if (visible(record)) {
    emptyRow.remove();
    rows.insertBefore(rowFor(record), rows.firstChild);
    while (rows.children.length > MAX_ROWS) rows.removeChild(rows.lastChild);
  }
}

const emptyRow = element("tr", null, "empty");
emptyRow.appendChild(element("td", "No requests match these filters yet."));
emptyRow.firstChild.colSpan = 9;
rows.replaceChildren(emptyRow);

function rerender() {
  const shown = records.filter(visible).reverse().map(rowFor);
  rows.replaceChildren(...(shown.length ? shown : [emptyRow]));
  drawChart();
}
filterEndpoint.addEventListener("change", rerender);
filterOutcome.addEventListener("change", rerender);

function showPaused() {
  if (socketState.className.includes("down")) return;
  socketState.textContent = paused ? "paused" : "live";
  socketState.className = paused ? "pill paused" : "pill live";
}

document.getElementById("pause").addEventListener("click", (event) => {
  paused = !paused;
  event.target.textContent = paused ? "Resume" : "Pause";
  if (!paused) {
    for (const record of heldWhilePaused) addRecord(record);
    heldWhilePaused = [];
    drawChart();
  }
  showPaused();
});

const chartColours = { ok: "#2e7d32", error: "#c62828", cancelled: "#ef6c00" };
function drawChart() {
  const canvas = document.getElementById("ttfc-chart");
  if (!canvas.offsetParent) return; // not shown
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const context = canvas.getContext("2d");
  context.scale(ratio, ratio);
  context.clearRect(0, 0, width, height);
  const points = records.filter(visible).slice(-CHART_POINTS);
  const values = points.map((r) => r.first_chunk_ms || 0);
  const top = Math.max(0.001, ...values);
  const bar = width / CHART_POINTS;
  context.fillStyle = "#888";
  context.font = "11px system-ui, sans-serif";
  context.fillText(`${top < 10 ? top.toFixed(2) : top.toFixed(0)} ms`, 4, 12);
  points.forEach((record, index) => {
    context.fillStyle = chartColours[record.outcome] || "#555";
    if (record.first_chunk_ms === null || record.first_chunk_ms === undefined) {
      context.fillRect(index * bar + 1, height - 4, Math.max(1, bar - 2), 4); // failed before any chunk
      return;
    }
    const h = Math.max(1, (record.first_chunk_ms / top) * (height - 18));
    context.fillRect(index * bar + 1, height - h, Math.max(1, bar - 2), h);
  });
}
window.addEventListener("resize", drawChart);

const socketState = document.getElementById("socket-state");
const missedNotice = document.getElementById("missed");
let missedTotal = 0;
let reconnectDelay = 500;

function connect() {
  const scheme = window.location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${window.location.host}/admin/ws/logs`);
  socketState.textContent = "connecting…";
  socket.addEventListener("open", () => {
    socketState.textContent = "live";
    socketState.className = "pill live";
    reconnectDelay = 500;
    showPaused();
  });
  socket.addEventListener("message", (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "missed") {
      missedTotal += message.count;
      show(missedNotice, `${missedTotal} record(s) missed: the page fell behind.`);
      return;
    }
    if (message.type !== "record" || seen.has(message.record.key)) return;
    seen.add(message.record.key);
    if (paused) {
      if (heldWhilePaused.length >= MAX_HELD) {
        seen.delete(message.record.key);
        missedTotal += 1;
        show(missedNotice, `${missedTotal} record(s) missed while paused.`);
        return;
      }
      heldWhilePaused.push(message.record);
      document.getElementById("pause").textContent = `Resume (${heldWhilePaused.length} new)`;
      return;
    }
    addRecord(message.record);
    drawChart();
  });
  socket.addEventListener("close", () => {
    socketState.textContent = "reconnecting…";
    socketState.className = "pill down";
    setTimeout(connect, reconnectDelay);
    reconnectDelay = Math.min(reconnectDelay * 2, 10000);
  });
}
connect();

// ---------------------------------------------------------------------------------------------------------------
// Knowledge base

let knowledge = { version: 0, documents: [] };
let editing = null; // {id, version} of the document being edited, or null for a new one
const kbRows = document.getElementById("kb-rows");
const kbForm = document.getElementById("kb-form");
const kbMessage = document.getElementById("kb-message");
const kbFormError = document.getElementById("kb-form-error");

async function loadKnowledge() {
  try {
    knowledge = await api("GET", "/admin/api/knowledge");
    renderKnowledge();
  } catch (error) {
    show(kbMessage, error.message);
  }
}

function renderKnowledge() {
  const filter = document.getElementById("kb-filter").value.trim().toLowerCase();
  const matching = knowledge.documents.filter((d) =>
    !filter || [d.id, d.title, d.content, d.tags.join(" ")].join(" ").toLowerCase().includes(filter));
  const total = plural(knowledge.documents.length, "document");
  document.getElementById("kb-version").textContent = filter
    ? `version ${knowledge.version} · ${matching.length} of ${total} shown`
    : `version ${knowledge.version} · ${total}`;
  if (!matching.length) {
    const empty = element("tr", null, "empty");
    empty.appendChild(element("td", filter ? "No document matches this search." : "The knowledge base is empty."));
    empty.firstChild.colSpan = 5;
    kbRows.replaceChildren(empty);
    return;
  }
  kbRows.replaceChildren(...matching.map((document_) => {
    const row = element("tr");
    row.dataset.id = document_.id;
    row.appendChild(element("td", document_.id, "mono"));
    row.appendChild(element("td", document_.title));
    row.appendChild(element("td", document_.tags.join(", ")));
    row.appendChild(element("td", document_.enabled ? "yes" : "no"));
    const actions = element("td", null, "actions");
    actions.appendChild(button("Edit", () => editLatest(document_.id)));
    actions.appendChild(button("Delete", () => deleteDocument(document_), "danger"));
    row.appendChild(actions);
    return row;
  }));
}
document.getElementById("kb-filter").addEventListener("input", renderKnowledge);

function editDocument(document_) {
  editing = document_ ? { id: document_.id, version: knowledge.version } : null;
  kbForm.hidden = false;
  show(kbFormError, "");
  document.getElementById("kb-form-title").textContent = document_ ? `Edit ${document_.id}` : "New document";
  kbForm.elements.id.value = document_ ? document_.id : "";
  kbForm.elements.id.readOnly = Boolean(document_);
  kbForm.elements.title.value = document_ ? document_.title : "";
  kbForm.elements.content.value = document_ ? document_.content : "";
  kbForm.elements.tags.value = document_ ? document_.tags.join(", ") : "";
  kbForm.elements.enabled.checked = document_ ? document_.enabled : true;
  kbForm.elements[document_ ? "content" : "id"].focus();
}
// Edit what is stored now, at the version read now: an edit never starts from a stale copy.
async function editLatest(id) {
  await loadKnowledge();
  const latest = knowledge.documents.find((d) => d.id === id);
  if (latest) editDocument(latest);
  else show(kbMessage, `“${id}” no longer exists: someone deleted it.`);
}

document.getElementById("kb-new").addEventListener("click", () => editDocument(null));
document.getElementById("kb-cancel").addEventListener("click", () => { kbForm.hidden = true; });

kbForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const fields = kbForm.elements;
  const document_ = {
    id: fields.id.value.trim(),
    title: fields.title.value,
    content: fields.content.value,
    tags: fields.tags.value.split(",").map((t) => t.trim()).filter(Boolean),
    enabled: fields.enabled.checked,
  };
  try {
    if (editing) {
      await api("PUT", `/admin/api/knowledge/${encodeURIComponent(editing.id)}`, { ...document_, version: editing.version });
    } else {
      await api("POST", "/admin/api/knowledge", document_);
    }
    kbForm.hidden = true;
    show(kbMessage, `Saved “${document_.id}”. The next request uses it.`);
    await loadKnowledge();
  } catch (error) {
    if (error.status === 409 && editing) {
      // Someone saved this document after it was opened here: show theirs, keep ours to copy from.
      const id = editing.id;
      show(kbFormError, `Conflict: ${error.message}`);
      const reload = button("Load their version", () => {
        if (window.confirm("Replace your text in the form with the version saved by the other editor?")) editLatest(id);
      });
      reload.id = "kb-reload";
      kbFormError.appendChild(document.createTextNode(" "));
      kbFormError.appendChild(reload);
    } else {
      show(kbFormError, error.message);
    }
  }
});

async function deleteDocument(document_) {
  show(kbMessage, "");
  if (!window.confirm(`Delete “${document_.id}”? This cannot be undone.`)) return;
  try {
    await api("DELETE", `/admin/api/knowledge/${encodeURIComponent(document_.id)}`);
    show(kbMessage, `Deleted “${document_.id}”.`);
    await loadKnowledge();
  } catch (error) {
    show(kbMessage, error.message);
  }
}

document.getElementById("kb-test").addEventListener("submit", async (event) => {
  event.preventDefault();
  const list = document.getElementById("kb-hits");
  const question = event.target.elements.q.value.trim();
  if (!question) {
    list.replaceChildren(element("li", "Type a question first."));
    return;
  }
  try {
    const result = await api("GET", `/admin/api/knowledge/search?q=${encodeURIComponent(question)}`);
    if (!result.hits.length) {
      list.replaceChildren(element("li", `Nothing above the minimum score (${result.min_score}): the request goes on unchanged.`));
      return;
    }
    list.replaceChildren(...result.hits.map((hit) => {
      const item = element("li");
      item.appendChild(element("strong", hit.title || hit.id));
      item.appendChild(element("span", ` score ${hit.score}`, "score"));
      item.appendChild(element("p", hit.content));
      return item;
    }));
  } catch (error) {
    list.replaceChildren(element("li", error.message, "error"));
  }
});

document.getElementById("kb-import").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  event.target.value = "";
  show(kbMessage, "");
  if (!file) return;
  let data;
  try {
    data = JSON.parse(await file.text());
  } catch {
    show(kbMessage, `Import refused: ${file.name} is not valid JSON.`);
    return;
  }
  if (!data || !Array.isArray(data.documents)) {
    show(kbMessage, `Import refused: ${file.name} has no "documents" list.`);
    return;
  }
  try {
    if (!window.confirm(`Replace the whole knowledge base with the ${plural(data.documents.length, "document")} of ${file.name}?`)) return;
    await api("PUT", "/admin/api/knowledge.json", data);
    show(kbMessage, `Imported ${file.name}.`);
    await loadKnowledge();
  } catch (error) {
    show(kbMessage, `Import refused: ${error.message}`);
  }
});

// ---------------------------------------------------------------------------------------------------------------
// Audio clips

const clipRows = document.getElementById("clip-rows");
let clipNames = [];
const audioMessage = document.getElementById("audio-message");

async function loadClips() {
  try {
    const { clips } = await api("GET", "/admin/api/audio");
    clipRows.replaceChildren(...clips.map((clip) => {
      const row = element("tr", null, clip.active ? "active" : "");
      row.dataset.name = clip.name;
      const name = element("td", clip.name, "mono");
      if (clip.active) name.appendChild(element("span", "active", "pill live"));
      row.appendChild(name);
      row.appendChild(element("td", `${clip.duration.toFixed(1)} s`));
      const transcript = element("td");
      transcript.appendChild(element("div", clip.transcript, "clamp"));
      transcript.title = clip.transcript;
      row.appendChild(transcript);
      const preview = element("td");
      const player = element("audio");
      player.controls = true;
      player.preload = "none";
      player.src = `/admin/api/audio/${encodeURIComponent(clip.name)}.wav`;
      preview.appendChild(player);
      row.appendChild(preview);
      const actions = element("td", null, "actions");
      if (!clip.active) actions.appendChild(button("Activate", () => clipAction("POST", clip.name, "/activate", `“${clip.name}” is now active.`)));
      actions.appendChild(button("Delete", () => {
        const warning = clip.active ? " It is the active clip: the audio endpoint will send the simulated tone until you activate another." : "";
        if (window.confirm(`Delete the clip “${clip.name}”?${warning}`)) clipAction("DELETE", clip.name, "", `Deleted “${clip.name}”.`);
      }, "danger"));
      row.appendChild(actions);
      return row;
    }));
    clipNames = clips.map((clip) => clip.name);
    const warning = document.getElementById("audio-warning");
    if (!clips.length) show(warning, "No clips: the audio endpoint sends a simulated reply.");
    else if (!clips.some((clip) => clip.active)) show(warning, "No active clip: the audio endpoint sends the simulated tone. Activate one.");
    else show(warning, "");
  } catch (error) {
    show(audioMessage, error.message);
  }
}

async function clipAction(method, name, suffix, done) {
  show(audioMessage, "");
  try {
    await api(method, `/admin/api/audio/${encodeURIComponent(name)}${suffix}`);
    show(audioMessage, done);
  } catch (error) {
    show(audioMessage, error.message);
  }
  await loadClips();
}

document.getElementById("audio-upload").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const error = document.getElementById("audio-error");
  show(error, "");
  show(audioMessage, "");
  const file = form.elements.file.files[0];
  const name = form.elements.name.value.trim() || (file ? file.name.replace(/\.[^.]*$/, "").replace(/[^A-Za-z0-9_-]+/g, "-").replace(/^[-_]+|[-_]+$/g, "") : "");
  if (clipNames.includes(name) && !window.confirm(`A clip named “${name}” exists. Replace it?`)) return;
  try {
    const clip = await api("POST", "/admin/api/audio", new FormData(form));
    form.reset();
    show(audioMessage, `Uploaded “${clip.name}” (${clip.duration.toFixed(1)} s).`);
    await loadClips();
  } catch (failure) {
    show(error, failure.message);
  }
});
