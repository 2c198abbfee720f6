// fleetnet's fleet view: the relay's /map, /flows and /rollouts, drawn
// every two seconds. No framework and nothing from elsewhere: the relay
// serves all of it. The selected edge or cluster lives in the URL's
// fragment (#edge=c1,c2 or #cluster=c1), so a view can be linked to.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const REFRESH_MS = 2000;
const FLOWS_SHOWN = 200;
// The newest flows the page reads each time, to pick an edge's from.
const FLOWS_READ = 5000;

function el(tag, attributes, ...children) {
  const node = tag.startsWith("svg:")
    ? document.createElementNS(SVG, tag.slice(4))
    : document.createElement(tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (key === "onclick") node.addEventListener("click", value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function json(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

function selection() {
  const [kind, raw] = location.hash.slice(1).split("=");
  let value;
  try {
    value = raw && decodeURIComponent(raw);
  } catch {
    return {};
  }
  if (kind === "edge" && value) {
    const [source, destination] = value.split(",");
    return { edge: { source, destination } };
  }
  if (kind === "cluster" && value) return { cluster: value };
  return {};
}

function select(hash) {
  location.hash = hash;
}

function rate(perSecond) {
  return perSecond >= 10 ? perSecond.toFixed(0) : perSecond.toFixed(1);
}

// Clusters on a circle; each arrow bends a little so that both directions
// of a pair show.
function drawMap(map) {
  const svg = document.getElementById("map");
  svg.replaceChildren();
  const defs = el("svg:defs", {},
    el("svg:marker", { id: "arrow", viewBox: "0 0 10 10", refX: "9", refY: "5", markerUnits: "userSpaceOnUse", markerWidth: "12", markerHeight: "12", orient: "auto-start-reverse" },
      el("svg:path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#57606a" })));
  svg.append(defs);
  const [cx, cy, radius] = [400, 260, map.clusters.length > 1 ? 180 : 0];
  const where = new Map();
  map.clusters.forEach((cluster, i) => {
    const angle = (2 * Math.PI * i) / map.clusters.length - Math.PI / 2;
    where.set(cluster.name, [cx + radius * Math.cos(angle), cy + radius * Math.sin(angle)]);
  });
  const chosen = selection();
  for (const edge of map.edges) {
    const from = where.get(edge.source);
    const to = where.get(edge.destination);
    if (!from || !to || edge.source === edge.destination) continue;
    const drops = Object.entries(edge.drops_per_second).filter(([, r]) => r > 0);
    const [mx, my] = [(from[0] + to[0]) / 2, (from[1] + to[1]) / 2];
    const [dx, dy] = [to[0] - from[0], to[1] - from[1]];
    const length = Math.hypot(dx, dy) || 1;
    const [nx, ny] = [-dy / length, dx / length];
    const [qx, qy] = [mx + nx * 40, my + ny * 40];
    const shorten = (x, y, px, py) => {
      const d = Math.hypot(x - px, y - py) || 1;
      return [x + ((px - x) * 70) / d, y + ((py - y) * 70) / d];
    };
    const start = shorten(from[0], from[1], qx, qy);
    const end = shorten(to[0], to[1], qx, qy);
    const selected = chosen.edge && chosen.edge.source === edge.source && chosen.edge.destination === edge.destination;
    const group = el("svg:g", {
      class: `edge${drops.length ? " dropping" : ""}${selected ? " selected" : ""}`,
      "data-source": edge.source,
      "data-destination": edge.destination,
      onclick: () => select(`edge=${edge.source},${edge.destination}`),
    },
    el("svg:path", { d: `M ${start[0]} ${start[1]} Q ${qx} ${qy} ${end[0]} ${end[1]}`, "marker-end": "url(#arrow)" }),
    el("svg:text", { x: qx, y: qy - 4, "text-anchor": "middle" }, `${rate(edge.packets_per_second)} pkt/s`));
    drops.forEach(([reason, perSecond], i) => {
      group.append(el("svg:text", { class: "drops", x: qx, y: qy + 12 + 14 * i, "text-anchor": "middle" },
        `${rate(perSecond)} drop/s ${reason}`));
    });
    svg.append(group);
  }
  for (const cluster of map.clusters) {
    const [x, y] = where.get(cluster.name);
    const unhealthy = cluster.nodes.some((node) => !node.ready || node.problems.length);
    const group = el("svg:g", {
      class: `cluster${unhealthy ? " unhealthy" : ""}${chosen.cluster === cluster.name ? " selected" : ""}`,
      "data-cluster": cluster.name,
      onclick: () => select(`cluster=${cluster.name}`),
    },
    el("svg:rect", { x: x - 70, y: y - 42, width: 140, height: 84, rx: 10 }),
    el("svg:text", { class: "name", x: x - 58, y: y - 20 }, cluster.name),
    el("svg:text", { x: x - 58, y: y }, `${plural(cluster.nodes.length, "node")}, ${plural(cluster.pods, "pod")}`),
    el("svg:text", { x: x - 58, y: y + 17 }, plural(cluster.global_services, "global service")));
    cluster.nodes.forEach((node, i) => {
      const problems = node.problems.join("; ");
      group.append(el("svg:g", { class: `node ${node.ready && !problems ? "ready" : "down"}`, "data-node": `${cluster.name}/${node.name}` },
        el("svg:circle", { cx: x - 58 + i * 14, cy: y + 31, r: 5 }),
        el("svg:title", {}, `${node.name}: ${problems || "ready"}`)));
    });
    svg.append(group);
  }
  const nodes = map.clusters.reduce((n, c) => n + c.nodes.length, 0);
  const down = map.clusters.reduce((n, c) => n + c.nodes.filter((x) => !x.ready || x.problems.length).length, 0);
  document.getElementById("summary").textContent =
    `${plural(map.clusters.length, "cluster")}, ${plural(nodes, "node")}` + (down ? `, ${down} with problems` : ", all healthy");
}

function plural(n, what) {
  return `${n} ${what}${n === 1 ? "" : "s"}`;
}

// A flow's end by name; its address and identity on hover.
function end(e) {
  const name = e.namespace && e.pod ? `${e.cluster}/${e.namespace}/${e.pod}` : `${e.cluster} ${e.ip || "?"}`;
  return el("td", { title: `${e.ip || "?"}${e.port ? ":" + e.port : ""} (identity ${e.identity})` }, name);
}

// The selected cluster's nodes and what is wrong with them.
function drawNodes(map) {
  const chosen = selection();
  const box = document.getElementById("flows-filter");
  const cluster = map.clusters.find((c) => c.name === chosen.cluster);
  if (!cluster) {
    box.replaceChildren();
    return;
  }
  box.replaceChildren(el("ul", { class: "nodes" }, ...cluster.nodes.map((node) =>
    el("li", { "data-node": `${cluster.name}/${node.name}` },
      el("strong", {}, node.name), ": ",
      node.ready && !node.problems.length ? el("span", { class: "state succeeded" }, "ready")
        : el("span", { class: "state failed" }, node.problems.join("; ") || "not ready")))));
}

function drawFlows(page) {
  const chosen = selection();
  let flows = page.flows;
  let title = "Recent flows, every node";
  if (chosen.edge) {
    flows = flows.filter((f) => f.source.cluster === chosen.edge.source && f.destination.cluster === chosen.edge.destination);
    title = `Flows ${chosen.edge.source} → ${chosen.edge.destination}`;
  } else if (chosen.cluster) {
    flows = flows.filter((f) => f.source.cluster === chosen.cluster || f.destination.cluster === chosen.cluster);
    title = `Flows of ${chosen.cluster}`;
  }
  document.getElementById("flows-title").textContent = title;
  const rows = flows.slice(-FLOWS_SHOWN).reverse().map((f) =>
    el("tr", { class: f.verdict, "data-verdict": f.verdict, "data-reason": f.reason },
      el("td", {}, new Date(f.time_ns / 1e6).toISOString().slice(11, 23)),
      el("td", {}, f.node), end(f.source), end(f.destination),
      el("td", {}, f.protocol), el("td", {}, f.verdict), el("td", {}, f.reason)));
  const body = document.querySelector("#flows tbody");
  body.replaceChildren(...rows);
  if (!rows.length) body.append(el("tr", {}, el("td", { colspan: 7, class: "empty" }, "no flows")));
}

function drawRollouts(runs) {
  const box = document.getElementById("rollouts");
  if (!runs.length) {
    box.replaceChildren(el("p", { class: "empty" }, "no rollouts"));
    return;
  }
  box.replaceChildren(...runs.slice(0, 5).map((run) => {
    const stages = run.stages.map((stage, i) => {
      const planned = run.strategy.stages[i] || { gates: [] };
      const measurements = (stage.measurements || []).slice(-6).map((m) =>
        el("tr", {}, el("td", {}, new Date(m.at_unix * 1000).toISOString().slice(11, 19)),
          el("td", {}, `gate ${m.gate + 1}`), el("td", {}, m.phase), el("td", {}, (m.values || []).join(", ") || m.detail || "")));
      return el("div", { class: "stage", "data-stage": stage.name, "data-state": stage.state },
        el("div", {}, el("strong", {}, stage.name), " ", el("span", { class: `state ${stage.state}` }, stage.state)),
        el("ul", {}, ...stage.clusters.map((c) =>
          el("li", { "data-cluster": c.name }, `${c.name}: `, el("span", { class: `state ${c.state}` }, c.state)))),
        el("div", {}, `gates: ${(planned.gates || []).map((g) => Object.keys(g)[0]).join(", ") || "none"}`),
        measurements.length ? el("table", { class: "measurements" }, ...measurements) : "");
    });
    return el("div", { class: "run", "data-run": run.id },
      el("h3", {}, `run ${run.id}: revision ${run.revision}, strategy ${run.strategy.name} `,
        el("span", { class: `state ${run.state}` }, run.state)),
      el("div", { class: "stages" }, ...stages));
  }));
}

async function refresh() {
  try {
    const [map, flows, runs] = await Promise.all([json("map"), json(`flows?last=${FLOWS_READ}`), json("rollouts")]);
    drawMap(map);
    drawNodes(map);
    drawFlows(flows);
    drawRollouts(runs);
    document.getElementById("updated").textContent = `updated ${new Date().toISOString().slice(11, 19)} UTC`;
    document.body.dataset.loaded = "true";
  } catch (error) {
    document.getElementById("summary").textContent = `cannot read the relay: ${error.message}`;
  }
}

window.addEventListener("hashchange", refresh);
refresh();
setInterval(refresh, REFRESH_MS);
