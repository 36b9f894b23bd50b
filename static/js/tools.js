// The tools tab: every tool the server runs (its source, schema and state), enable/disable, reload, and a form that
// calls a tool as the model would.

import { api } from "./api.js";
import { element, show } from "./dom.js";

const rows = document.getElementById("tool-rows");
const sourceRows = document.getElementById("tool-source-rows");
const message = document.getElementById("tools-message");
const select = document.getElementById("tool-try-name");

function toolRow(tool) {
  const row = element("tr");
  row.dataset.name = tool.name;
  row.appendChild(element("td", tool.name, "mono"));
  row.appendChild(element("td", tool.source));
  row.appendChild(element("td", tool.description));
  const schema = element("td");
  const details = element("details");
  details.appendChild(element("summary", Object.keys(tool.parameters.properties || {}).join(", ") || "none"));
  details.appendChild(element("pre", JSON.stringify(tool.parameters, null, 2)));
  schema.appendChild(details);
  row.appendChild(schema);
  const offered = element("td");
  const toggle = element("input");
  toggle.type = "checkbox";
  toggle.checked = tool.enabled;
  toggle.setAttribute("aria-label", `Offer ${tool.name}`);
  toggle.addEventListener("change", () => setEnabled(tool.name, toggle.checked));
  offered.appendChild(toggle);
  row.appendChild(offered);
  return row;
}

function sourceRow(source) {
  const row = element("tr");
  row.appendChild(element("td", source.source, "mono"));
  row.appendChild(element("td", source.where || ""));
  const state = source.reachable ? "reachable" : `unreachable${source.error ? ` (${source.error})` : ""}`;
  row.appendChild(element("td", state, source.reachable ? "reachable" : "unreachable"));
  row.appendChild(element("td", source.tools));
  return row;
}

function render(result) {
  rows.replaceChildren(...result.tools.map(toolRow));
  sourceRows.replaceChildren(...result.sources.map(sourceRow));
  const chosen = select.value;
  select.replaceChildren(...result.tools.map((tool) => {
    const option = element("option", tool.name);
    option.value = tool.name;
    return option;
  }));
  if (chosen) select.value = chosen;
  if (result.endpoints) {
    const where = result.endpoints.length ? result.endpoints.map((name) => `/${name}`).join(", ") : "no endpoint";
    document.getElementById("tools-endpoints").textContent = `offered on ${where}`;
  }
}

export async function loadTools() {
  try {
    render(await api("GET", "/admin/api/tools"));
  } catch (error) {
    show(message, error.message);
  }
}

async function setEnabled(name, enabled) {
  try {
    await api("PUT", `/admin/api/tools/${encodeURIComponent(name)}`, { enabled });
    show(message, `${name} is ${enabled ? "offered" : "no longer offered"} to the model.`);
  } catch (error) {
    show(message, error.message);
  }
  await loadTools();
}

async function reload() {
  show(message, "");
  try {
    render(await api("POST", "/admin/api/tools/reload"));
    show(message, "Tools reloaded.");
  } catch (error) {
    show(message, `Reload refused: ${error.message}`);
  }
}

async function tryTool(event) {
  event.preventDefault();
  const summary = document.getElementById("tool-try-summary");
  const output = document.getElementById("tool-try-result");
  let argumentsJson;
  try {
    argumentsJson = JSON.parse(event.target.elements.arguments.value || "{}");
  } catch {
    show(summary, "The arguments are not valid JSON.");
    output.hidden = true;
    return;
  }
  try {
    const result = await api("POST", `/admin/api/tools/${encodeURIComponent(select.value)}/call`, { arguments: argumentsJson });
    show(summary, `${result.ok ? "Answered" : "Failed"} in ${result.ms} ms${result.error ? ` (${result.error})` : ""}.`);
    output.textContent = result.result;
    output.hidden = false;
  } catch (error) {
    show(summary, error.message);
    output.hidden = true;
  }
}

export function startTools() {
  document.getElementById("tools-reload").addEventListener("click", reload);
  document.getElementById("tool-try").addEventListener("submit", tryTool);
}
