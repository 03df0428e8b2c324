// meshfed /ui: draws /status's `topology` part (what `meshfed status --json` prints) every 2 seconds.
// Networks with more than GROUP_AT sites are drawn as one box until clicked (a 1,000-site mesh stays readable);
// services come a page at a time (?limit=, ?after=), and ?service= picks one to show the sites behind it.
"use strict";

const POLL_MS = 2000;
const PAGE = 50;
const GROUP_AT = 24;
const SHOW_AT_MOST = 120;
const SVG = "http://www.w3.org/2000/svg";
const state = { service: new URLSearchParams(location.search).get("service") || "", after: null, open: new Set() };

function el(name, attrs, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function h(name, attrs, text) {
  const node = document.createElement(name);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

async function getJSON(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

// /gateways (active probes), when this agent serves it: site -> {alive, latencyMs}.
async function probes() {
  try {
    const doc = await getJSON("/gateways");
    const rows = Array.isArray(doc) ? doc : (doc.gateways || []);
    const out = {};
    for (const g of rows) {
      // latencyMs: {p50, p95, p99, samples} over the last minute (ms); else the last probe's round trip.
      const q = g.latencyMs;
      const latency = q && typeof q === "object" ? q.p50 : (q ?? g.rttMs ?? null);
      const prev = out[g.site];  // a site with several gateways: alive if any is, the best latency
      out[g.site] = { alive: prev && prev.alive ? true : (g.alive ?? null),
                      latencyMs: prev && prev.latencyMs != null && (latency == null || prev.latencyMs < latency) ? prev.latencyMs : latency };
    }
    return out;
  } catch (e) {
    return {};
  }
}

function layout(topo) {
  // One column per network (ours first); inside, sites grouped by locality.
  const nets = Object.keys(topo.networks).sort((a, b) => (a === topo.network ? -1 : b === topo.network ? 1 : a.localeCompare(b)));
  const bySite = new Map();
  const columns = [];
  const colW = 270, boxW = 230, boxH = 40, gap = 10, top = 44;
  let height = 200;
  nets.forEach((net, i) => {
    const x = 40 + i * (colW + 60);
    const sites = topo.sites.filter((s) => s.network === net);
    const grouped = sites.length > GROUP_AT && !state.open.has(net);
    const col = { net, x, w: colW, sites, grouped, items: [] };
    let y = top;
    if (grouped) {
      col.items.push({ kind: "group", x: x + 20, y, w: boxW, h: 70, sites });
      for (const s of sites) bySite.set(s.name, { x: x + 20, y: y + 35, w: boxW, grouped: true });
      y += 80;
    } else {
      const locs = [...new Set(sites.map((s) => s.locality))].sort();
      let shown = 0;
      for (const loc of locs) {
        col.items.push({ kind: "loc", x: x + 20, y: y + 10, text: loc });
        y += 16;
        for (const s of sites.filter((t) => t.locality === loc)) {
          if (shown++ >= SHOW_AT_MOST) break;
          col.items.push({ kind: "site", x: x + 20, y, w: boxW, h: boxH, site: s });
          bySite.set(s.name, { x: x + 20, y: y + boxH / 2, w: boxW });
          y += boxH + gap;
        }
      }
      if (sites.length > SHOW_AT_MOST) {
        col.items.push({ kind: "loc", x: x + 20, y: y + 10, text: `+${sites.length - SHOW_AT_MOST} more (meshfed status --site)` });
        y += 20;
      }
    }
    col.h = y - top + 30;
    height = Math.max(height, y + 20);
    columns.push(col);
  });
  return { columns, bySite, width: 60 + nets.length * (colW + 60), height };
}

function drawMap(topo, backing) {
  const svg = document.getElementById("map");
  const { columns, bySite, width, height } = layout(topo);
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${Math.max(width, 400)} ${height}`);
  svg.setAttribute("width", Math.max(width, 400));
  svg.setAttribute("height", height);
  const links = el("g", { id: "links" });
  const boxes = el("g", { id: "boxes" });
  for (const col of columns) {
    boxes.append(el("rect", { class: "net-box", x: col.x, y: 8, width: col.w, height: col.h + 20, rx: 6 }));
    boxes.append(el("text", { class: "net-title", x: col.x + 10, y: 26 }, `${col.net} (${col.sites.length})`));
    for (const it of col.items) {
      if (it.kind === "loc") boxes.append(el("text", { class: "loc-title", x: it.x, y: it.y }, it.text));
      if (it.kind === "site") boxes.append(siteBox(it, topo, backing));
      if (it.kind === "group") boxes.append(groupBox(it, col.net, backing));
    }
  }
  const here = bySite.get(topo.here);
  const seenGroups = new Set();
  for (const s of topo.sites) {
    if (s.name === topo.here || !here) continue;
    const to = bySite.get(s.name);
    if (!to) continue;
    const cls = s.link.health === "unreachable" ? "unreachable" : s.link.via === "direct" ? "direct" : s.link.via === "none" ? "none" : "ok";
    if (to.grouped) {
      const key = s.network + cls;
      if (seenGroups.has(key)) continue; // one line per network and health for a grouped network
      seenGroups.add(key);
    }
    // Same column: a curve out to the left of the column; another column: from our right edge to its left.
    let d, lx, ly;
    if (Math.abs(to.x - here.x) < 1) {
      const bend = here.x - 30 - Math.min(60, Math.abs(to.y - here.y) / 6);
      d = `M ${here.x} ${here.y} C ${bend} ${here.y}, ${bend} ${to.y}, ${to.x} ${to.y}`;
      lx = bend - 4; ly = (here.y + to.y) / 2;
    } else {
      const [ax, bx] = to.x > here.x ? [here.x + here.w, to.x] : [here.x, to.x + to.w];
      const mid = (ax + bx) / 2;
      d = `M ${ax} ${here.y} C ${mid} ${here.y}, ${mid} ${to.y}, ${bx} ${to.y}`;
      lx = mid; ly = (here.y + to.y) / 2 - 4;
    }
    const line = el("path", { class: "link " + cls, d,
                              "data-link": `${topo.here}->${to.grouped ? "network:" + s.network : s.name}`, "data-health": cls });
    line.append(el("title", {}, `${topo.here} -> ${s.name}: ${s.link.via}, ${s.link.health}` +
      (s.link.latencyMs != null ? `, probe ${s.link.latencyMs} ms` : "") + (s.lagSeconds != null ? `, registry lag ${s.lagSeconds}s` : "")));
    links.append(line);
    if (!to.grouped) {
      const how = s.link.health !== "ok" ? s.link.health : s.link.via === "direct" ? "direct" : "gateway";
      const label = s.link.latencyMs != null ? `${how} ${s.link.latencyMs} ms` : how;
      links.append(el("text", { class: "link-label", x: lx, y: ly, "text-anchor": "middle" }, label));
    }
  }
  svg.append(boxes, links);
}

function siteBox(it, topo, backing) {
  const s = it.site;
  const cls = ["site", s.name === topo.here ? "here" : "", s.link.health === "unreachable" ? "unreachable" : "",
               backing.has(s.name) ? "backs" : ""].join(" ");
  const g = el("g", { class: cls, "data-site": s.name, "data-network": s.network, "data-health": s.link.health });
  g.append(el("rect", { x: it.x, y: it.y, width: it.w, height: it.h }));
  g.append(el("text", { class: "name", x: it.x + 8, y: it.y + 16 }, s.name + (s.name === topo.here ? " (this site)" : "")));
  const gw = s.gateways.length ? "gw " + s.gateways.join(", ") : "no gateway";
  const lag = s.lagSeconds != null ? ` · lag ${seconds(s.lagSeconds)}` + (s.heartbeatOverdue ? " OVERDUE" : "") : "";
  g.append(el("text", { x: it.x + 8, y: it.y + 32 }, `${s.kind} · ${gw}${lag}`));
  const b = backing.get(s.name);
  g.append(el("title", {}, `${s.name}: ${s.network} ${s.locality}, ${s.exports} export(s), link ${s.link.via} ${s.link.health}` +
    (b ? `; ${state.service}: ${b.ready}/${b.endpoints} ready` : "")));
  return g;
}

function seconds(v) {
  return Math.abs(v) < 1 ? `${Math.round(v * 1000)} ms` : `${v.toFixed(1)} s`;
}

function groupBox(it, net, backing) {
  const down = it.sites.filter((s) => s.link.health === "unreachable").length;
  const backs = it.sites.filter((s) => backing.has(s.name)).length;
  const locs = new Set(it.sites.map((s) => s.locality)).size;
  const g = el("g", { class: "group", "data-network-group": net });
  g.append(el("rect", { x: it.x, y: it.y, width: it.w, height: it.h }));
  g.append(el("text", { class: "name", x: it.x + 8, y: it.y + 18 }, `${it.sites.length} sites, ${locs} localities`));
  g.append(el("text", { x: it.x + 8, y: it.y + 36 }, `${down} unreachable` + (backs ? ` · ${backs} back ${state.service}` : "")));
  g.append(el("text", { x: it.x + 8, y: it.y + 54 }, "click to list them"));
  g.addEventListener("click", () => { state.open.add(net); poll(); });
  return g;
}

function drawServices(topo) {
  const body = document.querySelector("#services tbody");
  body.replaceChildren();
  for (const svc of topo.services) {
    const tr = h("tr", { "data-service": svc.service });
    const name = h("td", { class: "svc" }, svc.service);
    name.addEventListener("click", () => choose(svc.service));
    const sites = h("td");
    for (const s of svc.sites) {
      const cls = s.ready === s.endpoints && s.ready > 0 ? "ready-all" : s.ready > 0 ? "ready-some" : "ready-none";
      sites.append(h("span", { class: cls, "data-backing": s.site }, `${s.site} ${s.ready}/${s.endpoints} `));
    }
    tr.append(name, sites);
    body.append(tr);
  }
  const p = topo.page;
  document.getElementById("page").textContent = `${p.shown} of ${p.matched}` + (state.service ? ` matching ${state.service}` : "");
  document.getElementById("next").disabled = !p.next;
  document.getElementById("next").onclick = () => { state.after = p.next; poll(); };
  document.getElementById("prev").disabled = !state.after;
  const detail = document.getElementById("detail");
  detail.replaceChildren();
  if (state.service && topo.services.length === 1) {
    const svc = topo.services[0];
    detail.append(h("h2", {}, svc.service));
    const ul = h("ul");
    for (const s of svc.sites) ul.append(h("li", {}, `${s.site}: ${s.ready} of ${s.endpoints} endpoint(s) ready`));
    detail.append(ul);
  }
}

function backingOf(topo) {
  // The sites behind the chosen service (one service, or every service the glob matched on this page).
  const out = new Map();
  if (!state.service) return out;
  for (const svc of topo.services) for (const s of svc.sites) out.set(s.site, s);
  return out;
}

function choose(service) {
  state.service = service;
  state.after = null;
  document.getElementById("service").value = service;
  history.replaceState(null, "", service ? "?service=" + encodeURIComponent(service) : location.pathname);
  poll();
}

let busy = false;
async function poll() {
  if (busy) return;
  busy = true;
  const q = new URLSearchParams({ limit: String(PAGE) });
  if (state.service) q.set("service", state.service);
  if (state.after) q.set("after", state.after);
  const stateEl = document.getElementById("state");
  try {
    const [doc, probed] = await Promise.all([getJSON("/status?" + q), probes()]);
    const topo = doc.topology;
    for (const s of topo.sites) {
      const p = probed[s.name];
      if (p) { s.link.alive = p.alive; s.link.latencyMs = p.latencyMs; if (p.alive === false) s.link.health = "unreachable"; }
    }
    document.getElementById("site").textContent = `${doc.site} (${doc.network}, ${doc.locality || "-"})`;
    const reg = doc.registry || {};
    stateEl.className = "state" + (reg.stale ? " stale" : "");
    stateEl.textContent = reg.stale ? `registry STALE ${reg.stalenessSeconds ?? ""}s` : reg.synced ? "registry live" : "initial sync pending";
    document.getElementById("counts").textContent = `${topo.sites.length} sites in ${Object.keys(topo.networks).length} networks`;
    drawMap(topo, backingOf(topo));
    drawServices(topo);
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
    document.body.dataset.updated = String(Date.now());
  } catch (e) {
    stateEl.className = "state error";
    stateEl.textContent = "agent unreachable: " + e.message;
  } finally {
    busy = false;
  }
}

document.getElementById("pick").addEventListener("submit", (ev) => { ev.preventDefault(); choose(document.getElementById("service").value.trim()); });
document.getElementById("clear").addEventListener("click", () => choose(""));
document.getElementById("prev").addEventListener("click", () => { state.after = null; poll(); });
document.getElementById("service").value = state.service;
poll();
setInterval(poll, POLL_MS);
