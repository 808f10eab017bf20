"""The decode cache: an image folder read once, kept as files keyed by what the folder holds.

Two files per folder (one root + labels CSV) under `$DLRUN_CACHE` (else ~/.cache/dlrun/images):
- `<name>-<key>.headers.pt`: every image's size and colour mode, read from the headers, so
  `dataset.channels=auto` and a null `dataset.resize` are settled without opening the files again;
- `<name>-<key>.<C>x<H>x<W>.pt`: every image decoded at that shape, one uint8 tensor.

Each file records the folder's fingerprint (every file's path, size and modification time);
a folder that changed is read again and its files overwritten (atomically: a reader sees the
old file or the new one), one that did not is reused. A cache file that cannot be read is
read again from the images; one that cannot be written is skipped with a warning.
Reading runs over the cores in DataLoader worker processes, with a progress bar.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch
from torch.utils.data import DataLoader, Dataset

from dlrun.atomic import atomic_write
from dlrun.data.files import ImageFiles, collate_images
from dlrun.data.images import BadImage, ImageInfo, bad_image_error, read_header
from dlrun.report.console import with_progress

log = logging.getLogger("dlrun")
# Set DLRUN_CACHE to keep decoded folders elsewhere (a larger disk, a node-local scratch).
CACHE_ROOT_VARIABLE = "DLRUN_CACHE"
FORMAT_VERSION = 1
# Below this many files, reading them in this process beats starting worker processes.
SMALL_FOLDER = 2000
CHUNK = 256  # files per worker task
# In-process copies of header files, by fingerprint: the config resolvers and the loader ask in turn.
_HEADERS: dict[str, list[Union[ImageInfo, BadImage]]] = {}


def default_cache_root() -> Path:
    """$DLRUN_CACHE, else ~/.cache/dlrun/images."""
    return Path(os.environ.get(CACHE_ROOT_VARIABLE) or Path.home() / ".cache" / "dlrun" / "images")


def default_budget_bytes() -> int:
    """The largest decoded folder held in memory by default: a quarter of the RAM, and of the GPU's memory.

    A quarter leaves room for the model, its activations and the transient copy made when the
    splits are cut (train/val/test are copies of the decoded tensor's rows).
    """
    try:
        budget = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): assume a small machine
        budget = 2 * 2**30
    if torch.cuda.is_available():  # the decoded tensor then lives on the GPU as well
        budget = min(budget, torch.cuda.get_device_properties(0).total_memory // 4)
    return budget


def folder_fingerprint(paths: Sequence[str]) -> str:
    """A hash of every file's path (absolute, as listed), size and modification time, in order."""
    lines = []
    for path in paths:
        stat = os.stat(path)
        lines.append(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


@dataclass
class Decoded:
    """A folder's images as one uint8 tensor, in the order of its paths, unreadable ones left out."""

    pixels: torch.Tensor  # (kept, C, H, W)
    kept: list[int]  # the positions (in the given paths) of pixels' rows
    bad: dict[int, str]  # position → why that file cannot be read
    reused: bool  # read from the cache file rather than from the images
    file: Optional[Path]  # the cache file, when there is one


class FolderCache:
    """The cache files of one folder, and the parallel reads that fill them."""

    def __init__(self, folder: Path, labels_csv: Optional[str], workers: int,
                 cache_root: Optional[Path] = None) -> None:
        folder = Path(folder).expanduser().resolve()
        key = hashlib.sha256(f"{folder}\0{labels_csv or ''}".encode()).hexdigest()[:16]
        name = re.sub(r"[^A-Za-z0-9._-]", "_", folder.name or "root")[:40]
        self.stem = (cache_root or default_cache_root()) / f"{name}-{key}"
        self.folder = folder
        self.workers = workers

    def headers(self, paths: Sequence[str], fingerprint: str) -> list[Union[ImageInfo, BadImage]]:
        """Every file's ImageInfo (or BadImage), from memory, the headers file, or the files themselves."""
        if fingerprint in _HEADERS:
            return _HEADERS[fingerprint]
        file = Path(f"{self.stem}.headers.pt")
        stored = _load(file, fingerprint)
        if stored is not None:
            infos = [BadImage(paths[i], stored["bad"][i]) if i in stored["bad"] else ImageInfo(w, h, g)
                     for i, (w, h, g) in enumerate(zip(stored["width"], stored["height"], stored["grey"]))]
        else:
            infos = [info for chunk in self._parallel(_Headers(paths), len(paths), "reading image headers")
                     for info in chunk]
            good = [(info.width, info.height, info.grey) if isinstance(info, ImageInfo) else (0, 0, False)
                    for info in infos]
            _save(file, {"fingerprint": fingerprint, "width": [w for w, _, _ in good],
                         "height": [h for _, h, _ in good], "grey": [g for _, _, g in good],
                         "bad": {i: info.reason for i, info in enumerate(infos) if isinstance(info, BadImage)}})
        _HEADERS.clear()  # keep one folder's headers: a run reads one folder
        _HEADERS[fingerprint] = infos
        return infos

    def decoded(self, paths: Sequence[str], fingerprint: str, shape: tuple[int, int, int],
                skip_bad_files: bool) -> Decoded:
        """Every file decoded at `shape`, from the cache file when it matches the folder, else from the files.

        An unreadable file raises the one-line DataError naming it, as soon as it is met,
        unless `skip_bad_files`.
        """
        file = Path(f"{self.stem}.{'x'.join(map(str, shape))}.pt")
        stored = _load(file, fingerprint)
        if stored is not None:
            if stored["bad"] and not skip_bad_files:
                first = min(stored["bad"])
                raise bad_image_error(BadImage(paths[first], stored["bad"][first]))
            return Decoded(stored["pixels"], stored["kept"], stored["bad"], reused=True, file=file)
        started = time.perf_counter()
        pixels = torch.empty((len(paths), *shape), dtype=torch.uint8)
        bad: dict[int, str] = {}
        start = 0
        dataset = ImageFiles([(path, 0) for path in paths], shape)
        for images, _, failed in self._parallel(dataset, len(paths), f"decoding {len(paths):,} images",
                                                collate=collate_images):
            if failed and not skip_bad_files:
                raise bad_image_error(failed[0][1])
            pixels[start:start + len(images)] = images
            bad.update((start + row, image.reason) for row, image in failed)
            start += len(images)
        kept = [i for i in range(len(paths)) if i not in bad]
        if bad:
            pixels = pixels[kept]
        size_mb = pixels.numel() / 2**20
        log.info("dataset: decoded %d images of %s at %s in %.1f s (%.1f MB)", len(kept), self.folder,
                 "x".join(map(str, shape)), time.perf_counter() - started, size_mb)
        if _save(file, {"fingerprint": fingerprint, "pixels": pixels, "kept": kept, "bad": bad}):
            # Hand out the file's pages instead of this copy: the splits copy their rows anyway,
            # so the decoded folder is not held twice in anonymous memory.
            reread = _load(file, fingerprint)
            if reread is not None:
                return Decoded(reread["pixels"], kept, bad, reused=False, file=file)
        return Decoded(pixels, kept, bad, reused=False, file=None)

    def _parallel(self, dataset: Dataset, total: int, description: str,
                  collate: Callable[[list], Any] = list) -> Iterator[Any]:
        """Chunks of `dataset`'s items in order, read by worker processes (in this one for small folders)."""
        workers = self.workers if total >= SMALL_FOLDER else 0
        # A generator of its own: the DataLoader draws its workers' seed from it, and drawing from
        # torch's global one would make a run with a cold cache differ from one with a warm cache.
        chunks = DataLoader(dataset, batch_size=CHUNK, num_workers=workers, collate_fn=collate,
                            generator=torch.Generator())
        for chunk in with_progress(chunks, len(chunks), f"{description} of {self.folder.name}"):
            yield chunk


class _Headers(Dataset):
    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Union[ImageInfo, BadImage]:
        return read_header(self.paths[index])


def _load(file: Path, fingerprint: str) -> Optional[dict[str, Any]]:
    """The cache file's contents if it exists, can be read and belongs to this version of the folder."""
    if not file.is_file():
        return None
    try:
        stored = torch.load(file, mmap=True, weights_only=True)
    except Exception as error:  # truncated or foreign: read the images again and overwrite it
        log.warning("dataset: ignoring unreadable cache file %s (%s)", file, type(error).__name__)
        return None
    if stored.get("version") != FORMAT_VERSION or stored.get("fingerprint") != fingerprint:
        return None  # the folder changed since: its files are read again
    return stored


def _save(file: Path, contents: dict[str, Any]) -> bool:
    try:
        atomic_write(file, lambda path: torch.save({"version": FORMAT_VERSION, **contents}, path))
    except OSError as error:
        log.warning("dataset: cannot write the decode cache %s (%s); the folder will be read again next time",
                    file, error)
        return False
    return True
