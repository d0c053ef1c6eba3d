"""Training data for the pruning job: digits (embedded: it ships with scikit-learn), CIFAR-10/100
and image folders.

CIFAR is read from its pickled python batches by a restricted unpickler (dicts, lists and
numpy arrays only): torchvision's loader insists on the official files' checksums.

Nothing is downloaded at run time: CIFAR must be in its standard python format
(``DATA_DIR/cifar-10-batches-py/`` or ``DATA_DIR/cifar-100-python/``) and image folders in
torchvision's layout (``DATA_DIR/train/<class>/*.png`` and ``DATA_DIR/val/<class>/*``).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from fxprune.errors import InputError

DATASETS = ("digits", "cifar10", "cifar100", "imagefolder")
_CIFAR_FOLDER = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_CIFAR_FILES = {"cifar10": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
                "cifar100": (["train"], ["test"], b"fine_labels")}


def digits(*, seed: int = 0, test_fraction: float = 0.2) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's 1,797 handwritten digits (8x8, 10 classes) as (train, test) tensors.

    Images are scaled to [0, 1] and standardised with the training set's mean and std; the
    split is stratified and fixed by `seed`. Nothing is downloaded: the data ships with
    scikit-learn.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0
    train_x, test_x, train_y, test_y = train_test_split(
        images, bunch.target, test_size=test_fraction, random_state=seed, stratify=bunch.target)
    mean, std = train_x.mean(), train_x.std()

    def tensors(x: np.ndarray, y: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.from_numpy((x - mean) / std).unsqueeze(1),
                             torch.from_numpy(y.astype(np.int64)))

    return tensors(train_x, train_y), tensors(test_x, test_y)


class _BatchUnpickler(pickle.Unpickler):
    """CIFAR's python batches are pickles of dicts, lists and numpy arrays: allow only those."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


class CifarBatches(Dataset):
    """CIFAR-10/100 in the standard python format (pickled batches of 32x32 RGB images)."""

    def __init__(self, folder: Path, files: list[str], label_key: bytes,
                 transform: Callable[[object], object]) -> None:
        images, labels = [], []
        for name in files:
            try:
                with open(folder / name, "rb") as f:
                    batch = _BatchUnpickler(f, encoding="bytes").load()
                images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels.extend(int(v) for v in batch[label_key])
            except (OSError, KeyError, ValueError, pickle.UnpicklingError, EOFError) as exc:
                raise InputError(f"cannot read the CIFAR batch {folder / name}: {exc}") from exc
        self.images = np.concatenate(images).transpose(0, 2, 3, 1)  # HWC for PIL
        self.targets = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[object, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index])), self.targets[index]
_CIFAR_MEAN, _CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class Data:
    train: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]  # one example, without the batch dim


def load_data(name: str, data_dir: str | None = None, *, seed: int = 0,
              image_size: int = 224) -> Data:
    """The named data set; a missing folder gets an error that says what to put where."""
    if name == "digits":
        train, test = digits(seed=seed)
        return Data(train, test, 10, (1, 8, 8))
    if name not in DATASETS:
        raise InputError(f"unknown data set '{name}': choose one of {', '.join(DATASETS)}")
    if data_dir is None:
        raise InputError(f"--data {name} needs --data-dir: {_where(name, Path('DATA_DIR'))}")
    root = Path(data_dir)
    import torchvision
    from torchvision import transforms as T

    if name in _CIFAR_FOLDER:
        if not (root / _CIFAR_FOLDER[name]).is_dir():
            raise InputError(f"no {name} data in {root}: {_where(name, root)}")
        train_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                              T.Normalize(_CIFAR_MEAN, _CIFAR_STD)])
        test_tf = T.Compose([T.ToTensor(), T.Normalize(_CIFAR_MEAN, _CIFAR_STD)])
        train_files, test_files, key = _CIFAR_FILES[name]
        folder = root / _CIFAR_FOLDER[name]
        train = CifarBatches(folder, train_files, key, train_tf)
        test = CifarBatches(folder, test_files, key, test_tf)
        return Data(train, test, 10 if name == "cifar10" else 100, (3, 32, 32))
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise InputError(f"no image folder {root / split}: {_where(name, root)}")
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    train = torchvision.datasets.ImageFolder(str(root / "train"), T.Compose([
        T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)]))
    test = torchvision.datasets.ImageFolder(str(root / "val"), T.Compose([
        T.Resize(image_size), T.CenterCrop(image_size), T.ToTensor(), T.Normalize(mean, std)]))
    return Data(train, test, len(train.classes), (3, image_size, image_size))


def _where(name: str, root: Path) -> str:
    if name in _CIFAR_FOLDER:
        return (f"put the python version of {name.upper()} (from "
                f"https://www.cs.toronto.edu/~kriz/cifar.html) unpacked at {root / _CIFAR_FOLDER[name]}")
    return f"put images at {root}/train/<class>/ and {root}/val/<class>/ (torchvision ImageFolder)"
