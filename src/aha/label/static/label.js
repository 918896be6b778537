// The labeler's page: one prompt, K (2..26) completions, ranked by drag and drop, by keyboard, or by tapping
// (a card to pick it; a ranked place's buttons to move it up or down or back to the unranked pile).
// State: `tiers` (completion indices best-first; a tier of 2+ is a tie) and an undo history.
"use strict";

// card i's key: 1..9, then letters, leaving out the command keys f(lag), s(kip), t(ie), u(ndo)
const KEYS = "123456789abcdeghijklmnopqr";

let task = null;        // {task_id, prompt, completions}
let tiers = [];         // e.g. [[2], [0, 3], [1]]
let history = [];       // earlier `tiers`, for undo
let tieArmed = false;   // `t` pressed: the next pick joins the last tier
let busy = false;

const $ = (id) => document.getElementById(id);

function ranked() { return new Set(tiers.flat()); }
function unranked() { return task.completions.map((_, i) => i).filter((i) => !ranked().has(i)); }
function say(text, isError) { $("status").textContent = text || ""; $("status").classList.toggle("error", !!isError); }
function remember() { history.push(JSON.stringify(tiers)); }

function card(i) {
  const node = el("div", "card");
  node.draggable = true;
  node.dataset.index = String(i);
  node.appendChild(el("span", "badge", KEYS[i]));
  node.appendChild(el("pre", "text", asText(task.completions[i])));
  node.addEventListener("dragstart", (ev) => {
    ev.dataTransfer.setData("text/plain", String(i));
    ev.dataTransfer.effectAllowed = "move";
    node.classList.add("dragging");
  });
  node.addEventListener("dragend", () => node.classList.remove("dragging"));
  return node;
}

function dropTarget(node, target) {
  node.addEventListener("dragover", (ev) => { ev.preventDefault(); node.classList.add("over"); });
  node.addEventListener("dragleave", () => node.classList.remove("over"));
  node.addEventListener("drop", (ev) => {
    ev.preventDefault();
    ev.stopPropagation();
    node.classList.remove("over");
    const i = Number(ev.dataTransfer.getData("text/plain"));
    if (Number.isInteger(i) && task && i >= 0 && i < task.completions.length) move(i, target);
  });
}

// target: {kind: "slot", pos} new place before tier `pos` | {kind: "tier", pos} tie | {kind: "pool"}
function move(i, target) {
  remember();
  const next = tiers.map((t) => t.filter((x) => x !== i));
  if (target.kind === "slot") next.splice(target.pos, 0, [i]);
  else if (target.kind === "tier") next[target.pos].push(i);
  tiers = next.filter((t) => t.length).map((t) => t.sort((a, b) => a - b));
  tieArmed = false;
  render();
}

function pick(i) {
  if (ranked().has(i)) { say(`${KEYS[i]} is already ranked (u undoes the last pick)`, true); return; }
  remember();
  if (tieArmed && tiers.length) tiers[tiers.length - 1] = [...tiers[tiers.length - 1], i].sort((a, b) => a - b);
  else tiers.push([i]);
  tieArmed = false;
  say("");
  render();
}

function undo() {
  if (tieArmed) { tieArmed = false; render(); return; }
  if (!history.length) { say("nothing to undo"); return; }
  tiers = JSON.parse(history.pop());
  render();
}

function armTie() {
  if (!tiers.length) { say("pick one first: t ties the next pick with the previous one", true); return; }
  tieArmed = !tieArmed;
  render();
}

// a ranked place moves one up or down (by = -1 | +1), or a card goes back to the unranked pile
function shift(pos, by) {
  const to = pos + by;
  if (to < 0 || to >= tiers.length) return;
  remember();
  [tiers[pos], tiers[to]] = [tiers[to], tiers[pos]];
  render();
}

function unrank(i) { move(i, { kind: "pool" }); }

function mini(text, title, action) {
  const b = el("button", "mini", text);
  b.type = "button";
  b.title = title;
  b.setAttribute("aria-label", title);
  b.addEventListener("click", (ev) => { ev.stopPropagation(); action(); });
  return b;
}

function complete() { return task && unranked().length === 0 && tiers.length >= 2; }

function render() {
  const rankingBox = $("ranking"), pool = $("pool");
  rankingBox.replaceChildren();
  pool.replaceChildren();
  let place = 1;
  tiers.forEach((tier, pos) => {
    const slot = el("div", "slot", "");
    slot.dataset.pos = String(pos);
    dropTarget(slot, { kind: "slot", pos });
    rankingBox.appendChild(slot);
    const row = el("div", "tier" + (tier.length > 1 ? " tied" : ""));
    row.dataset.tier = String(pos);
    row.appendChild(el("span", "place", tier.length > 1 ? `${place}=` : `${place}`));
    const cards = el("div", "tier-cards");
    tier.forEach((i) => {
      const c = card(i);
      c.appendChild(mini("✕", `put ${KEYS[i]} back among the unranked`, () => unrank(i)));
      cards.appendChild(c);
    });
    row.appendChild(cards);
    const moves = el("div", "moves");
    moves.appendChild(mini("▲", `move place ${place} up`, () => shift(pos, -1)));
    moves.appendChild(mini("▼", `move place ${place} down`, () => shift(pos, 1)));
    row.appendChild(moves);
    dropTarget(row, { kind: "tier", pos });
    rankingBox.appendChild(row);
    place += tier.length;
  });
  const end = el("div", "slot end", tiers.length ? `drop here for place ${place}` : "drop the best one here (or press its key, or tap it)");
  end.dataset.pos = String(tiers.length);
  dropTarget(end, { kind: "slot", pos: tiers.length });
  rankingBox.appendChild(end);
  const rest = unranked();
  rest.forEach((i) => {
    const c = card(i);
    c.addEventListener("click", () => pick(i));
    pool.appendChild(c);
  });
  if (!rest.length) pool.appendChild(el("p", "muted", "all ranked"));
  $("tie").classList.toggle("armed", tieArmed);
  $("submit").disabled = !(complete() || (rest.length === 1 && tiers.length >= 1));
  if (tieArmed) say(`tie armed: the next number ties with place ${place - tiers[tiers.length - 1].length}`);
}

async function refreshProgress() {
  try {
    const { data } = await api("GET", "/api/me");
    $("who").textContent = data.name;
    $("admin-link").classList.toggle("hidden", !data.admin);
    $("progress").textContent = `${data.ranked} ranked · ${data.skipped} skipped · ${data.available} left for you`;
  } catch (e) { /* shown elsewhere */ }
}

async function loadNext() {
  const { status, data } = await api("GET", "/api/next");
  if (status === 204) {
    task = null;
    $("task").classList.add("hidden");
    $("done").classList.remove("hidden");
  } else {
    task = data;
    tiers = []; history = []; tieArmed = false;
    $("task-id").textContent = `#${task.task_id}`;
    $("prompt").textContent = asText(task.prompt);
    $("done").classList.add("hidden");
    $("task").classList.remove("hidden");
    say("");
    render();
  }
  await refreshProgress();
}

async function send(body, what) {
  if (busy || !task) return;
  busy = true;
  let sent = false;
  try {
    await api("POST", "/api/rankings", { task_id: task.task_id, ...body });
    sent = true;
  } catch (e) {
    say(e.message, true);
  } finally {
    busy = false;
  }
  if (!sent) return;
  task = null;  // keys wait for the next task instead of answering this one twice
  try {
    await loadNext();
    say(what);
  } catch (e) {
    say(e.message, true);
  }
}

function wire() {
  return tiers.map((t) => (t.length === 1 ? t[0] : t));
}

function submit() {
  if (!task) return;
  const rest = unranked();
  if (rest.length === 1 && tiers.length >= 1) { remember(); tiers.push(rest); render(); }
  if (!complete()) { say(rest.length ? `rank all ${task.completions.length} first (${rest.length} left)` : "a ranking needs at least two places", true); return; }
  send({ ranking: wire() }, "saved");
}

function skip() { send({ skip: true }, "skipped"); }
function flag() { send(complete() ? { flag: true, ranking: wire() } : { flag: true }, "flagged as unsafe"); }

document.addEventListener("keydown", (ev) => {
  if (!task || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const k = ev.key;
  const i = k.length === 1 ? KEYS.indexOf(k.toLowerCase()) : -1;
  if (i >= 0 && i < task.completions.length) pick(i);
  else if (k === "t" || k === "T" || k === "=") armTie();
  else if (k === "u" || k === "U" || k === "Backspace") undo();
  else if (k === "s" || k === "S") skip();
  else if (k === "f" || k === "F") flag();
  else if (k === "Enter") submit();
  else return;
  ev.preventDefault();
});

$("undo").addEventListener("click", undo);
$("tie").addEventListener("click", armTie);
$("skip").addEventListener("click", skip);
$("flag").addEventListener("click", flag);
$("submit").addEventListener("click", submit);
$("logout").addEventListener("click", logout);
dropTarget($("pool"), { kind: "pool" });

loadNext().catch((e) => say(e.message, true));
