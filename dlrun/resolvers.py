"""OmegaConf resolvers used by the YAML groups (`${dlrun.name:...}`).

They are registered on import of `dlrun`, so both the CLI and Hydra's compose API see them.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from omegaconf import OmegaConf

from dlrun.errors import ConfigError


def image_shape(channels: int, stored_size: int, resize: int | None) -> list[int]:
    """(C, H, W) the model sees: the resize target when set, else the stored size."""
    size = stored_size if resize is None else resize
    return [int(channels), int(size), int(size)]


def suffix(name: str | None) -> str:
    """`_name` for a run directory, or nothing when the run has no name."""
    return f"_{safe_name(name)}" if name else ""


def sweep_dir(resume: str | None, new_dir: str) -> str:
    """The multirun directory: `sweep.resume` when set (it must be an earlier sweep's), else `new_dir`."""
    if resume in (None, ""):
        return new_dir
    if not (Path(resume) / "multirun.yaml").is_file():
        raise ConfigError(f"sweep.resume={resume} is not a sweep directory (no multirun.yaml in it)")
    return str(resume)


MAX_NAME = 150  # well under the 255-byte file-name limit, with room for the job number


def safe_name(text: str | None) -> str:
    """A file-system-safe version of an override string such as `optimizer=adam,seed=1`.

    `/` (as in `+experiment=d2l/lenet`) becomes `-`; other unusual characters become `_`.
    A name longer than MAX_NAME keeps its start and ends with a hash of the whole text,
    so two long sweeps' names stay distinct.
    """
    text = text or ""
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", text.replace("/", "-"))
    if len(name) > MAX_NAME:
        name = f"{name[:MAX_NAME - 9]}~{hashlib.sha1(text.encode()).hexdigest()[:8]}"
    return name


def data_root() -> str:
    """Default `dataset.root` of the downloading datasets: $DLRUN_DATA, else ~/.cache/dlrun/data."""
    from dlrun.data.storage import default_data_root

    return default_data_root()


# The resolvers below read the dataset's file so that a model gets the number of inputs or
# outputs by interpolation, before anything is trained. Files are parsed once (cached) and
# a missing or malformed file raises DataError, reported as one line. Imports are deferred
# so `dlrun --help` stays quick.

def text_vocab_size(path: str, level: str = "char", clean: bool = False, min_freq: int = 0,
                    url: str | None = None, download: bool = False) -> int:
    """Vocabulary size of a text file (dataset=text, time_machine), <unk> included."""
    from dlrun.data.text import read_corpus

    return len(read_corpus(path, level, clean, min_freq, url, download).tokens)


def csv_num_features(path: str, target: str, task: str = "regression", drop: list[str] | None = None) -> int:
    """Feature count of a CSV after standardizing and one-hot encoding (dataset=csv)."""
    from dlrun.data.tabular import encode_csv

    return encode_csv(path, target, task, tuple(drop or ())).features.shape[1]


def csv_num_outputs(path: str, target: str, task: str = "regression", drop: list[str] | None = None) -> int:
    """1 for regression, the number of distinct target values for classification (dataset=csv)."""
    from dlrun.data.tabular import encode_csv

    return len(encode_csv(path, target, task, tuple(drop or ())).classes) or 1


def image_folder_classes(root: str, labels_csv: str | None = None) -> int:
    """Number of classes in an image folder (sub-folders, or distinct labels of its CSV)."""
    from dlrun.data.image_folder import find_classes

    return len(find_classes(root, labels_csv))


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
OmegaConf.register_new_resolver("dlrun.image_folder_shape", image_folder_shape, replace=True, use_cache=True)
OmegaConf.register_new_resolver("dlrun.coco_classes", coco_classes, replace=True)
OmegaConf.register_new_resolver("dlrun.image_shape", image_shape, replace=True)
OmegaConf.register_new_resolver("dlrun.suffix", suffix, replace=True)
OmegaConf.register_new_resolver("dlrun.sweep_dir", sweep_dir, replace=True)
OmegaConf.register_new_resolver("dlrun.safe_name", safe_name, replace=True)
