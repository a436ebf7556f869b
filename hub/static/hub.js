// Tapcast hub operator page: refresh nodes, counts, incidents and latest events from
// /api/v1 (four requests per refresh). Each is conditional (If-None-Match with the
// ETag of the last answer): an unchanged answer is a 304 without a body, and the
// table is left as it is. The nodes table refreshes the page (filters, cursor) the
// server rendered, never the whole fleet.
// Same markup (ids, data-testid) as the server-rendered template, so tests can
// address the page before and after a refresh.
"use strict";
(function () {
  const body = document.body;
  const refreshMs = Number(body.dataset.refreshMs) || 3000;
  const latest = Number(body.dataset.latest) || 20;
  const latestIncidents = Number(body.dataset.latestIncidents) || 10;

  function clock(ts) {
    if (ts === null || ts === undefined) return "never";
    return new Date(ts * 1000).toISOString().slice(0, 19).replace("T", " ");
  }
  function cell(tr, text, cls, testid) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    if (testid) td.dataset.testid = testid;
    tr.appendChild(td);
    return td;
  }
  function empty(tbody, cols, text) {
    const tr = document.createElement("tr");
    tr.className = "empty";
    const td = cell(tr, text);
    td.colSpan = cols;
    tbody.appendChild(tr);
  }
  function renderNodes(nodes) {
    const tbody = document.getElementById("nodes-body");
    tbody.replaceChildren();
    if (!nodes.length) return empty(tbody, 7, "No node matches.");
    for (const n of nodes) {
      const tr = document.createElement("tr");
      tr.dataset.testid = "node-row";
      tr.dataset.nodeId = n.node_id;
      cell(tr, n.node_id, "mono");
      const badge = document.createElement("span");
      badge.className = "badge " + n.status;
      badge.dataset.testid = "node-status";
      badge.textContent = n.status;
      cell(tr, "").appendChild(badge);
      cell(tr, clock(n.last_seen), null, "node-last-seen");
      cell(tr, n.zone || "");
      cell(tr, n.version || "");
      cell(tr, n.outbox_depth === null ? "" : String(n.outbox_depth), null, "node-queue-depth");
      cell(tr, String(n.events.total));
      tbody.appendChild(tr);
    }
  }
  function renderNodeTotals(totals) {
    document.getElementById("nodes-total").textContent = totals.total;
    document.getElementById("nodes-online").textContent = totals.online;
    document.getElementById("nodes-offline").textContent = totals.offline;
  }
  function renderCounts(events) {
    const byKind = events.by_kind;
    document.getElementById("count-taps").textContent = byKind.tap || 0;
    document.getElementById("count-auth-ok").textContent = events.auth_ok;
    document.getElementById("count-auth-rejected").textContent = events.auth_rejected;
    document.getElementById("count-deliveries").textContent = byKind.delivery || 0;
    document.getElementById("count-delivery-failed").textContent = byKind.delivery_failed || 0;
  }
  function renderEvents(events) {
    const tbody = document.getElementById("events-body");
    tbody.replaceChildren();
    if (!events.length) return empty(tbody, 5, "No events yet.");
    for (const e of events) {
      const tr = document.createElement("tr");
      tr.dataset.testid = "event-row";
      tr.dataset.kind = e.kind;
      cell(tr, clock(e.ts));
      cell(tr, e.node_id, "mono");
      cell(tr, String(e.seq));
      cell(tr, e.kind);
      cell(tr, JSON.stringify(e.data), "mono details");
      tbody.appendChild(tr);
    }
  }
  function renderIncidents(totals, incidents) {
    let count = 0;
    for (const [kind, n] of Object.entries(totals)) {
      if (kind !== "quarantined_batches") count += n;
    }
    for (const el of document.querySelectorAll("[data-incident-total]")) {
      el.textContent = totals[el.dataset.incidentTotal] || 0;
    }
    const flag = document.getElementById("incidents-flag");
    document.getElementById("incidents-flag-count").textContent = count;
    flag.lastChild.textContent = count === 1 ? " incident" : " incidents";
    flag.hidden = count === 0;
    document.getElementById("incidents").classList.toggle("alert", count > 0);
    const tbody = document.getElementById("incidents-body");
    tbody.replaceChildren();
    if (!incidents.length) {
      empty(tbody, 5, "No incidents.");
      tbody.lastChild.dataset.testid = "no-incidents";
      return;
    }
    for (const i of incidents) {
      const tr = document.createElement("tr");
      tr.dataset.testid = "incident-row";
      tr.dataset.kind = i.kind;
      tr.dataset.incidentId = i.id;
      cell(tr, clock(i.at));
      cell(tr, i.node_id, "mono", "incident-node");
      cell(tr, i.kind, null, "incident-kind");
      cell(tr, String(i.count), null, "incident-count");
      cell(tr, i.detail, "details", "incident-detail");
      tbody.appendChild(tr);
    }
  }
  const etags = new Map();  // url -> ETag of the last answer rendered
  // The JSON at url, or null when it is unchanged since the last call (304).
  async function getJson(url) {
    const headers = { Accept: "application/json" };
    if (etags.has(url)) headers["If-None-Match"] = etags.get(url);
    // no-store: the browser's cache stays out of it, so a 304 reaches this code
    const r = await fetch(url, { headers, cache: "no-store" });
    if (r.status === 304) return null;
    if (r.status === 401) {  // signed out or token revoked: the reload shows the form
      window.location.reload();
      throw new Error("signed out");
    }
    if (!r.ok) throw new Error(url + ": HTTP " + r.status);
    const body = await r.json();
    if (r.headers.get("ETag")) etags.set(url, r.headers.get("ETag"));
    return body;
  }
  function nodesUrl() {
    const table = document.getElementById("nodes-table");
    const params = new URLSearchParams(JSON.parse(table.dataset.filters || "{}"));
    if (table.dataset.cursor) params.set("cursor", table.dataset.cursor);
    params.set("limit", table.dataset.limit || "50");
    return "/api/v1/nodes?" + params.toString();
  }
  let lastIncidents = null, lastIncidentTotals = null;
  async function refresh() {
    const err = document.getElementById("refresh-error");
    try {
      const [nodes, stats, events, incidents] = await Promise.all([
        getJson(nodesUrl()), getJson("/api/v1/stats"),
        getJson("/api/v1/events?limit=" + latest),
        getJson("/api/v1/incidents?limit=" + latestIncidents)]);
      if (nodes) renderNodes(nodes.nodes);
      if (stats) {
        renderNodeTotals(stats.nodes);
        renderCounts(stats.events);
      }
      if (stats || incidents) {
        lastIncidents = incidents ? incidents.incidents : lastIncidents;
        lastIncidentTotals = stats ? stats.incidents : lastIncidentTotals;
        if (lastIncidents && lastIncidentTotals) renderIncidents(lastIncidentTotals, lastIncidents);
      }
      if (events) renderEvents(events.events);
      document.getElementById("last-refresh").textContent = clock(Date.now() / 1000);
      err.hidden = true;
    } catch (e) {
      err.textContent = "refresh failed: " + e.message;
      err.hidden = false;
    } finally {
      setTimeout(refresh, refreshMs);
    }
  }
  setTimeout(refresh, refreshMs);
})();
