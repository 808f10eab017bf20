"""`dlrun-predict <run dir> <input> [--out predictions.csv]`: a trained run's predictions for new inputs, as a CSV.

The input is read as the run's model takes it (data.json, dlrun.data.card):

- image models: a folder of images (flat or nested; hidden files and non-images ignored) or one
  image file, decoded at the model's channels and size; the id is the path relative to the folder.
  Or a CSV listing image paths (Kaggle's test.csv): one row per CSV row, in its order, keyed by
  `--id-column` (default: the first column); the paths are in `--image-column` (default: the
  first column whose first value is an image file), relative to the CSV's folder or to the
  training's `dataset.root`;
- tabular models: a CSV of feature columns (any order, extra columns ignored), encoded by the
  encoder fitted at training time; the id is `--id-column`, else the row number;
- language models: a text prefix, continued by `--length` tokens.

Detection runs write one row per box scoring `--min-score` or more (dlrun.tools.outputs.detection:
class, score, corners as fractions of the image) and, with `--draw <folder>`, the images with
their boxes drawn.

The CSV holds the id column and the prediction under the training target's name (`--target-name`
renames it; `prediction` when the training data named none): the class name, the regressed value
in the target's units (one column per target), the positive or negative class name (binary), or
the labels that apply, space-separated (multilabel). `--probs` adds a probability column per class
(binary: the positive class's; multilabel: each label's). Inputs go through the model in batches
on the run's device, with a progress bar in a terminal. So d2l's house-prices chapter ends with:

    dlrun-predict outputs/<run> test.csv --id-column Id --out submission.csv

and Kaggle's Classify Leaves (a test.csv of image paths) with:

    dlrun-predict outputs/<run> leaves/test.csv --out submission.csv
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from dlrun.report.console import console, with_progress
from rich.table import Table

from dlrun.atomic import atomic_write
from dlrun.data.card import DataCard
from dlrun.data.files import FileLoader, FileSplit
from dlrun.data.image_folder import default_workers
from dlrun.data.image_listing import images_under
from dlrun.data.images import is_image_file
from dlrun.data.loader import TensorLoader
from dlrun.data.splits import TensorSplit
from dlrun.data.tabular import read_csv
from dlrun.errors import ConfigError, DataError
from dlrun.tools.command import add_run_arguments, tool_main
from dlrun.tools.loaded_run import LoadedRun, load_run
from dlrun.tools.outputs import OutputOptions, outputs_for

SMALL_INPUT = 256  # fewer images than this are decoded in this process: starting workers would take longer
Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]  # (inputs, their row numbers)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="dlrun-predict", description=__doc__.split("\n\n")[0])
    add_run_arguments(parser)
    parser.add_argument("input", help="a folder of images, an image file or a CSV of image paths; a CSV of "
                        "feature columns; or a text prefix (language models)")
    parser.add_argument("--out", type=Path, default=Path("predictions.csv"), help="the CSV to write "
                        "(default: predictions.csv)")
    parser.add_argument("--id-column", default=None, help="CSV input: the column copied as the id (default: row "
                        "numbers for feature rows, the first column for image paths)")
    parser.add_argument("--image-column", default=None, help="CSV of image paths: the column that holds them "
                        "(default: the first whose first value is an image file)")
    parser.add_argument("--target-name", default=None, help="name of the prediction column (default: the training "
                        "target's name, else prediction)")
    parser.add_argument("--probs", action="store_true", help="classification, binary, multilabel: add a probability "
                        "column per class (label)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the run's trainer.batch_size")
    parser.add_argument("--length", type=int, default=50, help="language models: tokens to generate (default 50)")
    parser.add_argument("--min-score", type=float, default=0.5, help="detection: the boxes written score this or "
                        "more (default 0.5)")
    parser.add_argument("--draw", type=Path, default=None, help="detection: a folder to write each image into with "
                        "its predicted boxes drawn")
    parser.add_argument("--skip-bad-files", action="store_true",
                        help="images: leave out files that cannot be read (default: stop at the first)")
    args = parser.parse_args(argv)
    tool_main("dlrun-predict", lambda: predict_run(args))


def predict_run(args: argparse.Namespace) -> Path:
    """Write the predictions CSV (atomically) and return its path."""
    trained = load_run(args.run_dir, args.checkpoint, args.device)
    card = trained.card
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size={args.batch_size} is out of range: must be >= 1")
    if not 0 <= args.min_score <= 1:
        raise ConfigError(f"--min-score={args.min_score} is out of range: must be in [0, 1]")
    if args.draw is not None and card.task != "detection":
        raise ConfigError(f"--draw needs a detection run; this run's task is {card.task}")
    outputs = outputs_for(card, OutputOptions(probs=args.probs, length=args.length,
                                                         min_score=args.min_score, draw=args.draw))
    if args.probs and card.task not in ("classification", "binary", "multilabel"):
        raise ConfigError(f"--probs needs a classification, binary or multilabel run; this run's task is {card.task}")
    batch_size = args.batch_size or trained.config.trainer.batch_size
    target_name = _target_name(args.target_name, outputs.columns(), card)
    if card.inputs == "tokens":
        _check_column_names("prefix", target_name)
        text = outputs.generate(trained.model, args.input, args.length)
        console.print(text, markup=False, soft_wrap=True)
        id_name, ids, rows = "prefix", [args.input], [{"prediction": text}]
    else:
        if card.inputs == "image" and Path(args.input).suffix.lower() == ".csv":
            id_name, ids, batches, total = _image_table(Path(args.input), trained, batch_size, args)
        elif card.inputs == "image":
            id_name, ids, batches, total = _images(Path(args.input), trained, batch_size, args.skip_bad_files)
        elif card.inputs == "table":
            id_name, ids, batches, total = _table_rows(Path(args.input), trained, batch_size, args.id_column)
        else:
            raise DataError(f"this model takes {card.inputs} inputs of shape {card.input_shape}; dlrun-predict "
                            "reads images, CSV rows and text prefixes")
        _check_column_names(id_name, target_name)  # before the model sees any input
        ids, rows = _predict(trained, outputs, ids, with_progress(batches, total, "predicting"))
    path = _write_csv(args.out, id_name, ids, rows, outputs.columns(), target_name)
    _show(path, id_name, ids, rows, target_name)
    return path


def _check_column_names(id_name: str, target_name: str) -> None:
    if id_name == target_name:
        raise ConfigError(f"the prediction column {target_name!r} is also the id column; choose another name with "
                          "--target-name")


def _target_name(given: Optional[str], columns: list[str], card: DataCard) -> str:
    """The name of the prediction column: --target-name, else the training target's (one column), else prediction."""
    if "prediction" not in columns:  # several regression targets: a column each, under their own names
        if given is not None:
            raise ConfigError(f"--target-name names one column; this run predicts {len(columns)} targets, written "
                              f"under their own names ({', '.join(columns)})")
        return "prediction"
    return given or card.prediction_names()[0]


def _predict(trained: LoadedRun, outputs: Any, ids: list[str], batches: Batches) -> tuple[list[str], list[dict]]:
    """The task outputs' rows for every batch, each with the id of its input (inputs that were read, in their order)."""
    kept, rows = [], []
    with torch.no_grad():
        for inputs, numbers in batches:
            with trained.precision.autocast():
                batch = outputs.rows(trained.model, inputs, [ids[number] for number in numbers.tolist()])
            kept += [identifier for identifier, _ in batch]
            rows += [columns for _, columns in batch]
    return kept, rows


def _image_table(source: Path, trained: LoadedRun, batch_size: int,
                 args: argparse.Namespace) -> tuple[str, list[str], Batches, int]:
    """The images a CSV lists (Kaggle's test.csv), one per row in its order, keyed by the id column."""
    header, rows = read_csv(source)
    id_name = args.id_column or header[0]
    for option, name in (("--id-column", id_name), ("--image-column", args.image_column)):
        if name is not None and name not in header:
            raise DataError(f"{option} {name!r} is not a column of {source}; columns: {', '.join(header)}")
    root = trained.config.dataset.get("root")
    bases = [source.parent] + ([Path(str(root)).expanduser()] if root else [])
    column = header.index(args.image_column) if args.image_column else _image_column(header, rows[0], bases, source)
    paths = [_located(row[column], bases, source, line) for line, row in enumerate(rows, start=2)]
    ids = [row[header.index(id_name)] for row in rows]
    return (id_name, ids, *_image_batches(paths, trained, batch_size, args.skip_bad_files))


def _image_column(header: list[str], first: list[str], bases: list[Path], source: Path) -> int:
    """The first column whose first value is an image file under one of `bases`."""
    for column, value in enumerate(first):
        if is_image_file(value) and any((base / value).is_file() for base in bases):
            return column
    raise DataError(f"{source}: no column's first value is an image file under {' or '.join(map(str, bases))} "
                    f"(columns: {', '.join(header)}); name it with --image-column")


def _located(value: str, bases: list[Path], source: Path, line: int) -> str:
    """The image file `value` names: absolute, else relative to the CSV's folder, else to the training root."""
    for base in bases:
        if (base / value).is_file():  # an absolute `value` is itself
            return str(base / value)
    raise DataError(f"{source} line {line}: image {value!r} not found under {' or '.join(map(str, bases))}")


def _images(source: Path, trained: LoadedRun, batch_size: int,
            skip_bad_files: bool) -> tuple[str, list[str], Batches, int]:
    """Image files under `source` (or the file itself), decoded by FileLoader as a streamed image folder is."""
    if source.is_dir():
        paths = images_under(source)
        ids = [Path(path).relative_to(source).as_posix() for path in paths]
        if not paths:
            raise DataError(f"no image files ({', '.join(('.png', '.jpg', '...'))}) under {source}")
    elif source.is_file() and is_image_file(source.name):
        paths, ids = [str(source)], [source.name]
    else:
        raise DataError(f"{source} is neither a folder of images, an image file nor a CSV of image paths; this "
                        f"model takes images {trained.card.input_shape}")
    return ("file", ids, *_image_batches(paths, trained, batch_size, skip_bad_files))


def _image_batches(paths: list[str], trained: LoadedRun, batch_size: int, skip_bad_files: bool) -> tuple[Batches, int]:
    """The images at `paths` in batches (with their row numbers), in order, decoded at the model's shape."""
    channels, height, width = trained.card.input_shape
    workers = default_workers() if len(paths) >= SMALL_INPUT else 0
    # The label of each file is its row number: the batches say which files they hold, also when bad ones are left out.
    split = FileSplit(tuple((path, row) for row, path in enumerate(paths)), (channels, height, width), workers,
                      skip_bad_files=skip_bad_files)
    loader = FileLoader(split, batch_size, device=trained.device, training=False,
                        transform=lambda batch: batch.float().div_(255))
    return _with_own_advice(loader), len(loader)


def _with_own_advice(loader: FileLoader) -> Batches:
    """The loader's batches; its error for an unreadable file names this command's option instead of the dataset's."""
    try:
        yield from loader
    except DataError as error:
        raise DataError(str(error).replace("set dataset.skip_bad_files=true", "pass --skip-bad-files")) from None


def _table_rows(source: Path, trained: LoadedRun, batch_size: int,
                id_column: Optional[str]) -> tuple[str, list[str], Batches, int]:
    """The CSV's rows through the run's fitted encoder; ids from `id_column`, else row numbers from 1."""
    if not (source.is_file() and source.suffix.lower() == ".csv"):
        raise DataError(f"{source} is not a CSV file; this model takes rows of the columns "
                        f"{', '.join(c['name'] for c in trained.card.encoder['columns'][:12])}")
    header, rows = read_csv(source)
    if id_column is not None and id_column not in header:
        raise DataError(f"--id-column {id_column!r} is not a column of {source}; columns: {', '.join(header)}")
    features = torch.from_numpy(trained.card.table_encoder().transform(header, rows, str(source)))
    ids = [row[header.index(id_column)] for row in rows] if id_column else [str(n) for n in range(1, len(rows) + 1)]
    split = TensorSplit(features, torch.arange(len(rows))).to(trained.device)
    loader = TensorLoader(split, batch_size)
    return id_column or "row", ids, iter(loader), len(loader)


def _write_csv(path: Path, id_name: str, ids: list[str], rows: list[dict[str, Any]], names: list[str],
               target_name: str) -> Path:
    columns = [id_name, *(target_name if name == "prediction" else name for name in names)]
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(columns)
    for identifier, row in zip(ids, rows):
        writer.writerow([identifier, *(row[name] for name in names)])
    atomic_write(path, lambda partial: partial.write_text(text.getvalue()))
    return path


def _show(path: Path, id_name: str, ids: list[str], rows: list[dict[str, Any]], target_name: str,
          preview: int = 5) -> None:
    table = Table(title=f"predictions ({min(preview, len(rows))} of {len(rows)})")
    table.add_column(id_name)
    table.add_column(target_name)
    for identifier, row in list(zip(ids, rows))[:preview]:
        value = row.get("prediction", next(iter(row.values()), ""))
        table.add_row(identifier, f"{value:.6g}" if isinstance(value, float) else str(value)[:80])
    console.print(table)
    console.print(f"predictions written to {path}", soft_wrap=True)
