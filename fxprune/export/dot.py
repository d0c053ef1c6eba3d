"""The channel-group graph as Graphviz source."""

from __future__ import annotations

from fxprune.export.palette import colour
from fxprune.graph import ChannelGraph


def render_dot(graph: ChannelGraph) -> str:
    """Graphviz source: model nodes coloured by the first group they hold."""
    lines = ["digraph channel_groups {", "  rankdir=TB;",
             '  node [shape=box, style=filled, fontname="Helvetica"];']
    for name in graph.node_order:
        held = [grp.id for grp in graph.groups if name in grp.nodes]
        fill = colour(held[0]) if held else "#eeeeee"
        label = f"{name}\\n{graph.node_ops[name]}" + (f"\\ngroups {held}" if held else "")
        lines.append(f'  "{name}" [label="{label}", fillcolor="{fill}"];')
    lines += [f'  "{a}" -> "{b}";' for a, b in graph.edges]
    lines.append("}")
    return "\n".join(lines) + "\n"
