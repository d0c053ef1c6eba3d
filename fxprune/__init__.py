"""fxprune: structured pruning by torch.fx graph rewriting.

The pipeline, in the order data flows through it:

    gm = fxprune.trace(model, example_inputs)   # torch.fx graph with shapes
    graph = fxprune.analyze(gm)                 # coupled channel groups (passes/analyze.py)
"""

from fxprune.errors import AnalysisError, FxPruneError, InputError, TraceError
from fxprune.graph import ChannelGraph, ChannelGroup, Member
from fxprune.passes.analyze import analyze
from fxprune.trace import trace

__all__ = [
    "AnalysisError",
    "ChannelGraph",
    "ChannelGroup",
    "FxPruneError",
    "InputError",
    "Member",
    "TraceError",
    "analyze",
    "trace",
]
__version__ = "0.1.0"
