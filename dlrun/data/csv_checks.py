"""What a CSV file must be before dlrun.data.tabular encodes it, each failure naming the file, line and column.

- The header names every column once (a second `price` would make `dataset.target=price` read
  the wrong one), without a byte-order mark (Excel's UTF-8 CSV puts one before the first name).
- A column is numeric when most of its present values are numbers; then every present value
  must be a finite number: one stray word or `inf` is an error to fix, never a reason to one-hot
  the column (nor does one bad cell turn a column of categories into numbers).
- A regression target is a finite float32 (an `inf`, or 1e39, would only surface as a diverged loss).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Union

import numpy as np

from dlrun.errors import DataError

BOM = "\ufeff"


def header_names(path: Union[str, Path], header: list[str]) -> list[str]:
    """The header's column names, stripped (also of a byte-order mark); DataError when one repeats."""
    names = [name.strip().lstrip(BOM) for name in header]
    first: dict[str, int] = {}
    for number, name in enumerate(names, start=1):
        if name in first:
            raise DataError(f"CSV file {path}: the header names column {name!r} twice (columns {first[name]} and "
                            f"{number}); give each column its own name")
        first[name] = number
    return names


def numeric_column(name: str, values: list[str], missing: np.ndarray, source: str) -> Optional[np.ndarray]:
    """The column as numbers (0 where missing) when most present values are numbers; None: a categorical column.

    `missing` marks the values that count as missing. In a column of numbers, a word or a
    non-finite number is a DataError naming its line (the header is line 1).
    """
    parsed = [(row, value, number(value)) for row, (value, gone) in enumerate(zip(values, missing)) if not gone]
    if sum(parsed_number is not None for _, _, parsed_number in parsed) * 2 <= len(parsed):
        return None  # mostly words (or nothing present): categories
    numbers = np.zeros(len(values))
    for row, value, parsed_number in parsed:
        if parsed_number is None or not math.isfinite(parsed_number):
            raise DataError(f"{source} line {row + 2}: column {name!r} holds {value!r}, {not_a_number(value)}, "
                            "among numbers; fix the cell or leave it empty (a missing value)")
        numbers[row] = parsed_number
    return numbers


def not_a_number(value: str) -> str:
    """How a cell that should hold a number fails: "not a number" (a word) or "not a finite number" (inf)."""
    return "not a number" if number(value) is None else "not a finite number"


def number(value: str) -> Optional[float]:
    try:
        return float(value)
    except ValueError:
        return None
