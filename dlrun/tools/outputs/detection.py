"""What dlrun-eval writes for a detection run, and the rows dlrun-predict writes for it (dlrun.tools.outputs' contract).

Evaluation: the task's mAP (`map50`, `map`) comes from the evaluation pass itself; this adds
each class's AP (`Detection.per_class_ap()`, as `per_class` in metrics.json and a console table)
and `boxes.png`: the first images (of the first batch) of the evaluated data with their true boxes (green) and the
predicted ones scoring `min_score` or more (red, with class and score), also as a TensorBoard
image.

Prediction: one CSV row per detected box scoring `min_score` or more, best first within an image:
the image's id, the class name (`prediction`), `score`, and the corners `x1, y1, x2, y2` as
fractions of the image's width and height (0 = left/top edge, 1 = right/bottom edge), so they
hold for the original image whatever size the model saw it at. An image without such a box has
no row. With `draw`, each image is also written there as a PNG with its boxes drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from PIL import Image
from rich.table import Table
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from dlrun.atomic import atomic_write
from dlrun.detection import detect
from dlrun.detection.draw import boxes_grid, draw_boxes
from dlrun.tasks import Task
from dlrun.tools.outputs.base import TaskOutputs, number

BOX_COLUMNS = ("prediction", "score", "x1", "y1", "x2", "y2")
GRID_IMAGES = 8  # evaluated images drawn with their true and predicted boxes


class DetectionOutputs(TaskOutputs):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.samples: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # the first images and their targets
        self.per_class: dict[str, dict[str, float]] = {}

    def update(self, inputs: torch.Tensor, outputs: Any, targets: torch.Tensor) -> None:
        if self.samples is None:  # the first batch's first images: drawn once the pass is over
            self.samples = (inputs[:GRID_IMAGES].detach(), targets[:GRID_IMAGES].detach())

    def finish(self, folder: Path, writer: SummaryWriter, model: nn.Module, task: Task) -> dict[str, Any]:
        self.per_class = task.per_class_ap()
        result: dict[str, Any] = {"per_class": self.per_class}
        if self.samples is not None:
            images, targets = self.samples
            found = [_confident(detection, self.options.min_score) for detection in detect(model, images)]
            picture = boxes_grid(images, found, self.card.classes, targets)
            atomic_write(folder / "boxes.png", lambda partial: Image.fromarray(
                picture.permute(1, 2, 0).numpy()).save(partial, format="PNG"))
            writer.add_image("eval/boxes", picture)
            result["boxes_drawn"] = {"images": len(images), "min_score": self.options.min_score}
        return result

    def tables(self) -> list[Table]:
        if not self.per_class:
            return []
        table = Table(title="AP per class", caption="-: no objects")
        for column in ("class", "AP@0.5", "AP@[.5:.95]"):
            table.add_column(column, justify="left" if column == "class" else "right")
        for name, scores in self.per_class.items():
            table.add_row(name, *(number(scores[key]) for key in ("ap50", "ap")))
        return [table]

    def columns(self) -> list[str]:
        return list(BOX_COLUMNS)

    def rows(self, model: nn.Module, inputs: torch.Tensor, ids: list[str]) -> list[tuple[str, dict[str, Any]]]:
        rows = []
        for identifier, image, detection in zip(ids, inputs, detect(model, inputs)):
            kept = _confident(detection, self.options.min_score)
            for box, score, label in zip(kept["boxes"].float().cpu().tolist(), kept["scores"].float().cpu().tolist(),
                                         kept["labels"].cpu().tolist()):
                rows.append((identifier, {"prediction": self.card.classes[int(label)], "score": round(score, 6),
                                          **{name: round(value, 6) for name, value in zip(BOX_COLUMNS[2:], box)}}))
            if self.options.draw is not None:
                self._draw(image, kept, identifier)
        return rows

    def _draw(self, image: torch.Tensor, detection: dict[str, torch.Tensor], identifier: str) -> None:
        """The image as the model saw it, with its boxes, as <draw>/<id>.png (the id's folders kept)."""
        path = Path(self.options.draw) / Path(identifier).with_suffix(".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        picture = draw_boxes(image, detection, self.card.classes)
        atomic_write(path, lambda partial: Image.fromarray(picture.permute(1, 2, 0).numpy()).save(partial,
                                                                                                   format="PNG"))


def _confident(detection: dict[str, torch.Tensor], min_score: float) -> dict[str, torch.Tensor]:
    keep = detection["scores"] >= min_score
    return {key: value[keep] for key, value in detection.items()}

