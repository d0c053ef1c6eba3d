"""Resolve the MODEL argument of the command line: `torchvision:NAME`, `zoo:NAME` (fxprune's
own models), `file.py:factory`, or a saved `.pt2`."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import torch
from torch import nn

from fxprune.errors import InputError

# Inception v3 is defined for 299x299 inputs; every other torchvision classifier for 224.
_DEFAULT_SIZE = {"inception_v3": 299}


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
            "timm:NAME, zoo:NAME, path/to/file.py:factory, or a model saved by fxprune (file.pt2)"
        )
    if kind == "zoo":
        from fxprune.app import model_zoo as zoo

        factories = {"digits": zoo.DigitsNet, "cifar_resnet56": zoo.cifar_resnet56}
        if name not in factories:
            raise InputError(f"fxprune's zoo has no '{name}': choose one of {', '.join(factories)}")
        return factories[name]().eval()
    if kind == "torchvision":
        import torchvision

        known = torchvision.models.list_models(module=torchvision.models)
        if name not in known:
            close = [k for k in known if name.split("_")[0] in k][:5]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise InputError(f"torchvision has no classification model '{name}'{hint}")
        return torchvision.models.get_model(name).eval()
    if kind == "timm":
        return _timm_model(name)
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


def input_size(name: str) -> int:
    """The image size a torchvision classifier is defined for."""
    return _DEFAULT_SIZE.get(name, 224)


def default_shape(spec: str, model: nn.Module | None = None) -> tuple[int, ...]:
    """The input shape a model is defined for: a timm model's own (its pretrained config),
    else a torchvision classifier's."""
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
