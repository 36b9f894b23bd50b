// The live request log: a WebSocket of records, a table with filters and pause, a chart of time to first chunk.

import { element, emptyRow, ms, show } from "./dom.js";

const MAX_ROWS = 500;
const CHART_POINTS = 120;
const MAX_HELD = 2000; // records held while paused; past that they are counted as missed
const chartColours = { ok: "#2e7d32", error: "#c62828", cancelled: "#ef6c00" };

const records = []; // newest last
const seen = new Set(); // record keys already shown or held: the server resends the latest on every connection
let heldWhilePaused = [];
let paused = false;
let selectedKey = null;
let missedTotal = 0;
let reconnectDelay = 500;

const rows = document.getElementById("log-rows");
const filterEndpoint = document.getElementById("filter-endpoint");
const filterOutcome = document.getElementById("filter-outcome");
const socketState = document.getElementById("socket-state");
const missedNotice = document.getElementById("missed");
const pauseButton = document.getElementById("pause");
const noRecords = emptyRow("No requests match these filters yet.", 10);

function retrievalOrClip(record) {
  const tools = (record.tool_calls || []).map((call) => `${call.name} ${call.outcome === "ok" ? "✓" : "✗"} ${ms(call.ms)}`);
  const calls = tools.length ? `tools: ${tools.join(", ")}` : "";
  const rest = detailsOf(record);
  return [calls, rest].filter(Boolean).join(" · ");
}

function detailsOf(record) {
  if (record.retrieval) {
    const hits = record.retrieval.hits;
    return hits.length ? hits.map((hit) => `${hit.id} (${hit.score})`).join(", ") : "nothing injected";
  }
  if (record.audio) return record.audio.simulated ? "simulated" : `${record.audio.clip} (${record.audio.duration} s)`;
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
    time, record.instance || "", record.endpoint, record.model || "", record.last_user_message, record.outcome,
    ms(record.first_chunk_ms), ms(record.first_sentence_ms), ms(record.total_ms), record.chunks,
    retrievalOrClip(record),
  ];
  for (const value of cells) row.appendChild(element("td", value));
  row.children[5].className = record.outcome;
  row.title = record.error || "";
  if (record.key === selectedKey) row.classList.add("selected");
  row.addEventListener("click", () => openRecord(record, row));
  return row;
}

function openRecord(record, row) {
  selectedKey = record.key;
  for (const other of rows.querySelectorAll("tr.selected")) other.classList.remove("selected");
  row.classList.add("selected");
  const started = new Date(record.started_at * 1000).toISOString();
  document.getElementById("log-detail-body").textContent = `${started}\n\n${JSON.stringify(record, null, 2)}`;
  document.getElementById("log-detail").hidden = false;
}

function closeRecord() {
  document.getElementById("log-detail").hidden = true;
  selectedKey = null;
  for (const other of rows.querySelectorAll("tr.selected")) other.classList.remove("selected");
}

function addRecord(record) {
  records.push(record);
  if (records.length > MAX_ROWS) seen.delete(records.shift().key);
  if (visible(record)) {
    noRecords.remove();
    rows.insertBefore(rowFor(record), rows.firstChild);
    while (rows.children.length > MAX_ROWS) rows.removeChild(rows.lastChild);
  }
}

function rerender() {
  const shown = records.filter(visible).reverse().map(rowFor);
  rows.replaceChildren(...(shown.length ? shown : [noRecords]));
  drawChart();
}

function showPaused() {
  if (socketState.className.includes("down")) return;
  socketState.textContent = paused ? "paused" : "live";
  socketState.className = paused ? "pill paused" : "pill live";
}

function togglePause() {
  paused = !paused;
  pauseButton.textContent = paused ? "Resume" : "Pause";
  if (!paused) {
    for (const record of heldWhilePaused) addRecord(record);
    heldWhilePaused = [];
    drawChart();
  }
  showPaused();
}

export function drawChart() {
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
  const top = Math.max(0.001, ...points.map((r) => r.first_chunk_ms || 0));
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

function receive(message) {
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
    pauseButton.textContent = `Resume (${heldWhilePaused.length} new)`;
    return;
  }
  addRecord(message.record);
  drawChart();
}

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
  socket.addEventListener("message", (event) => receive(JSON.parse(event.data)));
  socket.addEventListener("close", () => {
    socketState.textContent = "reconnecting…";
    socketState.className = "pill down";
    setTimeout(connect, reconnectDelay);
    reconnectDelay = Math.min(reconnectDelay * 2, 10000);
  });
}

export function startLiveLog() {
  rows.replaceChildren(noRecords);
  filterEndpoint.addEventListener("change", rerender);
  filterOutcome.addEventListener("change", rerender);
  pauseButton.addEventListener("click", togglePause);
  document.getElementById("log-detail-close").addEventListener("click", closeRecord);
  window.addEventListener("resize", drawChart);
  connect();
}
