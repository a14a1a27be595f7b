// bluegreen dashboard. The server judges, this script draws: every number and state comes from
// the server's views; text from etcd is only ever set as textContent, never parsed as HTML.
"use strict";

const S = {
  session: null,        // {user, csrf, etcd_auth, allow_actions, actions}
  stream: null,         // the tab's one EventSource
  apps: new Map(),      // app -> {act, summary}
  app: null,            // the app page's data
  route: null,
  hostFilter: { text: "", color: null, state: null },
  historyFilter: { kind: "", text: "" },
  logs: null,
  actionLog: [],
  lastResult: null,     // {text, ok}: the last action's end, this tab's or anyone's
};

// ---- DOM helpers ----
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const $ = (id) => document.getElementById(id);
function badge(text, cls) { return h("span", { class: "badge " + (cls || "") }, text); }
function stateBadge(state) { return badge(state || "none", "s-" + (state || "none")); }
function colorBadge(color) { return color ? badge(color, color) : badge("-"); }
function ago(iso) {
  if (!iso) return "-";
  const ms = Date.now() - Date.parse(iso);
  if (!isFinite(ms)) return iso;
  if (ms < 2000) return "now";
  if (ms < 120000) return Math.round(ms / 1000) + " s ago";
  if (ms < 7200000) return Math.round(ms / 60000) + " min ago";
  return new Date(iso).toLocaleString();
}
function clock(ms) { return new Date(ms).toLocaleTimeString([], { hour12: false }); }
function pct(weight) { return (weight / 100).toFixed(weight % 100 ? 2 : 0) + " %"; }

// ---- server ----
async function api(path, options = {}) {
  const headers = { "Accept": "application/json" };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  if (options.method && options.method !== "GET" && S.session) headers["X-Bluegreen-Csrf"] = S.session.csrf;
  const r = await fetch(path, { method: options.method || "GET", headers, credentials: "same-origin",
    body: options.body === undefined ? undefined : JSON.stringify(options.body) });
  const type = r.headers.get("Content-Type") || "";
  const data = type.includes("json") ? await r.json() : await r.text();
  return { status: r.status, ok: r.ok, data };
}

// ---- theme and keys ----
function applyTheme(theme) {
  document.documentElement.setAttribute("data-theme", theme);
  try { localStorage.setItem("bluegreen-theme", theme); } catch (_) { /* private mode */ }
}
function initialTheme() {
  let saved = null;
  try { saved = localStorage.getItem("bluegreen-theme"); } catch (_) { /* private mode */ }
  return saved || (matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light");
}
function toggleTheme() {
  applyTheme(document.documentElement.getAttribute("data-theme") === "dark" ? "light" : "dark");
}
document.addEventListener("keydown", (e) => {
  const typing = ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName);
  if (e.key === "Escape" && typing) { document.activeElement.blur(); return; }
  if (typing || e.ctrlKey || e.metaKey || e.altKey || document.querySelector("dialog[open]")) return;
  if (e.key === "/") { const f = $("filter"); if (f) { e.preventDefault(); f.focus(); } }
  else if (e.key === "t") toggleTheme();
  else if (e.key === "g") location.hash = "#/";
  else if (e.key === "?") $("help").showModal();
});

// ---- confirmation ----
function confirmAction(title, text) {
  return new Promise((resolve) => {
    const d = $("confirm");
    $("confirm-title").textContent = title;
    $("confirm-text").textContent = text;
    d.returnValue = "cancel";
    d.addEventListener("close", () => resolve(d.returnValue === "ok"), { once: true });
    d.showModal();
    $("confirm-cancel").focus();
  });
}

// ---- session ----
async function boot() {
  applyTheme(initialTheme());
  $("theme").addEventListener("click", toggleTheme);
  $("logout").addEventListener("click", logout);
  const r = await api("/api/session");
  if (r.status === 401) return showLogin();
  if (!r.ok) return fatal(r.data.error || "the dashboard did not answer");
  setSession(r.data);
  window.addEventListener("hashchange", route);
  route();
}
function setSession(session) {
  S.session = session;
  $("who").textContent = session.user ? session.user : "";
  $("logout").hidden = !session.user;
  const banner = $("banner");
  if (!session.etcd_auth) {
    banner.hidden = false;
    banner.textContent = "Development mode: etcd auth is off, so there is no login and anyone who reaches " +
      "this loopback port sees every app" + (session.allow_actions ? " and may act on it." : "; actions are off (start with --allow-actions).");
  } else banner.hidden = true;
}
function showLogin(error) {
  closeStream();
  const main = $("main");
  const user = h("input", { id: "user", name: "user", autocomplete: "username", required: true });
  const password = h("input", { id: "password", name: "password", type: "password", autocomplete: "current-password", required: true });
  const msg = h("p", { class: "error", role: "alert" }, error || "");
  const form = h("form", { class: "panel login", id: "login" },
    h("h1", {}, "Log in"),
    h("p", { class: "muted" }, "With your etcd user: what you see and may do is what its role allows."),
    h("label", { for: "user" }, "etcd user"), user,
    h("label", { for: "password" }, "Password"), password,
    h("p", {}, h("button", { type: "submit", class: "primary", id: "login-submit" }, "Log in")), msg);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const r = await api("/api/login", { method: "POST", body: { user: user.value, password: password.value } });
    if (!r.ok) { msg.textContent = r.data.error || "login failed"; return; }
    setSession(r.data);
    window.addEventListener("hashchange", route);
    route();
  });
  main.replaceChildren(form);
  user.focus();
}
async function logout() {
  await api("/api/logout", { method: "POST" });
  S.session = null;
  $("who").textContent = "";
  $("logout").hidden = true;
  showLogin();
}
function fatal(message) { $("main").replaceChildren(h("p", { class: "error" }, message)); }

// ---- the stream: one per tab ----
function closeStream() { if (S.stream) { S.stream.close(); S.stream = null; } }
function openStream(apps, detail) {
  closeStream();
  const q = new URLSearchParams({ apps: apps.join(",") });
  if (detail) q.set("detail", detail);
  const es = new EventSource("/api/stream?" + q.toString());
  S.stream = es;
  const conn = $("conn");
  es.onopen = () => { conn.className = "conn live"; conn.textContent = "live"; };
  es.onerror = async () => {
    conn.className = "conn down";
    conn.textContent = "reconnecting";
    if (es.readyState !== EventSource.CLOSED || S.stream !== es) return;
    // The browser gave up (the dashboard restarted, or the session ended): log in again, or
    // reopen the stream a moment later.
    const r = await api("/api/session").catch(() => ({ status: 0 }));
    if (r.status === 401) { showLogin("Your session ended: log in again."); return; }
    setTimeout(() => { if (S.stream === es) openStream(apps, detail); }, 1000);
  };
  es.onmessage = (e) => {
    const m = JSON.parse(e.data);
    if (m.kind === "resync") { openStream(apps, detail); return; }
    receive(m);
  };
}
function receive(m) {
  if (S.route.page === "apps") {
    const entry = S.apps.get(m.app);
    if (!entry) return;
    if (m.kind === "summary") entry.summary = m.data;
    else if (m.kind === "snapshot") entry.summary = m.data.summary;
    else return;
    scheduleDraw();
    return;
  }
  const a = S.app;
  if (!a || m.app !== a.name) return;
  // What the snapshot already holds comes again from changes applied while it was taken.
  if (["hosts", "timeline", "history", "series"].includes(m.kind) && m.revision <= a.snapRevision) return;
  switch (m.kind) {
    case "snapshot":
      a.summary = m.data.summary; a.timeline = m.data.timeline || []; a.history = m.data.history || [];
      a.series = m.data.series || []; a.hosts = new Map((m.data.hosts || []).map((r) => [r.host, r]));
      a.act = !!m.data.act; a.snapRevision = m.revision; a.loaded = true; break;
    case "summary": a.summary = m.data; break;
    case "hosts": for (const r of m.data) a.hosts.set(r.host, r); break;
    case "timeline": a.timeline.push(...m.data); if (a.timeline.length > 400) a.timeline.splice(0, a.timeline.length - 400); break;
    case "history": a.history.push(...m.data); break;
    case "series": a.series.push(m.data); if (a.series.length > 600) a.series.shift(); break;
    case "action":
      S.actionLog.push(m.data); if (S.actionLog.length > 200) S.actionLog.shift();
      if (m.data.exit !== undefined) S.lastResult = resultOf(m.data);
      break;
  }
  scheduleDraw();
}
let drawPending = false;
function scheduleDraw() {
  if (drawPending) return;
  drawPending = true;
  requestAnimationFrame(() => { drawPending = false; draw(); });
}

// ---- routing ----
function route() {
  const hash = location.hash || "#/";
  const m = hash.match(/^#\/app\/([^/?]+)/);
  S.actionLog = [];
  S.logs = null;
  if (m) {
    const name = decodeURIComponent(m[1]);
    S.route = { page: "app", app: name };
    S.app = { name, loaded: false, summary: null, hosts: new Map(), timeline: [], history: [], series: [], act: false, snapRevision: 0 };
    S.lastResult = null;
    crumbs([["Apps", "#/"], [name, null]]);
    $("main").replaceChildren(h("p", { class: "muted" }, "Loading " + name + "…"));
    openStream([], name);
  } else {
    S.route = { page: "apps" };
    crumbs([["Apps", null]]);
    loadApps();
  }
}
function crumbs(parts) {
  $("crumbs").replaceChildren(...parts.map(([text, href], i) =>
    h("span", {}, i ? " / " : "", href ? h("a", { href }, text) : h("strong", {}, text))));
}
async function loadApps() {
  const route = S.route;
  const r = await api("/api/apps");
  if (S.route !== route) return;   // the person went elsewhere meanwhile
  if (r.status === 401) return showLogin();
  if (!r.ok) return fatal(r.data.error || "could not list the apps");
  S.apps = new Map(r.data.map((x) => [x.app, x]));
  draw();
  openStream([...S.apps.keys()], null);
}

// ---- drawing ----
function draw() {
  if (!S.route) return;
  if (S.route.page === "apps") drawApps(); else drawApp();
}

function problemsOf(s) {
  const p = [...(s.problems || [])];
  if (s.active_invalid) p.push("active: " + s.active_invalid);
  if (s.counts && s.counts.silent) p.push(s.counts.silent + " host(s) silent");
  const behind = (s.lbs || []).filter((l) => !l.follows).length;
  if (behind) p.push(behind + " LB(s) not on the active revision");
  return p;
}

function drawApps() {
  const filter = (($("filter") || {}).value || "").toLowerCase();
  const rows = [...S.apps.values()].filter((x) => x.app.toLowerCase().includes(filter)).map((x) => {
    const s = x.summary || {};
    const op = s.operation;
    const problems = problemsOf(s);
    return h("tr", { class: "clickable", "data-app": x.app, onclick: () => { location.hash = "#/app/" + encodeURIComponent(x.app); } },
      h("td", {}, h("a", { href: "#/app/" + encodeURIComponent(x.app) }, x.app)),
      h("td", {}, s.active ? [colorBadge(s.active.color), " ", s.active.version] : "-"),
      h("td", {}, op ? [op.operation, " ", badge(op.phase, op.running ? "s-starting" : ""), " ", op.version] : "-"),
      h("td", {}, s.lock ? s.lock.holder : "-"),
      h("td", { class: "num" }, s.traffic ? pct(s.traffic.weight) : "-"),
      h("td", { class: "num" }, (s.lbs_following ?? 0) + " / " + (s.lbs_registered ?? 0)),
      h("td", { class: problems.length ? "problem" : "muted" }, problems.length ? problems.join("; ") : "none"),
      h("td", {}, x.act ? "act" : "read"));
  });
  const main = $("main");
  const existing = $("apps-table");
  const body = h("tbody", {}, rows);
  if (existing) { existing.querySelector("tbody").replaceWith(body); return; }
  main.replaceChildren(
    h("div", { class: "row" }, h("h1", {}, "Apps"), h("span", { class: "spacer" }),
      h("input", { id: "filter", placeholder: "filter apps (/)", "aria-label": "Filter apps", oninput: drawApps })),
    h("div", { class: "panel" }, h("table", { id: "apps-table" },
      h("thead", {}, h("tr", {}, ["App", "Active", "Operation", "Lock holder", "Canary", "LBs following", "Problems", "You may"].map((t) => h("th", {}, t)))),
      body)));
}

function actionsFor(a) {
  const s = a.summary;
  if (!a.act || !S.session.allow_actions) return [];
  const out = [];
  const op = s.operation;
  // A split left at weight 0 by an ended canary is no running canary.
  const canary = (op && op.running && op.phase === "canary") || (s.traffic && s.traffic.weight > 0);
  if (canary) {
    out.push(["canary-pause", "Pause canary", "Hold the canary at its weight (the analysis still aborts on a failure)."]);
    out.push(["canary-resume", "Resume canary", "Go on from the current step."]);
    out.push(["canary-promote", "Promote canary", "Skip the remaining steps and switch every user to the canary."]);
    out.push(["canary-abort", "Abort canary", "Send every user back to the stable color and fail the canary."]);
  }
  if (op && op.phase === "staged") out.push(["promote", "Promote " + op.version, "Check the staged " + op.version + " again (health, smoke checks) and switch traffic to it."]);
  if (s.active && !(op && op.running)) out.push(["rollback", "Roll back", "Switch every LB back to the previous color (it must be healthy)."]);
  if (s.lock) out.push(["lock-break", "Break lock", "Revoke the lock holder's lease (" + s.lock.holder + "); its fence refuses anything it still writes."]);
  return out;
}

async function runAction(name, label, text) {
  const a = S.app;
  if (!(await confirmAction(label + " on " + a.name + "?", text))) return;
  S.lastResult = { text: label + ": running…", ok: true };
  drawApp();
  const r = await api("/api/apps/" + encodeURIComponent(a.name) + "/actions/" + name, { method: "POST", body: {} });
  if (S.app !== a) return;
  S.lastResult = r.data.exit === undefined
    ? { text: label + ": refused. " + (r.data.error || "status " + r.status), ok: false }
    : resultOf(r.data);
  drawApp();
}
function resultOf(d) {
  const who = d.actor ? d.actor + ": " : "";
  const how = d.exit === 0 ? " done. " : " ended with exit " + d.exit + ". ";
  return { text: who + d.action + how + (d.text || ""), ok: d.exit === 0 };
}

function drawApp() {
  const a = S.app;
  if (!a || !a.loaded) return;
  const s = a.summary;
  const main = $("main");
  const focus = document.activeElement && document.activeElement.id;
  main.replaceChildren(...[
    h("div", { class: "row" }, h("h1", {}, a.name), s.active ? [colorBadge(s.active.color), h("strong", {}, s.active.version)] : badge("nothing live yet"),
      h("span", { class: "muted" }, "revision " + s.revision)),
    overview(a),
    canaryPanel(a),
    h("div", { class: "cols" },
      h("div", {}, hostsPanel(a), lbsPanel(a)),
      h("div", {}, timelinePanel(a), logsPanel(a))),
    historyPanel(a)].filter(Boolean));
  // For people and benchmarks alike: when the page first showed the app, and which etcd
  // revision it shows now (bench-ui reads these to time first paint and event-to-screen).
  if (!a.painted) { a.painted = true; performance.mark("bluegreen-first-paint"); }
  window.bluegreenDrawn = { revision: s.revision, at: Date.now(), hosts: a.hosts.size };
  if (focus && $(focus)) { $(focus).focus(); const f = $(focus); if (f.setSelectionRange && f.value) f.setSelectionRange(f.value.length, f.value.length); }
}

function overview(a) {
  const s = a.summary;
  const op = s.operation;
  const problems = problemsOf(s);
  const buttons = actionsFor(a).map(([name, label, text]) =>
    h("button", { type: "button", "data-action": name, class: name.includes("abort") || name === "lock-break" ? "danger" : "", onclick: () => runAction(name, label, text) }, label));
  const drain = Object.entries(s.draining || {}).map(([color, lbs]) => color + ": " + Object.entries(lbs).map(([lb, n]) => lb + " " + n).join(", "));
  return h("div", { class: "panel", id: "overview" },
    h("dl", { class: "kv" },
      h("dt", {}, "Operation"), h("dd", { id: "operation" }, op ? [op.operation, " ", op.id, " ", badge(op.phase, op.running ? "s-starting" : (op.phase === "failed" ? "s-failed" : "s-healthy")), " ", op.version, " → ", op.to, op.error ? h("span", { class: "problem" }, " " + op.error) : ""] : "none"),
      h("dt", {}, "Lock"), h("dd", {}, s.lock ? s.lock.holder + " (" + s.lock.operation + ", " + ago(s.lock.acquired_at) + ")" : "free"),
      h("dt", {}, "LBs following"), h("dd", {}, (s.lbs_following ?? 0) + " of " + (s.lbs_registered ?? 0)),
      h("dt", {}, "Releases"), h("dd", {}, Object.entries(s.releases || {}).map(([c, r]) => [colorBadge(c), " ", r.version, "  "])),
      drain.length ? [h("dt", {}, "Draining"), h("dd", {}, drain.join("; "))] : [],
      h("dt", {}, "Problems"), h("dd", { class: problems.length ? "problem" : "muted" }, problems.length ? problems.join("; ") : "none")),
    buttons.length ? h("div", { class: "actions", style: null }, buttons) : (a.act ? null : h("p", { class: "muted", id: "read-only" }, "Read only: your etcd user may not change this app.")),
    h("div", { id: "action-result", class: "result" + (S.lastResult && !S.lastResult.ok ? " error" : ""), role: "status", "aria-live": "polite" }, S.lastResult ? S.lastResult.text : lastActionText()));
}

function lastActionText() {
  const last = S.actionLog[S.actionLog.length - 1];
  if (!last || !last.event) return "";
  const e = last.event;
  return (last.actor ? last.actor + ": " : "") + last.action + ": " + (e.step || "") + " " + (e.host ? e.host + " " : "") + (e.state || e.outcome || "") + " " + (e.detail || "");
}

// ---- canary ----
function canaryPanel(a) {
  const s = a.summary;
  const steps = a.history.filter((r) => r.kind === "canary-step");
  if (!s.traffic && !steps.length) return null;
  const t = s.traffic;
  const series = a.series.slice(-120);
  const colors = ["blue", "green"];
  const chart = (label, value, fmt) => {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 300 100");
    svg.setAttribute("preserveAspectRatio", "none");
    let max = 0;
    for (const p of series) for (const c of colors) { const v = value(p.colors[c]); if (v !== null && v > max) max = v; }
    for (const c of colors) {
      const pts = series.map((p, i) => [i, value(p.colors[c])]).filter(([, v]) => v !== null);
      if (!pts.length) continue;
      const line = document.createElementNS(ns, "polyline");
      line.setAttribute("fill", "none");
      line.setAttribute("stroke", getComputedStyle(document.documentElement).getPropertyValue("--" + c));
      line.setAttribute("stroke-width", "2");
      line.setAttribute("points", pts.map(([i, v]) => (i * 300 / Math.max(1, series.length - 1)).toFixed(1) + "," + (98 - (max ? v / max : 0) * 94).toFixed(1)).join(" "));
      svg.append(line);
    }
    return h("div", { class: "chart" }, h("div", { class: "label" }, label + " (max " + fmt(max) + ")"), svg);
  };
  const num = (f) => (c) => (c && c[f] !== null && c[f] !== undefined ? c[f] : null);
  const decisions = steps.slice(-12).reverse().map((r) => {
    const d = r.details || {};
    const checks = (d.checks || []).map((c) => h("div", {}, badge(c.verdict, c.verdict === "pass" ? "s-healthy" : c.verdict === "fail" ? "s-failed" : "s-starting"), " ", c.criterion, ": ", c.detail));
    return h("tr", {}, h("td", {}, ago(r.at)), h("td", { class: "num" }, d.step ?? "-"), h("td", { class: "num" }, d.weight !== undefined ? pct(d.weight) : "-"),
      h("td", {}, stateBadge(r.outcome === "passed" || r.outcome === "promoted" ? "healthy" : r.outcome === "aborted" || r.outcome === "failed" ? "failed" : "starting"), " ", r.outcome),
      h("td", {}, checks.length ? checks : (r.reason || "")));
  });
  return h("div", { class: "panel", id: "canary" },
    h("h2", {}, "Canary"),
    t ? h("p", {}, "Step ", h("strong", {}, String(t.step)), ": ", h("strong", { id: "canary-weight" }, pct(t.weight)), " of requests to ", colorBadge(t.canary), " (stable ", colorBadge(t.stable), ")",
      s.canary_request ? h("span", { class: "muted" }, " · last request: " + s.canary_request.action + " by " + s.canary_request.actor) : "")
      : h("p", { class: "muted" }, "No split now."),
    h("div", { class: "charts" },
      chart("requests per interval", num("requests"), (v) => String(v)),
      chart("error rate", num("error_rate"), (v) => (v * 100).toFixed(2) + " %"),
      chart("p99 latency", num("p99_ms"), (v) => v.toFixed(1) + " ms")),
    h("p", { class: "legend" }, colorBadge("blue"), " ", colorBadge("green"), " per interval between the LBs' reports, summed over every LB"),
    h("h2", {}, "Decisions and their bounds"),
    decisions.length ? h("table", {}, h("thead", {}, h("tr", {}, ["When", "Step", "Weight", "Outcome", "Checks (the numbers and the bound each was judged against)"].map((x) => h("th", {}, x)))), h("tbody", {}, decisions))
      : h("p", { class: "muted" }, "No look taken yet."));
}

// ---- hosts ----
const STATES = ["healthy", "starting", "unhealthy", "failed", "stopped", "none"];
function hostsPanel(a) {
  const s = a.summary;
  const f = S.hostFilter;
  const color = f.color || (s.active ? s.active.color : "blue");
  const per = (s.counts && s.counts.per_color) || {};
  const chips = [];
  for (const c of ["blue", "green"]) {
    for (const st of STATES) {
      const n = (per[c] || {})[st];
      if (!n) continue;
      const pressed = f.color === c && f.state === st;
      chips.push(h("button", { type: "button", class: "chip s-" + st, "aria-pressed": pressed ? "true" : "false", "data-chip": c + ":" + st,
        onclick: () => { if (pressed) { f.color = null; f.state = null; } else { f.color = c; f.state = st; } drawApp(); } }, c + " " + st + " " + n));
    }
  }
  const text = f.text.toLowerCase();
  const all = [...a.hosts.values()];
  const match = (r) => (!text || r.host.toLowerCase().includes(text) || JSON.stringify(r.colors).toLowerCase().includes(text)) &&
    (!f.state || ((r.colors[f.color] || {}).state || "none") === f.state);
  const shown = all.filter(match);
  const cells = h("div", { class: "cells", "aria-hidden": "true" }, shown.slice(0, 5000).map((r) =>
    h("span", { class: "cell s-" + (((r.colors[color] || {}).state) || "none"), title: r.host + " " + color + ": " + (((r.colors[color] || {}).state) || "none") })));
  const rows = shown.slice(0, 200).map((r) => h("tr", { "data-host": r.host },
    h("td", {}, r.host, r.alive ? "" : h("span", { class: "problem" }, " silent"), r.leaving ? h("span", { class: "muted" }, " leaving") : ""),
    ["blue", "green"].map((c) => {
      const x = r.colors[c];
      return h("td", { "data-color": c }, x ? [stateBadge(x.state), " ", x.version, x.restarts ? h("span", { class: "muted" }, " ↻" + x.restarts) : "", x.error ? h("div", { class: "problem" }, x.error) : ""] : stateBadge("none"));
    }),
    h("td", { class: "muted" }, ago(((r.colors[color] || {}).since))),
    h("td", {}, h("button", { type: "button", onclick: () => openLogs(r.host, color), "aria-label": "Logs of " + r.host }, "logs"))));
  return h("div", { class: "panel", id: "hosts" },
    h("div", { class: "row" }, h("h2", {}, "Hosts ", h("span", { class: "muted" }, (s.counts ? s.counts.hosts : all.length) + (s.counts && s.counts.silent ? ", " + s.counts.silent + " silent" : ""))),
      h("span", { class: "spacer" }),
      h("input", { id: "filter", placeholder: "filter hosts (/)", "aria-label": "Filter hosts", value: f.text, oninput: (e) => { f.text = e.target.value; drawApp(); } })),
    h("div", { class: "chips" }, chips),
    cells,
    h("table", { id: "host-table" }, h("thead", {}, h("tr", {}, ["Host", "Blue", "Green", "Since", ""].map((x) => h("th", {}, x)))), h("tbody", {}, rows)),
    shown.length > 200 ? h("p", { class: "muted" }, "Showing 200 of " + shown.length + " matching hosts: filter to narrow.") : null);
}

// ---- LBs ----
function lbsPanel(a) {
  const lbs = a.summary.lbs || [];
  return h("div", { class: "panel", id: "lbs" }, h("h2", {}, "Load balancers"),
    lbs.length ? h("table", {}, h("thead", {}, h("tr", {}, ["LB", "Serves", "Revision", "Sidecar", "Last switch", "Open"].map((x) => h("th", {}, x)))),
      h("tbody", {}, lbs.map((l) => h("tr", { "data-lb": l.name },
        h("td", {}, l.name), h("td", {}, colorBadge(l.color), l.follows ? "" : h("span", { class: "problem" }, " behind")),
        h("td", { class: "num" }, l.revision ?? "-"), h("td", {}, l.alive ? stateBadge("healthy") : stateBadge("failed")),
        h("td", { class: "num" }, l.switch_ms !== null && l.switch_ms !== undefined ? l.switch_ms + " ms" : "-"),
        h("td", { class: "num" }, Object.entries(l.open || {}).map(([c, n]) => c + " " + n).join(", ") || "-"),
        l.error ? h("td", { class: "problem" }, l.error) : null))))
      : h("p", { class: "muted" }, "No LB registered."));
}

// ---- timeline ----
function timelinePanel(a) {
  const evs = a.timeline.slice(-200).reverse();
  const actions = S.actionLog.slice(-20).reverse().filter((x) => x.event).map((x) =>
    h("div", { class: "ev" }, h("span", { class: "t" }, x.actor || "action"), h("span", {}, x.action), h("span", {}, (x.event.step || "") + " " + (x.event.state || "")), h("span", {}, (x.event.host ? x.event.host + ": " : "") + (x.event.detail || ""))));
  return h("div", { class: "panel" }, h("h2", {}, "Timeline"),
    h("div", { class: "timeline", id: "timeline", role: "log", "aria-live": "off" },
      actions,
      evs.length ? evs.map((e) => h("div", { class: "ev ev-" + e.state, "data-step": e.step },
        h("span", { class: "t" }, clock(e.at_ms)), h("span", {}, e.step), h("span", {}, e.state), h("span", {}, (e.host ? e.host + ": " : "") + e.detail)))
        : h("p", { class: "muted" }, "Nothing has changed since you opened the page.")));
}

// ---- logs ----
async function openLogs(host, color) {
  S.logs = { host, color, text: "loading…" };
  drawApp();
  const r = await fetch("/api/apps/" + encodeURIComponent(S.app.name) + "/logs?" + new URLSearchParams({ host, color, tail: "200" }), { credentials: "same-origin" });
  S.logs = { host, color, text: await r.text(), failed: !r.ok };
  drawApp();
}
function logsPanel() {
  if (!S.logs) return h("div", { class: "panel" }, h("h2", {}, "Host log"), h("p", { class: "muted" }, "Choose logs on a host's row."));
  const l = S.logs;
  return h("div", { class: "panel", id: "logs" }, h("div", { class: "row" }, h("h2", {}, "Log of " + l.host + " ", colorBadge(l.color)),
    h("span", { class: "spacer" }), h("button", { type: "button", onclick: () => openLogs(l.host, l.color === "blue" ? "green" : "blue") }, "other color"),
    h("button", { type: "button", onclick: () => openLogs(l.host, l.color) }, "reload")),
    h("pre", { class: "log" + (l.failed ? " error" : "") }, l.text));
}

// ---- history ----
function historyPanel(a) {
  const f = S.historyFilter;
  const kinds = [...new Set(a.history.map((r) => r.kind))].sort();
  const text = f.text.toLowerCase();
  const rows = a.history.filter((r) => (!f.kind || r.kind === f.kind) &&
    (!text || [r.actor, r.command, r.version, r.reason, r.deploy_id, r.outcome].join(" ").toLowerCase().includes(text))).slice(-100).reverse();
  const migrations = a.history.filter((r) => r.kind === "migrate").slice(-10).reverse();
  return h("div", { class: "cols" },
    h("div", { class: "panel", id: "history" },
      h("div", { class: "row" }, h("h2", {}, "History"), h("span", { class: "spacer" }),
        h("select", { id: "history-kind", "aria-label": "Kind", onchange: (e) => { f.kind = e.target.value; drawApp(); } },
          h("option", { value: "" }, "every kind"), kinds.map((k) => h("option", { value: k, selected: k === f.kind }, k))),
        h("input", { id: "history-text", placeholder: "actor, version, reason", "aria-label": "Filter history", value: f.text, oninput: (e) => { f.text = e.target.value; drawApp(); } })),
      h("table", {}, h("thead", {}, h("tr", {}, ["When", "Kind", "Outcome", "Version", "Actor", "Command", "Reason"].map((x) => h("th", {}, x)))),
        h("tbody", {}, rows.map((r) => h("tr", { "data-history": r.deploy_id },
          h("td", { title: r.at }, ago(r.at)), h("td", {}, r.kind), h("td", {}, r.outcome), h("td", {}, r.version || "-"),
          h("td", {}, r.actor || "-"), h("td", { class: "muted" }, r.command || "-"), h("td", {}, r.reason || "")))))),
    h("div", { class: "panel", id: "migrations" }, h("h2", {}, "Migrations"),
      migrations.length ? h("table", {}, h("tbody", {}, migrations.map((r) => h("tr", {}, h("td", {}, ago(r.at)), h("td", {}, r.outcome), h("td", {}, r.reason || JSON.stringify(r.details || {}))))))
        : h("p", { class: "muted" }, "No migration in recent history. The contract gate and pending files: coordinator migrate status.")));
}

boot();
