"""`dlrun-eval <run dir> [overrides]`: evaluate a trained run on its test split or on other data.

The model and its weights come from the run (dlrun.tools.loaded_run). The data is the run's own (its
test split by default: the same examples, batches and metric code as training's final test, so
the numbers match summary.json), or other data named by Hydra-style overrides:

    dlrun-eval outputs/<run> dataset=image_folder dataset.root=more_images
    dlrun-eval outputs/<run> dataset.path=labelled_later.csv --device cpu

The overrides are composed as `dlrun` would (with the run's own overrides from .hydra/), and
every config section they do not touch is the run's, so `${model.input_size}` and `${seed}`
keep the run's values. Other data is evaluated whole (`--split all`) unless `--split` says
otherwise; images are decoded at the model's channels and size, CSV rows go through the run's
fitted encoder, and classes (a language model's tokens) are matched by name.

Each evaluation writes `<run dir>/eval/<time>/` (`--out DIR`: `DIR/<time>/`, e.g. for a run on
read-only storage): metrics.json, the task's files (dlrun.tools.outputs) and TensorBoard events.
The metrics are printed before anything is written, so a folder that cannot be written loses
nothing but the files (the error names the path and suggests --out).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import torch
from dlrun.report.console import console, with_progress
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf
from rich.table import Table
from torch.utils.tensorboard import SummaryWriter

from dlrun.atomic import write_json
from dlrun.config import validate
from dlrun.config.messages import describe_error
from dlrun.data.build import Data, Loader, build_data
from dlrun.data.card import DataCard, yes_threshold
from dlrun.data.files import FileLoader
from dlrun.data.loader import TensorLoader
from dlrun.data.resolvers import head_size
from dlrun.data.splits import TensorSplit
from dlrun.engine.loop import evaluate
from dlrun.errors import ConfigError, DataError, StorageError
from dlrun.tasks import build_task
from dlrun.tools.command import add_run_arguments, tool_main
from dlrun.tools.loaded_run import LoadedRun, load_run
from dlrun.tools.outputs import OutputOptions, outputs_for

SPLITS = ("test", "val", "train", "all")
CSV_LOADER = "dlrun.data.tabular.load_csv"
LABELLED_LOADERS = (CSV_LOADER, "dlrun.data.image_folder.load_image_folder")  # they take `classes` to index by


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="dlrun-eval", description=__doc__.split("\n\n")[0])
    add_run_arguments(parser)
    parser.add_argument("overrides", nargs="*", help="Hydra-style overrides naming other data, e.g. "
                        "dataset=image_folder dataset.root=new_images")
    parser.add_argument("--split", choices=SPLITS, default=None,
                        help="which examples: test (default for the run's own data), val, train, all (default for "
                        "other data)")
    parser.add_argument("--prefix", default=None, help="language model: the text to continue (default: the run's "
                        "dataset.sample_prefix)")
    parser.add_argument("--length", type=int, default=50, help="language model: tokens to generate (default 50)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="write the evaluation into DIR/<time>/ instead of <run dir>/eval/<time>/ (a run on "
                        "read-only storage)")
    args = parser.parse_args(argv)
    tool_main("dlrun-eval", lambda: evaluate_run(args.run_dir, args.overrides, args.checkpoint, args.split,
                                                 args.device, OutputOptions(prefix=args.prefix, length=args.length),
                                                 out=args.out))


def evaluate_run(run_dir: Path, overrides: list[str], checkpoint: str = "best", split: Optional[str] = None,
                 device: Optional[str] = None, options: OutputOptions = OutputOptions(),
                 out: Optional[Path] = None) -> dict[str, Any]:
    """Evaluate, print the metrics and write `<run dir>/eval/<time>/` (or `<out>/<time>/`); return what
    metrics.json holds. A folder that cannot be written is a StorageError naming it, after the metrics show.

    The loop is training's own `evaluate`; the task's outputs (dlrun.tools.outputs) see every batch.
    """
    trained = load_run(run_dir, checkpoint, device)
    cfg, own_data = evaluation_config(trained, overrides)
    split = split or ("test" if own_data else "all")
    data = build_data(cfg, trained.device, torch.Generator().manual_seed(cfg.seed))
    loader = _split_loader(data, split, cfg.trainer.batch_size)
    if len(loader) == 0:
        raise DataError(f"the {split} split of this data is empty; choose another with --split")
    _check_input_shape(loader, trained)
    # The task scores in the model's classes (`_matched` turns the data's class indices into the model's) and
    # in the model's target units (the training split's mean and std, not this data's).
    task = build_task(cfg, replace(data, extras={**data.extras, **model_targets(trained.card)}))
    # The yes/no outputs count at the threshold the task scores at (dataset.threshold may be overridden here).
    outputs = outputs_for(replace(trained.card, threshold=yes_threshold(cfg.dataset)), options)
    batches = _matched(with_progress(loader, len(loader), f"evaluating {split}"), cfg, data, trained)
    metrics = {f"{split}/{name}": value
               for name, value in evaluate(trained.model, batches, task, trained.precision,
                                           observe=outputs.update).items()}

    examples = (f"all {loader.num_examples} examples" if split == "all"
                else f"the {split} split ({loader.num_examples} examples)")
    _show_metrics(f"{examples} with {trained.checkpoint.name} of epoch {trained.epoch}", metrics)
    parent = Path(out) if out is not None else Path(run_dir) / "eval"
    try:
        folder = _new_folder(parent)
        with SummaryWriter(log_dir=str(folder)) as writer:
            for name, value in metrics.items():
                writer.add_scalar(name, value, trained.epoch)
            extra = outputs.finish(folder, writer, trained.model, task)
        result = {"run_dir": str(run_dir), "folder": str(folder), "checkpoint": str(trained.checkpoint),
                  "epoch": trained.epoch, "split": split, "overrides": list(overrides),
                  "examples": loader.num_examples, "metrics": metrics, **extra}
        write_json(folder / "metrics.json", result)
    except OSError as error:
        raise StorageError(f"cannot write {error.filename or parent} ({error.strerror}); the metrics above are "
                           "not saved: write the evaluation elsewhere with --out DIR") from error
    _show_rest(outputs.tables(), folder)
    return result


def evaluation_config(trained: LoadedRun, overrides: list[str]) -> tuple[DictConfig, bool]:
    """The run's config with the sections the overrides touch composed anew; and whether the data is the run's own."""
    if not overrides:
        return trained.config, True
    sections = sorted({_key(o).split(".")[0] for o in overrides})
    if "model" in sections:
        raise ConfigError("the model is the run's own (its checkpoint's config and weights); "
                          "dlrun-eval's overrides name data and evaluation settings, e.g. dataset=...")
    if "device" in sections:
        raise ConfigError("choose where the model runs with --device cpu|cuda|auto (the run's device.* settings "
                          "are kept)")
    recorded = _recorded_overrides(trained.run_dir)
    try:
        with initialize_config_module(version_base="1.3", config_module="dlrun.conf"):
            composed = compose(config_name="config", overrides=merge_overrides(recorded, overrides))
    except Exception as error:
        if recorded is not None:
            raise
        raise ConfigError(f"{describe_error(error)} ({trained.run_dir} has no .hydra/overrides.yaml, as a run "
                          "started from code: name its dataset option too, e.g. dataset=csv dataset.path=...)"
                          ) from None
    cfg = OmegaConf.create(OmegaConf.to_container(trained.config))  # the run's values, resolved
    for section in sections:
        if section not in composed or section == "hydra":
            raise ConfigError(f"dlrun-eval cannot override {section!r}: name a config section such as dataset, "
                              "trainer or debug")
        cfg[section] = composed[section]  # its interpolations now resolve against the run's other sections
    if "dataset" in sections:
        _fit_to_model(cfg, trained, {_key(o) for o in overrides})
    cfg = validate(cfg)
    own = OmegaConf.to_container(cfg.dataset, resolve=True) == OmegaConf.to_container(trained.config.dataset)
    return cfg, own


def merge_overrides(recorded: Optional[list[str]], given: list[str]) -> list[str]:
    """The run's overrides, less those `given` replaces (all `dataset.*` ones when `dataset=` changes), then `given`."""
    replaced = {_key(o) for o in given}
    switching_dataset = "dataset" in replaced

    def kept(override: str) -> bool:
        key = _key(override)
        return not (key in replaced or key.startswith("hydra") or (switching_dataset and key.startswith("dataset.")))

    return [o for o in recorded or () if kept(o)] + list(given)


def _recorded_overrides(run_dir: Path) -> Optional[list[str]]:
    """The overrides the run was started with (a K-fold run's fold: its parent's); None for a run started from code."""
    for folder in (run_dir, run_dir.parent):
        path = folder / ".hydra" / "overrides.yaml"
        if path.is_file():
            return [str(o) for o in OmegaConf.load(path)]
    return None


def model_targets(card: DataCard) -> dict[str, Any]:
    """What the task takes from the run rather than from the data: its class names, its targets' scale."""
    extras: dict[str, Any] = {"classes": card.classes} if card.classes else {}
    if card.task == "regression":
        extras.update(target_scale=card.scale().state(), target_names=card.target_names)
    return extras


def _fit_to_model(cfg: DictConfig, trained: LoadedRun, given: set[str]) -> None:
    """Other data is read as the model reads: images at its channels and size, CSV rows through its encoder,
    labels by the model's class names."""
    card = trained.card
    dataset = cfg.dataset
    if card.classes and card.task != "detection" and dataset.get("_target_") in LABELLED_LOADERS:
        dataset.classes = list(card.classes)
        dataset.num_outputs = head_size(card.task, len(card.classes), len(card.target_names))  # the model's
    if card.inputs == "image":
        channels, height, width = card.input_shape
        if "channels" in dataset and "dataset.channels" not in given:
            dataset.channels = channels
        if "resize" in dataset and "dataset.resize" not in given and height == width:
            dataset.resize = height
    if card.inputs == "table" and dataset.get("_target_") == CSV_LOADER:
        dataset.encoder = card.encoder  # the run's fitted standardization and categories, not this file's


def _split_loader(data: Data, split: str, batch_size: int) -> Loader:
    """The split's loader as training built it (test, val); train and all in storage order, unaugmented."""
    if split in ("test", "val"):
        return getattr(data, split)
    parts = [data.train.split] if split == "train" else [data.train.split, data.val.split, data.test.split]
    parts = [part for part in parts if len(part)]
    test = data.test  # its transform prepares batches as the model sees them, with no augmentation
    if isinstance(test, FileLoader):
        joined = replace(parts[0], samples=tuple(sample for part in parts for sample in part.samples))
        return FileLoader(joined, batch_size, device=test.device, training=False, transform=test.transform)
    joined = TensorSplit(torch.cat([part.inputs for part in parts]), torch.cat([part.targets for part in parts]))
    return TensorLoader(joined, batch_size, streams=data.sequential, transform=test.transform)


def _check_input_shape(loader: Loader, trained: LoadedRun) -> None:
    shape = list(loader.example_input().shape[1:])
    if shape != trained.card.input_shape and trained.card.inputs != "tokens":
        raise DataError(f"this data gives inputs of shape {shape}; the model takes {trained.card.input_shape} "
                        "(set dataset.resize or dataset.channels to match)")


def _matched(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], cfg: DictConfig, data: Data,
             trained: LoadedRun) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches with the data's class indices (a language model's token ids) turned into the model's, by name."""
    card = trained.card
    inputs_map = targets_map = None
    if card.task in ("classification", "detection"):
        names = [str(name) for name in data.extras.get("classes") or range(int(cfg.dataset.num_outputs))]
        targets_map = _name_map(names, card.classes, "class")
    elif card.task == "language_model":
        inputs_map = targets_map = _name_map(list(data.extras["tokens"]), card.vocabulary["tokens"], None)
    for inputs, targets in batches:
        if inputs_map is not None:
            inputs = inputs_map.to(inputs.device)[inputs]
        if targets_map is not None and card.task == "detection":  # rows [class, x1, y1, x2, y2]; class -1 pads
            targets = targets.clone()
            classes = targets[..., 0]  # a view: assigning to it changes `targets`
            real = classes >= 0
            classes[real] = targets_map.to(targets.device)[classes[real].long()].to(targets.dtype)
        elif targets_map is not None:
            targets = targets_map.to(targets.device)[targets]
        yield inputs, targets


def _name_map(data_names: list[str], model_names: list[str], kind: Optional[str]) -> Optional[torch.Tensor]:
    """index in the data → index in the model, matched by name; None when they are the same list.

    A class the model does not know is an error (`kind`); an unknown token (kind None) becomes <unk> (0).
    """
    if data_names == model_names:
        return None
    index = {name: i for i, name in enumerate(model_names)}
    unknown = [name for name in data_names if name not in index]
    if unknown and kind is not None:
        raise DataError(f"the data's {kind}es {', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''} "
                        f"are not {kind}es of the model; its {kind}es: {', '.join(model_names[:30])}"
                        f"{' ...' if len(model_names) > 30 else ''}")
    return torch.tensor([index.get(name, 0) for name in data_names], dtype=torch.long)


def _new_folder(parent: Path) -> Path:
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    for attempt in range(1, 1000):
        folder = parent / (stamp if attempt == 1 else f"{stamp}_{attempt}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(f"no free folder name under {parent}")


def _show_metrics(what: str, metrics: dict[str, float]) -> None:
    console.print(f"evaluated: {what}", soft_wrap=True)
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.6g}")
    console.print(table)


def _show_rest(tables: list[Table], folder: Path) -> None:
    for extra in tables:
        console.print(extra)
    console.print(f"evaluation written to {folder}", soft_wrap=True)


def _key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")
