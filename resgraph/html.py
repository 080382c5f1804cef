"""The HTML diagram: one self-contained page around the SVG Graphviz draws (no network needed to open it).

The page inlines the SVG, its style and its script. The script reads the SVG as Graphviz writes
it (clusters titled `cluster_NAME`, nodes titled with their qualified names, edges `tail->head`,
each node's summary in its tooltip) and adds:

- an outline of the blocks: nested `<details>`, one per block call and block instance;
- collapsing: closing a block in the outline, or clicking its box, hides its layers and the
  edges between them (the box stays, filled, labelled with what it hides);
- hover details: pointing at a node (in the diagram or the outline) shows its summary row in a
  panel.

The page's address may say what to show at load: `#collapse=layer1,layer2` (or `all`) and
`#select=NAME` (a node's details).

>>> page = html_page(b'<?xml version="1.0"?><svg><g class="node"><title>x</title></g></svg>', "Net")
>>> page.startswith(b"<!DOCTYPE html>") and b"<?xml" not in page and b"<svg>" in page
True
"""

from __future__ import annotations

import html
import re

__all__ = ["html_page"]


def html_page(svg: bytes, title: str) -> bytes:
    """An HTML page showing `svg` (Graphviz's output) with collapsible blocks and hover details."""
    text = svg.decode("utf-8")
    start = re.search(r"<svg\b", text)
    body = text[start.start():] if start else text  # the XML prolog and DOCTYPE are not HTML
    return _TEMPLATE.format(title=html.escape(title), svg=body, style=_STYLE, script=_SCRIPT).encode("utf-8")


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="generator" content="resgraph">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<header><h1>{title}</h1>
<button type="button" id="collapse-all">Collapse all</button>
<button type="button" id="expand-all">Expand all</button>
<span class="hint">Click a block to fold it; point at a layer for its details.</span></header>
<div id="page">
<nav id="outline" aria-label="Blocks"></nav>
<main id="diagram">
{svg}
</main>
</div>
<aside id="details" hidden><h2></h2><pre></pre></aside>
<script>{script}</script>
</body>
</html>
"""

_STYLE = """
body { margin: 0; font: 14px Helvetica, Arial, sans-serif; color: #222; }
header { padding: 6px 12px; border-bottom: 1px solid #ddd; display: flex; gap: 10px; align-items: center; }
header h1 { font-size: 16px; margin: 0 12px 0 0; }
.hint { color: #777; font-size: 12px; }
#page { display: flex; height: calc(100vh - 45px); }
#outline { width: 20rem; overflow: auto; border-right: 1px solid #ddd; padding: 8px; font-size: 13px; }
#outline ul { list-style: none; margin: 0; padding-left: 14px; }
#outline > ul { padding-left: 0; }
#outline summary { cursor: pointer; font-weight: bold; }
#outline li[data-node] { cursor: default; color: #444; }
#outline li[data-node]:hover, #outline li.selected { background: #fff3c4; }
#diagram { flex: 1; overflow: auto; padding: 8px; }
#diagram svg { max-width: none; height: auto; }
g.cluster { cursor: pointer; }
g.cluster.collapsed > polygon, g.cluster.collapsed > path { fill: #e8e4f3; }
g.node.selected polygon, g.node.selected ellipse, g.node.selected path { stroke: #e0a800; stroke-width: 3px; }
.folded { display: none; }
#details { position: fixed; right: 12px; bottom: 12px; max-width: 40rem; background: #fffdf5;
  border: 1px solid #c9b458; border-radius: 6px; padding: 8px 12px; box-shadow: 0 2px 8px rgba(0,0,0,.15); }
#details h2 { font-size: 14px; margin: 0 0 4px; }
#details pre { margin: 0; font: 12px Menlo, Consolas, monospace; white-space: pre-wrap; }
"""

_SCRIPT = r"""
(function () {
  "use strict";
  var svg = document.querySelector("#diagram svg");
  var XLINK = "http://www.w3.org/1999/xlink";
  function title(g) { var t = g.querySelector(":scope > title"); return t ? t.textContent : ""; }
  function tooltip(g) {
    var a = g.querySelector("a");
    var text = a && (a.getAttributeNS(XLINK, "title") || a.getAttribute("xlink:title") || a.getAttribute("title"));
    return text || title(g);
  }
  function inside(name, block) { return name.indexOf(block + ".") === 0; }

  var nodes = new Map();  // qualified name -> <g class="node">
  svg.querySelectorAll("g.node").forEach(function (g) { nodes.set(title(g), g); });
  var edges = [];  // {g, ends: [tail, head]}
  svg.querySelectorAll("g.edge").forEach(function (g) { edges.push({g: g, ends: title(g).split("->")}); });
  var blocks = new Map();  // block name -> {name, g, label, members}
  svg.querySelectorAll("g.cluster").forEach(function (g) {
    var name = title(g).replace(/^cluster_/, "");
    var texts = Array.prototype.map.call(g.querySelectorAll(":scope > text"), function (t) { return t.textContent; });
    var members = Array.from(nodes.keys()).filter(function (n) { return inside(n, name); });
    blocks.set(name, {name: name, g: g, label: texts[0] || name, more: texts.slice(1).join("\n"), members: members,
                      first: g.querySelector(":scope > text")});
  });
  // Graphviz numbers nodes in the order the DOT declares them: graph order. A block sorts by its first node.
  var order = new Map();
  nodes.forEach(function (g, name) {
    var match = /(\d+)$/.exec(g.id || "");
    order.set(name, match ? Number(match[1]) : order.size);
  });
  function rank(entry) {
    if (entry.node) { return order.get(entry.node); }
    var ranks = blocks.get(entry.block).members.map(function (n) { return order.get(n); });
    return ranks.length ? Math.min.apply(null, ranks) : Infinity;
  }
  var collapsed = new Set();

  function hiddenBy(name) {
    for (var block of collapsed) { if (inside(name, block)) { return block; } }
    return null;
  }
  function refresh() {
    nodes.forEach(function (g, name) { g.classList.toggle("folded", hiddenBy(name) !== null); });
    edges.forEach(function (e) {
      var a = hiddenBy(e.ends[0]), b = hiddenBy(e.ends[1]);
      e.g.classList.toggle("folded", a !== null && a === b);
    });
    blocks.forEach(function (b) {
      var folded = collapsed.has(b.name);
      var parent = hiddenBy(b.name);
      b.g.classList.toggle("collapsed", folded);
      b.g.classList.toggle("folded", parent !== null);
      if (b.first) {
        if (!b.first.dataset.label) { b.first.dataset.label = b.first.textContent; }
        b.first.textContent = b.first.dataset.label + (folded ? "  [folded: " + b.members.length + " nodes]" : "");
      }
      var details = document.querySelector('#outline details[data-block="' + CSS.escape(b.name) + '"]');
      if (details && details.open === folded) { details.open = !folded; }
    });
  }
  function setCollapsed(name, folded) {
    if (folded) { collapsed.add(name); } else { collapsed.delete(name); }
    refresh();
  }

  var panel = document.getElementById("details");
  function show(name) {
    var g = nodes.get(name);
    if (!g) { return; }
    document.querySelectorAll(".selected").forEach(function (el) { el.classList.remove("selected"); });
    g.classList.add("selected");
    var item = document.querySelector('#outline li[data-node="' + CSS.escape(name) + '"]');
    if (item) { item.classList.add("selected"); }
    panel.querySelector("h2").textContent = name;
    panel.querySelector("pre").textContent = tooltip(g);
    panel.hidden = false;
  }

  // The outline: blocks nested by name, each listing the nodes directly inside it.
  var outline = document.getElementById("outline");
  function parentOf(name) {
    var best = null;
    blocks.forEach(function (b) {
      if (inside(name, b.name) && (best === null || b.name.length > best.length)) { best = b.name; }
    });
    return best;
  }
  var lists = new Map();
  var entries = new Map();  // list -> [{rank, li}]: appended in graph order once all are made
  var root = document.createElement("ul");
  outline.appendChild(root);
  lists.set(null, root);
  function place(parent, li, entry) {
    var list = lists.get(parent) || root;
    if (!entries.has(list)) { entries.set(list, []); }
    entries.get(list).push({rank: rank(entry), li: li});
  }
  blocks.forEach(function (b) {
    var li = document.createElement("li");
    var details = document.createElement("details");
    details.open = true;
    details.dataset.block = b.name;
    var summary = document.createElement("summary");
    summary.textContent = b.label;
    if (b.more) { summary.title = b.more; }
    var list = document.createElement("ul");
    details.appendChild(summary);
    details.appendChild(list);
    li.appendChild(details);
    lists.set(b.name, list);
    place(parentOf(b.name), li, {block: b.name});
    details.addEventListener("toggle", function () {
      if (details.open === collapsed.has(b.name)) { setCollapsed(b.name, !details.open); }
    });
    b.g.addEventListener("click", function (event) {
      if (event.target.closest("g.node")) { return; }
      event.stopPropagation();
      setCollapsed(b.name, !collapsed.has(b.name));
    });
  });
  nodes.forEach(function (g, name) {
    var li = document.createElement("li");
    li.dataset.node = name;
    li.textContent = name;
    li.title = tooltip(g);
    li.addEventListener("mouseenter", function () { show(name); });
    place(parentOf(name), li, {node: name});
    g.addEventListener("mouseenter", function () { show(name); });
  });
  entries.forEach(function (items, list) {
    items.sort(function (a, b) { return a.rank - b.rank; }).forEach(function (item) { list.appendChild(item.li); });
  });

  document.getElementById("collapse-all").addEventListener("click", function () {
    blocks.forEach(function (b) { collapsed.add(b.name); }); refresh();
  });
  document.getElementById("expand-all").addEventListener("click", function () { collapsed.clear(); refresh(); });

  var asked = new URLSearchParams(location.hash.slice(1));
  (asked.get("collapse") || "").split(",").filter(Boolean).forEach(function (name) {
    if (name === "all") { blocks.forEach(function (b) { collapsed.add(b.name); }); }
    else if (blocks.has(name)) { collapsed.add(name); }
  });
  refresh();
  if (asked.get("select")) { show(asked.get("select")); }
  document.body.dataset.blocks = String(blocks.size);
  document.body.dataset.nodes = String(nodes.size);
  document.body.dataset.ready = "true";
})();
"""
