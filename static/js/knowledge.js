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

async function testRetrieval(event) {
  event.preventDefault();
  const list = document.getElementById("kb-hits");
  const question = event.target.elements.q.value.trim();
  if (!question) {
    list.replaceChildren(element("li", "Type a question first."));
    return;
  }
  try {
    const result = await api("GET", `/admin/api/retrieval?q=${encodeURIComponent(question)}`);
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
  document.getElementById("kb-import").addEventListener("change", importFile);
}
