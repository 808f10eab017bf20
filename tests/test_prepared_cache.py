"""scikit-learn's bundled datasets are prepared once and read back without importing scikit-learn."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import torch

from dlrun.data import prepared_cache, sklearn_bundled

# Loads the digits twice in one fresh process: prints whether scikit-learn was imported each time.
LOAD_DIGITS = """import sys
from dlrun.data.sklearn_bundled import load_digits
load_digits(test_fraction=0.25, seed=3)
print("sklearn imported:", "sklearn" in sys.modules)
"""


def _same(first, second) -> None:
    for part in ("train", "test"):
        assert torch.equal(getattr(first, part).inputs, getattr(second, part).inputs)
        assert torch.equal(getattr(first, part).targets, getattr(second, part).targets)
    assert first.extras == second.extras and first.val is None and second.val is None


def test_a_later_run_reads_the_split_scikit_learn_drew_without_importing_it(tmp_path):
    environment = {**os.environ, prepared_cache.CACHE_ROOT_VARIABLE: str(tmp_path)}
    runs = [subprocess.run([sys.executable, "-c", LOAD_DIGITS], capture_output=True, text=True, timeout=120,
                           env=environment).stdout for _ in range(2)]
    assert runs == ["sklearn imported: True\n", "sklearn imported: False\n"]
    assert [path.name.split("-")[0] for path in tmp_path.iterdir()] == ["load_digits"]
    # What was kept is what scikit-learn's stratified split gives, example for example.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    images, labels = load_digits(return_X_y=True)
    _, test_images, _, test_labels = train_test_split(images, labels, test_size=0.25, random_state=3, stratify=labels)
    os.environ[prepared_cache.CACHE_ROOT_VARIABLE] = str(tmp_path)  # undone by conftest's monkeypatch
    cached = sklearn_bundled.load_digits(test_fraction=0.25, seed=3)
    assert torch.equal(cached.test.targets, torch.tensor(test_labels))
    assert torch.equal(cached.test.inputs.flatten(1) * 16, torch.tensor(test_images, dtype=torch.float32))


def test_other_arguments_other_files_and_defaults_name_the_same_one(tmp_path, monkeypatch):
    monkeypatch.setenv(prepared_cache.CACHE_ROOT_VARIABLE, str(tmp_path))
    default = sklearn_bundled.load_breast_cancer()
    _same(default, sklearn_bundled.load_breast_cancer(0.2, seed=0))  # the same arguments, spelled otherwise
    assert len(list(tmp_path.iterdir())) == 1
    other = sklearn_bundled.load_breast_cancer(seed=1)
    assert len(list(tmp_path.iterdir())) == 2
    assert not torch.equal(default.test.targets, other.test.targets)
    assert default.extras["classes"] == ["benign", "malignant"] and len(default.extras["feature_names"]) == 30


def test_a_new_scikit_learn_prepares_again(tmp_path, monkeypatch):
    monkeypatch.setenv(prepared_cache.CACHE_ROOT_VARIABLE, str(tmp_path))
    sklearn_bundled.load_diabetes()
    monkeypatch.setattr(prepared_cache.metadata, "version", lambda name: "99.0")
    sklearn_bundled.load_diabetes()
    assert len(list(tmp_path.iterdir())) == 2


def test_a_damaged_file_is_prepared_again_and_replaced(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(prepared_cache.CACHE_ROOT_VARIABLE, str(tmp_path))
    fresh = sklearn_bundled.load_digits()
    (kept,) = tmp_path.iterdir()
    kept.write_bytes(b"not a torch file")
    with caplog.at_level(logging.WARNING, logger="dlrun"):
        _same(sklearn_bundled.load_digits(), fresh)
    assert f"the prepared dataset {kept} could not be read" in caplog.text
    assert kept.stat().st_size > 100_000  # written again: 1,797 images of 8x8 float32
    _same(sklearn_bundled.load_digits(), fresh)


def test_a_folder_that_cannot_be_written_is_skipped_with_a_warning(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("a file where the cache folder's parent should be (refused to root as well)")
    monkeypatch.setenv(prepared_cache.CACHE_ROOT_VARIABLE, str(blocker / "datasets"))
    with caplog.at_level(logging.WARNING, logger="dlrun"):
        splits = sklearn_bundled.load_digits()
    assert len(splits.train) + len(splits.test) == 1797
    assert f"could not keep the prepared dataset in {blocker / 'datasets'}" in caplog.text
    assert "set DLRUN_DATASET_CACHE to a writable folder" in caplog.text
