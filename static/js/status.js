// The header: the upstreams and their health, uptime, requests in flight and totals, dropped records, Redis (when
// shared), refreshed every two seconds.

import { api } from "./api.js";

const STATE_CLASS = { healthy: "ok", probing: "cancelled", skipped: "error" };

// One upstream as the header shows it: its name (or mode and URL when it is the only one), and its health unless it
// is the only one and healthy. The title says the rest.
function upstreamNode(upstream, only, mode) {
  const node = document.createElement("span");
  node.className = `upstream ${STATE_CLASS[upstream.state] || ""}`;
  node.dataset.upstream = upstream.name;
  const name = only ? (upstream.base_url ? `${mode} · ${upstream.base_url}` : mode) : upstream.name;
  const skipped = upstream.state === "skipped" ? ` ${Math.ceil(upstream.skipped_for_seconds)} s` : "";
  node.textContent = only && upstream.state === "healthy" ? name : `${name} · ${upstream.state}${skipped}`;
  const facts = [upstream.base_url || "offline responder", `in flight ${upstream.in_flight}`];
  if (upstream.first_chunk_p50_ms !== null) facts.push(`first chunk p50 ${upstream.first_chunk_p50_ms} ms`);
  if (upstream.hedge_after_ms !== null) facts.push(`hedges after ${upstream.hedge_after_ms} ms`);
  if (upstream.hedges) facts.push(`hedges ${upstream.hedges_won}/${upstream.hedges} won`);
  if (upstream.failures_in_a_row) facts.push(`${upstream.failures_in_a_row} failures in a row`);
  node.title = facts.join(" · ");
  return node;
}

function formatUptime(seconds) {
  const s = Math.floor(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h ? `${h} h ${m} min` : m ? `${m} min ${s % 60} s` : `${s} s`;
}

async function refreshStatus() {
  try {
    const status = await api("GET", "/admin/api/status");
    const { upstreams, mode, hedging } = status.upstream;
    const only = upstreams.length === 1;
    const shown = upstreams.map((upstream) => upstreamNode(upstream, only, mode));
    if (!only && hedging !== "off") {
      shown.push(Object.assign(document.createElement("span"), {
        className: "hedging", textContent: `hedging ${hedging === "auto" ? "auto" : `${hedging} ms`}`,
      }));
    }
    document.getElementById("status-upstream").replaceChildren(...shown);
    document.getElementById("status-upstream-label").textContent = only ? "Upstream" : "Upstreams";
    document.getElementById("status-uptime").textContent = formatUptime(status.uptime_seconds);
    document.getElementById("status-in-flight").textContent = status.in_flight;
    for (const outcome of ["ok", "error", "cancelled"]) {
      document.getElementById(`status-${outcome}`).textContent = status.totals[outcome];
    }
    document.getElementById("status-dropped").textContent = status.dropped_records;
    const shared = status.shared;
    document.getElementById("status-shared-box").hidden = !shared;
    if (shared) {
      const node = document.getElementById("status-shared");
      node.textContent = shared.reachable ? "reachable" : "unreachable";
      node.className = shared.reachable ? "ok" : "error";
    }
  } catch (error) {
    document.getElementById("status-upstream").textContent = `unavailable (${error.message})`;
  }
}

export function startStatus() {
  refreshStatus();
  setInterval(refreshStatus, 2000);
}
