"""Training data for the pruning job: digits (embedded), CIFAR-10/100 and image folders.

Nothing is downloaded at run time: CIFAR must be in its standard python format
(``DATA_DIR/cifar-10-batches-py/`` or ``DATA_DIR/cifar-100-python/``) and image folders in
torchvision's layout (``DATA_DIR/train/<class>/*.png`` and ``DATA_DIR/val/<class>/*``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from fxprune.data import digits
from fxprune.errors import InputError

DATASETS = ("digits", "cifar10", "cifar100", "imagefolder")
_CIFAR_FOLDER = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
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
        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        train_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                              T.Normalize(_CIFAR_MEAN, _CIFAR_STD)])
        test_tf = T.Compose([T.ToTensor(), T.Normalize(_CIFAR_MEAN, _CIFAR_STD)])
        try:
            train = cls(str(root), train=True, transform=train_tf, download=False)
            test = cls(str(root), train=False, transform=test_tf, download=False)
        except RuntimeError as exc:  # torchvision's message for missing or corrupt batches
            raise InputError(f"cannot read {name} from {root}: {exc}. {_where(name, root)}") from exc
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
