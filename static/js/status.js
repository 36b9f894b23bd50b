// The header: upstream, uptime, requests in flight and totals, dropped records, Redis (when shared), refreshed
// every two seconds.

import { api } from "./api.js";

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
