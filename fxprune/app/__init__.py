"""The application built on the library: the `fxprune` command line (`cli`), the end-to-end
pruning job (`job`) with its training loop (`training`), data sets (`datasets`), fxprune's own
models (`model_zoo`), the MODEL argument (`model_specs`) and the job's report (`report`).

The library (`fxprune.trace`, `fxprune.passes`, `fxprune.export`, ...) never imports from here.
"""
