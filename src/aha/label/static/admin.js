// The admin page: progress, per-labeler counts and speed, agreement, flagged items; refreshes every 5 s.
"use strict";

const $ = (id) => document.getElementById(id);
const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "");
const dash = (x) => (x === null || x === undefined ? "–" : x);

function fill(tableId, rows) {
  const body = $(tableId).querySelector("tbody");
  body.replaceChildren();
  for (const cells of rows) {
    const tr = el("tr");
    cells.forEach((c) => tr.appendChild(el("td", null, dash(c))));
    body.appendChild(tr);
  }
  if (!rows.length) {
    const tr = el("tr"); const td = el("td", "muted", "none yet");
    td.colSpan = $(tableId).querySelectorAll("th").length;
    tr.appendChild(td); body.appendChild(tr);
  }
}

async function refresh() {
  try {
    const { data } = await api("GET", "/api/admin/stats");
    const p = data.progress;
    $("progress-bar").max = Math.max(1, p.target);
    $("progress-bar").value = p.answered;
    $("progress-text").textContent =
      `${p.answered} / ${p.target} answered (${p.tasks} tasks × ${p.per_task} labelers) · ` +
      `${p.tasks_complete} tasks complete · ${p.open} open · ${p.skipped} skipped`;
    const a = data.agreement;
    $("agreement").textContent = a.tasks
      ? `Kendall's W: mean ${a.kendalls_w_mean}, median ${a.kendalls_w_median} over ${a.tasks} tasks with ≥ 2 rankings (1 = full agreement, 0 = none)`
      : "Kendall's W: no task has 2 rankings yet";
    fill("labelers", data.labelers.map((l) => [l.name, l.ranked, l.skipped, l.flagged, l.median_seconds, l.per_hour, when(l.last_at)]));
    fill("flagged", data.flagged.map((f) => [`#${f.task_id}`, f.labeler, f.prompt, f.note, when(f.at)]));
    $("status").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    $("status").textContent = e.message;
  }
}

$("logout").addEventListener("click", logout);
refresh();
setInterval(refresh, 5000);
