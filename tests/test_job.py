"""`fxprune prune`: the job end to end on digits, resume after kill -9 and after a crash at
every kind of checkpoint, baselines, bad input, CIFAR and image-folder data, and torchrun with
two processes."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from tqdm import tqdm

from fxprune.app.cli import main
from fxprune.app.datasets import load_data
from fxprune.app.job import Job, JobConfig
from fxprune.errors import InputError
from fxprune.pruner import DEFAULT_C

TINY = ["--pretrain-epochs", "2", "--opt1-epochs", "3", "--finetune-epochs", "1"]


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def _comparable(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in ("seconds", "config", "onnx")}


def _text(report: dict) -> str:
    """The comparable report as JSON text: NaN figures (a degenerate tiny run) compare equal."""
    return json.dumps(_comparable(report), default=float)


class _Crash(Exception):
    """Where a killed process would stop: its last checkpoint is on disk."""


def _crash_at(stage: str, epoch: int, nth: int = 1) -> Callable[[str, int, int], Iterator[int]]:
    """A progress hook that crashes the job the `nth` time `stage` is about to train `epoch`."""
    seen = []

    def progress(name: str, total: int, start: int) -> tqdm:
        def epochs() -> Iterator[int]:
            for e in range(start, total):
                if (name, e) == (stage, epoch):
                    seen.append(e)
                    if len(seen) == nth:
                        raise _Crash
                yield e
        return tqdm(epochs(), disable=True)
    return progress


def test_default_job_writes_every_output(tmp_path: Path) -> None:
    cfg = JobConfig(pretrain_epochs=3, opt1_epochs=4, finetune_epochs=1, out=str(tmp_path))
    report = Job(cfg).run()
    for name in ("report.md", "report.json", "model.onnx", "model.pt2", "groups.html",
                 "log10_c.png", "decision_vs_magnitude.png", "training.png", "channels.png"):
        assert (tmp_path / name).is_file(), name
    saved = _report(tmp_path)
    for key in ("baseline_acc", "final_acc", "acc_before_prune", "acc_after_prune", "macs_before",
                "macs_after", "macs_ratio", "params_before", "params_after", "margin", "converged"):
        assert key in saved, key
    assert set(saved["seconds"]) >= {"pretrain", "opt1", "prune", "finetune", "export"}
    assert report["macs_after"] < report["macs_before"]
    assert "![training.png](training.png)" in (tmp_path / "report.md").read_text()


def _cli(*args: str, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "fxprune", "prune", *TINY, "-o", str(out), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def test_kill_9_and_resume_ends_as_an_uninterrupted_run(tmp_path: Path) -> None:
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert _cli(out=whole).wait(timeout=300) == 0
    proc = _cli(out=killed)
    checkpoint = killed / "checkpoint.pt"
    deadline = time.time() + 240
    while time.time() < deadline:  # kill once opt1 has written a checkpoint
        if checkpoint.is_file():
            state = torch.load(checkpoint, weights_only=True)
            if state["stage"] == "opt1" and state["epoch"] >= 1:
                break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "report.json").exists()
    resumed = _cli("--resume", out=killed)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    assert _comparable(_report(killed)) == _comparable(_report(whole))


def test_a_baseline_meets_a_macs_target_by_ranking(tmp_path: Path) -> None:
    cfg = JobConfig(method="l1", target_macs=0.5, round_to=2, pretrain_epochs=2,
                    finetune_epochs=1, out=str(tmp_path))
    report = Job(cfg).run()
    assert report["macs_after"] <= 0.5 * report["macs_before"]
    # DigitsNet's groups have 32 or 64 channels: an even number removed keeps an even number
    assert report["removed"] and all(len(v) % 2 == 0 for v in report["removed"].values())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["torchvision:resnet5"], "no classification model 'resnet5'"),
        (["{file}:not_a_model"], "not a torch.nn.Module"),
        (["torchvision:resnet18"], "do not run through the model"),  # 1-channel digits
        (["--lr", "1e6", "--pretrain-epochs", "1"], "the loss became"),
        (["--resume"], "checkpoint"),
    ],
)
def test_bad_input_stops_with_a_clear_message_and_no_report(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user = tmp_path / "user.py"
    user.write_text("def not_a_model():\n    return 3\n")
    out = tmp_path / "out"
    if "--resume" in argv:
        out.mkdir()
        (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    argv = [a.replace("{file}", str(user)) for a in argv]
    assert main(["prune", *argv, "--opt1-epochs", "1", "--finetune-epochs", "1", "-o", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not (out / "report.json").exists() and not (out / "model.onnx").exists()


def _cifar_folder(root: Path, classes: int) -> None:
    folder = root / ("cifar-10-batches-py" if classes == 10 else "cifar-100-python")
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    key = b"labels" if classes == 10 else b"fine_labels"

    def batch(n: int) -> dict:
        return {b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8),
                key: rng.integers(0, classes, n).tolist()}

    names = ([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if classes == 10
             else ["train", "test"])
    for name in names:
        with open(folder / name, "wb") as f:
            pickle.dump(batch(8), f)
    meta = {b"label_names": [b"x"] * 10} if classes == 10 else {b"fine_label_names": [b"x"] * 100}
    with open(folder / ("batches.meta" if classes == 10 else "meta"), "wb") as f:
        pickle.dump(meta, f)


@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_folders_in_the_standard_format_load(tmp_path: Path, classes: int) -> None:
    _cifar_folder(tmp_path, classes)
    data = load_data(f"cifar{classes}", str(tmp_path))
    assert data.num_classes == classes and data.input_shape == (3, 32, 32)
    assert len(data.train) == (40 if classes == 10 else 8) and len(data.test) == 8
    x, y = data.train[0]
    assert x.shape == (3, 32, 32) and 0 <= y < classes


def test_the_job_runs_on_a_cifar_folder(tmp_path: Path) -> None:
    _cifar_folder(tmp_path / "data", 10)
    cfg = JobConfig(data="cifar10", data_dir=str(tmp_path / "data"), pretrain_epochs=1,
                    opt1_epochs=1, finetune_epochs=1, out=str(tmp_path / "out"))
    report = Job(cfg).run()
    assert report["macs_before"] > 0 and (tmp_path / "out" / "model.onnx").is_file()


def test_image_folders_load(tmp_path: Path) -> None:
    from PIL import Image

    for split in ("train", "val"):
        for label in ("cat", "dog"):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (20, 24), (i * 40, 90, 200)).save(tmp_path / split / label / f"{i}.png")
    data = load_data("imagefolder", str(tmp_path), image_size=16)
    assert data.num_classes == 2 and len(data.train) == 6 and data.train[0][0].shape == (3, 16, 16)


@pytest.mark.parametrize("name", ["cifar10", "imagefolder"])
def test_missing_data_says_what_to_put_where(tmp_path: Path, name: str) -> None:
    with pytest.raises(InputError, match="put "):
        load_data(name, str(tmp_path / "nothing"))


def test_torchrun_two_processes_on_digits(tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([torchrun, "--nproc-per-node", "2", "-m", "fxprune", "prune", *TINY,
                             "-o", str(out)], capture_output=True, text=True, env=env, timeout=400)
    assert result.returncode == 0, result.stderr[-2000:]
    report = _report(out)
    assert report["macs_before"] > 0 and (out / "model.onnx").is_file()


def test_catalyst_meets_a_macs_target_by_choosing_c(tmp_path: Path) -> None:
    cfg = JobConfig(target_macs=0.5, pretrain_epochs=3, opt1_epochs=6, finetune_epochs=1,
                    out=str(tmp_path))
    report = Job(cfg).run()
    probes = report["calibration"]
    assert len(probes) == 4 and probes[0]["c"] == DEFAULT_C
    # bisection: a probe that pruned too little raises c0, one that pruned enough lowers it
    for before, after in zip(probes, probes[1:]):
        assert (after["c"] > before["c"]) == (before["fraction"] > 0.5)
    under = [p for p in probes if p["fraction"] <= 0.5]
    chosen = min(under or probes, key=lambda p: abs(p["fraction"] - 0.5))
    assert report["chosen_c"] == chosen["c"]
    assert report["macs_after"] / report["macs_before"] == pytest.approx(chosen["fraction"])


CALIBRATED = {"pretrain_epochs": 1, "opt1_epochs": 2, "finetune_epochs": 1, "target_macs": 0.5}


@pytest.fixture(scope="module")
def calibrated_whole(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("whole")
    return _text(Job(JobConfig(**CALIBRATED, out=str(out))).run())


@pytest.mark.parametrize(
    ("stage", "epoch", "nth", "probes"),
    [("opt1", 0, 2, 1), ("opt1", 1, 3, 2), ("finetune", 0, 1, 4)],
    ids=["between-calibration-runs", "inside-a-calibration-run", "at-a-stage-start"],
)
def test_a_calibrating_job_resumed_anywhere_ends_as_an_uninterrupted_one(
    stage: str, epoch: int, nth: int, probes: int, calibrated_whole: str, tmp_path: Path
) -> None:
    cfg = JobConfig(**CALIBRATED, out=str(tmp_path))
    with pytest.raises(_Crash):
        Job(cfg, progress=_crash_at(stage, epoch, nth)).run()
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert (saved["stage"], saved["epoch"]) == (stage, epoch)
    assert len(saved["calibration"]["probes"]) == probes
    assert _text(Job(cfg, resume=True).run()) == calibrated_whole


class _KilledAfterOpt1(Job):
    """Killed after opt1's last checkpoint, before the prune stage's."""

    def _advance(self) -> None:
        if self.state.stage == "opt1":
            raise _Crash
        super()._advance()


def test_an_opt1_that_converged_early_trains_no_further_after_a_resume(tmp_path: Path) -> None:
    # kappa 0.05: every |log10 c| starts at log10(1.2) > kappa, so opt1 converges in one epoch
    settings = {"pretrain_epochs": 1, "opt1_epochs": 3, "finetune_epochs": 1, "kappa": 0.05,
                "c": 1.2}
    whole = Job(JobConfig(**settings, out=str(tmp_path / "whole"))).run()
    history = _report(tmp_path / "whole")["history"]
    assert whole["converged"] and [h["epoch"] for h in history if h["stage"] == "opt1"] == [0]
    cfg = JobConfig(**settings, out=str(tmp_path / "killed"))
    with pytest.raises(_Crash):
        _KilledAfterOpt1(cfg).run()
    assert _text(Job(cfg, resume=True).run()) == _text(whole)
    assert _report(tmp_path / "killed")["history"] == history


def test_a_baseline_resumes_after_its_decision(tmp_path: Path) -> None:
    settings = {"method": "l1", "target_macs": 0.5, "pretrain_epochs": 1, "finetune_epochs": 2}
    whole = Job(JobConfig(**settings, out=str(tmp_path / "whole"))).run()
    cfg = JobConfig(**settings, out=str(tmp_path / "crashed"))
    with pytest.raises(_Crash):
        Job(cfg, progress=_crash_at("finetune", 1)).run()
    assert _text(Job(cfg, resume=True).run()) == _text(whole)


def test_an_unconverged_opt1_names_its_groups_and_continues_with_a_larger_budget(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert main(["prune", "--pretrain-epochs", "2", "--opt1-epochs", "1", "--finetune-epochs",
                 "1", "-o", str(out)]) == 0
    report = _report(out)
    assert report["converged"] is False and sum(report["undecided"].values()) > 0
    assert "channels undecided in group" in (out / "report.md").read_text()
    printed = capsys.readouterr().out
    command = printed.split("Continue it with\n")[1].split()
    assert command[0] == "fxprune" and command[-3:] == ["--resume", "--opt1-epochs", "2"]
    assert main(command[1:]) == 0
    continued = _report(out)
    assert [h["epoch"] for h in continued["history"] if h["stage"] == "opt1"] == [0, 1]
    assert [h["stage"] for h in continued["history"]].count("finetune") == 1
    # the continued opt1 started from the weights the first budget ended with
    first = [h for h in report["history"] if h["stage"] == "opt1"]
    assert continued["history"][:len(first) + 2] == report["history"][:len(first) + 2]


def test_precise_bn_re_estimates_running_statistics_in_place() -> None:
    from torch.utils.data import TensorDataset

    from fxprune.app.training import precise_bn

    torch.manual_seed(0)
    x = torch.randn(64, 3, 4, 4) * 3 + 2
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 1), torch.nn.BatchNorm2d(5)).eval()
    bn = model[1]
    bn.running_mean.fill_(100.0)  # stale, as after weights moved under it
    loader = torch.utils.data.DataLoader(TensorDataset(x, torch.zeros(64)), batch_size=16,
                                         generator=torch.Generator())  # as the job's
    state = torch.get_rng_state()
    precise_bn(model, loader)
    with torch.no_grad():
        u = model[0](x)
    torch.testing.assert_close(bn.running_mean, u.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert not model.training and bn.momentum == 0.1
    assert torch.equal(torch.get_rng_state(), state)  # training's random numbers untouched


def test_the_g_option_reaches_catalyst(tmp_path: Path) -> None:
    # G with the consumers' input columns is larger, so D = c0 ||G|| and the penalty are too
    penalty = {}
    for g in ("group", "full"):
        cfg = JobConfig(g=g, pretrain_epochs=1, opt1_epochs=1, finetune_epochs=1,
                        out=str(tmp_path / g))
        Job(cfg).run()
        (row,) = [h for h in _report(tmp_path / g)["history"] if h["stage"] == "opt1"]
        penalty[g] = row["penalty"]
    assert penalty["full"] > 1.2 * penalty["group"] > 0
    with pytest.raises(InputError, match="unknown G 'rows': choose one of group, full, bn"):
        Job(JobConfig(g="rows", out=str(tmp_path / "bad")))
