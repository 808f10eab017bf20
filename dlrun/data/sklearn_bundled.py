"""Datasets scikit-learn ships inside its package: real data that needs no download.

Each loader runs once per arguments and scikit-learn version; later runs read its splits from
dlrun.data.prepared_cache, so scikit-learn (and SciPy, which it imports) is imported only then.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from dlrun.data.prepared_cache import prepared_once
from dlrun.data.splits import DataSplits, TensorSplit


@prepared_once
def load_digits(test_fraction: float = 0.2, seed: int = 0) -> DataSplits:
    """1,797 8x8 grey images of digits 0-9, scaled to [0, 1]; a stratified test split drawn by seed."""
    from sklearn import datasets

    images, labels = datasets.load_digits(return_X_y=True)

    def split(x, y) -> TensorSplit:
        pixels = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
        return TensorSplit(pixels, torch.tensor(y, dtype=torch.long))

    return _splits(images, labels, test_fraction, seed, split, stratify=True)


@prepared_once
def load_diabetes(test_fraction: float = 0.2, seed: int = 0) -> DataSplits:
    """442 patients, 10 standardized features, disease progression after a year (25-346) to regress."""
    from sklearn import datasets

    bunch = datasets.load_diabetes()

    def split(x, y) -> TensorSplit:
        return TensorSplit(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32))

    # age, sex, bmi, bp, s1 .. s6
    return _splits(bunch.data, bunch.target, test_fraction, seed, split,
                   extras={"feature_names": list(bunch.feature_names)})


@prepared_once
def load_breast_cancer(test_fraction: float = 0.2, seed: int = 0) -> DataSplits:
    """569 tumours, 30 measurements (standardized with the training split's statistics), malignant (1) or
    benign (0): a yes/no target whose positive class is the condition; a stratified test split drawn by seed."""
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    bunch = datasets.load_breast_cancer()
    malignant = (bunch.target == 0).astype(np.int64)  # scikit-learn codes malignant as 0
    train_x = train_test_split(bunch.data, test_size=test_fraction, random_state=seed, stratify=malignant)[0] \
        if test_fraction > 0 else bunch.data
    mean, std = train_x.mean(axis=0), train_x.std(axis=0)  # measurements span 0.001 to 4000: standardized

    def split(x, y) -> TensorSplit:
        return TensorSplit(torch.tensor((x - mean) / std, dtype=torch.float32), torch.tensor(y, dtype=torch.long))

    return _splits(bunch.data, malignant, test_fraction, seed, split, stratify=True,
                   extras={"feature_names": [str(name) for name in bunch.feature_names],
                           "classes": ["benign", "malignant"]})


def _splits(features: np.ndarray, targets: np.ndarray, test_fraction: float, seed: int, split: Any,
            stratify: bool = False, extras: Optional[dict[str, Any]] = None) -> DataSplits:
    """A test split of `test_fraction` drawn by seed (stratified by the targets); none when it is 0."""
    from sklearn.model_selection import train_test_split

    if test_fraction == 0:  # every example trains: a final model (dataset.test_fraction=0)
        return DataSplits(train=split(features, targets), test=split(features[:0], targets[:0]), extras=extras or {})
    train_x, test_x, train_y, test_y = train_test_split(features, targets, test_size=test_fraction, random_state=seed,
                                                        stratify=targets if stratify else None)
    return DataSplits(train=split(train_x, train_y), test=split(test_x, test_y), extras=extras or {})
