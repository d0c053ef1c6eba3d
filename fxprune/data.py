"""Data sets: scikit-learn's digits (shipped with the package, the embedded default)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset


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
