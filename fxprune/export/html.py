"""A self-contained HTML page of a model's channel groups.

The page draws the model graph top to bottom as inline SVG: one box per node, filled with the
colour of the first channel group the node holds (narrow stripes on its right mark any further
groups), and beside it a list of every group. Hovering over a group in the list, or over a node,
previews that group; clicking selects it (clicking again clears): its member nodes are outlined,
every other node is dimmed, and the details panel shows the group's id, channel count, whether it
is prunable or why it is frozen, whether pruning it is exact, the nodes that coupled it, and its
parameter members as "param dim". Opening the page as ``page.html#group=3`` selects group 3.

CSS, JS and the graph data (JSON) are all inline, so the page needs no network and works when
opened straight from disk.
"""

from __future__ import annotations

import json
from html import escape

from fxprune.export.palette import colour
from fxprune.graph import ChannelGraph, ChannelGroup

__all__ = ["render_html"]

# Layout, in SVG pixels. Boxes are small and labels short so a ~450-node model stays browsable.
NODE_W, NODE_H = 140, 30
GAP_X, GAP_Y = 16, 22
MARGIN = 20
LABEL_CHARS = 18
MAX_STRIPES = 4  # further groups of a node are listed in its tooltip only
STRIPE_W = 5
NO_GROUP_FILL = "#eeeeee"

Point = tuple[int, int]


def render_html(graph: ChannelGraph, *, title: str) -> str:
    """The whole page for ``graph`` as one HTML string."""
    layer = _layers(graph)
    pos, width, height = _positions(graph, layer)
    prunable = len(graph.prunable)
    summary = f"{len(graph.node_order)} nodes · {len(graph.groups)} groups ({prunable} prunable)"
    groups = "\n".join(_group_item(g) for g in graph.groups)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{escape(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<header><h1>{escape(title)}</h1><span class="summary">{escape(summary)}</span></header>
<main>
<aside>
<ul id="groups">
{groups}
</ul>
<section id="details"><p class="hint">Hover over or click a group (or a node).</p></section>
</aside>
<div id="graph">
{_svg(graph, layer, pos, width, height)}
</div>
</main>
<script type="application/json" id="fxprune-data">{_script_json(_data(graph))}</script>
<script>{_JS}</script>
</body>
</html>
"""


def _layers(graph: ChannelGraph) -> dict[str, int]:
    """Longest-path layering: every node sits one layer below its deepest input."""
    known = set(graph.node_order)
    inputs: dict[str, list[str]] = {name: [] for name in graph.node_order}
    for src, dst in graph.edges:
        if src in known and dst in known:
            inputs[dst].append(src)
    layer: dict[str, int] = {}
    for name in graph.node_order:
        # node_order is the fx graph's (topological) order, so inputs are placed already; one
        # that is not would be a malformed back edge, which must not stop the drawing.
        layer[name] = max((layer[src] + 1 for src in inputs[name] if src in layer), default=0)
    return layer


def _positions(graph: ChannelGraph, layer: dict[str, int]) -> tuple[dict[str, Point], int, int]:
    """Top-left corner of every node's box, and the drawing's width and height."""
    rows: dict[int, list[str]] = {}
    for name in graph.node_order:
        rows.setdefault(layer[name], []).append(name)
    widest = max((len(row) for row in rows.values()), default=1)
    inner = _row_width(widest)
    # Room on the right for edges that bow sideways around the layers they skip.
    width = 2 * MARGIN + inner + NODE_W
    height = 2 * MARGIN + max(len(rows), 1) * (NODE_H + GAP_Y) - GAP_Y
    pos: dict[str, Point] = {}
    for depth, row in rows.items():
        # Centring each layer keeps a plain chain running straight down the middle.
        left = MARGIN + (inner - _row_width(len(row))) // 2
        for i, name in enumerate(row):
            pos[name] = (left + i * (NODE_W + GAP_X), MARGIN + depth * (NODE_H + GAP_Y))
    return pos, width, height


def _row_width(count: int) -> int:
    return count * NODE_W + max(count - 1, 0) * GAP_X


def _svg(graph: ChannelGraph, layer: dict[str, int], pos: dict[str, Point],
         width: int, height: int) -> str:
    held = _groups_by_node(graph)
    edges = "\n".join(_edge(src, dst, pos, layer) for src, dst in graph.edges
                      if src in pos and dst in pos)
    nodes = "\n".join(_node(name, graph.node_ops.get(name, ""), held[name], pos[name])
                      for name in graph.node_order)
    return (f'<svg width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}">\n'
            '<defs><marker id="arrow" viewBox="0 0 6 6" refX="6" refY="3" markerWidth="6" '
            'markerHeight="6" orient="auto"><path d="M0,0 L6,3 L0,6 z" fill="#999"/></marker></defs>\n'
            f'<g class="edges">\n{edges}\n</g>\n<g class="nodes">\n{nodes}\n</g>\n</svg>')


def _groups_by_node(graph: ChannelGraph) -> dict[str, list[int]]:
    held: dict[str, list[int]] = {name: [] for name in graph.node_order}
    for group in graph.groups:
        for name in group.nodes:
            if name in held:
                held[name].append(group.id)
    return held


def _edge(src: str, dst: str, pos: dict[str, Point], layer: dict[str, int]) -> str:
    (x1, y1), (x2, y2) = pos[src], pos[dst]
    x1, y1, x2 = x1 + NODE_W // 2, y1 + NODE_H, x2 + NODE_W // 2
    span = layer[dst] - layer[src]
    # An edge that skips layers bows to the right so it is not hidden under the boxes between.
    bow = 0 if span <= 1 else min(20 + 8 * span, NODE_W)
    third = (y2 - y1) // 3
    path = f"M{x1},{y1} C{x1 + bow},{y1 + third} {x2 + bow},{y2 - third} {x2},{y2}"
    return (f'<path class="edge" data-from="{escape(src)}" data-to="{escape(dst)}" '
            f'd="{path}" marker-end="url(#arrow)"/>')


def _node(name: str, op: str, groups: list[int], at: Point) -> str:
    x, y = at
    ids = " ".join(str(g) for g in groups)
    fill = colour(groups[0]) if groups else NO_GROUP_FILL
    tip = f"{name}\n{op}\ngroups: {ids or 'none'}"
    stripes = "".join(
        f'<rect class="stripe" x="{NODE_W - (i + 1) * STRIPE_W}" y="0" width="{STRIPE_W}" '
        f'height="{NODE_H}" fill="{colour(g)}"/>'
        for i, g in enumerate(groups[1:1 + MAX_STRIPES]))
    return (f'<g class="node" id="node-{escape(name)}" data-node="{escape(name)}" '
            f'data-groups="{ids}" transform="translate({x},{y})">'
            f"<title>{escape(tip)}</title>"
            f'<rect class="box" width="{NODE_W}" height="{NODE_H}" rx="4" fill="{fill}"/>{stripes}'
            f'<text class="name" x="6" y="12">{escape(_short(name))}</text>'
            f'<text class="op" x="6" y="25">{escape(_short(op))}</text></g>')


def _short(text: str, limit: int = LABEL_CHARS) -> str:
    """Long names would overflow the fixed-width boxes; the tooltip keeps the full text.

    The cut is in the middle: fx names like ``features_denseblock1_denselayer1_conv1`` differ
    mostly at the end, so the tail is the part worth keeping.
    """
    if len(text) <= limit:
        return text
    head = limit // 3
    return text[:head] + "…" + text[len(text) - (limit - head - 1):]


def _group_item(group: ChannelGroup) -> str:
    state = "prunable" if group.prunable else "frozen"
    extra = "" if group.exact else " · inexact"
    tip = group.reason or group.inexact_reason or ""
    return (f'<li class="group {state}" id="group-{group.id}" data-group="{group.id}" '
            f'tabindex="0" role="button" aria-pressed="false" title="{escape(tip)}">'
            f'<span class="swatch" style="background:{colour(group.id)}"></span>'
            f'<span class="gid">#{group.id}</span> {group.channels} ch · {state}{extra} · '
            f"{len(group.nodes)} nodes</li>")


def _data(graph: ChannelGraph) -> dict[str, object]:
    """What the page's JS reads: every group's details, and the nodes for context."""
    held = _groups_by_node(graph)
    return {
        "groups": [_group_data(g) for g in graph.groups],
        "nodes": [{"name": n, "op": graph.node_ops.get(n, ""), "groups": held[n]}
                  for n in graph.node_order],
    }


def _group_data(group: ChannelGroup) -> dict[str, object]:
    params = dict.fromkeys(f"{m.param} {m.dim}" for m in group.params)
    return {
        "id": group.id,
        "channels": group.channels,
        "prunable": group.prunable,
        "reason": group.reason,
        "exact": group.exact,
        "inexact_reason": group.inexact_reason,
        "coupled_by": list(group.coupled_by),
        "nodes": list(group.nodes),
        "params": list(params),
        "colour": colour(group.id),
    }


def _script_json(data: object) -> str:
    """JSON safe inside a <script> element.

    The HTML parser ends a script at the first "</script" whatever the JSON means, and "<!--"
    changes how it scans; < > & can only occur inside JSON strings, where \\u escapes decode to
    the same characters, so escaping all three is lossless for JSON.parse.
    """
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


_CSS = """
html, body { margin: 0; height: 100%; font: 13px/1.4 system-ui, sans-serif; color: #222; }
body { display: flex; flex-direction: column; }
header { padding: 6px 12px; border-bottom: 1px solid #ddd; display: flex; gap: 16px;
         align-items: baseline; }
h1 { font-size: 16px; margin: 0; }
.summary { color: #666; }
main { flex: 1; display: flex; min-height: 0; }
aside { width: 340px; flex: none; display: flex; flex-direction: column; min-height: 0;
        border-right: 1px solid #ddd; }
#groups { flex: 1 1 50%; overflow: auto; margin: 0; padding: 4px 0; list-style: none; }
#details { flex: 1 1 50%; overflow: auto; padding: 8px 12px; border-top: 1px solid #ddd; }
#details h2 { font-size: 15px; margin: 0 0 4px; }
#details h3 { font-size: 13px; margin: 10px 0 2px; }
#details ul { margin: 0; padding-left: 18px; font-family: ui-monospace, monospace; font-size: 12px;
              overflow-wrap: anywhere; }
#details .hint { color: #888; }
#graph { flex: 1; overflow: auto; }
li.group { padding: 2px 10px; cursor: pointer; display: flex; gap: 6px; align-items: center; }
li.group:hover, li.group:focus { background: #f0f0f0; outline: none; }
li.group.frozen { color: #888; }
li.group.active { background: #dde8ff; color: #000; font-weight: 600; }
.gid { min-width: 3em; }
.swatch { width: 12px; height: 12px; flex: none; border: 1px solid #999; border-radius: 2px; }
g.node { cursor: pointer; }
g.node rect.box { stroke: #888; stroke-width: 1; }
g.node text { font: 10px sans-serif; pointer-events: none; }
g.node text.op { fill: #555; }
g.node.selected rect.box { stroke: #000; stroke-width: 2.5; }
g.node.dimmed, path.edge.dimmed { opacity: 0.15; }
path.edge { fill: none; stroke: #999; stroke-width: 1; }
path.edge.selected { stroke: #333; stroke-width: 1.8; }
"""

_JS = """
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("fxprune-data").textContent);
  var groups = {};
  data.groups.forEach(function (g) { groups[g.id] = g; });
  var all = function (sel) { return Array.prototype.slice.call(document.querySelectorAll(sel)); };
  var nodes = all("g.node"), edges = all("path.edge"), items = all("li.group");
  var details = document.getElementById("details");
  var selected = null;

  function groupsOf(el) {
    var ids = el.getAttribute("data-groups");
    return ids ? ids.split(" ").map(Number) : [];
  }

  function add(parent, tag, text) {
    var el = document.createElement(tag);
    if (text !== undefined) el.textContent = text;
    parent.appendChild(el);
    return el;
  }

  function list(title, values) {
    add(details, "h3", title + " (" + values.length + ")");
    var ul = add(details, "ul");
    values.forEach(function (v) { add(ul, "li", v); });
  }

  function showDetails(gid) {
    details.textContent = "";
    var g = gid === null ? null : groups[gid];
    if (!g) {
      add(details, "p", "Hover over or click a group (or a node).").className = "hint";
      return;
    }
    add(details, "h2", "Group " + g.id);
    add(details, "div", g.channels + " channels");
    add(details, "div", g.prunable ? "prunable" : "frozen: " + (g.reason || "no reason given"));
    add(details, "div", g.exact ? "exact: zeroing a channel equals removing it"
                                : "inexact: " + (g.inexact_reason || "no reason given"));
    add(details, "div", "coupled by: " + (g.coupled_by.length ? g.coupled_by.join(", ") : "none"));
    list("parameters", g.params);
    list("nodes", g.nodes);
  }

  // Draw group `gid` (or nothing, for null) as the highlighted one.
  function highlight(gid) {
    var members = {};
    nodes.forEach(function (el) {
      var member = gid !== null && groupsOf(el).indexOf(gid) >= 0;
      if (member) members[el.getAttribute("data-node")] = true;
      el.classList.toggle("selected", member);
      el.classList.toggle("dimmed", gid !== null && !member);
    });
    edges.forEach(function (el) {
      var inside = !!(members[el.getAttribute("data-from")] && members[el.getAttribute("data-to")]);
      el.classList.toggle("selected", inside);
      el.classList.toggle("dimmed", gid !== null && !inside);
    });
    showDetails(gid);
  }

  function select(gid) {
    selected = selected === gid ? null : gid;
    items.forEach(function (el) {
      var on = Number(el.getAttribute("data-group")) === selected;
      el.classList.toggle("active", on);
      el.setAttribute("aria-pressed", on ? "true" : "false");
    });
    highlight(selected);
  }

  items.forEach(function (el) {
    var gid = Number(el.getAttribute("data-group"));
    el.addEventListener("click", function () {
      select(gid);
      // In a tall graph the members may be far off screen.
      var first = selected === null ? null : nodes.filter(function (n) {
        return n.classList.contains("selected");
      })[0];
      if (first) first.scrollIntoView({block: "center", inline: "center"});
    });
    el.addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); el.click(); }
    });
    el.addEventListener("mouseenter", function () { highlight(gid); });
    el.addEventListener("mouseleave", function () { highlight(selected); });
  });

  nodes.forEach(function (el) {
    var held = groupsOf(el);
    el.addEventListener("click", function () {
      select(held.length ? held[0] : null);
    });
    el.addEventListener("mouseenter", function () { if (held.length) highlight(held[0]); });
    el.addEventListener("mouseleave", function () { highlight(selected); });
  });

  // A real click, so that a headless browser opening page.html#group=N tests the click path.
  var match = /^#group=(\\d+)$/.exec(location.hash);
  var target = match && document.getElementById("group-" + match[1]);
  if (target) {
    target.dispatchEvent(new MouseEvent("click", {bubbles: true, cancelable: true, view: window}));
  }
})();
"""
