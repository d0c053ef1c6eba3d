"""The pipeline on a CUDA device: trace, analyse, prune, Catalyst, export, save, the job.

Skipped where torch sees no GPU (CI has none); run on a GPU machine with
``pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision
from helpers import assert_equivalent
from models import MODELS, NO_EXACT_GROUP, NO_PRUNABLE_GROUP, build
from torch.utils.data import DataLoader
from tqdm import tqdm

import fxprune
from fxprune.app.datasets import digits
from fxprune.app.job import Job, JobConfig
from fxprune.app.model_specs import randomize_zero_parameters
from fxprune.app.model_zoo import DigitsNet
from fxprune.app.training import accuracy, train_epoch
from fxprune.passes.plan import random_request
from fxprune.pruner import CatalystPruner

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = "cuda"


@pytest.fixture(autouse=True)
def full_float32() -> Iterator[None]:
    """Equivalence is checked in float32: cuDNN's default TF32 convolutions round to 10 bits."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _on_cuda(module: torch.nn.Module) -> bool:
    tensors = list(module.parameters()) + list(module.buffers())
    return all(t.device.type == CUDA for t in tensors)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_tiny_models_prune_on_cuda_as_on_the_cpu(name: str) -> None:
    model, x = build(name)
    gm = fxprune.trace(model, x)
    graph = fxprune.analyze(gm)
    # exact groups where the model has one (slim == zeroed holds there), else every group
    exact_only = name not in NO_EXACT_GROUP
    request = random_request(graph, 0.3, 0, exact_only=exact_only)
    assert any(request.values()) == (name not in NO_PRUNABLE_GROUP)
    with torch.no_grad():
        expected = fxprune.prune_channels(gm, graph, request)(x)
        gpu, xg = fxprune.trace(copy.deepcopy(model).to(CUDA), x.to(CUDA)), x.to(CUDA)
        graph_gpu = fxprune.analyze(gpu)
        assert graph_gpu.to_json() == graph.to_json()
        slim = fxprune.prune_channels(gpu, graph_gpu, request)
        assert _on_cuda(slim)
        out = slim(xg)
        if exact_only:
            zeroed = fxprune.zero_channels(gpu, graph_gpu, request)
            torch.testing.assert_close(out, zeroed(xg), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out.cpu(), expected, rtol=1e-4, atol=1e-4)


def test_catalyst_prunes_losslessly_on_cuda(tmp_path: Path) -> None:
    torch.manual_seed(0)
    train, test = digits()
    loader = DataLoader(train, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    test_loader = DataLoader(test, batch_size=512)
    model = DigitsNet().to(CUDA)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for _ in range(8):
        train_epoch(model, loader, optimizer, device=CUDA)
    x = torch.randn(1, 1, 8, 8, device=CUDA)
    pruner = CatalystPruner(model.eval(), x, c=1.2)
    assert _on_cuda(pruner.model)
    optimizer = pruner.sgd(lr=0.02)
    for _ in range(60):
        train_epoch(pruner.model, loader, optimizer, penalty=pruner.penalty, device=CUDA)
        if pruner.converged():
            break
    assert pruner.converged()
    before = accuracy(pruner.model, test_loader, device=CUDA)
    pruner.prune()
    final = pruner.finalize()
    assert _on_cuda(final)
    assert abs(accuracy(final, test_loader, device=CUDA) - before) <= 0.2
    assert fxprune.cost(final, x).macs < fxprune.cost(pruner.base, x).macs
    report = fxprune.export_onnx(final, x, tmp_path / "digits.onnx")
    assert report.max_abs_diff < 1e-4
    fxprune.save(final.eval(), x, tmp_path / "digits.pt2")
    loaded = fxprune.load(tmp_path / "digits.pt2")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), final(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "vit_b_16"])
def test_torchvision_models_prune_and_export_from_cuda(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = randomize_zero_parameters(torchvision.models.get_model(name).eval()).to(CUDA)
    x = torch.randn(2, 3, 224, 224, device=CUDA)
    gm = fxprune.trace(model, x)
    graph = fxprune.analyze(gm)
    request = random_request(graph, 0.3, 0, exact_only=True)
    assert any(request.values())  # each of these models has exact groups
    assert_equivalent(fxprune.prune_channels(gm, graph, request),
                      fxprune.zero_channels(gm, graph, request), x, rtol=1e-4)
    slim = fxprune.prune_channels(gm, graph, random_request(graph, 0.3, 1))
    # export_onnx raises where onnxruntime and PyTorch (here on the GPU) disagree
    report = fxprune.export_onnx(slim, x, tmp_path / f"{name}.onnx")
    assert report.batch_sizes == (2, 3)


class _Crash(Exception):
    pass


def _crash_in_opt1(stage: str, total: int, start: int) -> tqdm:
    def epochs() -> Iterator[int]:
        for epoch in range(start, total):
            if stage == "opt1" and epoch == 2:
                raise _Crash  # as a killed process: the checkpoint of epoch 1 is on disk
            yield epoch
    return tqdm(epochs(), disable=True)


def test_the_job_runs_on_cuda_and_resumes_on_the_cpu(tmp_path: Path) -> None:
    cfg = JobConfig(device=CUDA, pretrain_epochs=3, opt1_epochs=4, finetune_epochs=1,
                    out=str(tmp_path / "whole"))
    report = Job(cfg).run()
    assert report["macs_after"] < report["macs_before"]
    assert (tmp_path / "whole" / "model.onnx").is_file()
    # a checkpoint written on the GPU mid-opt1 resumes, and finishes, on a CPU-only machine
    crashed = dataclasses.replace(cfg, out=str(tmp_path / "crashed"))
    with pytest.raises(_Crash):
        Job(crashed, progress=_crash_in_opt1).run()
    checkpoint = tmp_path / "crashed" / "checkpoint.pt"
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert (saved["stage"], saved["epoch"]) == ("opt1", 2)
    resumed = Job(dataclasses.replace(crashed, device="cpu"), resume=True).run()
    assert (tmp_path / "crashed" / "model.onnx").is_file()
    assert resumed["macs_after"] < resumed["macs_before"]
    # the GPU's pre-training was kept, not redone on the CPU
    done = torch.load(checkpoint, map_location="cpu", weights_only=True)
    for key, value in saved["pretrained"].items():
        torch.testing.assert_close(done["pretrained"][key], value, rtol=0, atol=0)
