"""timm models through fxprune: one model per timm architecture module.

Per model (random weights, all-zero layers given small random values, ImageNet's 1000
classes, the model's own input size, run once before it is traced as a user's model has been):
traced and analysed; at least 80% of its conv/linear output channels in prunable groups
(`fxprune.coverage`; all but the classes where those alone are over a fifth, and below that
only the models README's timm table gives a reason for); 30% of every exact group removed at
random gives the zeroed original (1e-5 relative); 30% of every prunable group removed runs
with the original output shape. The fast subset (twelve families, a few seconds each) runs
by default; every other model of benchmarks/timm_models.json (`benchmarks/coverage.py --zoo
timm --list`) runs with `pytest -m sweep`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import assert_prunes_to_the_zeroed_function

import fxprune
from fxprune.app.model_specs import default_shape, load_model, randomize_zero_parameters

pytest.importorskip("timm")

LISTED = [m["model"] for m in json.loads(
    (Path(__file__).parents[1] / "benchmarks" / "timm_models.json").read_text())["models"]]
# the listed model of twelve families, but resnet18 for resnet10t (its classes are a quarter
# of its channels) and convnext_atto for convnext_zepto_rms (its RmsNorm's torch.var freezes
# the trunk); about 30 s in all on two cores
FAST = ["resnet18", "mobilenetv2_035", "mobilenetv3_small_050", "regnetx_002", "convnext_atto",
        "vit_tiny_patch16_224", "densenet121", "mobileone_s1", "poolformerv2_s12", "levit_128s",
        "ghostnet_050", "pvt_v2_b0"]
OTHERS = [m for m in LISTED if m not in FAST]
# README's timm table gives the reason for each model below 0.8; its floor is the share it has,
# so that a change for the worse still fails
BELOW = {"coat_tiny": 0.54, "mobilevit_xxs": 0.67, "gmlp_ti16_224": 0.79}
# a LayerNorm normalises every width gMLP has (its hidden size, and the gate's half of each
# block's first layer): no group is exact, so there is no zeroed function to compare with
INEXACT = {"gmlp_ti16_224"}


def _check(name: str) -> None:
    spec = f"timm:{name}"
    model = randomize_zero_parameters(load_model(spec))
    if getattr(model, "num_classes", 1000) != 1000:
        # as benchmarks/coverage.py: a feature model (DINOv3) gets ImageNet's head, which
        # would otherwise leave its hidden width at the output, frozen
        model.reset_classifier(1000)
    x = torch.randn(default_shape(spec, model))
    with torch.no_grad():
        shape = model(x).shape
    gm = fxprune.trace(model, x)
    graph = fxprune.analyze(gm)
    covered = fxprune.coverage(gm, graph)
    # the classes at the output are never prunable; where they alone are over a fifth of the
    # channels (resnet10t: 1000 of 3936), everything else must be
    floor = min(BELOW.get(name, 0.8), 1 - shape[-1] / covered.channels)
    frozen = sorted({g.reason for g in graph.groups if not g.prunable})
    assert covered.share >= floor, (
        f"{name}: {covered.share:.3f} of the channels prunable (floor {floor:.3f}); frozen: {frozen}")
    assert_prunes_to_the_zeroed_function(gm, graph, x, shape, exact=name not in INEXACT)


@pytest.mark.parametrize("name", FAST)
def test_fast_models_prune_to_the_zeroed_function(name: str) -> None:
    _check(name)


@pytest.mark.sweep
@pytest.mark.parametrize("name", OTHERS)
def test_every_other_model_prunes_to_the_zeroed_function(name: str) -> None:
    _check(name)
