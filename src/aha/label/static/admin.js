// The admin page: progress, per-labeler counts and speed, agreement, flagged items; refreshes every 5 s.
// Revoking a labeler takes two clicks on their row's button (the second within 5 s).
"use strict";

let armed = { name: null, until: 0 };  // the revoke button clicked once, waiting for the confirming click

const $ = (id) => document.getElementById(id);
const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "");
const dash = (x) => (x === null || x === undefined ? "–" : x);

function fill(tableId, rows) {
  const body = $(tableId).querySelector("tbody");
  body.replaceChildren();
  for (const cells of rows) {
    const tr = el("tr");
    cells.forEach((c) => {
      if (c instanceof Node) { const td = el("td"); td.appendChild(c); tr.appendChild(td); }
      else tr.appendChild(el("td", null, dash(c)));
    });
    body.appendChild(tr);
  }
  if (!rows.length) {
    const tr = el("tr"); const td = el("td", "muted", "none yet");
    td.colSpan = $(tableId).querySelectorAll("th").length;
    tr.appendChild(td); body.appendChild(tr);
  }
}

function access(l) {
  if (l.admin) return "admin";
  if (l.revoked) return "revoked";
  const confirming = armed.name === l.name && Date.now() < armed.until;
  const b = el("button", "revoke" + (confirming ? " armed" : ""), confirming ? `confirm: revoke ${l.name}` : "revoke");
  b.type = "button";
  b.dataset.name = l.name;
  b.addEventListener("click", () => revoke(l.name));
  return b;
}

async function revoke(name) {
  if (!(armed.name === name && Date.now() < armed.until)) {
    armed = { name, until: Date.now() + 5000 };
    refresh();
    return;
  }
  armed = { name: null, until: 0 };
  try {
    await api("POST", "/api/admin/revoke", { name });
    $("status").textContent = `revoked ${name}: their token no longer works; their rankings stay`;
  } catch (e) {
    $("status").textContent = e.message;
  }
  refresh(true);
}

async function refresh(keepStatus) {
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
    fill("labelers", data.labelers.map((l) => [l.name, l.ranked, l.skipped, l.flagged, l.median_seconds, l.per_hour, when(l.last_at), access(l)]));
    fill("flagged", data.flagged.map((f) => [`#${f.task_id}`, f.labeler, f.prompt, f.note, when(f.at)]));
    if (keepStatus !== true) $("status").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    $("status").textContent = e.message;
  }
}

$("logout").addEventListener("click", logout);
refresh();
setInterval(() => refresh(), 5000);
