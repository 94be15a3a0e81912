// Sluice dashboard: a small single-page app over the daemon's JSON API.
//
// Rules this file keeps:
// - Every value from the API is written with textContent (through `h`),
//   never as HTML: job errors, results and names come from plugins and
//   clients. Nothing here parses a string as markup (the browser test
//   checks the served script for it).
// - Every request carries the bearer token when one was given; a 401
//   shows the token form. The token lives in sessionStorage (this tab only).
// - Live pages re-read every 2 s while the tab is visible and Live is on.
"use strict";

const REFRESH_MS = 2000;
const STATES = ["queued", "scheduled", "running", "retrying", "succeeded", "dead", "cancelled", "expired"];
const SVG = "http://www.w3.org/2000/svg";

// ---------------------------------------------------------------- helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function s(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  return el;
}

const fmt = new Intl.NumberFormat("en-US");
function num(n) { return n === null || n === undefined ? "–" : fmt.format(n); }
function capped(n, cap) { return n >= cap ? fmt.format(cap) + "+" : fmt.format(n); }
// A channel's count of `states` (one or several, summed), with "+" when
// any of them is a floor: the census stopped counting it ("at least").
function counted(c, ...states) {
  const n = states.reduce((a, k) => a + c[k], 0);
  return fmt.format(n) + (states.some((k) => (c.at_least || []).includes(k)) ? "+" : "");
}
function held(c) {
  const [conc, rate] = c.flow_waiting || [0, 0];
  if (!conc && !rate) return h("span", { class: "muted" }, "0");
  return h("span", { class: "held", title: `${conc} wait for a concurrency key, ${rate} for a rate limit` }, fmt.format(conc + rate));
}

function ago(ms, now) {
  if (!ms) return "–";
  const d = Math.round(((now || Date.now()) - ms) / 1000);
  const a = Math.abs(d);
  let t;
  if (a < 60) t = a + " s";
  else if (a < 3600) t = Math.round(a / 60) + " min";
  else if (a < 86400) t = Math.round(a / 3600) + " h";
  else t = Math.round(a / 86400) + " d";
  return d >= 0 ? t + " ago" : "in " + t;
}

function when(ms, now) {
  if (!ms) return h("span", { class: "muted" }, "–");
  return h("span", { title: new Date(ms).toISOString() }, ago(ms, now));
}

function duration(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms < 1000) return ms + " ms";
  if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
  if (ms < 3600000) return Math.round(ms / 60000) + " min";
  return (ms / 3600000).toFixed(1) + " h";
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  if (n >= 1 << 30) return (n / (1 << 30)).toFixed(n % (1 << 30) ? 1 : 0) + " GiB";
  if (n >= 1 << 20) return (n / (1 << 20)).toFixed(n % (1 << 20) ? 1 : 0) + " MiB";
  if (n >= 1024) return (n / 1024).toFixed(0) + " KiB";
  return n + " B";
}

function fuel(n) {
  if (n === null || n === undefined) return "–";
  if (n >= 1e9) return (n / 1e9).toFixed(n % 1e9 ? 1 : 0) + " G";
  if (n >= 1e6) return (n / 1e6).toFixed(1) + " M";
  if (n >= 1e3) return (n / 1e3).toFixed(1) + " k";
  return String(n);
}

function badge(state) { return h("span", { class: "badge st-" + state }, state); }
function short(id) { return id && id.length > 13 ? id.slice(0, 8) + "…" + id.slice(-4) : id; }
function jobLink(id) { return h("a", { href: "#/jobs/" + encodeURIComponent(id), class: "mono", title: id }, short(id)); }
function progress(p, big) {
  const bar = h("span", {});
  // Through the CSSOM: the CSP forbids style attributes.
  bar.style.width = Math.max(0, Math.min(100, p || 0)) + "%";
  return h("span", { class: "progress" + (big ? " big" : ""), title: p === null ? "no progress reported" : p + "%" }, bar);
}

function toast(text, bad) {
  const box = document.getElementById("toast");
  const el = h("div", { class: bad ? "bad" : "" }, text);
  box.append(el);
  setTimeout(() => el.remove(), 5000);
}

// A button that asks for a second click within 4 s before it acts.
function confirmButton(label, armedLabel, action, cls) {
  const b = h("button", { type: "button", class: "danger " + (cls || "") }, label);
  let timer = null;
  b.addEventListener("click", async () => {
    if (!b.classList.contains("armed")) {
      b.classList.add("armed");
      b.textContent = armedLabel;
      timer = setTimeout(() => { b.classList.remove("armed"); b.textContent = label; }, 4000);
      return;
    }
    clearTimeout(timer);
    b.disabled = true;
    try { await action(); } finally { b.disabled = false; b.classList.remove("armed"); b.textContent = label; }
  });
  return b;
}

// ---------------------------------------------------------------- API

class Unauthorized extends Error {}

function token() {
  return sessionStorage.getItem("sluice-token");
}

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  const t = token();
  if (t) headers["Authorization"] = "Bearer " + t;
  const init = { method, headers, cache: "no-store", credentials: "omit" };
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body || {});
  }
  const r = await fetch(path, init);
  if (r.status === 401) throw new Unauthorized("unauthorized");
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = { error: text }; }
  if (!r.ok && r.status !== 202) {
    const e = new Error((data && data.error) || ("HTTP " + r.status));
    e.status = r.status;
    throw e;
  }
  return data;
}

// ---------------------------------------------------------------- charts

// A line chart of done (blue, with area) and failed + dead (red) per
// second, with a y scale and time labels.
function chart(points, firstMs, bucketMs, opts) {
  const w = opts.width, hgt = opts.height, padL = opts.axes ? 44 : 2, padB = opts.axes ? 20 : 2, padT = 6;
  const svg = s("svg", { viewBox: `0 0 ${w} ${hgt}`, class: opts.class || "chart", preserveAspectRatio: "none", role: "img" });
  const rate = (n) => n / (bucketMs / 1000);
  const done = points.map((p) => rate(p[0]));
  const failed = points.map((p) => rate(p[1] + p[2]));
  const max = Math.max(1e-9, ...done, ...failed);
  const top = opts.axes ? niceMax(max) : max;
  const n = Math.max(1, points.length - 1);
  const x = (i) => padL + (i / n) * (w - padL - 4);
  const y = (v) => hgt - padB - (v / top) * (hgt - padB - padT);
  if (opts.axes) {
    for (const f of [0, 0.5, 1]) {
      svg.append(s("line", { x1: padL, x2: w - 4, y1: y(top * f), y2: y(top * f), class: "axis" }));
      const label = s("text", { x: padL - 6, y: y(top * f) + 4, "text-anchor": "end" });
      label.textContent = rateLabel(top * f);
      svg.append(label);
    }
    const ticks = [0, Math.floor(n / 2), n];
    for (const i of ticks) {
      const t = s("text", { x: x(i), y: hgt - 4, "text-anchor": i === 0 ? "start" : i === n ? "end" : "middle" });
      const at = new Date(firstMs + i * bucketMs);
      t.textContent = at.toTimeString().slice(0, 5);
      svg.append(t);
    }
  }
  const line = (vals) => vals.map((v, i) => (i ? "L" : "M") + x(i).toFixed(1) + " " + y(v).toFixed(1)).join(" ");
  svg.append(s("path", { d: line(done) + ` L${x(n)} ${y(0)} L${x(0)} ${y(0)} Z`, class: "done-area" }));
  // A flat red line at zero would read as "failing": drawn only if any.
  if (failed.some((v) => v > 0)) svg.append(s("path", { d: line(failed), class: "failed" }));
  svg.append(s("path", { d: line(done), class: "done" }));
  return svg;
}

function niceMax(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function rateLabel(v) {
  if (v === 0) return "0";
  if (v >= 1000) return (v / 1000).toFixed(v % 1000 ? 1 : 0) + "k/s";
  if (v >= 10) return Math.round(v) + "/s";
  return v.toFixed(v >= 1 ? 1 : 2) + "/s";
}

function sum(points) {
  const out = [];
  for (const series of points) series.forEach((p, i) => {
    out[i] = out[i] || [0, 0, 0, 0];
    for (let k = 0; k < 4; k++) out[i][k] += p[k];
  });
  return out;
}

// ---------------------------------------------------------------- pages

const state = { live: true, range: 15, timer: null, route: null, busy: false };

function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "jobs" && parts[1]) return { page: "job", id: parts[1], params };
  return { page: parts[0] || "overview", params };
}

function setHash(page, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v) q.set(k, v);
  const qs = q.toString();
  location.hash = "#/" + page + (qs ? "?" + qs : "");
}

async function overviewPage() {
  // The cron panel is extra: if its records cannot be read now, the rest
  // of the overview still shows.
  const [o, cron] = await Promise.all([api("GET", "/v1/dashboard/overview?minutes=" + state.range),
    api("GET", "/v1/cron").catch((e) => (e instanceof Unauthorized ? Promise.reject(e) : { error: e.message }))]);
  setTransport(o.transport);
  const ch = o.channels;
  const total = (...ks) => {
    const n = ch.reduce((a, c) => a + ks.reduce((b, k) => b + c[k], 0), 0);
    const floor = ch.some((c) => ks.some((k) => (c.at_least || []).includes(k)));
    return { n, text: fmt.format(n) + (floor ? "+" : "") };
  };
  const waiting = total("queued", "scheduled", "retrying");
  const dead = total("dead");
  const cap = o.count_cap;
  const gated = ch.some((c) => c.flow_waiting && (c.flow_waiting[0] || c.flow_waiting[1]));
  const lag = o.outbox_oldest_ms ? duration(o.now - o.outbox_oldest_ms) : null;
  const all = sum(ch.map((c) => c.points));
  const last = all.slice(-6);
  const recent = last.reduce((a, p) => a + p[0], 0) / (last.length * o.bucket_ms / 1000 || 1);
  const ranges = h("div", { class: "ranges row" }, [5, 15, 60].map((m) =>
    h("button", { type: "button", class: m === state.range ? "on" : "", onclick: () => { state.range = m; refresh(); } }, m + " min")));
  return [
    h("div", { class: "row spread" },
      h("div", {}, h("h1", {}, "Overview"), h("p", { class: "sub" }, `${ch.length} channels · ${o.plugins} plugins · ${o.reloads} reloads since start`)),
      ranges),
    h("div", { class: "cards" },
      card("Throughput", rateLabel(recent), "last minute, all channels"),
      card("In flight", num(o.in_flight), "calls running on this host"),
      card("Queue depth", waiting.text, "queued, scheduled, retrying"),
      card("Dead letters", dead.text, h("a", { href: "#/dead" }, "review and replay"), dead.n > 0 ? "bad" : ""),
      card("Outbox lag", o.transport === "jetstream" ? capped(o.outbox_pending, cap) : "–",
        o.transport === "jetstream" ? (lag ? "oldest " + lag : "nothing pending") : "embedded queue: no outbox",
        o.outbox_pending > 0 ? "warn" : ""),
      card("Plugin errors", num(o.load_errors), h("a", { href: "#/plugins" }, "plugins"), o.load_errors > 0 ? "bad" : "")),
    h("div", { class: "panel" },
      h("div", { class: "row spread" }, h("h2", {}, "Jobs per second, all channels"),
        h("div", { class: "legend" }, h("span", {}, h("i", { class: "l-done" }), "done"), h("span", {}, h("i", { class: "l-failed" }), "failed or dead"))),
      chart(all.length ? all : [[0, 0, 0, 0]], o.first_bucket_ms, o.bucket_ms, { width: 1200, height: 220, axes: true })),
    h("div", { class: "panel" },
      h("h2", {}, "Channels"),
      ch.length === 0 ? h("p", { class: "empty" }, "No channels yet: deploy a plugin and post a message.") :
        h("table", {},
          h("thead", {}, h("tr", {},
            h("th", {}, "Channel"), h("th", {}, "Handlers"), h("th", {}, "Status"),
            h("th", { class: "num" }, "Queued"), h("th", { class: "num" }, "Scheduled"), h("th", { class: "num" }, "Retrying"),
            h("th", { class: "num" }, "Running"), h("th", { class: "num" }, "Dead"),
            gated ? h("th", { class: "num", title: "due jobs its flow rules hold on this host" }, "Held") : null,
            h("th", {}, `Last ${state.range} min`))),
          h("tbody", {}, ch.map((c) => h("tr", { "data-channel": c.channel },
            h("td", {}, h("a", { href: "#/jobs?channel=" + encodeURIComponent(c.channel) }, c.channel)),
            h("td", { class: "muted" }, c.handlers.join(", ") || "–"),
            h("td", {}, channelStatus(c)),
            h("td", { class: "num" }, counted(c, "queued")),
            h("td", { class: "num" }, counted(c, "scheduled")),
            h("td", { class: "num" }, counted(c, "retrying")),
            h("td", { class: "num" }, counted(c, "running")),
            h("td", { class: "num" }, c.dead ? h("a", { href: "#/dead?channel=" + encodeURIComponent(c.channel) }, counted(c, "dead")) : "0"),
            gated ? h("td", { class: "num" }, held(c)) : null,
            h("td", {}, chart(c.points, o.first_bucket_ms, o.bucket_ms, { width: 180, height: 34, class: "spark" }))))))),
    cronPanel(cron),
    h("p", { class: "muted" }, "Plots show what this daemon handled since it started (in memory, last hour). Counts are read from the store within a fixed budget, so the page costs the same with a million jobs: a count with + is a floor (at least that many; at most " + num(cap) + " are counted)."),
  ];
}

// `[[cron]]` entries with their next fire times (GET /v1/cron); nothing
// when none is configured.
function cronPanel(cron) {
  if (cron.error) return h("div", { class: "panel" }, h("h2", {}, "Cron"), h("p", { class: "muted" }, "Cron records cannot be read now: " + cron.error));
  const list = cron.cron || [];
  if (!list.length) return null;
  const at = (iso) => iso ? when(Date.parse(iso)) : h("span", { class: "muted" }, "–");
  return h("div", { class: "panel cron" },
    h("h2", {}, "Cron"),
    h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "Schedule"), h("th", {}, "Channel"), h("th", {}, "Next fire"),
        h("th", {}, "Then"), h("th", {}, "Last tick"), h("th", { class: "num" }, "Fired"), h("th", { class: "num" }, "Skipped"))),
      h("tbody", {}, list.map((c) => h("tr", { "data-cron": c.name },
        h("td", {}, h("strong", {}, c.name)),
        h("td", { class: "mono" }, c.schedule, h("span", { class: "muted" }, " " + c.time_zone)),
        h("td", {}, h("a", { href: "#/jobs?channel=" + encodeURIComponent(c.channel) }, c.channel)),
        h("td", { class: "next" }, at(c.next[0])),
        h("td", { class: "muted" }, c.next.slice(1, 3).map((t) => t.replace("T", " ").replace(/(:00)?Z$/, " UTC")).join(", ")),
        h("td", { title: c.last_message_id || "" }, at(c.last_tick)),
        h("td", { class: "num" }, num(c.fired)),
        h("td", { class: "num" }, num(c.skipped)))))));
}

function card(label, value, note, cls) {
  return h("div", { class: "card " + (cls || "") }, h("div", { class: "label" }, label), h("div", { class: "value" }, value), h("div", { class: "note" }, note));
}

function channelStatus(c) {
  if (c.paused) return h("span", { class: "badge st-paused" }, "paused");
  if (c.waiting_for_mapper) return h("span", { class: "badge st-paused", title: "its mapper is not loaded" }, "waiting for mapper");
  if (!c.handlers.length) return h("span", { class: "badge", title: "no handler loaded for this channel" }, "no handler");
  return h("span", { class: "badge st-serving" }, "serving");
}

function jobsTable(jobs, now, opts) {
  if (!jobs.length) return h("p", { class: "empty" }, opts.empty);
  return h("table", {},
    h("thead", {}, h("tr", {},
      h("th", {}, "Job"), h("th", {}, "Channel"), h("th", {}, "Handler"), h("th", {}, "State"),
      h("th", { class: "num" }, "Attempts"), h("th", {}, "Progress"), h("th", {}, "Created"), h("th", {}, "Updated"),
      h("th", {}, opts.dead ? "Error" : "Last error"), opts.dead ? h("th", {}, "") : null)),
    h("tbody", {}, jobs.map((j) => h("tr", { "data-job": j.id },
      h("td", {}, jobLink(j.id)),
      h("td", {}, j.channel),
      h("td", { class: "muted" }, j.handler || "–"),
      h("td", {}, badge(j.state)),
      h("td", { class: "num" }, j.attempts + (j.slices ? ` (${j.slices} slices)` : "")),
      h("td", {}, progress(j.progress), " ", j.progress === null ? "" : j.progress + "%"),
      h("td", {}, when(j.created_at, now)),
      h("td", {}, when(j.updated_at, now)),
      h("td", { class: "err", title: j.last_error || "" }, j.last_error || ""),
      opts.dead ? h("td", {}, h("button", { type: "button", class: "replay", onclick: () => replay(j.id) }, "Replay")) : null))));
}

async function replay(id) {
  try {
    await api("POST", "/v1/dead-letters/" + encodeURIComponent(id) + "/replay");
    toast("Replayed job " + short(id));
  } catch (e) { toast("Replay failed: " + e.message, true); }
  refresh();
}

async function channelOptions(selected) {
  const o = await api("GET", "/v1/dashboard/channels");
  return [h("option", { value: "" }, "all channels"), o.channels.map((c) => h("option", { value: c, selected: c === selected }, c))];
}

async function jobsPage(params) {
  const st = params.get("state") || "", channel = params.get("channel") || "", before = params.get("before") || "";
  const q = new URLSearchParams({ limit: "50" });
  if (st) q.set("state", st);
  if (channel) q.set("channel", channel);
  if (before) q.set("before", before);
  const [page, options] = await Promise.all([api("GET", "/v1/jobs?" + q), channelOptions(channel)]);
  const now = Date.now();
  const stateSel = h("select", { id: "f-state", onchange: (e) => setHash("jobs", { state: e.target.value, channel }) },
    h("option", { value: "" }, "any state"), STATES.map((x) => h("option", { value: x, selected: x === st }, x)));
  const chanSel = h("select", { id: "f-channel", onchange: (e) => setHash("jobs", { state: st, channel: e.target.value }) }, options);
  const next = page.next ? new URLSearchParams(page.next.split("?")[1]).get("before") : null;
  return [
    h("h1", {}, "Jobs"),
    h("p", { class: "sub" }, "Newest first, 50 a page." + (before ? " Older page." : " Live.")),
    h("div", { class: "filters" }, stateSel, chanSel, before ? h("a", { href: "#/jobs?" + new URLSearchParams({ state: st, channel }) }, "← newest") : null),
    h("div", { class: "panel" }, jobsTable(page.jobs, now, { empty: "No jobs match." }),
      h("div", { class: "pager" }, next ? h("a", { href: "#/jobs?" + new URLSearchParams({ state: st, channel, before: next }) }, "Older →") : null)),
  ];
}

async function deadPage(params) {
  const channel = params.get("channel") || "", before = params.get("before") || "";
  const q = new URLSearchParams({ limit: "50" });
  if (channel) q.set("channel", channel);
  if (before) q.set("before", before);
  const [page, options] = await Promise.all([api("GET", "/v1/dead-letters?" + q), channelOptions(channel)]);
  const next = page.next ? new URLSearchParams(page.next.split("?")[1]).get("before") : null;
  const replayAll = confirmButton("Replay all", "Click again to replay every dead letter", async () => {
    try {
      const r = await api("POST", "/v1/dead-letters/replay");
      toast("Replayed " + r.replayed.length + " dead letters");
    } catch (e) { toast("Replay failed: " + e.message, true); }
    refresh();
  }, "replay-all");
  if (!page.jobs.length) replayAll.disabled = true;
  return [
    h("div", { class: "row spread" }, h("div", {}, h("h1", {}, "Dead letters"),
      h("p", { class: "sub" }, "Jobs that gave up, with the reason. Replay puts a job back in the queue with fresh attempts.")), replayAll),
    h("div", { class: "filters" }, h("select", { id: "f-channel", onchange: (e) => setHash("dead", { channel: e.target.value }) }, options)),
    h("div", { class: "panel" }, jobsTable(page.jobs, Date.now(), { dead: true, empty: "No dead letters. Nothing to do here." }),
      h("div", { class: "pager" }, next ? h("a", { href: "#/dead?" + new URLSearchParams({ channel, before: next }) }, "Older →") : null)),
  ];
}

async function jobPage(id) {
  const d = await api("GET", "/v1/dashboard/jobs/" + encodeURIComponent(id));
  const j = d.job, now = Date.now();
  if (d.transport) setTransport(d.transport);
  const waiting = ["queued", "scheduled", "retrying"].includes(j.state);
  const actions = h("div", { class: "row" },
    j.state === "dead" ? h("button", { type: "button", class: "primary replay", onclick: () => replay(j.id) }, "Replay") : null,
    waiting || (j.state === "running" && d.running_here) ? confirmButton("Cancel", "Click again to cancel", async () => {
      try {
        await api("DELETE", "/v1/jobs/" + encodeURIComponent(j.id));
        toast("Cancelled job " + short(j.id));
      } catch (e) { toast("Cancel failed: " + e.message, true); }
      refresh();
    }, "cancel") : null);
  const field = (k, v) => h("div", { class: "field" }, h("span", { class: "k" }, k), h("span", { class: "v" }, v));
  const pct = j.progress;
  return [
    h("div", { class: "row spread" },
      h("div", {}, h("h1", {}, "Job ", h("span", { class: "mono" }, j.id)),
        h("p", { class: "sub" }, badge(j.state), " on ", h("a", { href: "#/jobs?channel=" + encodeURIComponent(j.channel) }, j.channel),
          j.handler ? " · handled by " + j.handler : "", d.remote ? " · recorded by another host" : "")),
      actions),
    h("div", { class: "panel" },
      h("div", { class: "row spread" }, h("h2", {}, "Progress"),
        h("span", { class: "muted" }, pct === null ? "no progress reported" : pct + "%" + (j.progress_note ? " · " + j.progress_note : "") +
          (j.estimate_ms && j.state !== "succeeded" ? " · about " + duration(j.estimate_ms) + " left" : ""))),
      progress(pct, true)),
    j.waiting ? h("div", { class: "panel waiting" }, h("h2", {}, "Why it has not started"), h("p", {}, h("span", { class: "badge st-paused" }, "held"), " ", j.waiting.replace(/^waiting: /, "")),
      h("p", { class: "muted" }, "Its handler's flow rules ([plugin.NAME] concurrency keys and rate limits) hold it; it starts when the key or the rate frees up.")) : null,
    j.last_error && !(j.waiting && j.last_error === j.waiting) ? h("div", { class: "panel" }, h("h2", {}, j.state === "dead" ? "Why it is dead" : "Last error"), h("pre", { class: "error" }, j.last_error)) : null,
    h("div", { class: "panel" }, h("h2", {}, "Details"),
      h("div", { class: "grid" },
        field("Message", h("span", { class: "mono" }, j.message_id)),
        field("Kind", j.kind),
        field("Attempts", String(j.attempts)),
        field("Slices", String(j.slices)),
        field("Replays", String(j.replays)),
        field("Plugin version", j.plugin_version || "–"),
        field("Plugin hash", d.plugin_hash ? h("span", { class: "mono", title: d.plugin_hash }, d.plugin_hash.slice(0, 16) + "…") : "–"),
        field("Fuel used", h("span", { title: num(j.fuel_used) }, fuel(j.fuel_used))),
        field("Created", when(j.created_at, now)),
        field("Runs from", when(j.visible_at, now)),
        field("Started", when(j.started_at, now)),
        field("Finished", when(j.finished_at, now)),
        field("Took", j.finished_at && j.started_at ? duration(j.finished_at - j.started_at) : "–"),
        field("Updated", when(j.updated_at, now)),
        field("Expires", when(j.expires_at, now)),
        field("Cursor", d.cursor || "–"),
        field("State conflicts", String(j.conflicts || 0)),
        j.cron ? field("Cron tick", h("span", { class: "mono" }, j.cron)) : null,
        j.unique ? field("Unique key", h("span", { class: "mono" }, j.unique)) : null,
        j.debounce ? field("Debounce key", h("span", { class: "mono" }, j.debounce)) : null)),
    d.remote ? null : h("div", { class: "two" },
      h("div", { class: "panel" }, h("h2", {}, "Result"),
        d.result === null || d.result === undefined ? h("p", { class: "muted" }, j.state === "succeeded" ? "No result." : "Not finished.") :
          [h("pre", { class: "result" }, pretty(d.result)), d.result_cut ? h("p", { class: "muted" }, "Cut at 64 KiB: ", h("a", { href: "/v1/jobs/" + encodeURIComponent(j.id) + "/result" }, "whole result")) : null]),
      h("div", { class: "panel" }, h("h2", {}, "Message"),
        d.headers.length ? h("table", {}, h("tbody", {}, d.headers.map(([k, v]) => h("tr", {}, h("td", { class: "mono" }, k), h("td", { class: "mono" }, v))))) : null,
        h("pre", { class: "body" }, pretty(d.body)), d.body_cut ? h("p", { class: "muted" }, "Cut at 64 KiB.") : null)),
    d.remote ? null : h("div", { class: "panel" }, h("h2", {}, "Messages it posted"),
      d.posts.length === 0 ? h("p", { class: "empty" }, "None.") :
        h("table", {},
          h("thead", {}, h("tr", {}, h("th", {}, "Message"), h("th", {}, "Channel"), h("th", {}, "Job"), h("th", {}, "Handler"), h("th", {}, "State"), h("th", {}, "Posted"))),
          h("tbody", {}, d.posts.map((p) => h("tr", {},
            h("td", { class: "mono", title: p.message_id }, short(p.message_id)),
            h("td", {}, p.channel, p.continuation ? h("span", { class: "muted" }, " (next slice)") : ""),
            h("td", {}, p.job_id ? jobLink(p.job_id) : h("span", { class: "muted" }, p.sent_at ? "published" : "in outbox")),
            h("td", { class: "muted" }, p.handler || "–"),
            h("td", {}, p.state ? badge(p.state) : "–"),
            h("td", {}, when(p.created_at, now)))))),
      d.more_posts ? h("p", { class: "muted" }, "Showing the first 500.") : null),
  ];
}

function pretty(text) {
  try { return JSON.stringify(JSON.parse(text), null, 2); } catch (_) { return text; }
}

async function pluginsPage() {
  const [p, o] = await Promise.all([api("GET", "/v1/plugins"), api("GET", "/v1/dashboard/overview?minutes=1")]);
  setTransport(o.transport);
  const limit = (inForce, asked, f) => h("span", { title: asked === null || asked === undefined ? "not asked: the operator's ceiling" : "asked " + f(asked) },
    f(inForce), asked !== null && asked !== undefined && asked > inForce ? h("span", { class: "badge st-retrying", title: "asked " + f(asked) + ", capped by the operator" }, " capped") : "");
  const errors = p.files.filter((f) => f.error);
  return [
    h("h1", {}, "Plugins"),
    h("p", { class: "sub" }, "What this daemon serves now. Limits are in force per call; hover for what the plugin asked."),
    errors.length ? h("div", { class: "panel" }, h("h2", {}, "Files that did not load"),
      h("table", {}, h("tbody", {}, errors.map((f) => h("tr", {}, h("td", { class: "mono" }, f.path), h("td", {}, h("pre", { class: "error" }, f.error))))))) : null,
    h("div", { class: "panel" },
      p.plugins.length === 0 ? h("p", { class: "empty" }, "No plugins loaded.") :
        h("table", {},
          h("thead", {}, h("tr", {}, h("th", {}, "Plugin"), h("th", {}, "Version"), h("th", {}, "Kind"), h("th", {}, "Channels"), h("th", {}, "Hash"),
            h("th", { class: "num" }, "Fuel"), h("th", { class: "num" }, "Memory"), h("th", { class: "num" }, "Timeout"),
            h("th", { class: "num" }, "Calls"), h("th", { class: "num" }, "Fuel per job"), h("th", { class: "num" }, "Avg time"))),
          h("tbody", {}, p.plugins.map((x) => {
            const t = o.handlers[x.name];
            return h("tr", {},
              h("td", {}, h("strong", {}, x.name)),
              h("td", {}, x.version),
              h("td", {}, x.kind),
              h("td", {}, x.channels.map((c, i) => [i ? ", " : "", h("a", { href: "#/jobs?channel=" + encodeURIComponent(c) }, c)])),
              h("td", { class: "mono", title: x.hash }, x.hash.slice(0, 12)),
              h("td", { class: "num" }, limit(x.limits.fuel, x.asked.fuel, fuel)),
              h("td", { class: "num" }, limit(x.limits.memory_bytes, x.asked.memory_bytes, bytes)),
              h("td", { class: "num" }, limit(x.limits.timeout_ms, x.asked.timeout_ms, duration)),
              h("td", { class: "num" }, t ? num(t.calls) : "–"),
              h("td", { class: "num" }, t && t.calls ? fuel(Math.round(t.fuel / t.calls)) : "–"),
              h("td", { class: "num" }, t && t.calls ? duration(Math.round(t.seconds * 1000 / t.calls)) : "–"));
          })))),
    h("p", { class: "muted" }, "Calls, fuel per job and time are this daemon's since it started."),
  ];
}

async function channelsPage() {
  const o = await api("GET", "/v1/dashboard/overview?minutes=" + state.range);
  setTransport(o.transport);
  const toggle = (c) => h("button", {
    type: "button", class: c.paused ? "primary resume" : "pause", "data-channel": c.channel,
    onclick: async (e) => {
      e.target.disabled = true;
      try {
        await api("POST", "/v1/channels/" + encodeURIComponent(c.channel) + (c.paused ? "/resume" : "/pause"));
        toast((c.paused ? "Resumed " : "Paused ") + c.channel);
      } catch (err) { toast("Failed: " + err.message, true); }
      refresh();
    },
  }, c.paused ? "Resume" : "Pause");
  return [
    h("h1", {}, "Channels"),
    h("p", { class: "sub" }, "Pausing a channel stops its pumps fetching: running jobs finish, messages stay queued. Pauses last until resumed or the daemon restarts."),
    h("div", { class: "panel" }, o.channels.length === 0 ? h("p", { class: "empty" }, "No channels.") :
      h("table", {},
        h("thead", {}, h("tr", {}, h("th", {}, "Channel"), h("th", {}, "Handlers"), h("th", {}, "Status"), h("th", { class: "num" }, "Waiting"),
          h("th", { class: "num" }, "Running"), h("th", { class: "num" }, "Dead"), h("th", {}, `Last ${state.range} min`), h("th", {}, ""))),
        h("tbody", {}, o.channels.map((c) => h("tr", { "data-channel": c.channel },
          h("td", {}, h("a", { href: "#/jobs?channel=" + encodeURIComponent(c.channel) }, c.channel)),
          h("td", { class: "muted" }, c.handlers.join(", ") || "–"),
          h("td", {}, channelStatus(c)),
          h("td", { class: "num" }, counted(c, "queued", "scheduled", "retrying")),
          h("td", { class: "num" }, counted(c, "running")),
          h("td", { class: "num" }, counted(c, "dead")),
          h("td", {}, chart(c.points, o.first_bucket_ms, o.bucket_ms, { width: 180, height: 34, class: "spark" })),
          h("td", {}, c.handlers.length || c.paused ? toggle(c) : null)))))),
  ];
}

function loginPage(message) {
  const input = h("input", { type: "password", id: "token", autocomplete: "current-password", placeholder: "bearer token" });
  const form = h("form", { class: "panel login", onsubmit: (e) => {
    e.preventDefault();
    sessionStorage.setItem("sluice-token", input.value.trim());
    refresh();
  } },
  h("h1", {}, "Sign in"),
  h("p", { class: "sub" }, message || "This daemon's API needs its token ([http] token or SLUICE_HTTP_TOKEN). It is kept in this tab only."),
  input, h("button", { type: "submit", class: "primary" }, "Open the dashboard"));
  return [form];
}

function setTransport(t) {
  const el = document.getElementById("transport");
  if (el) el.textContent = t === "jetstream" ? "JetStream" : "embedded queue";
}

// ---------------------------------------------------------------- loop

async function refresh() {
  if (state.busy) return;
  state.busy = true;
  const r = route();
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.dataset.page === (r.page === "job" ? "jobs" : r.page));
  }
  const main = document.getElementById("main");
  let content;
  try {
    switch (r.page) {
      case "overview": content = await overviewPage(); break;
      case "jobs": content = await jobsPage(r.params); break;
      case "job": content = await jobPage(r.id); break;
      case "dead": content = await deadPage(r.params); break;
      case "plugins": content = await pluginsPage(); break;
      case "channels": content = await channelsPage(); break;
      default: content = [h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/" }, "Back to the overview"))];
    }
    main.dataset.page = r.page;
  } catch (e) {
    if (e instanceof Unauthorized) {
      content = loginPage(token() ? "That token was refused. Try again." : null);
      sessionStorage.removeItem("sluice-token");
      main.dataset.page = "login";
    } else {
      content = [h("div", { class: "panel" }, h("h2", {}, "Could not load this page"), h("pre", { class: "error" }, e.message))];
      main.dataset.page = "error";
    }
  } finally {
    state.busy = false;
  }
  // Keep a half-typed token, an open select or a button waiting for its
  // confirming click: no refresh under the user.
  const focused = document.activeElement;
  const same = main.dataset.rendered === location.hash;
  if (focused && main.contains(focused) && (focused.tagName === "INPUT" || focused.tagName === "SELECT") && same) return;
  if (same && main.querySelector("button.armed")) return;
  main.replaceChildren(...content.flat(Infinity).filter(Boolean));
  main.dataset.rendered = location.hash;
  main.dataset.loadedAt = String(Date.now());
}

function schedule() {
  clearInterval(state.timer);
  state.timer = setInterval(() => {
    const r = route();
    const older = r.params.get("before");
    if (state.live && !document.hidden && !older && document.getElementById("main").dataset.page !== "login") refresh();
  }, REFRESH_MS);
}

function start() {
  // A token can come in the URL fragment (never sent to the server):
  // http://host:port/#token=... ; it is moved to sessionStorage at once.
  const m = location.hash.match(/^#token=(.*)$/);
  if (m) {
    sessionStorage.setItem("sluice-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + "#/");
  }
  const live = document.getElementById("live");
  live.addEventListener("click", () => {
    state.live = !state.live;
    live.classList.toggle("on", state.live);
    live.textContent = state.live ? "Live" : "Paused";
  });
  window.addEventListener("hashchange", refresh);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
  refresh();
  schedule();
}

document.addEventListener("DOMContentLoaded", start);
