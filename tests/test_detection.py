"""Detection: nested example inputs and outputs, and torchvision's detectors pruned.

A detector takes a list of images and returns a list of dicts. The parts of it that read
values (its transform's batching, proposal selection, NMS, postprocessing) are traced as
opaque calls: methods or functions made leaves, so that the layers around them stay in the
graph. The check, with 30% of every prunable group removed at random: every tensor that an
opaque call reads (the heads' outputs before box decoding and NMS, the images, the boxes) is
the same in the slim and the zeroed model, each run with the zeroed model's opaque results
(NMS makes the final boxes a fragile comparison); and the pruned detector still returns boxes,
labels and scores for every image; and it exports to ONNX, whose boxes, labels and scores
(masks, keypoints) match PyTorch's in onnxruntime. Two small detectors run by default; the
rest under `pytest -m sweep`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from helpers import summary
from models import FrozenNorm, TinyDetector
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.misc import FrozenBatchNorm2d

import fxprune
from fxprune.app.cli import main
from fxprune.app.model_specs import (
    calibrate_norms,
    default_shape,
    example_inputs,
    load_model,
    randomize_zero_parameters,
)
from fxprune.passes.plan import random_request
from fxprune.trace import LEAF_KEY

# What may be opaque in a torchvision detector: the parts that read values. No layer is.
DATA_DEPENDENT = {"transform.batch_images", "transform.postprocess", "rpn.box_coder.decode",
                  "rpn.filter_proposals", "roi_heads.postprocess_detections",
                  "postprocess_detections", "keypointrcnn_inference"}
# Measured share of conv/linear output channels in prunable groups (the rest: the heads'
# outputs, which reach the opaque postprocessing), rounded down.
COVERAGE = {"fasterrcnn_mobilenet_v3_large_fpn": 0.97, "ssdlite320_mobilenet_v3_large": 0.85,
            "fasterrcnn_resnet50_fpn": 0.98, "retinanet_resnet50_fpn": 0.97,
            "fcos_resnet50_fpn": 0.99, "ssd300_vgg16": 0.74, "maskrcnn_resnet50_fpn": 0.98,
            "keypointrcnn_resnet50_fpn": 0.99}
DEFAULT = ["fasterrcnn_mobilenet_v3_large_fpn", "ssdlite320_mobilenet_v3_large"]
SWEEP = [name for name in COVERAGE if name not in DEFAULT]


def assert_opaque_inputs_equal(slim: torch.fx.GraphModule, zeroed: torch.fx.GraphModule,
                               inputs: tuple[object, ...], rtol: float = 1e-5) -> int:
    """Every tensor an opaque call reads is the same in both models (relative to its scale),
    both run with the zeroed model's opaque results. Returns how many were compared."""
    found = fxprune.compare_opaque_inputs(slim, zeroed, inputs)
    differ = {where: diff for where, diff in found.items() if not diff <= rtol}
    assert not differ, f"what the opaque calls read differs (relative, inf: shapes): {differ}"
    return len(found)


def assert_detects(out: object, images: int) -> None:
    """Boxes, labels and scores for every image, as many of each, all finite."""
    assert isinstance(out, list) and len(out) == images
    for found in out:
        n = len(found["boxes"])
        assert n > 0 and found["boxes"].shape == (n, 4) and torch.isfinite(found["boxes"]).all()
        assert found["labels"].shape == found["scores"].shape == (n,)


def _opaque(gm: torch.fx.GraphModule) -> set[str]:
    return {n.meta[LEAF_KEY].module for n in gm.graph.nodes if LEAF_KEY in n.meta}


def _check_detector(model: torch.nn.Module, images: list[torch.Tensor],
                    floor: float) -> fxprune.ChannelGraph:
    randomize_zero_parameters(model)
    gm = fxprune.trace(model, (images,))
    assert not [n for n in gm.graph.nodes if n.op == "call_module" and LEAF_KEY in n.meta]
    assert _opaque(gm) <= DATA_DEPENDENT
    # the graph loops over the images: their number is taken from the example, and said
    assert len(images) in {d.value for d in gm.meta["fxprune.specialised"]}
    graph = fxprune.analyze(gm)
    assert fxprune.coverage(gm, graph).share >= floor
    remove = random_request(graph, 0.3, 0)
    slim = fxprune.prune_channels(gm, graph, remove)
    zeroed = fxprune.zero_channels(gm, graph, remove)
    assert assert_opaque_inputs_equal(slim, zeroed, (images,)) > 0
    with torch.no_grad():
        assert_detects(slim(images), len(images))
    assert fxprune.cost(slim, (images,)).macs < fxprune.cost(gm, (images,)).macs
    return graph


def _torchvision_detector(name: str) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """Random weights, small images (SSD resizes to its own size), the 10 best boxes per
    image kept whatever their score."""
    small = {} if name.startswith("ssd") else {"min_size": 128, "max_size": 128}
    keep = ({"box_score_thresh": 0.0, "box_detections_per_img": 10} if "rcnn" in name
            else {"score_thresh": 0.0, "detections_per_img": 10})
    model = torchvision.models.get_model(name, weights=None, weights_backbone=None, **small,
                                         **keep)
    return model.eval(), [torch.rand(3, 128, 128), torch.rand(3, 128, 128)]


@pytest.mark.parametrize("name", DEFAULT)
def test_small_detectors_prune_to_the_zeroed_heads(name: str) -> None:
    model, images = _torchvision_detector(name)
    _check_detector(model, images, COVERAGE[name])


def test_a_detector_that_has_run_traces_as_a_fresh_one() -> None:
    # its RoI pooler caches the levels it computed from the first images (a LevelMapper, which
    # fx cannot write into a graph) and hands them to _multiscale_roi_align from then on
    model, images = _torchvision_detector("fasterrcnn_mobilenet_v3_large_fpn")
    fresh = summary(fxprune.analyze(fxprune.trace(model, (images,))))
    with torch.no_grad():
        model(images)
    assert model.roi_heads.box_roi_pool.map_levels is not None
    graph = _check_detector(model, images, COVERAGE["fasterrcnn_mobilenet_v3_large_fpn"])
    assert summary(graph) == fresh


def _check_export(name: str, path: Path, exporter: str) -> fxprune.ExportReport:
    torch.manual_seed(0)
    model, images = _torchvision_detector(name)
    if name.startswith("retinanet"):  # its scores start at the head's prior, 0.01, all within
        # 1e-5 of each other on random features: onnxruntime's rounding reorders them
        torch.nn.init.normal_(model.head.classification_head.cls_logits.weight, std=1.0)
    gm = fxprune.trace(randomize_zero_parameters(model), (images,))
    # BatchNorm statistics of the images, so that scores do not tie
    calibrate_norms(gm, images)
    graph = fxprune.analyze(gm)
    slim = fxprune.prune_channels(gm, graph, random_request(graph, 0.3, 0))
    report = fxprune.export_onnx(slim, (images,), path, exporter=exporter)
    with torch.no_grad():
        out = slim(images)
    assert_detects(out, len(images))
    keys = [f"output_{i}.{key}" for i, found in enumerate(out) for key in found]
    assert report.input_names == ("images_0", "images_1") and report.output_names == tuple(keys)
    assert report.batch_sizes == (2,) and not report.dynamic_batch
    assert report.max_rel_diff < 1e-3  # and export_onnx raised on a count that differs
    return report


def test_a_pruned_detector_exports_with_parity_on_its_boxes(tmp_path: Path) -> None:
    # the legacy exporter alone: torch.export fails on NMS's data-dependent count (15 s more)
    report = _check_export("ssdlite320_mobilenet_v3_large", tmp_path / "m.onnx", "legacy")
    assert report.exporter == "legacy"


@pytest.mark.sweep
@pytest.mark.parametrize("name", list(COVERAGE))
def test_every_pruned_detector_exports_with_parity(name: str, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="used the legacy TorchScript exporter"):
        _check_export(name, tmp_path / "m.onnx", "auto")


@pytest.mark.sweep
@pytest.mark.parametrize("name", SWEEP)
def test_every_detector_prunes_to_the_zeroed_heads(name: str) -> None:
    model, images = _torchvision_detector(name)
    _check_detector(model, images, COVERAGE[name])


def test_a_frozen_batchnorm_detector_prunes_its_norms() -> None:
    # as built with a pretrained backbone: FrozenBatchNorm2d, whose parameters are buffers
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None,
                                   norm_layer=FrozenBatchNorm2d, trainable_layers=5)
    for m in backbone.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.weight.uniform_(0.5, 1.5), m.bias.normal_(0, 0.1), m.running_mean.normal_(0, 0.1)
    model = FasterRCNN(backbone, num_classes=5, min_size=64, max_size=64, box_score_thresh=0.0)
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    graph = _check_detector(model.eval(), images, 0.98)
    sliced = {m.param for g in graph.prunable for m in g.params}
    assert {"backbone.body.bn1.weight", "backbone.body.bn1.running_var"} <= sliced


def test_frozen_batchnorm_is_sliced_like_a_batchnorm() -> None:
    model = FrozenNorm().eval()
    x = torch.randn(2, 3, 6, 6)
    gm = fxprune.trace(model, x)
    graph = fxprune.analyze(gm)
    assert summary(graph) == {
        frozenset({"conv.weight:0", "conv.bias:0", "norm.weight:0", "norm.bias:0",
                   "norm.running_mean:0", "norm.running_var:0", "head.weight:1"}): (6, True, True),
        frozenset({"head.weight:0", "head.bias:0"}): (2, False, True),
    }
    (group,) = graph.prunable
    remove = {group.id: [0, 4]}
    slim = fxprune.prune_channels(gm, graph, remove)
    assert slim.norm.running_var.shape == (4,)
    with torch.no_grad():
        torch.testing.assert_close(slim(x), fxprune.zero_channels(gm, graph, remove)(x))


def test_nested_inputs_and_outputs_trace_analyse_prune_and_cost() -> None:
    model = TinyDetector().eval()
    images = [torch.randn(3, 5, 5), torch.randn(3, 5, 5)]
    gm = fxprune.trace(model, (images,))
    assert _opaque(gm) == {"prepare", "select"}
    assert "prepare = " in gm.code and "select = " in gm.code  # one call each
    graph = fxprune.analyze(gm)
    assert summary(graph) == {
        frozenset({"body.0.weight:0", "body.1.weight:0", "body.1.bias:0", "body.1.running_mean:0",
                   "body.1.running_var:0", "head.weight:1"}): (8, True, True),
        frozenset({"head.weight:0", "head.bias:0"}): (3, False, True),
    }
    (frozen,) = [g for g in graph.groups if not g.prunable]
    assert frozen.reason.startswith("method 'select' made a leaf because tracing failed at")
    (group,) = graph.prunable
    slim = fxprune.prune_channels(gm, graph, {group.id: [1, 2, 5]})
    zeroed = fxprune.zero_channels(gm, graph, {group.id: [1, 2, 5]})
    assert assert_opaque_inputs_equal(slim, zeroed, (images,)) == 3  # 2 images, 1 score map
    with torch.no_grad():
        out = slim(images)
    assert [sorted(found) for found in out] == [["labels", "scores"]] * 2
    assert fxprune.cost(slim, (images,)).macs < fxprune.cost(gm, (images,)).macs


@pytest.mark.parametrize(("inputs", "where"), [
    (([torch.randn(3, 5, 5), "image"],), "example_inputs[0][1] is str"),
    (([],), "example_inputs[0] is list"),
    (({"images": None},), "example_inputs[0]['images'] is NoneType"),
    ("images", "example_inputs is str"),
])
def test_unusable_nested_input_says_where_and_what_to_pass(inputs: object, where: str) -> None:
    with pytest.raises(fxprune.InputError) as info:
        fxprune.trace(TinyDetector(), inputs)
    message = str(info.value)
    assert where in message and "([image1, image2],)" in message


def test_the_cli_names_detection_and_segmentation_models() -> None:
    detector = load_model("torchvision:fasterrcnn_mobilenet_v3_large_fpn")
    shape = default_shape("torchvision:fasterrcnn_mobilenet_v3_large_fpn", detector)
    assert shape == (1, 3, 800, 800)  # the size its transform resizes to
    inputs, kwargs = example_inputs("torchvision:ssdlite320_mobilenet_v3_large", detector,
                                    (2, 3, 64, 64), "float32")
    assert kwargs == {} and [tuple(image.shape) for image in inputs[0]] == [(3, 64, 64)] * 2
    segmenter = load_model("torchvision:lraspp_mobilenet_v3_large")
    assert not segmenter.training
    (x,), _ = example_inputs("torchvision:lraspp_mobilenet_v3_large", segmenter,
                             default_shape("torchvision:lraspp_mobilenet_v3_large", segmenter),
                             "float32")
    assert x.shape == (1, 3, 224, 224)
    with pytest.raises(fxprune.InputError, match="nor a detection or segmentation one"):
        load_model("torchvision:fasterrcnn")


@pytest.mark.sweep
def test_fxprune_inspect_takes_a_detector(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "torchvision:ssdlite320_mobilenet_v3_large"]) == 0
    out = capsys.readouterr().out
    assert "of the conv/linear output channels are in prunable groups" in out
    assert "at input (1, 3, 320, 320)" in out


@pytest.mark.parametrize(("command", "says"), [
    (["export", "torchvision:ssdlite320_mobilenet_v3_large", "-o", "x.onnx"],
     "export it in Python"),
    (["prune", "torchvision:ssdlite320_mobilenet_v3_large"], "which a detector is not"),
])
def test_the_cli_refuses_what_it_cannot_do_with_a_detector(
        command: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(command) == 2
    assert says in capsys.readouterr().err
