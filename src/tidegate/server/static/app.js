// tidegate's page: three buttons over the JSON API, and a refresh while runs are in progress.
// Requests carry the session cookie and the X-Tidegate-Page header the server asks of
// cookie-signed writes (a form on another site cannot send it).
"use strict";

const LIVE = ["queued", "running"];

async function call(method, url) {
  const response = await fetch(url, {
    method,
    credentials: "same-origin",
    headers: { "Accept": "application/json", "X-Tidegate-Page": "1" },
  });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) {
    location.href = "/login?next=" + encodeURIComponent(location.pathname);
  }
  if (!response.ok) {
    const error = body.error || {};
    throw new Error([error.message || response.statusText, error.fix].filter(Boolean).join(" — "));
  }
  return body;
}

function flash(text, isError) {
  const box = document.querySelector(".flash");
  box.textContent = text;
  box.classList.toggle("error", Boolean(isError));
  box.hidden = false;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  Object.entries(attrs || {}).forEach(([k, v]) => node.setAttribute(k, v));
  children.forEach((c) => node.append(c));
  return node;
}

async function runNow(button) {
  button.disabled = true;
  try {
    const run = await call("POST", `/api/syncs/${encodeURIComponent(button.dataset.sync)}/runs`);
    location.href = `/runs/${run.run_id}`;
  } catch (err) {
    flash(err.message, true);
    button.disabled = false;
  }
}

async function approve(button) {
  const id = button.dataset.run;
  if (!confirm(`Send run #${id} as it was planned?`)) return;
  button.disabled = true;
  try {
    await call("POST", `/api/runs/${id}/approve`);
    flash(`Run #${id} approved; sending…`);
    for (;;) {
      await new Promise((resolve) => setTimeout(resolve, 700));
      const run = await call("GET", `/api/runs/${id}`);
      if (!run.approving && !LIVE.includes(run.status)) break;
    }
    location.reload();
  } catch (err) {
    flash(err.message, true);
    button.disabled = false;
  }
}

function planTable(planned) {
  const names = ["added", "changed", "removed", "unchanged", "invalid"];
  return el("table", { class: "grid compact" },
    el("thead", {}, el("tr", {}, ...names.map((n) => el("th", { class: "num" }, n)))),
    el("tbody", {}, el("tr", {}, ...names.map((n) => el("td", { class: "num" },
      Number(planned[n]).toLocaleString("en-US"))))));
}

async function preview(button) {
  const name = button.dataset.sync;
  const box = document.querySelector(`[data-preview-for="${CSS.escape(name)}"]`);
  const holder = box.closest(".preview-row") || box;
  if (!holder.hidden && box.dataset.loaded) {
    holder.hidden = true;
    box.dataset.loaded = "";
    return;
  }
  holder.hidden = false;
  box.replaceChildren(el("p", { class: "muted" }, "Planning… (nothing is sent)"));
  button.disabled = true;
  try {
    const plan = await call("GET", `/api/syncs/${encodeURIComponent(name)}/plan`);
    const verdict = plan.verdict || {};
    const toSend = Object.entries(plan.to_send || {}).map(([op, n]) => `${n} ${op}`).join(", ");
    const parts = [
      el("p", {}, el("strong", {}, `Plan for ${name}`), ` — would send ${toSend || "nothing"}`),
      planTable(plan.planned),
      el("p", { class: "verdict " + (verdict.held ? "held" : "pass") },
        verdict.held ? "Would be held by the guardrails:" : "Guardrails: pass"),
    ];
    (verdict.reasons || []).forEach((r) => parts.push(el("p", {}, `• ${r.message} [${r.rule}]`)));
    Object.entries(plan.invalid_reasons || {}).forEach(([reason, n]) =>
      parts.push(el("p", { class: "warn" }, `${n} invalid row(s): ${reason}`)));
    box.replaceChildren(...parts);
    box.dataset.loaded = "1";
  } catch (err) {
    box.replaceChildren(el("p", { class: "warn" }, err.message));
  } finally {
    button.disabled = false;
  }
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-action]");
  if (!button) return;
  const action = { run: runNow, approve, preview }[button.dataset.action];
  if (action) action(button);
});

if (document.body.hasAttribute("data-live")) {
  setTimeout(() => location.reload(), 2000);
}
