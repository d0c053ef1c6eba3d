"""The layer below the passes: everything fxprune knows about ops.

- `flow`: the channel algebra (atoms, flows, how elementwise ops, reshapes, concatenation and
  matrix products couple channels);
- `api`: what the table's rules are written against (`Op`, `Context`, `Resize`);
- `rules`, `surgery`, `shapes`: the rules the entries name;
- `table`: the op table itself and its fail-closed `lookup`.

This package imports no pass; the passes import it.
"""

from fxprune.ops.api import Context, Op, Resize
from fxprune.ops.table import (
    FUNCTIONS,
    METHODS,
    MODULES,
    NAMED_FUNCTIONS,
    NAMED_MODULES,
    lookup,
    lookup_module,
    param_channel_dims,
    parameter_layout,
)

__all__ = ["Context", "FUNCTIONS", "METHODS", "MODULES", "NAMED_FUNCTIONS", "NAMED_MODULES", "Op", "Resize",
           "lookup", "lookup_module", "param_channel_dims",
           "parameter_layout"]
