"""Odd input files are refused where they are read, naming the culprit, never read silently wrong."""

from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import compose_config
from dataset_files import write_house_csv, write_image_folder
from dlrun.config import validate
from dlrun.data.image_listing import list_images
from dlrun.data.tabular import TableEncoder, encode_csv, read_csv
from dlrun.errors import DataError
from dlrun.train import run


def test_a_symbolic_link_loop_or_a_folder_reached_twice_is_named(tmp_path):
    write_image_folder(tmp_path / "images", per_class=4)
    assert len(list_images(str(tmp_path / "images")).samples) == 8
    loop = tmp_path / "images" / "cat" / "again"
    os.symlink(tmp_path / "images", loop)  # following it, os.walk read the images over and over, under both labels
    with pytest.raises(DataError, match=f"^{loop} is a symbolic link to {tmp_path / 'images'}, a folder it lies in"):
        list_images(str(tmp_path / "images"))
    loop.unlink()
    twice = tmp_path / "images" / "cat" / "dogs_too"
    os.symlink(tmp_path / "images" / "dog", twice)
    with pytest.raises(DataError, match="are the same folder .* reached twice through a symbolic link"):
        list_images(str(tmp_path / "images"))
    twice.unlink()
    first_dog = sorted((tmp_path / "images" / "dog").iterdir())[0]
    os.symlink(first_dog, tmp_path / "images" / "cat" / "a_dog.png")  # one image under two labels
    with pytest.raises(DataError, match=f"{tmp_path / 'images' / 'dog' / first_dog.name} .* same file"):
        list_images(str(tmp_path / "images"))


def test_a_link_to_images_elsewhere_is_followed(tmp_path):
    write_image_folder(tmp_path / "store", per_class=3)
    (tmp_path / "images").mkdir()
    for name in ("cat", "dog"):
        os.symlink(tmp_path / "store" / name, tmp_path / "images" / name)
    listing = list_images(str(tmp_path / "images"))
    assert len(listing.samples) == 6 and listing.classes == ("cat", "dog")


def test_csv_headers_are_checked_and_a_byte_order_mark_is_not_part_of_a_name(tmp_path):
    twice = tmp_path / "twice.csv"
    twice.write_text("x,price,price\n1,2,3\n4,5,6\n")
    with pytest.raises(DataError, match=r"the header names column 'price' twice \(columns 2 and 3\)"):
        encode_csv(str(twice), "price", "regression")
    house = tmp_path / "house.csv"
    write_house_csv(house)
    excel = tmp_path / "excel.csv"
    excel.write_bytes(b"\xef\xbb\xbf" + house.read_bytes())  # Excel's "CSV UTF-8"
    assert read_csv(excel)[0] == read_csv(house)[0] and read_csv(excel)[0][0] == "Id"
    trained = encode_csv(str(excel), "SalePrice", "regression")
    header, rows = read_csv(house)  # predicting from a file without the mark
    assert np.array_equal(trained.encoder.transform(header, rows, "house.csv"), trained.features)
    old = TableEncoder.from_state({"columns": [{"name": "\ufeffId", "kind": "numeric", "mean": 0.0, "std": 1.0}]})
    assert old.transform(header, rows, "house.csv").shape == (40, 1)  # an encoder saved with the mark in a name


def test_a_non_finite_number_or_a_stray_word_in_a_numeric_column_is_named(tmp_path):
    lines = ["age,city,price"] + [f"{20 + n},{'ab'[n % 2]},{n * 1.5}" for n in range(30)]
    path = tmp_path / "people.csv"
    path.write_text("\n".join(lines) + "\n")
    table = encode_csv(str(path), "price", "regression")
    assert table.feature_names == ("age", "city=a", "city=b", "city=<missing>")
    for bad in ("inf", "-Infinity", "twelve"):
        path.write_text("\n".join(lines[:7] + [f"{bad},a,3"] + lines[7:]) + "\n")
        kind = "not a number" if bad == "twelve" else "not a finite number"
        with pytest.raises(DataError, match=f"line 8: column 'age' holds '{bad}', {kind}, among numbers"):
            encode_csv(str(path), "price", "regression")
    path.write_text("\n".join(lines[:5] + ["22,7,3"] + lines[5:]) + "\n")  # a number among words: a category
    assert "city=7" in encode_csv(str(path), "price", "regression").feature_names


def test_a_non_finite_regression_target_is_named_before_training(tmp_path, cfg_for):
    path = tmp_path / "house.csv"
    write_house_csv(path)
    text = path.read_text().splitlines()
    text[3] = text[3].rsplit(",", 1)[0] + ",inf"
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=r"line 4: target 'SalePrice' is 'inf', not a finite number"):
        validate(compose_config("dataset=csv", "model=mlp", f"dataset.path={path}", "dataset.target=SalePrice"))


def test_too_few_rows_for_the_splits_is_one_line(tmp_path, cfg_for):
    path = tmp_path / "one.csv"
    path.write_text("a,b,y\n1,2,3\n")
    with pytest.raises(DataError, match=r"dataset: 1 examples are too few for the splits asked for \(train 1, val 0, "
                                        r"test 0; dataset.val_fraction=0.1\): the test split would be empty"):
        run(cfg_for("dataset=csv", "model=mlp", f"dataset.path={path}", "dataset.target=y"), run_dir=tmp_path / "r")
