// Shared by the pages: API calls with the CSRF header, and safe text helpers.
// Model text is untrusted: it only ever goes into the DOM through textContent.
"use strict";

function cookie(name) {
  const hit = document.cookie.split("; ").find((c) => c.startsWith(name + "="));
  return hit ? decodeURIComponent(hit.slice(name.length + 1)) : "";
}

async function api(method, path, body) {
  const headers = { "X-CSRF-Token": cookie("aha_csrf") };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (resp.status === 401) {
    location.href = "/login?next=" + encodeURIComponent(location.pathname);
    throw new Error("not logged in");
  }
  let data = null;
  if (resp.status !== 204) {
    try { data = await resp.json(); } catch (e) { data = null; }
  }
  if (!resp.ok) throw new Error((data && data.error) || ("HTTP " + resp.status));
  return { status: resp.status, data };
}

// a prompt or completion: a text, or a list of chat messages
function asText(x) {
  if (typeof x === "string") return x;
  if (Array.isArray(x)) return x.map((m) => (m.role ? m.role + ": " : "") + m.content).join("\n\n");
  return String(x);
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

async function logout() {
  try { await api("POST", "/api/logout"); } catch (e) { /* already out */ }
  location.href = "/login";
}
