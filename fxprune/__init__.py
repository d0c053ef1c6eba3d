"""fxprune: structured pruning by torch.fx graph rewriting.

The pipeline, in the order data flows through it:

    gm = fxprune.trace(model, example_inputs)   # torch.fx graph with shapes
    graph = fxprune.analyze(gm)                 # coupled channel groups (passes/analyze.py)
    fxprune.coverage(gm, graph).share           # share of conv/linear channels left prunable
    ext = fxprune.insert_catalysts(gm, graph)   # catalysts for training (passes/catalyst.py)
    fxprune.catalyst_penalty(ext)               # ||DW||_{2,1}; CatalystPruner drives it all
    slim = fxprune.prune_channels(gm, graph, {group_id: [channels]})  # surgery (passes/slim.py)
    ref = fxprune.zero_channels(gm, graph, {group_id: [channels]})    # its reference (passes/zero.py)
    fxprune.compare_opaque_inputs(slim, ref, example_inputs)  # where opaque calls (NMS) sit (replay.py)
    fxprune.cost(slim, example_inputs)          # MACs, FLOPs, parameters
    fxprune.latency_table(gm, example_inputs)   # measured onnxruntime latency per group width
    fxprune.save(slim, example_inputs, "slim.pt2"); fxprune.load("slim.pt2")
    fxprune.export_onnx(slim, example_inputs, "slim.onnx")  # verified in onnxruntime (export/)
"""

from fxprune.cost import Cost, cost
from fxprune.coverage import Coverage, coverage
from fxprune.errors import (
    AnalysisError,
    ExportError,
    FxPruneError,
    InputError,
    PruneError,
    SurgeryError,
    TraceError,
)
from fxprune.export.deploy import deploy_report
from fxprune.export.onnx import ExportReport, export_onnx
from fxprune.graph import ChannelGraph, ChannelGroup, Member
from fxprune.latency import LatencyTable, latency_table
from fxprune.passes.analyze import analyze
from fxprune.passes.catalyst import catalyst_penalty, insert_catalysts
from fxprune.passes.slim import prune_channels
from fxprune.passes.zero import zero_channels
from fxprune.pruner import CatalystPruner
from fxprune.replay import compare_opaque_inputs
from fxprune.save import load, save
from fxprune.trace import trace

__all__ = [
    "AnalysisError",
    "CatalystPruner",
    "ChannelGraph",
    "ChannelGroup",
    "Cost",
    "Coverage",
    "ExportError",
    "ExportReport",
    "FxPruneError",
    "InputError",
    "LatencyTable",
    "Member",
    "PruneError",
    "SurgeryError",
    "TraceError",
    "analyze",
    "catalyst_penalty",
    "compare_opaque_inputs",
    "cost",
    "coverage",
    "deploy_report",
    "export_onnx",
    "insert_catalysts",
    "latency_table",
    "load",
    "prune_channels",
    "save",
    "trace",
    "zero_channels",
]
__version__ = "0.1.0"
