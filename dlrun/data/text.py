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
              max_tokens: Optional[int] = None, url: Optional[str] = None, download: bool = False) -> DataSplits:
    """Windows of `num_steps` ids from the text at `path`; the last `test_fraction` of the text is the test split.

    `clean` applies d2l's preprocessing (letters only, lower case); `max_tokens` keeps the first
    tokens only (d2l trains on The Time Machine's first 10,000). When `path` is missing,
    `url` is set and `download` is true, the file is fetched there first.
    `extras` carries what a language model's text samples need: the vocabulary, the separator
    between tokens, and `sample_prefix` encoded.
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling {sampling!r} is not one of: {', '.join(SAMPLINGS)}")
    if num_steps < 1 or not 0 < test_fraction < 1:
        raise ValueError("num_steps must be >= 1 and test_fraction in (0, 1)")
    corpus = read_corpus(path, level, clean, min_freq, url, download)
    ids = corpus.ids[:max_tokens]
    cut = int(len(ids) * (1 - test_fraction))
    train, test = _windows(ids[:cut], num_steps), _windows(ids[cut:], num_steps)
    if len(train) == 0 or len(test) == 0:
        raise DataError(f"{path}: {len(ids)} tokens are too few for windows of num_steps={num_steps} "
                        f"in both the training and the test part (test_fraction={test_fraction})")
    extras = {"tokens": list(corpus.tokens), "separator": corpus.separator,
              "sample_prefix": corpus.encode(sample_prefix)}
    return DataSplits(train=train, test=test, extras=extras, sequential=sampling == "sequential")


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
        text = Path(path).read_text(encoding="utf-8")
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
