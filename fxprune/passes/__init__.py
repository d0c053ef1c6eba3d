"""The passes of the pipeline, one module each, in the order data flows through them:
analyze (dependency analysis, driven by the op table of `fxprune.ops`), catalyst (insertion),
plan (a removal request checked against the constraints), slim (surgery) and zero (the
reference surgery is checked against). They import `fxprune.ops`; it imports none of them."""
