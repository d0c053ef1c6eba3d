"""The passes of the pipeline, one module each, in the order data flows through them:
analyze (dependency analysis, written in the channel algebra of flow), catalyst (insertion),
plan (a removal request checked against the constraints), slim (surgery) and zero (the
reference surgery is checked against)."""
