"""scikit-learn's digits as files carrying every target kind: PNGs with a labels CSV of scores, tags and yes/no
values, and a CSV of the same pixels, all listing the images in the same order (so their splits are alike)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

TAGS = ("even", "big", "round")  # a digit's labels: even, >= 5, drawn with a loop (0, 6, 8, 9)


def digit_score(label: int) -> float:
    """A 1-5 "rating" of a digit image (d2l's face-beauty scores stand-in): 1 + 4 * digit / 9."""
    return round(1 + 4 * label / 9, 4)


def digit_tags(label: int) -> str:
    present = (label % 2 == 0, label >= 5, label in (0, 6, 8, 9))
    return " ".join(tag for tag, on in zip(TAGS, present) if on)


def write_digit_files(root: Path, count: int | None = None) -> dict[str, np.ndarray]:
    """root/images/<n>.png (8x8 grey) and root/labels.csv: image,score,tags,even,big,round,odd (yes/no as a word);
    root/pixels.csv: the 64 pixels (0-255) of each image, then score and even. Returns the arrays written."""
    digits = load_digits()
    pixels = (digits.images * (255 / 16)).round().astype(np.uint8)[:count]
    labels = digits.target[:count]
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = ["image,score,tags,even,big,round,odd"]
    table = [",".join([f"p{i}" for i in range(64)] + ["score", "even"])]
    for n, (image, label) in enumerate(zip(pixels, labels)):
        Image.fromarray(image).save(root / "images" / f"{n}.png")
        flags = [str(int(tag in digit_tags(label).split())) for tag in TAGS]
        rows.append(f"images/{n}.png,{digit_score(label)},{digit_tags(label)},{','.join(flags)},"
                    f"{'yes' if label % 2 else 'no'}")
        table.append(",".join([str(int(v)) for v in image.reshape(-1)] + [str(digit_score(label)), flags[0]]))
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    (root / "pixels.csv").write_text("\n".join(table) + "\n")
    return {"pixels": pixels, "labels": labels, "scores": np.array([digit_score(label) for label in labels])}
