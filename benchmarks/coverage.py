"""Coverage: torchvision's classifiers, one model per timm architecture, ten Hugging Face
transformers families, or torchvision's segmentation and detection models, through fxprune
and through Torch-Pruning.

Per model (random weights with all-zero layers given small random values, one input of the
model's own size: 1x3x224x224 for torchvision, 299 for Inception-v3, a timm model's
``pretrained_cfg["input_size"]``; each model in its own subprocess with a 16 GB address-space
cap (--cap-gb) so that one blow-up cannot take the sweep down):

- fxprune: traced, analysed, the share of conv/linear output channels in prunable groups
  (`fxprune.coverage`), 30% of every prunable group removed at random, slim == zeroed on the
  exact groups (1e-5 relative), ONNX export with parity (`export_onnx`); and, on a sample of
  `GROUP_SAMPLE` prunable groups (seeded by the model's name), each group pruned on its own
  by one channel and by all but one, slim == zeroed where exact (`per_group`);
- Torch-Pruning: dependency graph built, 30% pruned with MagnitudeImportance (classifier
  ignored: torchvision's last Linear or Conv2d, timm's ``get_classifier()``), forward runs
  with the original output shape, ONNX export (legacy exporter). Its share is the channels
  its pruner may touch, measured as what it did: the output channels of the nn.Conv*/nn.Linear
  modules whose output width the 30% step reduced, over the output channels of every
  nn.Conv*/nn.Linear module (classifier included, the denominator fxprune's share uses).

    python benchmarks/coverage.py [--models resnet18,vit_b_16]      # default: all (hours)
    python benchmarks/coverage.py --zoo timm --list                 # writes timm_models.json
    python benchmarks/coverage.py --zoo timm [--models resnet18]    # default: all listed
    python benchmarks/coverage.py --zoo hf --timeout 300            # ten families, minutes
    python benchmarks/coverage.py --zoo dense [--models lraspp_mobilenet_v3_large]

The hf zoo (needs transformers) is tests/test_hf.py's ten families from tiny random configs
(`hf_models`; nothing is downloaded), with keyword inputs (token ids and a padded mask, or
images). fxprune's side is the one above, its ONNX file with a dynamic batch and sequence
checked at a second size of each (``onnx_dynamic`` names the dims left free). Torch-Pruning's
follows its examples for transformers (`torch_pruning_hf_side`): MetaPruner told the heads,
whole heads and 30% of the channels removed, the model's heads ignored; "forward" there means
that the pruned model runs and every output keeps its shape. Both shares count embedding
tables and transformers' Conv1D beside conv and linear layers, as `fxprune.coverage` does.

The timm zoo is one model per timm architecture module (`timm.list_modules()`): the smallest
by parameter count whose input is at most 256 px, timm's ``test_*`` stand-ins left out. Listing
builds about a thousand models (on the meta device), so it is done once, by --list, into
benchmarks/timm_models.json (committed, with the timm version), which the sweep and
tests/test_timm.py read.

The dense zoo (`SEGMENTERS`, `DETECTORS`; results in coverage_dense.json) is torchvision's
segmenters (fcn_resnet50, deeplabv3_resnet50, deeplabv3_mobilenet_v3_large,
lraspp_mobilenet_v3_large; one 1x3x224x224 input, both sides checked as a classifier is, on
the tensors of the dict they return) and detectors (Faster R-CNN ResNet-50 FPN and MobileNet-V3 FPN, RetinaNet, FCOS, SSD300,
SSDlite, Mask R-CNN, Keypoint R-CNN), all with ``weights=None, weights_backbone=None`` (so
BatchNorm2d, not FrozenBatchNorm2d, and every backbone layer trainable), each detector given
two 3x128x128 images and ``min_size=128, max_size=128`` where its builder takes them (SSD
resizes to its own size), keeping its 10 best boxes per image whatever their score. fxprune
traces a detector with its data-dependent parts (transform, anchors, proposal selection, NMS,
postprocessing) as opaque calls, so "slim == zeroed" there
is `fxprune.compare_opaque_inputs`: every tensor those calls read (the heads' outputs
before box decoding and NMS, the images, the boxes) equal in both models within
`OPAQUE_RTOL`, each run with the zeroed model's opaque results (the traced graph's BatchNorm
statistics set to the images', or the random scores tie and NMS keeps boxes by float
rounding); "pruned" means the pruned detector returns boxes, labels and scores for both
images; ONNX parity, that onnxruntime gives its boxes, labels, scores (masks, keypoints) on
the same images (torch.export fails on NMS's data-dependent count, so `export_onnx` falls
back to the legacy exporter: ``onnx_exporter``), or False with the reason (``onnx_reason``:
a count or an order of boxes that differs). Torch-Pruning's side follows its
examples/torchvision_models/torchvision_pruning.py: the layers it ignores per detector family
(`TP_DETECTION_IGNORED`), the list of images as its example input (its example ignores no segmenter layer; here the
last classifier conv is, as a classifier's is above, so that the output keeps its classes);
"forward" for a detector means the pruned one returns boxes, labels and scores for both
images, and its ONNX export is torch.onnx's legacy exporter, which takes torchvision's
detectors.

    python benchmarks/coverage.py --zoo dense --timeout 1800          # all twelve (long)
    python benchmarks/coverage.py --zoo dense --markdown              # README's table

After the table, a summary: per side, the models traced, pruned, and verified (fxprune: slim
== zeroed and ONNX parity; Torch-Pruning: forward and ONNX); then the models where fxprune's
share is below Torch-Pruning's (below 0.8 where Torch-Pruning's pruned model did not run),
each with the reason of its largest frozen group.

Rows are written to the JSON file as each model finishes; a rerun keeps the rows already
there (so a killed sweep resumes) unless --fresh is given; models named in --models are
always rerun (``--sides fxprune`` reruns only fxprune's side, keeping Torch-Pruning's).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torchvision
from torch.utils import _pytree as pytree

if TYPE_CHECKING:
    import torch.fx

    from fxprune import ChannelGraph, ChannelGroup

TIMM_MODELS = Path(__file__).parent / "timm_models.json"
SEGMENTERS = ("fcn_resnet50", "deeplabv3_resnet50", "deeplabv3_mobilenet_v3_large",
              "lraspp_mobilenet_v3_large")
DETECTORS = ("fasterrcnn_resnet50_fpn", "fasterrcnn_mobilenet_v3_large_fpn",
             "retinanet_resnet50_fpn", "fcos_resnet50_fpn", "ssd300_vgg16",
             "ssdlite320_mobilenet_v3_large", "maskrcnn_resnet50_fpn", "keypointrcnn_resnet50_fpn")
# Torch-Pruning's detection example (examples/torchvision_models/torchvision_pruning.py): the
# layers it leaves unpruned, per family (the first whose prefix the model's name has)
TP_DETECTION_IGNORED = {
    "fasterrcnn": ("rpn.head.cls_logits", "rpn.head.bbox_pred", "backbone.fpn", "roi_heads"),
    "fcos": ("head.classification_head.cls_logits", "head.regression_head.bbox_reg",
             "head.regression_head.bbox_ctrness"),
    "keypointrcnn": ("rpn.head.cls_logits", "backbone.fpn.layer_blocks", "rpn.head.bbox_pred",
                     "roi_heads.box_head", "roi_heads.box_predictor",
                     "roi_heads.keypoint_predictor"),
    "maskrcnn": ("rpn.head.cls_logits", "rpn.head.bbox_pred", "roi_heads.box_predictor",
                 "roi_heads.mask_predictor"),
    "retinanet": ("head.classification_head.cls_logits", "head.regression_head.bbox_reg"),
    "ssd": ("head",),
}
NA = "n/a"  # a check that does not apply to the model
MAX_SIZE = 256  # px: the largest input a listed timm model may need
SHARE_FLOOR = 0.8  # where Torch-Pruning gives no share, fxprune's is held to this
GROUP_SAMPLE = 4  # prunable groups per model checked on their own (`prunes_alone`)
# What opaque calls read, slim against zeroed, relative to its largest value: float32 sums in
# another order through ResNet-50, RoI pooling and Mask R-CNN's mask head differ by up to
# 5e-5 when one backbone channel goes (measured on a sampled group).
OPAQUE_RTOL = 1e-4


def hf_models() -> dict[str, tuple[Callable[[], torch.nn.Module], dict, tuple[str, ...]]]:
    """The hf zoo: ten transformers families from tiny random configs (those of
    tests/test_hf.py; nothing is downloaded), by name: the model's factory, its keyword
    inputs (two sequences of 7 tokens, the second padded after 5; or two 16 px images), and
    the layers whose outputs are the model's (the heads Torch-Pruning is told to ignore)."""
    import transformers as tf

    tf.logging.set_verbosity_error()
    ids = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    text = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64)
    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, image_size=16, patch_size=4)
    tokens = {"input_ids": ids, "attention_mask": mask}
    decoder = {**tokens, "use_cache": False}
    lm_head = ("lm_head",)
    return {
        "bert": (lambda: tf.BertForSequenceClassification(tf.BertConfig(**text)), tokens,
                 ("classifier",)),
        "roberta": (lambda: tf.RobertaModel(tf.RobertaConfig(**text, pad_token_id=1)), tokens,
                    ("pooler.dense",)),
        "distilbert": (lambda: tf.DistilBertModel(tf.DistilBertConfig(
            vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64)), tokens, ()),
        "gpt2": (lambda: tf.GPT2Model(tf.GPT2Config(vocab_size=100, n_embd=32, n_layer=2,
                                                    n_head=4, bos_token_id=0, eos_token_id=0)),
                 decoder, ()),
        "llama": (lambda: tf.LlamaForCausalLM(tf.LlamaConfig(**text, num_key_value_heads=2)),
                  decoder, lm_head),
        "qwen3": (lambda: tf.Qwen3ForCausalLM(tf.Qwen3Config(**text, num_key_value_heads=2,
                                                             head_dim=8)), decoder, lm_head),
        "mistral": (lambda: tf.MistralForCausalLM(tf.MistralConfig(**text,
                                                                   num_key_value_heads=2)),
                    decoder, lm_head),
        "bart": (lambda: tf.BartModel(tf.BartConfig(
            vocab_size=100, d_model=32, encoder_layers=1, decoder_layers=1,
            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
            decoder_ffn_dim=64)), {**decoder, "decoder_input_ids": ids}, ()),
        "vit": (lambda: tf.ViTModel(tf.ViTConfig(**vision)), {"pixel_values": pixels},
                ("pooler.dense",)),
        "clip": (lambda: tf.CLIPModel(tf.CLIPConfig(
            text_config=text, vision_config=vision, projection_dim=16)),
            {**tokens, "pixel_values": pixels}, ("text_projection", "visual_projection")),
    }


HF_NAMES = ("bert", "roberta", "distilbert", "gpt2", "llama", "qwen3", "mistral", "bart", "vit",
            "clip")  # hf_models(), listed without importing transformers


def build(zoo: str, name: str) -> tuple[torch.nn.Module, tuple, dict]:
    """The model in eval mode with random weights, and its inputs: positional (a random
    input of its own size) or, for the hf zoo, by keyword."""
    from fxprune.app.model_specs import default_shape, load_model

    if zoo == "hf":
        factory, kwargs, _ = hf_models()[name]
        torch.manual_seed(0)
        return factory().eval(), (), kwargs
    if zoo == "dense":
        return build_dense(name)
    spec = f"{zoo}:{name}"
    model = load_model(spec)
    if zoo == "timm" and getattr(model, "num_classes", 1000) != 1000:
        # every model with ImageNet's 1000 classes: a feature model (DINOv3) would leave its
        # width at the output, and an ImageNet-22k head (TinyViT's 21,841) outweigh the rest
        model.reset_classifier(1000)
    return model, (torch.randn(default_shape(spec, model)),), {}


def build_dense(name: str) -> tuple[torch.nn.Module, tuple, dict]:
    """A segmenter with one 1x3x224x224 input, or a detector with its list of two 3x128x128
    images (resized to 128 px where the builder takes min_size and max_size), keeping its 10
    best boxes per image whatever their score; random weights, nothing downloaded."""
    if name not in SEGMENTERS + DETECTORS:
        raise ValueError(f"the dense zoo has no {name}: choose from {', '.join(SEGMENTERS + DETECTORS)}")
    small = {"min_size": 128, "max_size": 128} if name in DETECTORS and not name.startswith("ssd") else {}
    if name in DETECTORS:  # the 10 best boxes per image, whatever their score
        small.update({"box_score_thresh": 0.0, "box_detections_per_img": 10} if "rcnn" in name
                     else {"score_thresh": 0.0, "detections_per_img": 10})
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, weights_backbone=None, **small).eval()
    if name in SEGMENTERS:
        return model, (torch.randn(1, 3, 224, 224),), {}
    return model, ([torch.rand(3, 128, 128), torch.rand(3, 128, 128)],), {}


def detects(output: object, images: int) -> bool:
    """A detector's output: for every image, boxes (n, 4), labels and scores (n,)."""
    return isinstance(output, list) and len(output) == images and all(
        found["boxes"].shape == (len(found["boxes"]), 4)
        and found["labels"].shape == found["scores"].shape == (len(found["boxes"]),)
        for found in output)


def tensors(output: object) -> list[torch.Tensor]:
    """The output's tensors, in order (a tensor, a tuple, a ModelOutput)."""
    from torch.utils import _pytree as pytree

    return [t for t in pytree.tree_leaves(output) if isinstance(t, torch.Tensor)]


def relative_difference(a: object, b: object) -> float:
    """The largest difference of two outputs' tensors, relative to the second's largest value."""
    return max(float((x - y).abs().max() / y.abs().max().clamp_min(1e-12))
               for x, y in zip(tensors(a), tensors(b), strict=True))


def top_frozen_reason(gm: torch.fx.GraphModule, graph: ChannelGraph) -> str | None:
    """The reason of the frozen group that holds the most conv/linear output channels (what
    `fxprune.coverage` counts), leaving out the classes at the model's output (frozen in every
    model, and ignored by Torch-Pruning too) unless nothing else is frozen."""
    def held(group: ChannelGroup) -> int:
        count = 0
        for m in group.params:
            if m.role == "out" and m.param.endswith(".weight"):
                try:
                    owner = gm.get_submodule(m.owner)
                except AttributeError:
                    continue
                if isinstance(owner, (torch.nn.modules.conv._ConvNd, torch.nn.Linear)):
                    count += len(m.positions)
        return count

    frozen = sorted((g for g in graph.groups if not g.prunable), key=lambda g: (-held(g), -g.channels))
    inner = [g for g in frozen if not g.reason.startswith("reaches the model output")]
    top = inner or frozen
    return top[0].reason if top else None


def fxprune_side(zoo: str, name: str, folder: Path, out: dict) -> None:
    import fxprune
    from fxprune.app.model_specs import calibrate_norms, randomize_zero_parameters
    from fxprune.errors import first_line
    from fxprune.passes.plan import random_request
    from fxprune.trace import LEAF_KEY

    model, args, kwargs = build(zoo, name)
    model = randomize_zero_parameters(model)
    gm = fxprune.trace(model, args, example_kwargs=kwargs)
    out["traced"] = True
    if zoo == "dense" and name in DETECTORS:
        # BatchNorm statistics of the images, or the random detector's scores tie and NMS
        # keeps boxes by float rounding
        calibrate_norms(gm, *args)
    graph = fxprune.analyze(gm)
    out["analysed"] = True
    out["prunable"] = len(graph.prunable)
    out["share"] = round(fxprune.coverage(gm, graph).share, 4)
    out["frozen_reason"] = top_frozen_reason(gm, graph)
    opaque = any(LEAF_KEY in n.meta for n in gm.graph.nodes) and not kwargs

    def same(remove: dict[int, list[int]]) -> bool:
        """slim == zeroed for `remove`; where opaque calls (a detector's NMS) make the
        outputs a fragile comparison, on what those calls read."""
        slim = fxprune.prune_channels(gm, graph, remove)
        zeroed = fxprune.zero_channels(gm, graph, remove)
        if opaque:
            found = fxprune.compare_opaque_inputs(slim, zeroed, args)
            out["opaque_inputs_compared"] = len(found)
            return bool(found) and max(found.values()) <= OPAQUE_RTOL
        with torch.no_grad():
            if relative_difference(slim(*args, **kwargs), zeroed(*args, **kwargs)) <= 1e-5:
                return True
            # float32 sums in another order, amplified through random layers, can pass 1e-5
            # (visformer_tiny: 2.3e-5 with 23 of 24 channels gone, 7e-14 in float64)
            doubled = [pytree.tree_map_only(torch.Tensor, lambda t: t.double()
                                            if t.is_floating_point() else t, a)
                       for a in (args, kwargs)]
            return relative_difference(slim.double()(*doubled[0], **doubled[1]),
                                       zeroed.double()(*doubled[0], **doubled[1])) <= 1e-9

    out["zero_equivalent"] = same(random_request(graph, 0.3, 0, exact_only=True))
    # the promise per group, on a sample: each prunes on its own, by one channel and by all
    # but one, and where exact the slim model is the zeroed one
    sample = random.Random(name).sample(graph.prunable, min(GROUP_SAMPLE, len(graph.prunable)))
    out["groups_checked"] = len(sample)
    out["per_group"] = all(prunes_alone(gm, graph, g, same) for g in sample)
    slim = fxprune.prune_channels(gm, graph, random_request(graph, 0.3, 1))
    detector = zoo == "dense" and name in DETECTORS
    with torch.no_grad():
        out["pruned"] = detects(slim(*args), len(args[0])) if detector else True
    try:
        report = fxprune.export_onnx(slim, args, folder / "fx.onnx", example_kwargs=kwargs)
    except fxprune.ExportError as exc:
        if not detector:
            raise
        # a count or order of boxes that differs: recorded, as the other steps are
        out["onnx_parity"], out["onnx_reason"] = False, first_line(exc)[:200]
        return
    out["onnx_parity"] = report.max_abs_diff < 1e-4 or report.max_rel_diff < 1e-3
    if detector:
        out["onnx_exporter"] = report.exporter
        out["onnx_max_rel_diff"] = report.max_rel_diff
    if zoo == "hf":  # the dims left free in the file, checked at a second size each
        out["onnx_dynamic"] = sorted({label for dims in report.dynamic_dims.values()
                                      for label in dims.values()})
        out["onnx_exporter"] = report.exporter


def prunes_alone(gm: torch.fx.GraphModule, graph: ChannelGraph, group: ChannelGroup,
                 same: Callable[[dict[int, list[int]]], bool]) -> bool:
    """Whether `group` prunes on its own by one channel (its last that is not the only channel
    of a piece) and by all but one (the plan may refuse that by name where a split would empty
    a piece), equal to the zeroed model where exact."""
    import fxprune
    from fxprune.passes.plan import piece_keepers

    keep = piece_keepers(group)  # the only channel of a piece (FocalNet's gates) stays
    last = max(c for c in range(group.channels) if c not in keep or len(keep) == group.channels)
    for channels in ([last], list(range(1, group.channels))):
        remove = {group.id: channels}
        gc.collect()  # a GraphModule is freed by the cycle collector: the last check's copies
        try:
            if group.exact:
                if not same(remove):
                    return False
            else:
                fxprune.prune_channels(gm, graph, remove)
        except fxprune.PruneError as exc:
            if len(channels) == 1 or "keep at least one there" not in str(exc):
                return False
    return True


def _widths(model: torch.nn.Module, embeddings: bool = False) -> dict[str, int]:
    """Output width of every conv and linear module, read from its weight; with
    `embeddings`, of embedding tables and transformers' Conv1D (a linear with its weight
    transposed) too, as `fxprune.coverage` counts them."""
    widths = {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.modules.conv._ConvNd):
            widths[name] = m.weight.shape[1] * m.groups if m.transposed else m.weight.shape[0]
        elif isinstance(m, torch.nn.Linear):
            widths[name] = m.weight.shape[0]
        elif embeddings and isinstance(m, torch.nn.Embedding):
            widths[name] = m.weight.shape[1]
        elif embeddings and type(m).__name__ == "Conv1D" and hasattr(m, "nf"):
            widths[name] = m.weight.shape[1]
    return widths


def _classifier(zoo: str, model: torch.nn.Module) -> list[torch.nn.Module]:
    """What Torch-Pruning must be told not to prune: the classes. fxprune finds that the
    output's channels are fixed."""
    if zoo == "timm":
        head = model.get_classifier()
        heads = head if isinstance(head, tuple) else (head,)  # distilled models have two
        return [h for h in heads if isinstance(h, torch.nn.Module)]
    # torchvision: the last Linear, or SqueezeNet's final 1x1 conv
    return [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1:]


def torch_pruning_side(zoo: str, name: str, folder: Path, out: dict) -> None:

    if zoo == "hf":
        torch_pruning_hf_side(name, folder, out)
        return
    if zoo == "dense" and name in DETECTORS:
        torch_pruning_detection_side(name, folder, out)
        return
    model, (x,), _ = build(zoo, name)
    with torch.no_grad():
        shapes = [t.shape for t in tensors(model(x))]  # a segmenter returns a dict
    _magnitude_step(model, x, _classifier(zoo, model), out)
    with torch.no_grad():
        out["forward"] = [t.shape for t in tensors(model(x))] == shapes
    torch.onnx.export(model, (x,), str(folder / "tp.onnx"), dynamo=False)
    out["onnx"] = True


def _magnitude_step(model: torch.nn.Module, example: object, ignored: list[torch.nn.Module],
                    out: dict) -> None:
    """Torch-Pruning's 30% step with MagnitudeImportance, `ignored` left alone; records how
    far it got and its share (the output channels of the layers whose width it reduced)."""
    import torch_pruning as tp

    pruner = tp.pruner.MagnitudePruner(model, example, tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=0.3, ignored_layers=ignored)
    out["graph"] = True
    before = _widths(model)
    pruner.step()
    out["pruned"] = True
    after = _widths(model)
    touched = sum(w for n, w in before.items() if after[n] < w)
    out["share"] = round(touched / sum(before.values()), 4) if before else 0.0


def torch_pruning_detection_side(name: str, folder: Path, out: dict) -> None:
    """Torch-Pruning's protocol for detectors (its examples/torchvision_models/
    torchvision_pruning.py): the list of images as the example input, the layers its example
    ignores for the family left alone; 30% pruned with MagnitudeImportance as above. The
    pruned detector is exported with the legacy exporter, as torchvision's detectors are."""

    model, (images,), _ = build("dense", name)
    family = next(prefix for prefix in TP_DETECTION_IGNORED if name.startswith(prefix))
    ignored = [model.get_submodule(path) for path in TP_DETECTION_IGNORED[family]]
    _magnitude_step(model, images, ignored, out)
    with torch.no_grad():
        found = model(images)
    out["runs"] = True
    out["forward"] = detects(found, len(images))
    torch.onnx.export(model, (images,), str(folder / "tp.onnx"), dynamo=False)
    out["onnx"] = True


def _attention(model: torch.nn.Module) -> list[tuple[torch.nn.Module, torch.nn.Linear,
                                                     torch.nn.Linear, torch.nn.Linear]]:
    """Every attention module with its query, key and value projections (BERT's query/key/
    value, DistilBERT's q_lin/k_lin/v_lin, the others' q_proj/k_proj/v_proj)."""
    found = []
    for m in model.modules():
        for names in (("query", "key", "value"), ("q_lin", "k_lin", "v_lin"),
                      ("q_proj", "k_proj", "v_proj")):
            layers = [getattr(m, n, None) for n in names]
            if all(isinstance(layer, torch.nn.Linear) for layer in layers):
                found.append((m, *layers))
    return found


def torch_pruning_hf_side(name: str, folder: Path, out: dict) -> None:
    """Torch-Pruning's protocol for transformers (its examples/transformers/prune_hf_bert.py,
    prune_hf_vit.py and examples/LLMs/prune_llm.py): MetaPruner told the heads of every
    attention's query, key and value projections (key-value heads where grouped), whole heads
    removed (prune_num_heads, not head dims), the same 30% of heads and of channels, the
    model's heads ignored; then, as the examples do by hand, each attention's head counts
    set from the pruner's. GPT-2's fused c_attn is a transformers Conv1D, which Torch-Pruning
    does not know as a layer, so its heads are not named. The pruned model is exported with
    torch.onnx's torch.export-based exporter and its keyword inputs (the other zoos: legacy)."""
    import torch_pruning as tp

    model, args, kwargs = build("hf", name)
    ignored = [model.get_submodule(path) for path in hf_models()[name][2]]
    with torch.no_grad():
        shapes = [t.shape for t in tensors(model(*args, **kwargs))]
    attention = _attention(model)
    num_heads = {}
    for m, q, k, v in attention:
        head_dim = getattr(m, "head_dim", None) or m.attention_head_size
        num_heads.update({q: q.out_features // head_dim, k: k.out_features // head_dim,
                          v: v.out_features // head_dim})
    pruner = tp.pruner.MetaPruner(
        model, kwargs, importance=tp.importance.MagnitudeImportance(p=2, group_reduction="mean"),
        pruning_ratio=0.3, ignored_layers=ignored, num_heads=num_heads, prune_num_heads=True,
        prune_head_dims=False, head_pruning_ratio=0.3,
        output_transform=lambda output: sum(t.float().sum() for t in tensors(output)))
    out["graph"] = True
    before = _widths(model, embeddings=True)
    for group in pruner.step(interactive=True):
        group.prune()
    for m, q, k, _ in attention:  # the examples' "modify the attention head size" step
        heads, kv_heads = pruner.num_heads[q], pruner.num_heads[k]
        for attr in ("num_attention_heads", "num_heads", "n_heads"):
            if hasattr(m, attr):
                setattr(m, attr, heads)
        if hasattr(m, "all_head_size"):
            m.all_head_size = q.out_features
        if hasattr(m, "num_key_value_heads"):
            m.num_key_value_heads = kv_heads
        if hasattr(m, "num_key_value_groups"):
            m.num_key_value_groups = heads // kv_heads
    out["pruned"] = True
    after = _widths(model, embeddings=True)
    touched = sum(w for n, w in before.items() if after[n] < w)
    out["share"] = round(touched / sum(before.values()), 4)
    with torch.no_grad():
        got = tensors(model(*args, **kwargs))
    out["runs"] = True
    out["forward"] = [t.shape for t in got] == shapes
    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(model, args, kwargs=kwargs, dynamo=True).save(str(folder / "tp.onnx"))
    out["onnx"] = True


def one(zoo: str, name: str, side: str, cap_gb: float) -> dict:
    cap = int(cap_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    torch.set_flush_denormal(True)
    warnings.filterwarnings("ignore")  # stdout carries the result; keep stderr readable
    out: dict = {}  # filled step by step, so a failure still shows how far the tool got
    with tempfile.TemporaryDirectory() as folder:
        try:
            (fxprune_side if side == "fxprune" else torch_pruning_side)(zoo, name, Path(folder), out)
        except Exception as exc:  # noqa: BLE001 - the table reports where each tool stopped
            out["error"] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:100]}"
    return out


def run(zoo: str, name: str, side: str, timeout: int, cap_gb: float) -> dict:
    start = time.perf_counter()
    out = _run(zoo, name, side, timeout, cap_gb)
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def _run(zoo: str, name: str, side: str, timeout: int, cap_gb: float) -> dict:
    try:
        result = subprocess.run([sys.executable, __file__, "--zoo", zoo, "--one", name,
                                 "--side", side, "--cap-gb", str(cap_gb)],
                                capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        return {"error": f"crashed (exit {result.returncode}): {result.stderr.strip()[-100:]}"}
    return json.loads(lines[-1])


def list_timm_models(path: Path) -> None:
    """Write the smallest model of every timm architecture module to `path`, printing
    progress: parameters counted on the meta device (on the CPU where that fails)."""
    import timm
    from timm.models import get_pretrained_cfg

    warnings.filterwarnings("ignore")
    chosen, skipped = [], {}
    for module in timm.list_modules():
        sizes, large, broken = {}, 0, 0
        # test_* models are timm's own unit-test stand-ins (widths of 8 to 64), not architectures
        for name in timm.list_models(module=module, exclude_filters=["test_*"]):
            cfg = get_pretrained_cfg(name)
            if cfg is not None and max(cfg.input_size[1:]) > MAX_SIZE:
                large += 1  # skipped before building: the large-input models are the large ones
                continue
            try:
                with torch.device("meta"):
                    model = timm.create_model(name)
            except Exception:  # noqa: BLE001 - some models compute on their weights while built
                try:
                    model = timm.create_model(name)
                except Exception:  # noqa: BLE001 - an unbuildable model is skipped, with its module
                    broken += 1
                    continue
            size = tuple(model.pretrained_cfg["input_size"])
            if max(size[1:]) > MAX_SIZE:
                large += 1
            else:
                sizes[name] = (sum(p.numel() for p in model.parameters()), size)
        if not sizes:
            skipped[module] = (f"{large} models need inputs over {MAX_SIZE} px, "
                               f"{broken} cannot be built")
            print(f"{module}: skipped ({skipped[module]})", flush=True)
            continue
        name = min(sizes, key=lambda n: (sizes[n][0], n))
        params, size = sizes[name]
        chosen.append({"module": module, "model": name, "params": params, "input_size": list(size)})
        print(f"{module}: {name} ({params / 1e6:.1f} M parameters, input {size}) "
              f"of {len(sizes)} models", flush=True)
    from fxprune import atomic

    atomic.write_text(path, json.dumps({"timm": timm.__version__, "max_input_px": MAX_SIZE,
                                        "models": chosen, "skipped": skipped}, indent=1) + "\n")
    print(f"wrote {path}: {len(chosen)} models, {len(skipped)} modules skipped")


def timm_names() -> list[str]:
    return [m["model"] for m in json.loads(TIMM_MODELS.read_text())["models"]]


FX_KEYS = ["traced", "analysed", "pruned", "zero_equivalent", "onnx_parity"]
TP_KEYS = ["graph", "pruned", "forward", "onnx"]


def passed(r: dict, key: str) -> bool:
    """The step held, or does not apply (`NA`)."""
    value = r.get(key)
    return value == NA or (not isinstance(value, str) and bool(value))


def cell(r: dict, keys: list[str]) -> str:
    if "error" in r:
        done = [k for k in keys if passed(r, k)]
        return f"{'/'.join(done) or 'nothing'}; failed: {r['error']}"
    if all(passed(r, k) for k in keys):
        return "yes" + "".join(f" ({k} {NA})" for k in keys if r.get(k) == NA)
    return "no: " + ", ".join(k for k in keys if not passed(r, k))


def share(r: dict) -> str:
    return f"{r['share']:.3f}" if r.get("share") is not None else "-"


def held(r: dict, keys: list[str]) -> bool:
    return "error" not in r and all(passed(r, k) for k in keys)


def summarise(rows: list[dict]) -> None:
    """Per side, how far the models got; then fxprune's share against Torch-Pruning's."""
    sides = (("fxprune", "fxprune", ["traced"], ["pruned"], ["zero_equivalent", "onnx_parity"]),
             ("Torch-Pruning", "torch_pruning", ["graph"], ["pruned"], ["forward", "onnx"]))
    n = len(rows)
    for title, key, traced, pruned, verified in sides:
        counts = [sum(all(passed(r[key], k) for k in keys) for r in rows) for keys in (traced, pruned)]
        counts.append(sum(held(r[key], verified) for r in rows))
        print(f"{title}: traced {counts[0]} of {n}, pruned {counts[1]} of {n}, "
              f"verified {counts[2]} of {n}")
    checked = [r["fxprune"] for r in rows if "per_group" in r["fxprune"]]
    if checked:
        print(f"fxprune, every sampled group prunes on its own (one channel, all but one; "
              f"slim == zeroed where exact): {sum(r['per_group'] for r in checked)} of "
              f"{len(checked)} models, {sum(r['groups_checked'] for r in checked)} groups")
    # rows written before the share columns existed (fxprune ran through, no share) are left out
    # and so are Torch-Pruning's rows that ran but kept no share
    compared = [r for r in rows if ("share" in r["fxprune"] or "error" in r["fxprune"])
                and ("share" in r["torch_pruning"] or not r["torch_pruning"].get("forward"))]
    below = []
    for r in compared:
        fx, tp = r["fxprune"].get("share"), r["torch_pruning"]
        # a share counts where the pruned model ran: channels touched by a pruning that
        # broke the forward were not prunable
        bar = tp["share"] if tp.get("forward") else SHARE_FLOOR
        if fx is None or fx < bar:
            below.append(r)
    print(f"fxprune's share >= Torch-Pruning's (>= {SHARE_FLOOR} where Torch-Pruning's pruned "
          f"model did not run): {len(compared) - len(below)} of {len(compared)}")
    for r in below:
        fx, tp = r["fxprune"], r["torch_pruning"]
        why = fx.get("frozen_reason") or fx.get("error", "-")
        print(f"  {r['model']}: fxprune {share(fx)}, Torch-Pruning {share(tp)}; {why}")


def tp_outcome(tp: dict) -> str:
    """How far Torch-Pruning got, in words."""
    if held(tp, TP_KEYS):
        return "yes"
    error = tp.get("error", "")
    if error.startswith(("timed out", "MemoryError", "crashed")):
        return error.split(":")[0]
    if tp.get("pruned") and not tp.get("forward"):
        return "pruned model changes the output's shape" if tp.get("runs") else \
            "pruned model does not run"
    if tp.get("pruned"):
        return "ONNX export fails"
    return "fails pruning" if tp.get("graph") else "fails building its graph"


def markdown(rows: list[dict]) -> None:
    """README's table: both shares per model, and where fxprune's is below the bar, why."""
    print("| model | fxprune share | verified | Torch-Pruning | its share | where fxprune is below: why |")
    print("|---|---:|---|---|---:|---|")
    for r in sorted(rows, key=lambda r: r["model"]):
        fx, tp = r["fxprune"], r["torch_pruning"]
        bar = tp["share"] if tp.get("forward") else SHARE_FLOOR
        below = fx.get("share") is None or fx["share"] < bar
        why = (fx.get("frozen_reason") or fx.get("error") or "-").split(" at %")[0] if below else ""
        print(f"| {r['model']} | {share(fx)} | {'yes' if held(fx, FX_KEYS) else _short(cell(fx, FX_KEYS))} "
              f"| {tp_outcome(tp)} | {share(tp) if tp.get('forward') else '-'} | {_short(why)} |")


def _short(text: str, n: int = 100) -> str:
    """One table cell: paths from site-packages on, at most `n` characters."""
    text = re.sub(r"\S*site-packages/", "", text).replace("|", "/")
    return text if len(text) <= n else text[:n - 3] + "..."


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--zoo", choices=("torchvision", "timm", "hf", "dense"), default="torchvision")
    parser.add_argument("--models")
    parser.add_argument("--list", action="store_true",
                        help=f"timm: choose one model per architecture module into {TIMM_MODELS}")
    parser.add_argument("--timeout", type=int, default=1800)
    parser.add_argument("--cap-gb", type=float, default=16.0, help="address-space cap per side")
    parser.add_argument("--json", help="default: benchmarks/results/coverage.json (torchvision), "
                                       "coverage_timm.json (timm), coverage_hf.json (hf), "
                                       "coverage_dense.json (dense)")
    parser.add_argument("--fresh", action="store_true", help="ignore rows already in --json")
    parser.add_argument("--markdown", action="store_true",
                        help="print README's table of the rows in --json; run nothing")
    parser.add_argument("--table", action="store_true",
                        help="print the table and summary of the rows in --json (or of --models); run nothing")
    parser.add_argument("--sides", default="fxprune,tp",
                        help="rerun only these sides (fxprune, tp); a row keeps the other's result")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--side", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.zoo, args.one, args.side, args.cap_gb)))
        return 0
    if args.list:
        if args.zoo != "timm":
            parser.error("--list chooses timm's models: give --zoo timm")
        list_timm_models(TIMM_MODELS)
        return 0
    from fxprune import atomic

    json_path = args.json or {"torchvision": "benchmarks/results/coverage.json",
                              "timm": "benchmarks/results/coverage_timm.json",
                              "hf": "benchmarks/results/coverage_hf.json",
                              "dense": "benchmarks/results/coverage_dense.json"}[args.zoo]
    done = {}
    if not args.fresh and Path(json_path).exists():
        done = {r["model"]: r for r in json.loads(Path(json_path).read_text())}
    if args.markdown:
        markdown(list(done.values()))
        return 0
    if args.models:
        names = args.models.split(",")
    elif args.table:
        names = sorted(done)
    elif args.zoo == "timm":
        names = timm_names()
    elif args.zoo == "hf":
        names = list(HF_NAMES)
    elif args.zoo == "dense":
        names = list(SEGMENTERS + DETECTORS)
    else:
        names = torchvision.models.list_models(module=torchvision.models)
    print("| model | fxprune: traced, analysed, pruned, slim == zeroed, ONNX parity | fxprune share "
          "| Torch-Pruning: graph, pruned 30%, forward, ONNX | Torch-Pruning share |")
    print("|---|---|---:|---|---:|")
    rows = []
    for name in names:
        row = done.get(name)
        if args.table and row is None:
            continue
        if not args.table and (row is None or args.models):
            sides = args.sides.split(",") if row is not None else ["fxprune", "tp"]
            row = {"model": name,
                   "fxprune": (run(args.zoo, name, "fxprune", args.timeout, args.cap_gb)
                               if "fxprune" in sides else row["fxprune"]),
                   "torch_pruning": (run(args.zoo, name, "tp", args.timeout, args.cap_gb)
                                     if "tp" in sides else row["torch_pruning"])}
        rows.append(row)
        if not args.table:
            keep = rows + [r for n, r in done.items() if n not in {x["model"] for x in rows}]
            atomic.write_text(json_path, json.dumps(keep, indent=1))
        fx, tp = row["fxprune"], row["torch_pruning"]
        print(f"| {name} | {cell(fx, FX_KEYS)} | {share(fx)} | {cell(tp, TP_KEYS)} | {share(tp)} |",
              flush=True)
    ok_fx = sum(held(r["fxprune"], FX_KEYS) for r in rows)
    ok_tp = sum(held(r["torch_pruning"], TP_KEYS) for r in rows)
    print(f"\nall steps held: fxprune {ok_fx} of {len(rows)}, Torch-Pruning {ok_tp} of {len(rows)}")
    summarise(rows)
    if not args.table:
        print(f"wrote {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
