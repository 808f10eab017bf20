"""Image folders (class sub-folders, or Classify Leaves' CSV): file-backed batches with workers."""

from __future__ import annotations

import torch

from conftest import compose_config
from dataset_files import write_image_folder, write_leaves
from dlrun.data import build_data
from dlrun.data.files import FileLoader
from dlrun.schema import validate


def _data(*overrides: str):
    cfg = validate(compose_config("dataset=image_folder", "model=lenet", *overrides))
    return cfg, build_data(cfg, torch.device("cpu"), torch.Generator().manual_seed(0))


def test_class_folders_become_labels_and_batches_reach_the_model_size(tmp_path):
    write_image_folder(tmp_path, classes=("cat", "dog", "owl"), per_class=10)
    cfg, data = _data(f"dataset.root={tmp_path}", "dataset.image_size=16", "dataset.num_workers=2",
                      "trainer.batch_size=4")
    assert cfg.dataset.num_outputs == 3 and list(cfg.dataset.input_shape) == [3, 28, 28]
    assert isinstance(data.train, FileLoader) and data.extras["classes"] == ["cat", "dog", "owl"]
    assert (len(data.train.split), len(data.val.split), len(data.test.split)) == (22, 2, 6)
    names = [{path for path, _ in loader.split.samples} for loader in (data.train, data.val, data.test)]
    assert not names[0] & names[1] and not names[0] & names[2] and not names[1] & names[2]
    batches = list(data.train)
    assert len(batches) == 6 and batches[0][0].shape == (4, 3, 28, 28) and batches[0][1].dtype == torch.long
    labels = torch.cat([targets for _, targets in batches])
    assert sorted(labels.tolist()) == sorted(label for _, label in data.train.split.samples)
    assert data.train.example_input().shape == (1, 3, 28, 28)


def test_eval_is_deterministic_and_train_is_augmented(tmp_path):
    write_image_folder(tmp_path)
    _, data = _data(f"dataset.root={tmp_path}", "dataset.image_size=16", "dataset.num_workers=0",
                    "dataset.resize=null", "dataset.val_fraction=0.25")
    first, second = next(iter(data.val))[0], next(iter(data.val))[0]
    assert first.shape[1:] == (3, 16, 16) and torch.equal(first, second)
    train_view = data.train.split.dataset(training=True)[0][0]
    eval_view = data.train.split.dataset(training=False)[0][0]
    assert train_view.shape == eval_view.shape and not torch.equal(train_view, eval_view)


def test_classify_leaves_csv_layout(tmp_path):
    write_leaves(tmp_path)
    cfg, data = _data(f"dataset.root={tmp_path}", "dataset.labels_csv=train.csv", "dataset.num_workers=0",
                      "dataset.image_size=12", "dataset.resize=null")
    assert cfg.dataset.num_outputs == 3 and data.extras["classes"] == ["acer", "betula", "quercus"]
    inputs, targets = next(iter(data.test))
    assert inputs.shape[1:] == (3, 12, 12) and set(targets.tolist()) <= {0, 1, 2}
