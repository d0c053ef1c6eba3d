"""Surgery on torchvision models: 30% of every prunable group removed at random.

Exact groups: the slim model equals the zeroed original (1e-5 relative). All groups: the slim
model runs and keeps its output shape. The named models run by default; every other
fx-traceable classification model runs with `pytest -m sweep`.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from helpers import assert_prunes_to_the_zeroed_function

import fxprune
from fxprune.app.model_specs import input_size, randomize_zero_parameters

NAMED = ["resnet50", "resnext50_32x4d", "densenet121", "googlenet", "inception_v3",
         "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "regnet_y_400mf",
         "convnext_tiny", "shufflenet_v2_x1_0", "vit_b_16", "swin_t", "squeezenet1_0"]
OTHERS = [m for m in torchvision.models.list_models(module=torchvision.models) if m not in NAMED]


def _check(name: str) -> None:
    torch.manual_seed(0)
    size = input_size(name)
    model = randomize_zero_parameters(torchvision.models.get_model(name).eval())
    x = torch.randn(2, 3, size, size)
    gm = fxprune.trace(model, x)
    # every model has an exact group (test_torchvision checks it): the request is never empty
    assert_prunes_to_the_zeroed_function(gm, fxprune.analyze(gm), x, (2, 1000))


@pytest.mark.parametrize("name", NAMED)
def test_named_models_prune_to_the_zeroed_function(name: str) -> None:
    _check(name)


@pytest.mark.sweep
@pytest.mark.parametrize("name", OTHERS)
def test_every_other_model_prunes_to_the_zeroed_function(name: str) -> None:
    _check(name)
