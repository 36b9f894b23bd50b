// The knowledge base tab: documents (list, search, add, edit with conflict detection, delete), the retrieval
// test, import and export.

import { api } from "./api.js";
import { button, element, emptyRow, plural, show } from "./dom.js";

let knowledge = { version: 0, documents: [] };
let editing = null; // {id, version} of the document being edited, or null for a new one
const rows = document.getElementById("kb-rows");
const form = document.getElementById("kb-form");
const message = document.getElementById("kb-message");
const formError = document.getElementById("kb-form-error");
const filterInput = document.getElementById("kb-filter");

export async function loadKnowledge() {
  try {
    knowledge = await api("GET", "/admin/api/knowledge");
    render();
  } catch (error) {
    show(message, error.message);
  }
}

function render() {
  const filter = filterInput.value.trim().toLowerCase();
  const matching = knowledge.documents.filter((d) =>
    !filter || [d.id, d.title, d.content, d.tags.join(" ")].join(" ").toLowerCase().includes(filter));
  const total = plural(knowledge.documents.length, "document");
  document.getElementById("kb-version").textContent = filter
    ? `version ${knowledge.version} · ${matching.length} of ${total} shown`
    : `version ${knowledge.version} · ${total}`;
  if (!matching.length) {
    rows.replaceChildren(emptyRow(filter ? "No document matches this search." : "The knowledge base is empty.", 5));
    return;
  }
  rows.replaceChildren(...matching.map((document_) => {
    const row = element("tr");
    row.dataset.id = document_.id;
    row.appendChild(element("td", document_.id, "mono"));
    row.appendChild(element("td", document_.title));
    row.appendChild(element("td", document_.tags.join(", ")));
    row.appendChild(element("td", document_.enabled ? "yes" : "no"));
    const actions = element("td", null, "actions");
    actions.appendChild(button("Passages", () => showPassages(document_)));
    actions.appendChild(button("Edit", () => editLatest(document_.id)));
    actions.appendChild(button("Delete", () => deleteDocument(document_), "danger"));
    row.appendChild(actions);
    return row;
  }));
}

function edit(document_) {
  editing = document_ ? { id: document_.id, version: knowledge.version } : null;
  form.hidden = false;
  show(formError, "");
  document.getElementById("kb-form-title").textContent = document_ ? `Edit ${document_.id}` : "New document";
  const fields = form.elements;
  fields.id.value = document_ ? document_.id : "";
  fields.id.readOnly = Boolean(document_);
  fields.title.value = document_ ? document_.title : "";
  fields.content.value = document_ ? document_.content : "";
  fields.tags.value = document_ ? document_.tags.join(", ") : "";
  fields.enabled.checked = document_ ? document_.enabled : true;
  fields[document_ ? "content" : "id"].focus();
}

// Edit what is stored now, at the version read now: an edit never starts from a stale copy.
async function editLatest(id) {
  await loadKnowledge();
  const latest = knowledge.documents.find((d) => d.id === id);
  if (latest) edit(latest);
  else show(message, `“${id}” no longer exists: someone deleted it.`);
}

async function save(event) {
  event.preventDefault();
  const fields = form.elements;
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
    form.hidden = true;
    show(message, `Saved “${document_.id}”. The next request uses it.`);
    await loadKnowledge();
  } catch (error) {
    if (error.status === 409 && editing) {
      // Someone saved this document after it was opened here: show theirs, keep ours to copy from.
      const id = editing.id;
      show(formError, `Conflict: ${error.message}`);
      const reload = button("Load their version", () => {
        if (window.confirm("Replace your text in the form with the version saved by the other editor?")) editLatest(id);
      });
      reload.id = "kb-reload";
      formError.appendChild(document.createTextNode(" "));
      formError.appendChild(reload);
    } else {
      show(formError, error.message);
    }
  }
}

async function deleteDocument(document_) {
  show(message, "");
  if (!window.confirm(`Delete “${document_.id}”? This cannot be undone.`)) return;
  try {
    await api("DELETE", `/admin/api/knowledge/${encodeURIComponent(document_.id)}`);
    show(message, `Deleted “${document_.id}”.`);
    await loadKnowledge();
  } catch (error) {
    show(message, error.message);
  }
}

function lexicalCell(signals) {
  return `${signals.bm25} · ${Math.round(signals.coverage * 100)}%`;
}

function semanticCell(signals) {
  return signals.cosine === null ? "—" : `${signals.cosine} · ${signals.margin}σ`;
}

// Two rows a passage: its title and text across the card, then its scores and verdict. Five columns side by side do
// not fit the side column the test sits in.
function hitRows(hit) {
  const className = hit.injected ? "injected" : "";
  const passageRow = element("tr", null, `passage ${className}`);
  const passage = element("td");
  passage.colSpan = 4;
  passage.appendChild(element("strong", `${hit.title || hit.doc_id} (${hit.id})`));
  passage.appendChild(element("p", hit.text.length > 240 ? `${hit.text.slice(0, 240)}…` : hit.text));
  passageRow.appendChild(passage);
  const scoresRow = element("tr", null, `scores ${className}`);
  const withHistory = hit.history ? "\nwith the history: " : "";
  scoresRow.appendChild(element("td", lexicalCell(hit.last) + (hit.history ? withHistory + lexicalCell(hit.history) : ""), "score"));
  scoresRow.appendChild(element("td", semanticCell(hit.last) + (hit.history ? withHistory + semanticCell(hit.history) : ""), "score"));
  scoresRow.appendChild(element("td", hit.relevance, "score"));
  scoresRow.appendChild(element("td", hit.injected ? "yes" : hit.reason, hit.injected ? "" : "reason"));
  return [passageRow, scoresRow];
}

async function testRetrieval(event) {
  event.preventDefault();
  const table = document.getElementById("kb-hits");
  const summary = document.getElementById("kb-test-summary");
  const lines = event.target.elements.q.value.split("\n").map((line) => line.trim()).filter(Boolean);
  if (!lines.length) {
    show(summary, "Type a question first.");
    table.hidden = true;
    return;
  }
  // Earlier lines are the conversation so far, alternating user and assistant turns, ending with the question.
  const messages = lines.map((content, index) => ({
    role: (lines.length - 1 - index) % 2 === 0 ? "user" : "assistant", content,
  }));
  try {
    const result = lines.length === 1
      ? await api("GET", `/admin/api/retrieval?q=${encodeURIComponent(lines[0])}`)
      : await api("POST", "/admin/api/retrieval", { messages });
    const injected = result.passages.filter((hit) => hit.injected);
    const used = result.query.history ? `“${result.query.text}”, weighted with “${result.query.history}”` : `“${result.query.text}”`;
    const how = result.semantic ? "lexical and semantic" : "lexical only";
    show(summary, `Query used: ${used} (${how}, ${result.ms} ms). ` + (injected.length
      ? `Injected: ${injected.map((hit) => hit.id).join(", ")} — ${result.injected_chars} of ${result.budget} characters.`
      : "Nothing injected: the request goes on unchanged."));
    document.getElementById("kb-hit-rows").replaceChildren(...result.passages.flatMap(hitRows));
    table.hidden = !result.passages.length;
  } catch (error) {
    show(summary, error.message);
    table.hidden = true;
  }
}

async function showPassages(document_) {
  const panel = document.getElementById("kb-passages");
  try {
    const { passages } = await api("GET", `/admin/api/knowledge/${encodeURIComponent(document_.id)}/passages`);
    document.getElementById("kb-passages-title").textContent = `Passages of ${document_.id} (${passages.length})`;
    document.getElementById("kb-passage-list").replaceChildren(...passages.map((passage) => {
      const item = element("li");
      item.dataset.id = passage.id;
      item.appendChild(element("span", `${passage.id}${passage.heading ? ` · ${passage.heading}` : ""}`, "heading"));
      item.appendChild(element("div", passage.text));
      return item;
    }));
    panel.hidden = false;
    panel.scrollIntoView({ block: "nearest" });
  } catch (error) {
    show(message, error.message);
  }
}

async function importFile(event) {
  const file = event.target.files[0];
  event.target.value = "";
  show(message, "");
  if (!file) return;
  let data;
  try {
    data = JSON.parse(await file.text());
  } catch {
    show(message, `Import refused: ${file.name} is not valid JSON.`);
    return;
  }
  if (!data || !Array.isArray(data.documents)) {
    show(message, `Import refused: ${file.name} has no "documents" list.`);
    return;
  }
  try {
    if (!window.confirm(`Replace the whole knowledge base with the ${plural(data.documents.length, "document")} of ${file.name}?`)) return;
    await api("PUT", "/admin/api/knowledge.json", data);
    show(message, `Imported ${file.name}.`);
    await loadKnowledge();
  } catch (error) {
    show(message, `Import refused: ${error.message}`);
  }
}

export function startKnowledge() {
  filterInput.addEventListener("input", render);
  document.getElementById("kb-new").addEventListener("click", () => edit(null));
  document.getElementById("kb-cancel").addEventListener("click", () => { form.hidden = true; });
  form.addEventListener("submit", save);
  document.getElementById("kb-test").addEventListener("submit", testRetrieval);
  document.getElementById("kb-passages-close").addEventListener("click", () => {
    document.getElementById("kb-passages").hidden = true;
  });
  document.getElementById("kb-import").addEventListener("change", importFile);
}
