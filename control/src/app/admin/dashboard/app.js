// The federation dashboard: polls state.json (relative to this page, so
// the same file works on a control plane's admin port and behind
// `isthmus dashboard`) and redraws. Plain DOM and inline SVG; text always
// goes in through textContent, never as markup.
"use strict";
(function () {
  const POLL_MS = 1000;
  const SVG_NS = "http://www.w3.org/2000/svg";

  function el(tag, attrs, ...children) {
    return build(document.createElement(tag), attrs, children);
  }
  function svg(tag, attrs, ...children) {
    return build(document.createElementNS(SVG_NS, tag), attrs, children);
  }
  function build(node, attrs, children) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) node.setAttribute(k, String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
    }
    return node;
  }
  function show(id, ...nodes) {
    document.getElementById(id).replaceChildren(...nodes.flat().filter((n) => n !== null && n !== undefined));
  }

  function shortHost(h) {
    return String(h).replace(/\.svc\.cluster(set)?\.local$/, "");
  }
  function rate(r) {
    if (r >= 100) return r.toFixed(0);
    if (r >= 10) return r.toFixed(1);
    return r.toFixed(2);
  }
  function pct(s) {
    if (s === null || s === undefined) return "n/a";
    const p = s * 100;
    return (p >= 99.95 ? "100" : p.toFixed(1)) + "%";
  }
  function successClass(s) {
    if (s === null || s === undefined) return "#7b8794";
    if (s >= 0.99) return "#1f8a4c";
    if (s >= 0.95) return "#c77700";
    return "#c62828";
  }
  function time(ms) {
    return ms ? new Date(ms).toLocaleTimeString() : "-";
  }

  function renderSources(st) {
    show("updated", "updated " + time(st.generatedAtMs));
    show("sources", (st.sources || []).map((s) =>
      el("span", { class: "chip " + (s.ok ? "ok" : "bad"), title: s.error || s.address || "", "data-source": s.cluster || s.address },
        (s.cluster || s.address) + (s.ok ? "" : " (not answering)"))));
  }

  function renderClusters(st) {
    const clusters = st.clusters || [];
    if (clusters.length === 0) {
      show("clusters", el("p", { class: "muted" }, "No clusters in the registry (yet)."));
      return;
    }
    show("clusters", clusters.map((c) => {
      const lease = c.lease + (c.leaseRenewedAt !== null && c.leaseRenewedAt !== undefined ? " (renewed at #" + c.leaseRenewedAt + ")" : "");
      return el("div", {
        class: "card health-" + c.health, "data-cluster": c.id, "data-health": c.health, "data-lease": c.lease,
      },
      el("h3", {}, el("span", {}, c.id), el("span", { class: "badge health-" + c.health }, c.health.toUpperCase())),
      el("dl", { class: "kv" },
        el("dt", {}, "lease"), el("dd", { class: "lease" }, lease),
        el("dt", {}, "control plane"), el("dd", {}, c.control + (c.raftRole ? ", raft " + c.raftRole : "")),
        el("dt", {}, "network"), el("dd", {}, c.network),
        el("dt", {}, "locality"), el("dd", {}, c.locality || "-"),
        el("dt", {}, "exports"), el("dd", {}, c.services + " services, " + c.endpoints + " endpoints")));
    }));
  }

  function renderRaft(st) {
    const r = st.raft || { members: [] };
    const head = r.leader
      ? el("p", { id: "raft-leader", "data-leader": r.leader }, "Leader ", el("strong", {}, r.leader), ", term " + r.term + ", commit index " + r.commit)
      : el("p", { id: "raft-leader", class: "unavail" }, "No leader known: the registry cannot take writes until a quorum elects one.");
    const rows = (r.members || []).map((m) => el("tr", { "data-member": m.name },
      el("td", {}, m.name), el("td", {}, m.role || "-"), el("td", {}, m.applied ?? "-"),
      el("td", {}, m.lag === null || m.lag === undefined ? "-" : String(m.lag)), el("td", {}, m.state || "-")));
    show("raft", head, el("table", { class: "grid" },
      el("tr", {}, ["member", "role", "applied", "lag (entries)", "replication"].map((h) => el("th", {}, h))), rows));
  }

  // Callers on the left, services on the right, one curve per edge.
  function renderGraph(st) {
    const t = st.traffic || { edges: [] };
    const window = t.windowSecs ? "rates over the last " + t.windowSecs.toFixed(1) + " s" : "rates need two scrapes; measuring";
    show("traffic-meta", window + "; " + t.scraped + "/" + t.targets + " proxies scraped",
      (t.errors || []).length ? el("details", {}, el("summary", {}, t.errors.length + " scrape errors"),
        el("ul", {}, t.errors.map((e) => el("li", {}, e)))) : null);

    const edges = new Map();
    for (const e of t.edges || []) {
      const from = e.source + (e.sourceCluster ? " @ " + e.sourceCluster : "");
      const key = from + "\u0000" + e.destination;
      const prev = edges.get(key) || { from, to: e.destination, rps: 0, errors: 0, http: false };
      prev.rps += e.rps;
      if (e.successRate !== null && e.successRate !== undefined) {
        prev.errors += (1 - e.successRate) * e.rps;
        prev.http = true;
      }
      edges.set(key, prev);
    }
    const callers = [...new Set([...edges.values()].map((e) => e.from))].sort();
    const instances = new Map();
    for (const s of st.services || []) {
      instances.set(s.name + "." + s.namespace + ".svc.cluster.local", s.instances || []);
    }
    const services = [...new Set([...instances.keys(), ...[...edges.values()].map((e) => e.to)])].sort();
    if (services.length === 0 && callers.length === 0) {
      show("graph", el("p", { class: "muted" }, "No services and no traffic yet."));
      show("edges");
      return;
    }
    const W = 960, rowH = 58, top = 20, nodeW = 240, nodeH = 40;
    const H = top * 2 + Math.max(callers.length, services.length, 1) * rowH;
    const leftX = 20, rightX = W - nodeW - 20;
    const y = (i) => top + i * rowH;
    const graph = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "service graph" });
    const pos = new Map();
    callers.forEach((c, i) => pos.set("c:" + c, { x: leftX + nodeW, y: y(i) + nodeH / 2 }));
    services.forEach((s, i) => pos.set("s:" + s, { x: rightX, y: y(i) + nodeH / 2 }));

    const maxRps = Math.max(1, ...[...edges.values()].map((e) => e.rps));
    for (const e of edges.values()) {
      const a = pos.get("c:" + e.from), b = pos.get("s:" + e.to);
      const mid = (a.x + b.x) / 2;
      const success = e.http && e.rps > 0 ? 1 - e.errors / e.rps : null;
      const width = 1.5 + 6 * Math.sqrt(e.rps / maxRps);
      const label = rate(e.rps) + (e.http ? " rps \u00b7 " + pct(success) : " conn/s");
      graph.append(svg("g", { class: "edge", "data-source": e.from, "data-destination": e.to, "data-rps": e.rps.toFixed(3), "data-success": success === null ? "" : success.toFixed(4) },
        svg("title", {}, e.from + " \u2192 " + e.to + ": " + label),
        svg("path", { d: "M" + a.x + "," + a.y + " C" + mid + "," + a.y + " " + mid + "," + b.y + " " + b.x + "," + b.y,
          stroke: successClass(success), "stroke-width": width.toFixed(1), "stroke-dasharray": e.rps > 0 ? null : "4 4" }),
        svg("text", { x: mid, y: (a.y + b.y) / 2 - 6, "text-anchor": "middle" }, label)));
    }
    callers.forEach((c, i) => graph.append(svg("g", { class: "node caller", "data-node": c },
      svg("rect", { x: leftX, y: y(i), width: nodeW, height: nodeH, rx: 6 }),
      svg("text", { x: leftX + 10, y: y(i) + 24 }, c))));
    services.forEach((s, i) => {
      const inst = instances.get(s) || [];
      const g = svg("g", { class: "node service", "data-node": s },
        svg("rect", { x: rightX, y: y(i), width: nodeW, height: nodeH, rx: 6 }),
        svg("text", { x: rightX + 10, y: y(i) + 17 }, shortHost(s)));
      inst.forEach((n, k) => {
        const cx = rightX + 14 + k * 78;
        g.append(svg("circle", { class: "dot", cx, cy: y(i) + 29, r: 5, fill: n.available ? "#1f8a4c" : "#c62828" },
          svg("title", {}, n.cluster + ": " + n.healthy + "/" + n.endpoints + " healthy")));
        g.append(svg("text", { class: "sub", x: cx + 8, y: y(i) + 33 }, n.cluster));
      });
      graph.append(g);
    });
    show("graph", graph);

    const list = [...edges.values()].sort((a, b) => b.rps - a.rps);
    show("edges", el("tr", {}, ["source", "destination", "rate", "success"].map((h) => el("th", {}, h))),
      list.length === 0 ? el("tr", {}, el("td", { colspan: 4, class: "muted" }, "No calls seen yet.")) : null,
      list.map((e) => el("tr", { class: "edge-row", "data-source": e.from, "data-destination": e.to },
        el("td", {}, e.from), el("td", {}, shortHost(e.to)),
        el("td", {}, rate(e.rps) + (e.http ? " req/s" : " conn/s")),
        el("td", {}, e.http ? pct(e.rps > 0 ? 1 - e.errors / e.rps : null) : "n/a"))));
  }

  function renderServices(st) {
    const clusters = (st.clusters || []).map((c) => c.id);
    const services = st.services || [];
    show("services", el("tr", {}, el("th", {}, "service"), el("th", {}, "ports"), clusters.map((c) => el("th", {}, c))),
      services.length === 0 ? el("tr", {}, el("td", { colspan: 2 + clusters.length, class: "muted" }, "Nothing exported.")) : null,
      services.map((s) => el("tr", { "data-service": s.name + "." + s.namespace },
        el("td", {}, s.name + "." + s.namespace), el("td", {}, (s.ports || []).join(", ")),
        clusters.map((c) => {
          const i = (s.instances || []).find((x) => x.cluster === c);
          if (!i) return el("td", { class: "muted" }, "-");
          return el("td", { class: i.available ? "avail" : "unavail", "data-cluster": c },
            i.healthy + "/" + i.endpoints + " healthy" + (i.available ? "" : " (unavailable)"));
        }))));
  }

  function renderGateways(st) {
    const gws = st.gateways || [];
    show("gateways", el("tr", {}, ["cluster", "role", "advertised", "connected proxies"].map((h) => el("th", {}, h))),
      gws.length === 0 ? el("tr", {}, el("td", { colspan: 4, class: "muted" }, "No gateways known.")) : null,
      gws.map((g) => el("tr", { "data-gateway": g.cluster + "/" + g.role },
        el("td", {}, g.cluster), el("td", {}, g.role), el("td", {}, (g.addresses || []).join(", ") || "-"),
        el("td", {}, g.proxies === null || g.proxies === undefined ? el("span", { class: "muted" }, "not known here")
          : g.proxies.length === 0 ? el("span", { class: "unavail" }, "none connected")
            : g.proxies.map((p) => el("div", { class: p.xds === "synced" ? "avail" : "unavail" }, p.nodeId + " (" + p.xds + ")"))))));
  }

  function renderProblems(st) {
    const ps = st.problems || [];
    show("problems", ps.length === 0 ? el("li", { class: "none" }, "None.") : ps.map((p) => el("li", {}, p)));
  }

  function render(st) {
    renderSources(st);
    renderClusters(st);
    renderRaft(st);
    renderGraph(st);
    renderServices(st);
    renderGateways(st);
    renderProblems(st);
    document.body.dataset.generated = String(st.generatedAtMs);
  }

  async function poll() {
    const banner = document.getElementById("banner");
    try {
      const resp = await fetch("state.json", { cache: "no-store" });
      if (!resp.ok) throw new Error("state.json answered " + resp.status);
      render(await resp.json());
      banner.hidden = true;
      delete document.body.dataset.stale;
    } catch (e) {
      banner.hidden = false;
      banner.textContent = "Cannot read the dashboard state (" + e.message + "); showing the last good view, retrying every second.";
      document.body.dataset.stale = "true";
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }
  poll();
})();
