"""Distinct, stable colours for group ids (shared by the dot and HTML renderings)."""

from __future__ import annotations

import colorsys


def colour(group_id: int) -> str:
    """A pastel colour for a group; neighbouring ids differ by the golden angle in hue."""
    hue = (group_id * 0.618033988749895) % 1.0
    r, g, b = colorsys.hls_to_rgb(hue, 0.78, 0.65)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"
