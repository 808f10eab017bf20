"""`dlrun-export <run dir> --format torchscript|onnx`: a self-contained model file and a JSON that says how to feed it.

Writes `<run dir>/export/model.pt` (TorchScript: `torch.jit.load` runs it without dlrun) or
`model.onnx` (weights inside the file; any ONNX runtime), next to `model.pt.json` or
`model.onnx.json`: the input's
name, dtype and shape (the batch dimension free), the classes, how an input is prepared
(dlrun.data.card: pixel scaling, the fitted tabular encoder, a vocabulary), and the result of
the check every export ends with: the file is loaded back and run on fresh inputs of another
batch size, and its outputs must match PyTorch's.

ONNX is the optional extra `dlrun[onnx]` (onnx, onnxscript for torch's exporter, onnxruntime for
the check); TorchScript needs nothing more than torch. The model is exported on the CPU, in eval
mode; a language model takes token ids (batch, steps) and returns logits (no carried state).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from dlrun.atomic import write_json
from dlrun.data.card import DataCard
from dlrun.data.targets import TargetUnits
from dlrun.errors import ConfigError, DlrunError
from dlrun.tools.command import add_run_arguments, tool_main
from dlrun.tools.loaded_run import load_run

FORMATS = {"torchscript": "model.pt", "onnx": "model.onnx"}
ONNX_EXTRA = ("onnx", "onnxscript", "onnxruntime")
TOLERANCE = {"atol": 1e-4, "rtol": 1e-3}  # float32 kernels of another runtime differ in the last bits


class ExportMismatch(DlrunError):
    """The exported file's outputs differ from PyTorch's: the file is not trustworthy."""


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="dlrun-export", description=__doc__.split("\n\n")[0])
    add_run_arguments(parser)
    parser.add_argument("--format", choices=tuple(FORMATS), required=True, help="torchscript or onnx (dlrun[onnx])")
    parser.add_argument("--out", type=Path, default=None, help="the folder to write (default: <run dir>/export)")
    args = parser.parse_args(argv)
    tool_main("dlrun-export", lambda: export_run(args.run_dir, args.format, args.checkpoint, args.out))


def export_run(run_dir: Path, fmt: str, checkpoint: str = "best", out: Optional[Path] = None) -> Path:
    """Export, check against PyTorch, write `<model file>.json`; return the model file's path."""
    if fmt == "onnx":
        missing = [name for name in ONNX_EXTRA if importlib.util.find_spec(name) is None]
        if missing:
            raise ConfigError(f"--format onnx needs the optional extra dlrun[onnx]: pip install 'dlrun[onnx]' "
                              f"(missing: {', '.join(missing)})")
    trained = load_run(run_dir, checkpoint, device="cpu")
    card = trained.card
    folder = Path(out) if out is not None else Path(run_dir) / "export"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FORMATS[fmt]
    model = in_target_units(trained.model.float().eval(), card)
    if card.task == "detection" and _complete_detector(model):
        raise ConfigError("dlrun-export writes models whose output is one tensor; this run's detector "
                          f"({type(model).__name__}) returns boxes, scores and labels per image: export its "
                          "torchvision model with torchvision's own tools, or train model=tiny_ssd")
    example, fresh = example_input(card, 2, seed=0), example_input(card, 3, seed=1)
    if fmt == "torchscript":
        exported = _torchscript(model, example, path)
    else:
        exported = _onnx(model, example, path, card)
    with torch.no_grad():
        expected = model(fresh).numpy()
    difference = _check(exported(fresh), expected, path)
    description = path.with_name(path.name + ".json")
    write_json(description, {**describe(card, fmt, path, trained.checkpoint, trained.epoch, expected.shape, difference),
                             **anchor_decoding(model)})
    print(f"exported {path} and {description} (outputs match PyTorch's within {difference:.2g})")
    return path


def example_input(card: DataCard, batch: int, seed: int) -> torch.Tensor:
    """Inputs of the model's kind and shape: [0, 1] pixels, standardized features, token ids."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, *card.input_shape)
    if card.inputs == "tokens":
        steps = card.input_shape[0] + seed  # another length too: the steps dimension is free
        return torch.randint(0, len(card.vocabulary["tokens"]), (batch, steps), generator=generator)
    if card.inputs == "image":
        return torch.rand(shape, generator=generator)
    return torch.randn(shape, generator=generator)


def in_target_units(model: nn.Module, card: DataCard) -> nn.Module:
    """The model a user of the file runs: a regression model trained on standardised targets with its outputs
    brought back to the targets' units inside it (TargetUnits), so nothing is left to undo."""
    scale = card.scale()
    return TargetUnits(model, scale).eval() if card.task == "regression" and scale.standardized else model


def _complete_detector(model: nn.Module) -> bool:
    from dlrun.detection import computes_own_loss  # torchvision's ops: imported for detection runs only

    return computes_own_loss(model)


def anchor_decoding(model: nn.Module) -> dict[str, Any]:
    """An anchor detector's (tiny_ssd) anchors and how its outputs become boxes; {} for other models."""
    if not hasattr(model, "anchors"):
        return {}
    from dlrun.detection.boxes import CENTRE_SCALE, NMS_CANDIDATES, SIZE_SCALE

    return {"anchors": [[round(v, 6) for v in anchor] for anchor in model.anchors.tolist()],
            "decoding": {
                "boxes": "anchors and boxes are corners x1, y1, x2, y2 in fractions of the image; an anchor of "
                         "centre (cx, cy) and size (w, h) with offsets (a, b, c, d) gives the box of centre "
                         f"(cx + a * w / {CENTRE_SCALE}, cy + b * h / {CENTRE_SCALE}) and size "
                         f"(w * exp(c / {SIZE_SCALE}), h * exp(d / {SIZE_SCALE})), clamped to [0, 1]",
                "scores": "softmax over the class logits; an anchor's class is its most likely non-background one",
                "nms": f"the {NMS_CANDIDATES} best anchors scoring above score_threshold, per class non-maximum "
                       "suppression at nms_iou, the best max_detections kept",
                "score_threshold": float(model.score_threshold), "nms_iou": float(model.nms_iou),
                "max_detections": int(model.max_detections)}}


def _torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> Any:
    with warnings.catch_warnings():  # torch.jit's deprecation notice and tracer remarks: the check below decides
        warnings.simplefilter("ignore")
        try:
            traced = torch.jit.trace(model, example, check_trace=False)
        except Exception as error:  # e.g. outputs that are not tensors
            raise DlrunError(f"TorchScript export failed: {type(error).__name__}: "
                             f"{(str(error).strip().splitlines() or [''])[0]}") from None
        torch.jit.save(traced, str(path))
        loaded = torch.jit.load(str(path))

    def run(inputs: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return loaded(inputs).numpy()

    return run


def _onnx(model: nn.Module, example: torch.Tensor, path: Path, card: DataCard) -> Any:
    import onnxruntime

    free = {0: torch.export.Dim("batch", min=1)}
    if card.inputs == "tokens":
        free[1] = torch.export.Dim("steps", min=1)
    chatter = io.StringIO()  # the exporter reports its steps on stdout; shown only when it fails
    try:
        with contextlib.redirect_stdout(chatter), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["output"],
                              dynamic_shapes=(free,), dynamo=True, external_data=False, verbose=False)
    except Exception as error:
        raise DlrunError(f"ONNX export failed: {type(error).__name__}: {str(error).splitlines()[0]}\n"
                         f"{chatter.getvalue()}") from error
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(inputs: torch.Tensor) -> np.ndarray:
        return session.run(None, {"input": inputs.numpy()})[0]

    return run


def _check(actual: np.ndarray, expected: np.ndarray, path: Path) -> float:
    if actual.shape != expected.shape:
        raise ExportMismatch(f"{path}: the exported model returns shape {list(actual.shape)} for a batch of "
                             f"{expected.shape[0]}, PyTorch {list(expected.shape)}")
    difference = float(np.abs(actual - expected).max())
    if not np.allclose(actual, expected, **TOLERANCE):
        raise ExportMismatch(f"{path}: the exported model's outputs differ from PyTorch's by up to {difference:.3g} "
                             f"(tolerance: {TOLERANCE}); the file is not usable")
    return difference


def describe(card: DataCard, fmt: str, path: Path, checkpoint: Path, epoch: int, output_shape: tuple[int, ...],
             difference: float) -> dict[str, Any]:
    """<model file>.json: what a program needs to feed the exported model and read its outputs."""
    tokens = card.inputs == "tokens"
    input_shape = ["batch", "steps"] if tokens else ["batch", *card.input_shape]
    outputs = {"classification": "logits per class (softmax gives probabilities; classes in this order)",
               "binary": f"one logit (sigmoid gives the probability of {card.classes[-1] if card.classes else '1'}; "
                         f"predict it at probability >= threshold)",
               "multilabel": "one logit per label (sigmoid gives each label's probability; labels in the order of "
                             "classes; a label applies at probability >= threshold)",
               "regression": "the predicted value, one per target (targets), in the target's own units: the "
                             "standardisation of training (target_scale) is undone inside the model",
               "language_model": "logits over the vocabulary for every step",
               "detection": "per anchor: class logits (background first, then the classes in order) and 4 box "
                            "offsets from the anchor (see decoding)"}.get(card.task, "the model's outputs")
    return {
        "format": fmt,
        "file": path.name,
        "input": {"name": "input", "dtype": "int64" if tokens else "float32", "shape": input_shape,
                  "preprocessing": card.describe_inputs()},
        "output": {"name": "output", "shape": ["batch", *output_shape[1:]] if not tokens
                   else ["batch", "steps", output_shape[-1]], "meaning": outputs},
        "task": card.task,
        "classes": card.classes,
        "encoder": card.encoder,
        "vocabulary": card.vocabulary,
        "log_target": card.log_target,
        "targets": card.target_names,
        "target_scale": card.target_scale,
        "threshold": card.threshold if card.task in ("binary", "multilabel") else None,
        "checkpoint": str(checkpoint),
        "epoch": epoch,
        "torch": torch.__version__,
        "check": {"max_abs_difference": difference, "tolerance": TOLERANCE,
                  "inputs": "3 fresh examples (a batch size other than the exported one)"},
    }
