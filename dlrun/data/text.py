"""Language-modelling corpora (d2l chapter 8): a text file → tokens → vocabulary → windows of ids.

Examples are consecutive, non-overlapping windows of `num_steps` token ids; the target of each
is the same window shifted by one token. With `sampling=random` the windows are shuffled every
epoch; with `sampling=sequential` the loader reads them as parallel streams, so a recurrent
model can carry its hidden state from one batch to the next (see `TensorLoader`).
"""

from __future__ import annotations

import collections
import functools
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from dlrun.atomic import atomic_write
from dlrun.data.splits import DataSplits, TensorSplit
from dlrun.errors import DataError

LEVELS = ("char", "word")
SAMPLINGS = ("random", "sequential")
UNKNOWN = "<unk>"


@dataclass(frozen=True)
class Corpus:
    ids: torch.Tensor  # every token of the text as its vocabulary index
    tokens: tuple[str, ...]  # the vocabulary: index → token; 0 is <unk>
    level: str

    def encode(self, text: str) -> list[int]:
        index = {token: i for i, token in enumerate(self.tokens)}
        return [index.get(token, 0) for token in tokenize(text, self.level)]

    @property
    def separator(self) -> str:
        return "" if self.level == "char" else " "


def load_text(path: str, level: str = "char", clean: bool = False, min_freq: int = 0, num_steps: int = 35,
              sampling: str = "random", test_fraction: float = 0.1, sample_prefix: str = "",
              max_tokens: Optional[int] = None, held_out_tokens: Optional[int] = None, url: Optional[str] = None,
              download: bool = False) -> DataSplits:
    """Windows of `num_steps` ids from the text at `path`, split into train and test (and val) by position.

    By default the first `max_tokens` tokens (all when null) are used and the last `test_fraction`
    of them is the test split (validation is then cut off the training part by dlrun).
    With `held_out_tokens` = N, all of the first `max_tokens` tokens train, as d2l trains on
    exactly The Time Machine's first 10,000 characters, and the N tokens right after them
    validate and the N after those test (`test_fraction` is unused); with `max_tokens` null
    the last 2N tokens of the text are held out.
    `clean` applies d2l's preprocessing (letters only, lower case). When `path` is missing,
    `url` is set and `download` is true, the file is fetched there first.
    `extras` carries what a language model's text samples need: the vocabulary, the separator
    between tokens, and `sample_prefix` encoded.
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling {sampling!r} is not one of: {', '.join(SAMPLINGS)}")
    if num_steps < 1 or not 0 < test_fraction < 1:
        raise ValueError("num_steps must be >= 1 and test_fraction in (0, 1)")
    if held_out_tokens is not None and held_out_tokens <= num_steps:
        raise ValueError(f"held_out_tokens={held_out_tokens} must exceed num_steps={num_steps} (one window at least)")
    corpus = read_corpus(path, level, clean, min_freq, url, download)
    extras = {"tokens": list(corpus.tokens), "separator": corpus.separator,
              "sample_prefix": corpus.encode(sample_prefix)}
    sequential = sampling == "sequential"
    if held_out_tokens is not None:
        train, val, test = _held_out_after(corpus.ids, max_tokens, held_out_tokens, num_steps, path)
        return DataSplits(train=train, val=val, test=test, extras=extras, sequential=sequential)
    ids = corpus.ids[:max_tokens]
    cut = int(len(ids) * (1 - test_fraction))
    train, test = _windows(ids[:cut], num_steps), _windows(ids[cut:], num_steps)
    if len(train) == 0 or len(test) == 0:
        raise DataError(f"{path}: {len(ids)} tokens are too few for windows of num_steps={num_steps} "
                        f"in both the training and the test part (test_fraction={test_fraction})")
    return DataSplits(train=train, test=test, extras=extras, sequential=sequential)


def read_corpus(path: str, level: str = "char", clean: bool = False, min_freq: int = 0,
                url: Optional[str] = None, download: bool = False) -> Corpus:
    """The tokenized text and its vocabulary; cached per file version (the config resolvers ask too)."""
    if level not in LEVELS:
        raise ValueError(f"level {level!r} is not one of: {', '.join(LEVELS)}")
    file = Path(path).expanduser()
    if not file.is_file():
        if url and download:
            _download(url, file)
        else:
            fetch = f" or download {url} there (dataset.download=true)" if url else ""
            raise DataError(f"dataset.path: text file {file} not found; place a UTF-8 text file there{fetch}")
    stat = file.stat()
    return _read(str(file), stat.st_mtime_ns, stat.st_size, level, clean, min_freq)


def tokenize(text: str, level: str) -> list[str]:
    return list(text) if level == "char" else text.split()


def d2l_clean(text: str) -> str:
    """d2l's preprocessing of The Time Machine: letters only, lower case, one space between words."""
    lines = (re.sub("[^A-Za-z]+", " ", line).strip().lower() for line in text.splitlines())
    return " ".join(line for line in lines if line)


@functools.lru_cache(maxsize=4)
def _read(path: str, _mtime: int, _size: int, level: str, clean: bool, min_freq: int) -> Corpus:
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # -sig: a leading byte-order mark is no character
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read text file {path} as UTF-8: {error}") from None
    tokens = tokenize(d2l_clean(text) if clean else text, level)
    if len(tokens) < 2:
        raise DataError(f"text file {path} holds {len(tokens)} {level} tokens; a language model needs a real text")
    counts = collections.Counter(tokens)
    # Most frequent first (ties alphabetically) after <unk>, as d2l's Vocab orders them.
    kept = sorted((t for t, n in counts.items() if n >= min_freq and t != UNKNOWN), key=lambda t: (-counts[t], t))
    vocabulary = (UNKNOWN, *kept)
    index = {token: i for i, token in enumerate(vocabulary)}
    ids = torch.tensor([index.get(token, 0) for token in tokens], dtype=torch.long)
    return Corpus(ids=ids, tokens=vocabulary, level=level)


def _held_out_after(ids: torch.Tensor, max_tokens: Optional[int], held_out: int, num_steps: int,
                    path: str) -> tuple[TensorSplit, TensorSplit, TensorSplit]:
    """(train, val, test): the first `max_tokens` ids, then `held_out` ids, then `held_out` more."""
    train_end = len(ids) - 2 * held_out if max_tokens is None else max_tokens
    if train_end <= num_steps or train_end + 2 * held_out > len(ids):
        raise DataError(f"{path}: {len(ids)} tokens are too few for max_tokens={max_tokens} training tokens and "
                        f"2 x held_out_tokens={held_out} after them (windows of num_steps={num_steps})")
    parts = (ids[:train_end], ids[train_end: train_end + held_out], ids[train_end + held_out: train_end + 2 * held_out])
    train, val, test = (_windows(part, num_steps) for part in parts)
    return train, val, test


def _windows(ids: torch.Tensor, num_steps: int) -> TensorSplit:
    count = (len(ids) - 1) // num_steps
    inputs = ids[: count * num_steps].reshape(count, num_steps)
    targets = ids[1: count * num_steps + 1].reshape(count, num_steps)
    return TensorSplit(inputs, targets)


def _download(url: str, file: Path) -> None:
    """Fetch `url` to `file` through a temporary file, so an interrupted download leaves nothing behind."""
    def fetch(partial: Path) -> None:
        with urllib.request.urlopen(url, timeout=30) as response:
            partial.write_bytes(response.read())

    try:
        atomic_write(file, fetch)
    except Exception as error:  # offline, DNS, HTTP errors, a cut connection: the same advice
        raise DataError(f"download of {url} failed ({error}); download it on a machine with internet "
                        f"and place it at {file} (or set dataset.path)") from None
