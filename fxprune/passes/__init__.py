"""The passes of the pipeline, one module each: analyze (dependency analysis)."""
