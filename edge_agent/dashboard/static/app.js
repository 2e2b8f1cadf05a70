// edge-agent dashboard: renders the snapshots the server pushes over server-sent events (/api/events).
// No framework: tables and the pipeline picture are rebuilt from each snapshot; chart elements are kept
// (keyed by deployment / stream name) and updated in place with Plotly.react.
"use strict";

const $ = (sel) => document.querySelector(sel);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;",
  '"': "&quot;", "'": "&#39;"}[c]));
const fmt = (v, digits = 1, unit = "") => (v === null || v === undefined) ? "–" :
  `${Number(v).toLocaleString(undefined, {maximumFractionDigits: digits, minimumFractionDigits: digits})}${unit}`;
const clock = (ts) => ts ? new Date(ts * 1000).toLocaleTimeString([], {hour12: false}) : "–";
const flop = (mflop) => mflop === null || mflop === undefined ? null :
  (mflop >= 1000 ? `${fmt(mflop / 1000, 2)} GFLOP` : `${fmt(mflop, 1)} MFLOP`);
const shape = (s) => Array.isArray(s) ? s.join("×") : esc(s);

// The write token comes in the URL fragment (never sent to a server); kept for this tab only.
const token = (() => {
  const m = location.hash.match(/token=([A-Za-z0-9_-]+)/);
  if (m) { sessionStorage.setItem("edgeDashToken", m[1]); history.replaceState(null, "", location.pathname); }
  return sessionStorage.getItem("edgeDashToken") || "";
})();

let last = null;

function statusClass(s) { return esc(String(s || "unknown").toLowerCase()); }

function renderSummary(snap) {
  const s = snap.summary;
  $("#fleet-name").textContent = snap.fleet;
  $("#broker").textContent = `broker ${snap.broker}`;
  const access = $("#access");
  const canWrite = snap.write && token;
  access.textContent = canWrite ? "operator" : (snap.write ? "read-only (no token)" : "read-only");
  access.classList.toggle("write", !!canWrite);
  $("#s-devices").textContent = `${s.devices_online} / ${s.devices}`;
  $("#s-gflops").textContent = `${fmt(s.gflops_online, 0)} GFLOP/s measured, online`;
  $("#s-deployments").textContent = s.deployments;
  $("#s-streams").textContent = `${s.streams} stream${s.streams === 1 ? "" : "s"}`;
  $("#s-throughput").textContent = fmt(s.throughput_rps, 1, " req/s");
  $("#s-p95").textContent = s.client_p95_ms === null ? "–" : fmt(s.client_p95_ms, 1, " ms");
  $("#s-client").textContent = `${fmt(s.client_rps, 1)} req/s sent by this operator (last ${snap.window_s} s)`;
  $("#s-errors").textContent = s.errors;
}

function renderDevices(snap) {
  const rows = snap.devices.map((d) => {
    const serves = d.serves.map((e) => `<span class="chip ${e.role === "adopted" ? "adopted" : ""}"
      title="${esc(e.backend)} ${esc(e.role)}"><span class="status ${statusClass(e.status)}"></span>
      ${esc(e.model)} v${esc(e.version)} · s${esc(e.stage)}</span>`).join("") || '<span class="muted">–</span>';
    return `<tr data-device="${esc(d.id)}" class="${d.online ? "" : "offline"}">
      <td><b>${esc(d.id)}</b><div class="muted small">v${esc(d.version)} · ${esc(d.peers)} mDNS peers</div></td>
      <td><span class="status ${d.online ? "online" : "offline"}">${d.online ? "online" : "offline"}</span></td>
      <td>${d.mode === "dev" ? '<span class="tag warn">dev</span>' : '<span class="tag good">signed</span>'}</td>
      <td>${esc(d.isa)}</td><td class="num">${esc(d.cores)}</td>
      <td class="num gflops">${fmt(d.gflops, 1)}</td>
      <td class="num">${fmt(d.link_rtt_ms, 2, " ms")}</td>
      <td class="num">${fmt(d.link_mbps, 0, " Mbit/s")}</td>
      <td class="num queue">${fmt(d.queue, 0)}</td>
      <td class="num">${fmt(d.service_ms, 2, " ms")}</td>
      <td class="num served">${fmt(d.served, 0)}</td>
      <td>${serves}</td></tr>`;
  });
  $("#devices tbody").innerHTML = rows.join("") ||
    '<tr><td colspan="12" class="empty">No device has reported yet.</td></tr>';
}

const ARROW = `<svg class="arrow" viewBox="0 0 46 20" aria-hidden="true"><line x1="2" y1="10" x2="36" y2="10"/>
  <path d="M36 4 L45 10 L36 16 Z"/></svg>`;

function pipelineHtml(dep, stages) {
  const inputs = dep.inputs.map((t) => `${esc(t.name)} ${shape(t.shape)}`).join(", ");
  const outputs = dep.outputs.map((t) => `${esc(t.name)} ${shape(t.shape)}`).join(", ");
  const boxes = stages.map((st) => {
    const reps = st.replicas.map((r) => `<div class="replica"><span class="status ${statusClass(r.status)}"
        title="${esc(r.error)}">${esc(r.device)}</span><span class="muted">${esc(r.backend || r.status)}</span></div>`).join("");
    const meta = [st.nodes ? `${st.nodes} nodes` : null, flop(st.mflop),
      st.est_ms !== null ? `est ${fmt(st.est_ms, 1)} ms` : null].filter(Boolean).join(" · ");
    return `<div class="stage" data-stage="${st.index}"><h3>Stage ${st.index}</h3>
      <div class="meta">${meta}</div>${reps}
      <div class="live-fig"><span class="stage-rps">${fmt(st.rps, 1)}</span> req/s ·
        run ${fmt(st.run_ms, 2, " ms")}${st.errors_ps ? ` · <span class="bad">${fmt(st.errors_ps, 2)} err/s</span>` : ""}</div></div>`;
  });
  return `<div class="pipeline"><div class="endpoint" title="${inputs}">in: ${inputs}</div>${ARROW}
    ${boxes.join(ARROW)}${ARROW}<div class="endpoint" title="${outputs}">out: ${outputs}</div></div>`;
}

function historyHtml(dep) {
  if (!dep.history.length) return "";
  const rows = dep.history.map((h) => {
    const gates = Object.entries(h.gates || {}).map(([k, v]) => `${esc(k)}=${esc(v)}`).join(", ");
    return `<tr><td>${clock(h.ts)}</td><td>v${esc(h.version)}</td><td>${esc(h.channel)}</td>
      <td><span class="status ${statusClass(h.status === "deployed" || h.status === "passed" || h.status === "promoted" ? "ready" : h.status)}">${esc(h.status)}</span></td>
      <td>${esc(h.reason)}</td><td class="small">${gates || '<span class="muted">–</span>'}</td></tr>`;
  }).join("");
  return `<details class="history" open><summary>Rollout history (${dep.history.length})</summary>
    <table class="grid"><thead><tr><th>Time</th><th>Version</th><th>Channel</th><th>Status</th><th>Reason</th>
    <th>Gate metrics</th></tr></thead><tbody>${rows}</tbody></table></details>`;
}

const plotLayout = (title, ytitle) => ({
  title: {text: title, font: {size: 13}, x: 0.02, xanchor: "left"},
  margin: {l: 48, r: 12, t: 32, b: 30}, height: 208, showlegend: true,
  legend: {orientation: "h", x: 1, xanchor: "right", y: 1.12, font: {size: 11}},
  xaxis: {type: "date", gridcolor: "#eef1f5", tickfont: {size: 10}},
  yaxis: {title: {text: ytitle, font: {size: 11}}, rangemode: "tozero", gridcolor: "#eef1f5", tickfont: {size: 10}},
  paper_bgcolor: "#fff", plot_bgcolor: "#fff", font: {family: "system-ui, sans-serif", color: "#1d2433"},
});
const plotConfig = {displayModeBar: false, responsive: true};
const times = (series) => series.t.map((t) => new Date(t * 1000));
const line = (x, y, name, color, dash) => ({x, y, name, type: "scatter", mode: "lines",
  line: {color, width: 2, dash: dash || "solid", shape: "spline", smoothing: 0.6}, connectgaps: false});

function drawCharts(el, kind, name, series) {
  if (!window.Plotly || !series) return;
  const x = times(series);
  const a = el.querySelector(".chart.throughput"), b = el.querySelector(".chart.latency");
  if (kind === "deployment") {
    Plotly.react(a, [line(x, series.throughput_rps, "fleet (all clients)", "#2f6fed"),
      line(x, series.client_rps, "this operator", "#8e99ad", "dot")], plotLayout("Throughput", "req/s"), plotConfig);
    Plotly.react(b, [line(x, series.p50_ms, "p50", "#1f9d55"), line(x, series.p95_ms, "p95", "#d68b00")],
      plotLayout("End-to-end latency (this operator)", "ms"), plotConfig);
  } else {
    Plotly.react(a, [line(x, series.fps_in, "in", "#2f6fed"), line(x, series.fps_out, "out", "#1f9d55")],
      plotLayout("Frames per second", "fps"), plotConfig);
    Plotly.react(b, [line(x, series.p50_ms, "p50", "#1f9d55"), line(x, series.p99_ms, "p99", "#d64545")],
      plotLayout("Source-to-sink latency", "ms"), plotConfig);
  }
}

function keyedChild(container, selector, name, make) {
  let el = [...container.querySelectorAll(selector)].find((e) => e.dataset.name === name);
  if (!el) { el = make(); el.dataset.name = name; container.appendChild(el); }
  return el;
}

function pruneChildren(container, selector, names) {
  container.querySelectorAll(selector).forEach((e) => { if (!names.has(e.dataset.name)) e.remove(); });
}

function renderDeployments(snap) {
  const box = $("#deployments");
  const names = new Set(snap.deployments.map((d) => d.name));
  box.querySelector(".empty")?.remove();
  pruneChildren(box, ".deployment", names);
  if (!snap.deployments.length) { box.innerHTML = '<p class="empty">No deployment yet.</p>'; return; }
  for (const dep of snap.deployments) {
    const el = keyedChild(box, ".deployment", dep.name, () => {
      const d = document.createElement("div");
      d.className = "deployment";
      d.innerHTML = `<div class="dep-head"></div><div class="dep-pipe"></div>
        <div class="charts"><div class="chart throughput"></div><div class="chart latency"></div></div>
        <div class="dep-history"></div>`;
      return d;
    });
    const actions = snap.write && token ? `<span class="actions">
      <button data-action="rollback" data-name="${esc(dep.name)}">Roll back</button>
      <button class="danger" data-action="undeploy" data-name="${esc(dep.name)}">Undeploy</button></span>` : "";
    const c = dep.client;
    el.querySelector(".dep-head").innerHTML = `<div><span class="dep-title">${esc(dep.name)}</span>
        <span class="tag">v${esc(dep.version)}</span>
        ${dep.signed ? '<span class="tag good">signed</span>' : '<span class="tag warn">unsigned</span>'}
        ${dep.converged ? '<span class="tag good">all stages ready</span>' : '<span class="tag warn">converging</span>'}
        ${dep.replicas > 1 ? `<span class="tag">${esc(dep.replicas)} replicas</span>` : ""}
        ${dep.canary ? `<span class="tag warn">canary v${esc(dep.canary.version)}</span>` : ""}</div>
      <div class="dep-figures"><b class="dep-rps">${fmt(dep.throughput_rps, 1)}</b> req/s ·
        p50 <b>${fmt(c.p50_ms, 1)}</b> ms · p95 <b>${fmt(c.p95_ms, 1)}</b> ms
        ${c.errors ? ` · <b class="bad">${c.errors}</b> errors` : ""}${actions}</div>`;
    let pipe = pipelineHtml(dep, dep.stages);
    if (dep.canary) pipe += `<div class="muted small">canary v${esc(dep.canary.version)}</div>` +
      pipelineHtml(dep, dep.canary.stages);
    if (dep.plan && dep.plan.reason) pipe += `<div class="muted small">${esc(dep.plan.reason)}</div>`;
    el.querySelector(".dep-pipe").innerHTML = pipe;
    el.querySelector(".dep-history").innerHTML = historyHtml(dep);
    drawCharts(el, "deployment", dep.name, snap.series?.deployments?.[dep.name]);
  }
}

function renderStreams(snap) {
  const box = $("#streams");
  if (!snap.streams.length) { box.innerHTML = '<p class="empty">No streams.</p>'; return; }
  box.querySelector(".empty")?.remove();
  let table = box.querySelector("table");
  if (!table) {
    table = document.createElement("table");
    table.className = "grid";
    table.innerHTML = `<thead><tr><th>Stream</th><th>Model</th><th>Source → sink</th><th>Policy</th>
      <th>Ingress</th><th class="num">fps in</th><th class="num">fps out</th><th class="num">Dropped</th>
      <th class="num">In flight</th><th class="num">p50</th><th class="num">p99</th></tr></thead><tbody></tbody>`;
    box.prepend(table);
  }
  table.querySelector("tbody").innerHTML = snap.streams.map((s) => `<tr data-stream="${esc(s.name)}">
    <td><b>${esc(s.name)}</b></td><td>${esc(s.model)}</td><td class="small">${esc(s.source)} → ${esc(s.sink)}</td>
    <td>${esc(s.policy)}${s.batch > 1 ? ` · batch ${esc(s.batch)}` : ""}</td><td>${esc(s.ingress_device || "–")}</td>
    <td class="num">${fmt(s.fps_in, 1)}</td><td class="num">${fmt(s.fps_out, 1)}</td>
    <td class="num">${fmt(s.dropped, 0)}</td><td class="num">${fmt(s.in_flight, 0)}</td>
    <td class="num">${fmt(s.p50_ms, 1, " ms")}</td><td class="num">${fmt(s.p99_ms, 1, " ms")}</td></tr>`).join("");
  const names = new Set(snap.streams.map((s) => s.name));
  pruneChildren(box, ".stream-charts", names);
  for (const s of snap.streams) {
    const el = keyedChild(box, ".stream-charts", s.name, () => {
      const d = document.createElement("div");
      d.className = "stream-charts";
      d.innerHTML = `<div class="muted small">${esc(s.name)}</div>
        <div class="charts"><div class="chart throughput"></div><div class="chart latency"></div></div>`;
      return d;
    });
    drawCharts(el, "stream", s.name, snap.series?.streams?.[s.name]);
  }
}

function renderErrors(snap) {
  $("#errors tbody").innerHTML = snap.errors.map((e) => `<tr>
    <td>${clock(e.ts)}</td><td>${esc(e.source)}</td><td>${esc(e.model)}</td><td><code>${esc(e.code)}</code></td>
    <td>${esc(e.device || "")}${e.stage !== null && e.stage !== undefined ? ` stage ${esc(e.stage)}` : ""}</td>
    <td class="msg">${esc(e.message)}</td></tr>`).join("") ||
    '<tr><td colspan="6" class="empty">No errors.</td></tr>';
}

function render(snap) {
  last = snap;
  renderSummary(snap);
  renderDevices(snap);
  renderDeployments(snap);
  renderStreams(snap);
  renderErrors(snap);
  document.body.dataset.updated = String(snap.ts);
}

function toast(text, bad) {
  const t = $("#toast");
  t.textContent = text;
  t.className = `toast${bad ? " bad" : ""}`;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.add("hidden"), 6000);
}

document.addEventListener("click", async (ev) => {
  const btn = ev.target.closest("button[data-action]");
  if (!btn) return;
  const {action, name} = btn.dataset;
  if (!confirm(`${action} ${name}?`)) return;
  btn.disabled = true;
  try {
    const r = await fetch(`/api/deployments/${encodeURIComponent(name)}/${action}`,
      {method: "POST", headers: {"X-Dashboard-Token": token}});
    const body = await r.json();
    toast(body.ok ? body.message : body.error, !body.ok);
  } catch (e) { toast(String(e), true); } finally { btn.disabled = false; }
});

function connect() {
  const live = $("#live"), text = $("#live-text");
  const es = new EventSource("/api/events");
  es.addEventListener("snapshot", (ev) => {
    live.classList.remove("off");
    text.textContent = "live";
    try { render(JSON.parse(ev.data)); } catch (e) { console.error(e); }
  });
  es.onerror = () => { live.classList.add("off"); text.textContent = "reconnecting"; };
}

window.addEventListener("load", connect);
