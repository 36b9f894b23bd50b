// The audio tab: clips with a preview player, upload, activate, delete.

import { api } from "./api.js";
import { button, element, show } from "./dom.js";

const rows = document.getElementById("clip-rows");
const message = document.getElementById("audio-message");
let clipNames = [];

function rowFor(clip) {
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
  if (!clip.active) {
    actions.appendChild(button("Activate", () => clipAction("POST", clip.name, "/activate", `“${clip.name}” is now active.`)));
  }
  actions.appendChild(button("Delete", () => {
    const warning = clip.active ? " It is the active clip: the audio endpoint will send the simulated tone until you activate another." : "";
    if (window.confirm(`Delete the clip “${clip.name}”?${warning}`)) clipAction("DELETE", clip.name, "", `Deleted “${clip.name}”.`);
  }, "danger"));
  row.appendChild(actions);
  return row;
}

export async function loadClips() {
  try {
    const { clips } = await api("GET", "/admin/api/audio");
    rows.replaceChildren(...clips.map(rowFor));
    clipNames = clips.map((clip) => clip.name);
    const warning = document.getElementById("audio-warning");
    if (!clips.length) show(warning, "No clips: the audio endpoint sends a simulated reply.");
    else if (!clips.some((clip) => clip.active)) show(warning, "No active clip: the audio endpoint sends the simulated tone. Activate one.");
    else show(warning, "");
  } catch (error) {
    show(message, error.message);
  }
}

async function clipAction(method, name, suffix, done) {
  show(message, "");
  try {
    await api(method, `/admin/api/audio/${encodeURIComponent(name)}${suffix}`);
    show(message, done);
  } catch (error) {
    show(message, error.message);
  }
  await loadClips();
}

async function upload(event) {
  event.preventDefault();
  const form = event.target;
  const error = document.getElementById("audio-error");
  show(error, "");
  show(message, "");
  const file = form.elements.file.files[0];
  const fromFile = file ? file.name.replace(/\.[^.]*$/, "").replace(/[^A-Za-z0-9_-]+/g, "-").replace(/^[-_]+|[-_]+$/g, "") : "";
  const name = form.elements.name.value.trim() || fromFile;
  if (clipNames.includes(name) && !window.confirm(`A clip named “${name}” exists. Replace it?`)) return;
  try {
    const clip = await api("POST", "/admin/api/audio", new FormData(form));
    form.reset();
    show(message, `Uploaded “${clip.name}” (${clip.duration.toFixed(1)} s).`);
    await loadClips();
  } catch (failure) {
    show(error, failure.message);
  }
}

export function startAudio() {
  document.getElementById("audio-upload").addEventListener("submit", upload);
}
