"""The fast paths of the training step give the very same numbers as the plain ones."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from conftest import read_json
from dataset_files import write_idx
from dlrun.data.loader import TensorLoader, _rows, prepare_split, prepared_bytes
from dlrun.data.splits import TensorSplit
from dlrun.train import run

# MNIST-style uint8 images at 28x28 resized to 20x20: both per-batch transforms have work to do.
IMAGES = ("dataset=mnist", "dataset.download=false", "dataset.resize=20", "model=mlp", "optimizer=sgd",
          "trainer.batch_size=16", "trainer.epochs=1", "device=cpu")


def _prepare(batch: torch.Tensor) -> torch.Tensor:
    return F.interpolate(batch.float().div_(255), size=(12, 12), mode="bilinear", align_corners=False)


def test_a_split_prepared_once_gives_the_batches_prepared_per_batch_bitwise():
    generator = torch.Generator().manual_seed(0)
    split = TensorSplit(torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8, generator=generator),
                        torch.arange(50))
    prepared = prepare_split(split, _prepare, chunk=16)  # chunks of 16, 16, 16, 2
    assert prepared_bytes(split, _prepare) == 50 * 3 * 12 * 12 * 4 == prepared.inputs.nbytes
    order = torch.randperm(50, generator=generator)
    per_batch = TensorLoader(split, 8, shuffle=True, generator=generator, transform=_prepare)
    once = TensorLoader(prepared, 8, shuffle=True, generator=generator)
    for (a, ya), (b, yb) in zip(per_batch.batches(order), once.batches(order), strict=True):
        assert torch.equal(a, b) and torch.equal(ya, yb)


def test_rows_by_index_select_equal_advanced_indexing():
    tensor = torch.arange(60.0).reshape(20, 3)
    index = torch.tensor([5, 0, 19, 5])
    assert torch.equal(_rows(tensor, index), tensor[index])
    assert _rows(tensor, slice(2, 6)).data_ptr() == tensor[2:].data_ptr()  # a slice stays a view


def test_float_cache_trains_bitwise_like_per_batch_conversion(cfg_for, tmp_path, caplog):
    write_idx(tmp_path / "data" / "MNIST" / "raw", num_train=120, num_test=30)
    images = (*IMAGES, f"dataset.root={tmp_path / 'data'}")
    with caplog.at_level(logging.INFO, logger="dlrun"):
        cached = run(cfg_for(*images), run_dir=tmp_path / "cached")
    assert any(r.getMessage().startswith("inputs: prepared once") for r in caplog.records)
    assert not any(r.getMessage().startswith("inputs: prepared per batch") for r in caplog.records)
    per_batch = run(cfg_for(*images, "device.float_cache_mb=0"), run_dir=tmp_path / "per_batch")
    weights = [torch.load(tmp_path / name / "checkpoints" / "last.pt", weights_only=True)["model"]
               for name in ("cached", "per_batch")]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
    assert cached["test"] == per_batch["test"] == read_json(tmp_path / "per_batch" / "summary.json")["test"]
