"""Every torchvision classification model that torch.fx can trace is analysed without error.

Models are built on the meta device (no weights materialised, so even ViT-H/14 and
RegNet-Y-128GF fit easily); the few whose constructors compute on tensors are built on the CPU.
None is skipped for size: the largest (RegNet-Y-128GF, 645M parameters, 2.6 GB) fits in 24 GB.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from helpers import group_with

import fxprune
from fxprune.app.model_specs import input_size

MODELS = torchvision.models.list_models(module=torchvision.models)


def build(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    size = input_size(name)
    try:
        with torch.device("meta"):
            model = torchvision.models.get_model(name).eval()
        return model, torch.empty(1, 3, size, size, device="meta")
    except NotImplementedError:  # constructor reads tensor data (RegNet widths)
        return torchvision.models.get_model(name).eval(), torch.randn(1, 3, size, size)


def test_the_sweep_covers_all_classification_models() -> None:
    # every registered model that is not detection, segmentation, video, optical flow or
    # quantized is a classification model, and the sweep holds each of them
    tasks = (torchvision.models.detection, torchvision.models.segmentation,
             torchvision.models.video, torchvision.models.optical_flow,
             torchvision.models.quantization)
    others = {m for t in tasks for m in torchvision.models.list_models(module=t)}
    assert set(MODELS) == set(torchvision.models.list_models()) - others
    assert {"resnet50", "vit_h_14", "regnet_y_128gf", "convnext_tiny"} <= set(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_model_is_analysed(name: str) -> None:
    model, x = build(name)
    graph = fxprune.analyze(fxprune.trace(model, x))
    assert graph.prunable, f"{name}: no prunable group"
    # one exact group at least, so test_torchvision_slim's slim == zeroed compares something
    assert any(g.exact for g in graph.prunable), f"{name}: no exact prunable group"
    # The classifier's outputs are the model's outputs: always frozen.
    assert any("reaches the model output" in (g.reason or "") for g in graph.groups)


def test_resnet50_groups() -> None:
    graph = fxprune.analyze(fxprune.trace(*build("resnet50")))
    # 16 bottlenecks x 2 inner groups + 4 residual stages + the stem = 37; fc is frozen.
    assert len(graph.prunable) == 37
    stage = group_with(graph, "layer1.0.downsample.0.weight", 0)
    assert stage.channels == 256
    assert {m.owner for m in stage.params if m.role == "out"} >= {
        "layer1.0.conv3", "layer1.0.bn3", "layer1.1.conv3", "layer1.2.conv3", "layer1.0.downsample.0"}


@pytest.mark.parametrize("name", ["vit_b_16", "swin_t", "shufflenet_v2_x1_0"])
def test_attention_and_shuffle_models_keep_prunable_inner_groups(name: str) -> None:
    graph = fxprune.analyze(fxprune.trace(*build(name)))
    param = {
        "vit_b_16": "encoder.layers.encoder_layer_0.self_attention.in_proj_weight",
        "swin_t": "features.1.0.attn.qkv.weight",
        "shufflenet_v2_x1_0": "stage2.1.branch2.0.weight",
    }[name]
    holding = [g for g in graph.groups if any((m.param, m.dim) == (param, 0) for m in g.params)]
    assert holding and all(g.prunable for g in holding)


@pytest.mark.parametrize("name", MODELS)
def test_cost_matches_torchvisions_published_figure(name: str) -> None:
    """fxprune.cost against the GFLOPS (multiply-adds, in fact) torchvision publishes for each
    model's first weights, at their crop size, to the three decimals it gives: attention
    counts however torch runs it (ViTs' fused inference path, the CPU's fused kernel)."""
    weights = next(iter(torchvision.models.get_model_weights(name)))
    size = weights.transforms().crop_size[0]
    kwargs = {"image_size": size} if name.startswith("vit_") else {}
    try:
        with torch.device("meta"):
            model = torchvision.models.get_model(name, **kwargs).eval()
        x = torch.empty(1, 3, size, size, device="meta")
    except NotImplementedError:  # constructor reads tensor data (RegNet widths)
        model, x = torchvision.models.get_model(name, **kwargs).eval(), torch.randn(1, 3, size, size)
    published = weights.meta["_ops"]
    assert fxprune.cost(model, x).macs / 1e9 == pytest.approx(published, rel=3e-3, abs=6e-4)
