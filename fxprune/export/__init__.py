"""Writing results out: channel-group pictures (dot, HTML)."""
