"""Resolve the MODEL argument of the command line: `torchvision:NAME`, `timm:NAME`,
`hf:DIR` (a Hugging Face model saved in a local folder), `zoo:NAME` (fxprune's own models),
`file.py:factory`, or a saved `.pt2`; and make the example inputs it takes."""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
from pathlib import Path

import torch
from torch import nn

from fxprune.app.training import fresh_statistics
from fxprune.errors import InputError, first_line

# Inception v3 is defined for 299x299 inputs; every other torchvision classifier for 224.
_DEFAULT_SIZE = {"inception_v3": 299}
HF_SEQUENCE = 128  # tokens in the default example of an hf:DIR text model


def load_model(spec: str) -> nn.Module:
    """Build the model a spec names, in eval mode, with random weights (nothing downloaded),
    or load a model saved with `fxprune.save` (a .pt2 file)."""
    if spec.endswith(".pt2"):
        from fxprune.save import load

        return load(spec)
    kind, sep, name = spec.partition(":")
    if not sep or not name:
        raise InputError(
            f"cannot read model spec '{spec}': use torchvision:NAME (e.g. torchvision:resnet50), "
            "timm:NAME, hf:DIR (a Hugging Face model saved in a folder), zoo:NAME, "
            "path/to/file.py:factory, or a model saved by fxprune (file.pt2)"
        )
    if kind == "zoo":
        from fxprune.app import model_zoo as zoo

        factories = {"digits": zoo.DigitsNet, "cifar_resnet56": zoo.cifar_resnet56}
        if name not in factories:
            raise InputError(f"fxprune's zoo has no '{name}': choose one of {', '.join(factories)}")
        return factories[name]().eval()
    if kind == "torchvision":
        return _torchvision_model(name)
    if kind == "timm":
        return _timm_model(name)
    if kind == "hf":
        return _hf_model(name)
    path = Path(kind)
    if path.suffix != ".py" or not path.is_file():
        raise InputError(f"model file '{kind}' not found: give an existing .py file, as file.py:factory")
    module_spec = importlib.util.spec_from_file_location(f"_fxprune_user_{path.stem}", path)
    assert module_spec is not None and module_spec.loader is not None  # a .py file always has one
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module  # so fx can find the classes' globals
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - report any import failure in the user's file
        raise InputError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    factory = getattr(module, name, None)
    if not callable(factory):
        raise InputError(f"{path} defines no callable '{name}'")
    model = factory()
    if not isinstance(model, nn.Module):
        raise InputError(f"{path}:{name}() returned {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


def _torchvision_tasks() -> dict[str, str]:
    """Every torchvision model name -> its task: classification, detection or segmentation."""
    import torchvision

    tasks = {"classification": torchvision.models, "detection": torchvision.models.detection,
             "segmentation": torchvision.models.segmentation}
    return {n: task for task, module in tasks.items()
            for n in torchvision.models.list_models(module=module)}


def _torchvision_model(name: str) -> nn.Module:
    import torchvision

    known = _torchvision_tasks()
    if name not in known:
        close = [k for k in known if name.split("_")[0] in k][:5]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise InputError(f"torchvision has no classification model '{name}', nor a detection or "
                         f"segmentation one{hint}")
    if known[name] == "classification":
        return torchvision.models.get_model(name).eval()
    # their builders take a pretrained backbone by default: nothing is downloaded here
    return torchvision.models.get_model(name, weights=None, weights_backbone=None).eval()


def is_detector(spec: str) -> bool:
    """Whether `spec` names a torchvision detection model (its input is a list of images)."""
    kind, _, name = spec.partition(":")
    return kind == "torchvision" and _torchvision_tasks().get(name) == "detection"


def _timm_model(name: str) -> nn.Module:
    try:
        import timm
    except ImportError as exc:
        raise InputError("timm:NAME needs timm: pip install 'fxprune[timm]'") from exc
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:5]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise InputError(f"timm has no model '{name}'{hint}")
    return timm.create_model(name, pretrained=False).eval()


def _hf_model(folder: str) -> nn.Module:
    """The model saved in `folder` by transformers' ``save_pretrained``: the class that
    config.json's ``architectures`` names (BertForSequenceClassification), else AutoModel.
    Read from the folder only (nothing is downloaded, no code from the folder is run), in
    eval mode, without a key-value cache (its outputs are then tensors only)."""
    path = Path(folder).expanduser()
    if not (path / "config.json").is_file():
        where = "does not exist" if not path.exists() else "holds no config.json"
        raise InputError(
            f"hf:{folder}: the folder {where}. Give a folder written by transformers' "
            "save_pretrained (config.json and the weights); fxprune reads it only and never "
            "downloads a model from the hub"
        )
    try:
        import transformers
    except ImportError as exc:
        raise InputError("hf:DIR needs transformers: pip install 'fxprune[hf]'") from exc
    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds for a bad config
        raise InputError(f"hf:{folder}: transformers cannot read config.json: "
                         f"{type(exc).__name__}: {first_line(exc)}") from exc
    names = getattr(config, "architectures", None) or []
    model_class = getattr(transformers, names[0], None) if names else transformers.AutoModel
    if model_class is None or not hasattr(model_class, "from_pretrained"):
        raise InputError(
            f"hf:{folder}: config.json names the architecture {names[0]}, which transformers "
            f"{transformers.__version__} does not define (fxprune does not run a model's own "
            "code): load it in Python and pass it to fxprune.trace"
        )
    try:
        model = model_class.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - missing or mismatched weights, among others
        raise InputError(f"hf:{folder}: transformers cannot load {model_class.__name__} from "
                         f"it: {type(exc).__name__}: {first_line(exc)}") from exc
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    return model.eval()


def _hf_config(model: nn.Module, attr: str) -> object:
    """`attr` of a Hugging Face model's config, or of its text or vision part (CLIP's)."""
    config = model.config
    for part in (config, getattr(config, "text_config", None), getattr(config, "vision_config", None)):
        if part is not None and getattr(part, attr, None) is not None:
            return getattr(part, attr)
    return None


def _hf_pixels(model: nn.Module, batch: int) -> tuple[int, int, int, int]:
    """The shape of the images a Hugging Face model (or its vision part) is configured for."""
    size = _hf_config(model, "image_size") or 224
    height, width = size if isinstance(size, (tuple, list)) else (size, size)
    return (batch, _hf_config(model, "num_channels") or 3, height, width)


def hf_shape(model: nn.Module) -> tuple[int, ...]:
    """The default example shape of a Hugging Face model: (1, 128) token ids for a text model
    (half its positions where it has fewer than 256, so that `export_onnx` can check a longer
    sequence: CLIP's 77 give 38), (1, channels, size, size) for a vision model."""
    if model.main_input_name == "pixel_values":
        return _hf_pixels(model, 1)
    positions = _hf_config(model, "max_position_embeddings") or 2 * HF_SEQUENCE
    return (1, max(1, min(HF_SEQUENCE, positions // 2)))


def hf_inputs(model: nn.Module, shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Keyword example inputs of a Hugging Face model: token ids within the vocabulary and an
    attention mask of `shape` (batch, sequence), pixel values for a vision model (or a vision
    part, CLIP's) at its image size; the decoder of an encoder-decoder model reads the same
    ids. Raises `InputError` for a shape the model cannot take."""
    main, params = model.main_input_name, inspect.signature(model.forward).parameters
    generator = torch.Generator().manual_seed(0)
    if main == "pixel_values":
        if len(shape) != 4:
            raise InputError(f"a vision model takes --input-shape batch,channels,height,width "
                             f"(default {','.join(map(str, hf_shape(model)))}), got {shape}")
        return {"pixel_values": torch.randn(shape, generator=generator)}
    if main != "input_ids":
        raise InputError(f"models whose input is {main} are not supported on the command line "
                         "(token ids and pixel values are): load it in Python and call "
                         "fxprune.trace(model, (), example_kwargs={...})")
    if len(shape) != 2:
        raise InputError(f"a text model takes --input-shape batch,sequence (default "
                         f"{','.join(map(str, hf_shape(model)))}), got {shape}")
    positions = _hf_config(model, "max_position_embeddings")
    if positions is not None and shape[1] > positions:
        raise InputError(f"the model has {positions} positions: give a sequence of at most "
                         f"{positions} tokens in --input-shape, got {shape[1]}")
    ids = torch.randint(0, _hf_config(model, "vocab_size") or 2, shape, generator=generator)
    inputs = {"input_ids": ids}
    if "attention_mask" in params:
        inputs["attention_mask"] = torch.ones(shape, dtype=torch.long)
    if "decoder_input_ids" in params and getattr(model.config, "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = ids
    if "pixel_values" in params:  # a text and vision model (CLIP)
        inputs["pixel_values"] = torch.randn(_hf_pixels(model, shape[0]), generator=generator)
    return inputs


def input_size(name: str) -> int:
    """The image size a torchvision classifier is defined for."""
    return _DEFAULT_SIZE.get(name, 224)


def default_shape(spec: str, model: nn.Module | None = None) -> tuple[int, ...]:
    """The input shape a model is defined for: a Hugging Face model's (`hf_shape`), a
    torchvision detector's (one image of the size it resizes to), a timm model's own (its
    pretrained config), else a torchvision classifier's."""
    if spec.startswith("hf:") and model is not None:
        return hf_shape(model)
    if is_detector(spec):  # one image of the size its transform resizes to (SSD's 300, 800)
        size = getattr(getattr(model, "transform", None), "min_size", (800,))[0]
        return (1, 3, size, size)
    config = getattr(model, "pretrained_cfg", None)
    if isinstance(config, dict) and len(config.get("input_size", ())) == 3:
        return (1, *config["input_size"])
    size = input_size(spec.partition(":")[2])
    return (1, 3, size, size)


def parse_shape(text: str) -> tuple[int, ...]:
    """The shape written as "1,3,224,224" or "1x3x224x224": positive integers, one separator.

    Raises `InputError` saying what is wrong and how to write it; never drops a piece.
    """
    pieces = [piece.strip() for piece in text.split("," if "," in text else "x")]
    for piece in pieces:
        if not piece:
            problem = "a size is missing"
        elif not re.fullmatch(r"[+-]?[0-9]+", piece):
            problem = f"'{piece}' is not an integer"
        elif int(piece) <= 0:
            problem = f"size {piece} is not positive"
        else:
            continue
        raise InputError(
            f"cannot read input shape '{text}': {problem}. Write it as positive integers "
            "joined by commas or by x, e.g. 1,3,224,224 or 1x3x224x224"
        )
    return tuple(int(piece) for piece in pieces)


def example_inputs(spec: str, model: nn.Module, shape: tuple[int, ...],
                   dtype: str) -> tuple[tuple[object, ...], dict[str, torch.Tensor]]:
    """What a model named on the command line runs on: one tensor of `shape`; for a detector
    the list of `shape[0]` images it takes; for hf:DIR its keyword inputs (`hf_inputs`)."""
    if spec.startswith("hf:"):
        return (), hf_inputs(model, shape)
    if is_detector(spec):
        if len(shape) != 4:
            raise InputError(f"a detector takes --input-shape images,channels,height,width "
                             f"(default {','.join(map(str, default_shape(spec, model)))}), got {shape}")
        return (list(example_input(shape, dtype).unbind(0)),), {}
    return (example_input(shape, dtype),), {}


def example_input(shape: tuple[int, ...], dtype: str) -> torch.Tensor:
    if dtype == "int64":
        return torch.zeros(shape, dtype=torch.int64)
    return torch.randn(shape, dtype=getattr(torch, dtype))


def randomize_zero_parameters(model: nn.Module, *, seed: int = 0, std: float = 0.02) -> nn.Module:
    """Give every all-zero parameter small random values (in place; returns the model).

    torchvision zero-initialises some layers (ViT's classification head, for one), so an
    untrained model's output is all zeros and any comparison of two such models is vacuous.
    Sweeps and tests on random weights call this first.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point() and not p.any():
                p.copy_(torch.randn(p.shape, generator=generator) * std)
    return model


@torch.no_grad()
def calibrate_norms(model: nn.Module, *inputs: object) -> nn.Module:
    """Set every BatchNorm's running statistics to those of `model(*inputs)` (in place;
    returns the model, in eval mode).

    With BatchNorm's initial statistics (mean 0, variance 1), random weights shrink a deep
    detector's activations layer after layer until its scores tie in float32 (SSDlite's best
    300 boxes on two random images: 0.0117537 each), so which boxes NMS keeps, and in what
    order, is float rounding. Statistics of the inputs keep the activations at unit scale.
    Only the norms run in training mode: a detector in training mode asks for targets.
    """
    model.eval()
    with fresh_statistics(model):
        model(*inputs)
    return model
