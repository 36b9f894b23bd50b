// The request history: pages of past requests (newest first) from the server's durable history, filtered by
// endpoint, outcome, time and text; one request opened shows what debugging a bad answer needs.

import { api } from "./api.js";
import { element, emptyRow, ms, show } from "./dom.js";

const PAGE = 50;
const form = document.getElementById("history-filters");
const rows = document.getElementById("history-rows");
const olderButton = document.getElementById("history-older");
const message = document.getElementById("history-message");
const detail = document.getElementById("history-detail");
const detailBody = document.getElementById("history-detail-body");
let before = null; // the cursor of the next (older) page
let selectedKey = null;
let search = 0; // counts the searches: a page that arrives after a newer search began is dropped

function seconds(localValue) {
  return localValue ? String(new Date(localValue).getTime() / 1000) : "";
}

function query() {
  const fields = new FormData(form);
  const params = new URLSearchParams({ limit: String(PAGE) });
  for (const name of ["endpoint", "outcome", "q"]) {
    if (fields.get(name)) params.set(name, fields.get(name));
  }
  for (const name of ["since", "until"]) {
    const value = seconds(fields.get(name));
    if (value) params.set(name, value);
  }
  if (before !== null) params.set("before", String(before));
  return params;
}

function rowFor(record) {
  const row = element("tr");
  row.className = `outcome-${record.outcome}`;
  row.dataset.key = record.key;
  const cells = [
    new Date(record.started_at * 1000).toLocaleString(), record.instance || "", record.endpoint, record.model || "",
    record.last_user_message || "", record.outcome, ms(record.first_chunk_ms), ms(record.first_sentence_ms),
    ms(record.total_ms), record.chunks,
  ];
  for (const value of cells) row.appendChild(element("td", value));
  row.children[5].className = record.outcome;
  row.title = record.error || "";
  if (record.key === selectedKey) row.classList.add("selected");
  row.addEventListener("click", () => openRecord(record.key, row));
  return row;
}

async function loadPage(reset) {
  if (reset) {
    search += 1;
    before = null;
    rows.replaceChildren();
  }
  const thisSearch = search;
  show(message, "");
  try {
    const page = await api("GET", `/admin/api/history?${query()}`);
    if (thisSearch !== search) return; // opening the tab and searching at once would list the records twice
    for (const record of page.records) rows.appendChild(rowFor(record));
    if (!rows.children.length) rows.appendChild(emptyRow("No requests in the history match these filters.", 9));
    before = page.before;
    olderButton.hidden = page.before === null;
  } catch (error) {
    if (thisSearch === search) show(message, `Could not read the history: ${error.message}`);
  }
}

function section(title, ...content) {
  const node = element("section");
  node.dataset.part = title.split(" (")[0].toLowerCase().replaceAll(" ", "-");
  node.appendChild(element("h3", title));
  for (const part of content) node.appendChild(part);
  return node;
}

function definitions(pairs) {
  const list = element("dl");
  for (const [term, value] of pairs) {
    if (value === null || value === undefined || value === "") continue;
    list.appendChild(element("dt", term));
    list.appendChild(element("dd", value));
  }
  return list;
}

function numbered(items, render) {
  const list = element("ol");
  for (const item of items) list.appendChild(render(item));
  return list;
}

function messageItem(logged) {
  const item = element("li");
  item.appendChild(element("span", logged.role, "role"));
  item.appendChild(document.createTextNode(logged.text || ""));
  return item;
}

const UNLOGGED = "Not logged (LOG_USER_TEXT was none when this request was served).";

// The server keeps the last messages of every request it read unless LOG_USER_TEXT is none, so the record itself
// says whether its text was logged, under the setting of the process that served it (with workers, or after a
// restart, not necessarily that of the process answering this page).
function textWasNotLogged(record) {
  return record.messages > 0 && !(record.messages_logged || []).length;
}

function renderRecord(record) {
  const parts = [];
  parts.push(section("Request", definitions([
    ["Time", new Date(record.started_at * 1000).toLocaleString()],
    ["Instance", record.instance],
    ["Endpoint", record.endpoint],
    ["Model", record.model],
    ["Request id", record.request_id],
    ["Status", `${record.status} (${record.outcome})`],
    ["Error", record.error ? `${record.error}${record.error_code ? ` [${record.error_code}]` : ""}` : ""],
    ["Conversation", record.conversation],
    ["Turn", record.turn_id === null ? "" : JSON.stringify(record.turn_id)],
  ])));
  const logged = record.messages_logged || [];
  const textUnlogged = textWasNotLogged(record);
  parts.push(section(
    `Messages (${record.messages}${logged.length && logged.length < record.messages ? `, the last ${logged.length} logged` : ""})`,
    logged.length
      ? numbered(logged, messageItem)
      : element("p", textUnlogged ? UNLOGGED : "No messages: the request had none, or was refused before they were read.", "hint"),
  ));
  const retrieval = record.retrieval;
  if (retrieval) {
    const injected = retrieval.injected || [];
    const hits = retrieval.hits || [];
    parts.push(section(
      `Injected knowledge (${hits.length} passage${hits.length === 1 ? "" : "s"}, ${retrieval.injected_chars} characters, ${ms(retrieval.ms)}${retrieval.semantic ? "" : ", lexical only"})`,
      hits.length
        ? numbered(hits.map((hit, index) => ({ hit, text: injected[index] })), ({ hit, text }) => {
          const item = element("li");
          item.appendChild(element("strong", `${hit.id} · ${hit.score}`));
          if (text) item.appendChild(element("div", text));
          return item;
        })
        : element("p", "Nothing was relevant enough to inject.", "hint"),
    ));
  }
  const calls = record.tool_calls || [];
  if (calls.length) {
    parts.push(section(`Tool calls (${record.passes} passes)`, numbered(calls, (call) => {
      const item = element("li");
      item.appendChild(element("strong", `${call.name} (${call.source}) · ${call.outcome} · ${ms(call.ms)} · pass ${call.pass_number}`));
      item.appendChild(element("pre", call.arguments));
      if (call.error) item.appendChild(element("div", call.error, "error"));
      return item;
    })));
  }
  if (record.audio) {
    parts.push(section("Audio", definitions([
      ["Clip", record.audio.simulated ? "simulated reply" : record.audio.clip],
      ["Duration", `${record.audio.duration} s`],
    ])));
  }
  parts.push(section("Reply", record.reply
    ? element("pre", record.reply)
    : element("p", textUnlogged ? UNLOGGED : "No text.", "hint")));
  parts.push(section("Timings", definitions([
    ["First chunk", ms(record.first_chunk_ms)],
    ["First sentence", ms(record.first_sentence_ms)],
    ["Upstream called", ms(record.upstream_called_ms)],
    ["Upstream's first chunk", ms(record.upstream_first_chunk_ms)],
    ["Total", ms(record.total_ms)],
    ["Tokens", record.prompt_tokens === null || record.prompt_tokens === undefined ? ""
      : `${record.prompt_tokens} prompt (${record.cached_tokens || 0} cached), ${record.completion_tokens} completion`],
    ["Voice platform", record.platform ? `${record.platform}${record.speakable ? " (speakable text)" : ""}` : ""],
    ["History repaired", Object.entries(record.history_repairs || {}).map(([what, n]) => `${what.replaceAll("_", " ")}: ${n}`).join(", ")],
    ["Upstream", record.upstream ? `${record.upstream}${record.hedged ? " (hedged)" : ""}` : ""],
    ["Upstream attempts", record.upstream_attempts > 1 || record.hedged
      ? (record.attempts || []).map((a) => `${a.upstream} ${a.outcome}${a.code ? ` (${a.code})` : ""} ${ms(a.ms)}`).join(" · ")
      : ""],
    ["Between passes", (record.pass_gaps_ms || []).map(ms).join(", ")],
    ["Chunks", record.chunks],
  ])));
  const raw = element("details");
  raw.appendChild(element("summary", "The whole record (JSON)"));
  raw.appendChild(element("pre", JSON.stringify(record, null, 2)));
  parts.push(raw);
  return parts;
}

async function openRecord(key, row) {
  selectedKey = key;
  for (const other of rows.querySelectorAll("tr.selected")) other.classList.remove("selected");
  row.classList.add("selected");
  try {
    const record = await api("GET", `/admin/api/history/${encodeURIComponent(key)}`);
    detailBody.replaceChildren(...renderRecord(record));
    detailBody.className = "record";
    detail.hidden = false;
  } catch (error) {
    show(message, `Could not open the request: ${error.message}`);
  }
}

export function loadHistory() {
  loadPage(true);
}

export function startHistory() {
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    loadPage(true);
  });
  olderButton.addEventListener("click", () => loadPage(false));
  document.getElementById("history-detail-close").addEventListener("click", () => {
    detail.hidden = true;
    selectedKey = null;
    for (const other of rows.querySelectorAll("tr.selected")) other.classList.remove("selected");
  });
}
