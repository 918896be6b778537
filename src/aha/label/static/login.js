"use strict";
document.getElementById("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const out = document.getElementById("login-error");
  out.textContent = "";
  try {
    // where to land: the server checks `next` and answers one of the app's own pages, nothing else
    const next = new URLSearchParams(location.search).get("next");
    const resp = await fetch("/api/login", {
      method: "POST", headers: { "Content-Type": "application/json" }, credentials: "same-origin",
      body: JSON.stringify({ token: document.getElementById("token").value.trim(), next }),
    });
    const data = await resp.json();
    if (!resp.ok) { out.textContent = data.error || ("HTTP " + resp.status); return; }
    location.href = data.next;
  } catch (e) {
    out.textContent = "could not reach the server: " + e.message;
  }
});
