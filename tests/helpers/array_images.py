"""An in-memory image dataset read from an .npz of uint8 `images` (N, C, H, W) and `labels`, for tests.

Its test split is drawn exactly as an image folder's (`split_off` with the same seed), so the
same images as arrays and as a folder of PNG files (listed in the same order) are split alike.
"""

from __future__ import annotations

import numpy as np
import torch

from dlrun.data.splits import DataSplits, TensorSplit, split_off


def load_arrays(path: str, test_fraction: float = 0.2, seed: int = 0) -> DataSplits:
    arrays = np.load(path)
    everything = TensorSplit(torch.from_numpy(arrays["images"]), torch.from_numpy(arrays["labels"]).long())
    train, test = split_off(everything, test_fraction, seed)
    return DataSplits(train=train, test=test)
