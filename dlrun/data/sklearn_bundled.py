"""Datasets scikit-learn ships inside its package: real data that needs no download."""

from __future__ import annotations

import torch
from sklearn import datasets
from sklearn.model_selection import train_test_split

from dlrun.data.splits import DataSplits, TensorSplit


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> DataSplits:
    """1,797 8x8 grey images of digits 0-9, scaled to [0, 1]; a stratified test split drawn by seed."""
    images, labels = datasets.load_digits(return_X_y=True)
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )

    def split(x, y) -> TensorSplit:
        pixels = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
        return TensorSplit(pixels, torch.tensor(y, dtype=torch.long))

    return DataSplits(train=split(train_x, train_y), test=split(test_x, test_y))


def load_diabetes(test_fraction: float = 0.2, seed: int = 0) -> DataSplits:
    """442 patients, 10 standardized features, disease progression after a year (25-346) to regress."""
    bunch = datasets.load_diabetes()
    features, target = bunch.data, bunch.target
    train_x, test_x, train_y, test_y = train_test_split(features, target, test_size=test_fraction, random_state=seed)

    def split(x, y) -> TensorSplit:
        return TensorSplit(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32))

    return DataSplits(train=split(train_x, train_y), test=split(test_x, test_y),
                      extras={"feature_names": list(bunch.feature_names)})  # age, sex, bmi, bp, s1 .. s6
