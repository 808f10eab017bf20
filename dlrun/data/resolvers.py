"""OmegaConf resolvers that read a dataset's files (`${dlrun.csv_num_features:...}` and the like).

A model gets its number of inputs or outputs by interpolation, before anything is trained:
these read the dataset's file to count them. Files are parsed once (cached) and a missing or
malformed file raises DataError, reported as one line. Imports are deferred so `dlrun --help`
stays quick. Registered on import of `dlrun`.
"""

from __future__ import annotations

from omegaconf import OmegaConf


def data_root() -> str:
    """Default `dataset.root` of the downloading datasets: $DLRUN_DATA, else ~/.cache/dlrun/data."""
    from dlrun.data.storage import default_data_root

    return default_data_root()


def text_vocab_size(path: str, level: str = "char", clean: bool = False, min_freq: int = 0,
                    url: str | None = None, download: bool = False) -> int:
    """Vocabulary size of a text file (dataset=text, time_machine), <unk> included."""
    from dlrun.data.text import read_corpus

    return len(read_corpus(path, level, clean, min_freq, url, download).tokens)


def csv_num_features(path: str, target: str, task: str = "regression", drop: list[str] | None = None) -> int:
    """Feature count of a CSV after standardizing and one-hot encoding (dataset=csv)."""
    from dlrun.data.tabular import encode_csv

    return encode_csv(path, target, task, tuple(drop or ())).features.shape[1]


def csv_num_outputs(path: str, target: str | list[str], task: str = "regression", drop: list[str] | None = None) -> int:
    """The head the task needs (dataset=csv): a class's, a label's or a target's output each; 1 for binary."""
    from dlrun.data.tabular import encode_csv

    table = encode_csv(path, target, task, tuple(drop or ()))
    return head_size(task, len(table.classes), len(table.target_names))


def image_folder_classes(root: str, labels_csv: str | None = None) -> int:
    """Number of classes in an image folder (sub-folders, or distinct labels of its CSV)."""
    from dlrun.data.image_listing import find_classes

    return len(find_classes(root, labels_csv))


def image_folder_outputs(root: str, labels_csv: str | None = None, task: str = "classification",
                         target: str | list[str] | None = None) -> int:
    """The head the task needs (dataset=image_folder): one output per class (folder or CSV label), per label
    (multilabel), per target column (regression); 1 for binary."""
    from dlrun.data.image_listing import find_targets

    classes, targets = find_targets(root, labels_csv, task, target)
    return head_size(task, len(classes), len(targets))


def head_size(task: str, classes: int, targets: int) -> int:
    """Outputs per example a task reads from a labelled source of `classes` classes and `targets` columns."""
    return {"binary": 1, "regression": targets}.get(task, classes)


def image_folder_shape(root: str, labels_csv: str | None, channels: str | int, resize: int | None,
                       skip_bad_files: bool = False) -> list[int]:
    """(C, H, W) an image folder is decoded at: channels from the images when `auto`, size from `resize`."""
    from dlrun.data.image_folder import folder_shape

    return folder_shape(root, labels_csv, channels, resize, skip_bad_files)


def coco_classes(annotations: str) -> int:
    """Number of categories in a COCO JSON (dataset=coco_folder)."""
    from dlrun.data.coco import coco_categories

    return len(coco_categories(annotations))


OmegaConf.register_new_resolver("dlrun.data_root", data_root, replace=True)
OmegaConf.register_new_resolver("dlrun.text_vocab_size", text_vocab_size, replace=True)
OmegaConf.register_new_resolver("dlrun.csv_num_features", csv_num_features, replace=True)
OmegaConf.register_new_resolver("dlrun.csv_num_outputs", csv_num_outputs, replace=True)
OmegaConf.register_new_resolver("dlrun.image_folder_classes", image_folder_classes, replace=True, use_cache=True)
OmegaConf.register_new_resolver("dlrun.image_folder_outputs", image_folder_outputs, replace=True, use_cache=True)
OmegaConf.register_new_resolver("dlrun.image_folder_shape", image_folder_shape, replace=True, use_cache=True)
OmegaConf.register_new_resolver("dlrun.coco_classes", coco_classes, replace=True)
