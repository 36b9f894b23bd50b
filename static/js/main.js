// Admin dashboard: live request log, knowledge base, audio clips, tools, request history. ES modules, no framework, no build step.

import { startAudio, loadClips } from "./audio.js";
import { startKnowledge, loadKnowledge } from "./knowledge.js";
import { loadHistory, startHistory } from "./history.js";
import { drawChart, startLiveLog } from "./live-log.js";
import { startStatus } from "./status.js";
import { loadTools, startTools } from "./tools.js";

const tabs = { log: drawChart, knowledge: loadKnowledge, audio: loadClips, tools: loadTools, history: loadHistory };

function selectTab(name) {
  for (const tab of Object.keys(tabs)) {
    document.getElementById(`tab-${tab}`).setAttribute("aria-selected", String(tab === name));
    document.getElementById(`panel-${tab}`).hidden = tab !== name;
  }
  tabs[name]();
}

for (const tab of Object.keys(tabs)) {
  document.getElementById(`tab-${tab}`).addEventListener("click", () => selectTab(tab));
}

startStatus();
startLiveLog();
startKnowledge();
startAudio();
startTools();
startHistory();
