"use strict";
document.getElementById("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const out = document.getElementById("login-error");
  out.textContent = "";
  try {
    const resp = await fetch("/api/login", {
      method: "POST", headers: { "Content-Type": "application/json" }, credentials: "same-origin",
      body: JSON.stringify({ token: document.getElementById("token").value.trim() }),
    });
    const data = await resp.json();
    if (!resp.ok) { out.textContent = data.error || ("HTTP " + resp.status); return; }
    const next = new URLSearchParams(location.search).get("next");
    const safeNext = next && next.startsWith("/") && !next.startsWith("//") ? next : null;
    location.href = safeNext || (data.admin ? "/admin" : "/");
  } catch (e) {
    out.textContent = "could not reach the server: " + e.message;
  }
});
