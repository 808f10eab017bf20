"""Missing, truncated or malformed dataset files, and failed downloads: one clear DataError line."""

from __future__ import annotations

import gzip

import pytest
import torchvision

from conftest import compose_config, run_cli
from dataset_files import IDX_NAMES, idx_bytes, write_cifar10, write_house_csv, write_idx, write_leaves
from dlrun.config import validate
from dlrun.data.build import load_splits
from dlrun.errors import DataError


def load(*overrides: str):
    return load_splits(validate(compose_config(*overrides)).dataset)


def test_missing_idx_files_name_the_files_and_the_folder(tmp_path):
    with pytest.raises(DataError) as error:
        load("dataset=fashion_mnist", f"dataset.root={tmp_path}", "dataset.download=false")
    message = str(error.value)
    assert f"expected {', '.join(n + '.gz' for n in IDX_NAMES)} in {tmp_path / 'FashionMNIST' / 'raw'}" in message
    assert message.startswith("FashionMNIST: files not found; ") and "\n" not in message


def test_cli_reports_missing_files_in_one_line_with_exit_code_2(tmp_path):
    result = run_cli("dataset=mnist", f"dataset.root={tmp_path}", "dataset.download=false", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dlrun: error: MNIST: files not found; expected "), result.stderr
    assert str(tmp_path / "MNIST" / "raw") in lines[0]


def test_a_failed_download_says_where_to_place_the_files(tmp_path, monkeypatch):
    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: no network")

    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "download", offline)
    with pytest.raises(DataError, match=r"FashionMNIST: download failed \(Error downloading .*no network\); "
                                        r"expected .* in .*FashionMNIST/raw"):
        load("dataset=fashion_mnist", f"dataset.root={tmp_path}", "dataset.download=true")


def test_idx_files_placed_by_hand_are_read_exactly(tmp_path):
    arrays = write_idx(tmp_path / "MNIST" / "raw", num_train=30, num_test=10)
    splits = load("dataset=mnist", f"dataset.root={tmp_path}", "dataset.download=false")
    assert splits.train.inputs.shape == (30, 1, 28, 28) and splits.train.inputs.dtype.is_floating_point is False
    assert (splits.train.inputs[:, 0].numpy() == arrays["train-images-idx3-ubyte"]).all()
    assert (splits.test.targets.numpy() == arrays["t10k-labels-idx1-ubyte"]).all()


def test_truncated_gzip_is_reported(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    write_idx(raw)
    archive = raw / "train-images-idx3-ubyte.gz"
    archive.write_bytes(archive.read_bytes()[:200])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz is not a complete gzip file"):
        load("dataset=fashion_mnist", f"dataset.root={tmp_path}", "dataset.download=false")
    assert not (raw / "train-images-idx3-ubyte").exists()  # no half-extracted file left behind


def test_truncated_idx_file_is_reported(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    arrays = write_idx(raw)
    full = idx_bytes(arrays["train-images-idx3-ubyte"])
    (raw / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(full[: len(full) // 2]))
    with pytest.raises(DataError, match="MNIST: cannot read the training files"):
        load("dataset=mnist", f"dataset.root={tmp_path}", "dataset.download=false")


def test_cifar10_batches_are_read_and_a_malformed_one_is_reported(tmp_path):
    write_cifar10(tmp_path, per_batch=4)
    splits = load("dataset=cifar10", f"dataset.root={tmp_path}", "dataset.download=false")
    assert splits.train.inputs.shape == (20, 3, 32, 32) and splits.test.inputs.shape == (4, 3, 32, 32)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="CIFAR-10: cannot read data_batch_3"):
        load("dataset=cifar10", f"dataset.root={tmp_path}", "dataset.download=false")
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DataError, match=r"CIFAR-10: missing test_batch; expected data_batch_1, .* test_batch in"):
        load("dataset=cifar10", f"dataset.root={tmp_path}", "dataset.download=false")


def test_text_file_missing_or_download_failing(tmp_path):
    missing = tmp_path / "nothing.txt"
    with pytest.raises(DataError, match=f"text file {missing} not found"):
        validate(compose_config("dataset=text", f"dataset.path={missing}"))
    # A closed local port: the download fails at once, without any network.
    with pytest.raises(DataError, match=r"download of http://127.0.0.1:9/timemachine.txt failed .* place it at "):
        validate(compose_config("dataset=time_machine", f"dataset.path={tmp_path / 'tm.txt'}",
                                "dataset.url=http://127.0.0.1:9/timemachine.txt"))
    assert list(tmp_path.iterdir()) == []  # no partial file


def test_csv_problems_are_named(tmp_path):
    path = tmp_path / "house.csv"
    with pytest.raises(DataError, match=f"CSV file {path} not found"):
        validate(compose_config("dataset=csv", f"dataset.path={path}", "dataset.target=SalePrice"))
    write_house_csv(path)
    with pytest.raises(DataError, match="dataset.target='Price' is not a column of .*; columns: Id, LotArea, Street, Zero, Quality, SalePrice"):
        validate(compose_config("dataset=csv", f"dataset.path={path}", "dataset.target=Price"))
    path.write_text(path.read_text() + "41,1000,Pave\n")
    with pytest.raises(DataError, match="line 42: 3 fields, the header has 6"):
        validate(compose_config("dataset=csv", f"dataset.path={path}", "dataset.target=SalePrice"))


def test_image_folder_problems_are_named(tmp_path):
    with pytest.raises(DataError, match=f"image folder {tmp_path / 'none'} not found"):
        validate(compose_config("dataset=image_folder", f"dataset.root={tmp_path / 'none'}"))
    write_leaves(tmp_path)
    (tmp_path / "images" / "4.png").unlink()
    with pytest.raises(DataError, match="train.csv lists 1 images not found under .*, e.g. images/4.png"):
        load("dataset=image_folder", f"dataset.root={tmp_path}", "dataset.labels_csv=train.csv")


def test_a_labels_csv_that_names_a_column_twice_is_refused(tmp_path):
    from dlrun.data.image_listing import list_images

    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "train.csv").write_text("image,label,label\na.png,cat,dog\n")
    with pytest.raises(DataError, match=r"the header names column 'label' twice \(columns 2 and 3\)"):
        list_images(str(tmp_path), "train.csv")
