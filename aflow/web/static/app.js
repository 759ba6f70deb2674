// aflow's pages: live states through server-sent events and live log tailing.
// Plain script, no framework, nothing loaded from elsewhere.
"use strict";

function setState(el, state) {
  for (const c of Array.from(el.classList)) {
    if (c.startsWith("state-") && c !== "state-text") el.classList.remove(c);
  }
  el.classList.add("state-" + state);
  if (el.dataset) el.dataset.state = state;
}

function followStates(live) {
  const runId = live.dataset.runId;
  const taskId = live.dataset.taskId;
  let known = null;
  const source = new EventSource(live.dataset.events);
  source.addEventListener("states", async (message) => {
    const snap = JSON.parse(message.data);
    const runs = Object.keys(snap.runs);
    // the grid: a new run appeared, fetch it again; otherwise recolour cells
    const grid = document.getElementById("grid");
    if (grid && live.dataset.grid) {
      const shown = new Set(Array.from(grid.querySelectorAll(".run-head")).map((a) => a.dataset.runId));
      if (known !== null && runs.some((r) => !shown.has(r))) {
        const response = await fetch(live.dataset.grid);
        if (response.ok) grid.outerHTML = await response.text();
      }
    }
    for (const [rid, state] of Object.entries(snap.runs)) {
      document.querySelectorAll(`.run-head[data-run-id="${CSS.escape(rid)}"]`).forEach((a) => setState(a, state));
    }
    for (const [rid, states] of Object.entries(snap.tis)) {
      for (const [tid, state] of Object.entries(states)) {
        document.querySelectorAll(`.cell[data-run-id="${CSS.escape(rid)}"][data-task-id="${CSS.escape(tid)}"]`)
          .forEach((a) => setState(a, state));
      }
    }
    if (runId && snap.tis[runId]) {
      const states = snap.tis[runId];
      document.querySelectorAll("#graph .node").forEach((g) => setState(g, states[g.dataset.taskId] || "none"));
      const runState = snap.runs[runId];
      const badge = document.getElementById("selected-run-state");
      if (badge && runState) { setState(badge, runState); badge.textContent = runState; }
      if (taskId) {
        const tiBadge = document.getElementById("ti-state");
        const state = states[taskId] || "none";
        if (tiBadge && tiBadge.textContent !== state) {
          const before = tiBadge.textContent;
          setState(tiBadge, state); tiBadge.textContent = state;
          if (before === "none" || state === "up_for_retry") location.reload();  // a new try: its log
        }
      }
      if (live.dataset.reloadOnChange && known !== null && JSON.stringify(states) !== known) location.reload();
      known = JSON.stringify(states);
    } else if (known === null) {
      known = "";
    }
  });
}

const FINISHED = ["success", "failed", "skipped", "upstream_failed", "removed"];

async function tailLog(pre) {
  // Read the try's log from the API by byte offset; while it may still grow (the latest
  // try of a task that has not finished), ask again every half second.
  let offset = 0;
  for (;;) {
    let chunk = null;
    try {
      const response = await fetch(pre.dataset.logUrl + (pre.dataset.logUrl.includes("?") ? "&" : "?") + "offset=" + offset);
      if (response.ok) chunk = await response.json();
      else if (response.status === 404) { pre.dataset.complete = "1"; return; }  // no such try
    } catch (e) { chunk = null; }
    if (chunk && chunk.content) {
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.append(document.createTextNode(chunk.content));
      if (atBottom) pre.scrollTop = pre.scrollHeight;
      offset = chunk.next_offset;
      continue;  // there may be more right away
    }
    const state = document.getElementById("ti-state");
    const growing = pre.dataset.follow === "1" && state && !FINISHED.includes(state.textContent);
    if (chunk && !growing) { pre.dataset.complete = "1"; return; }
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const live = document.getElementById("live");
  if (live && live.dataset.events) followStates(live);
  const log = document.getElementById("log");
  if (log) tailLog(log);
});
