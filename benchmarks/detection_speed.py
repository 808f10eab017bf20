"""Training throughput (images/s) of TinySSD: dlrun's detection path against a plain PyTorch loop, in one run.

The plain loop is d2l's train loop for TinySSD (14.7): `DataLoader(TensorDataset(...))` over host
tensors, a copy to the device per batch, anchor targets assigned image by image with a Python
loop over the objects (d2l's multibox_target), the class error and bbox MAE read with
`float(...)` every step. dlrun's path is the code `dlrun` runs: device-resident uint8 images in a
`TensorLoader`, batched anchor targets, `dlrun.engine.loop.train_one_epoch` with the `Detection` task. Both
train the same model (same initial weights) on the same synthetic images with SGD (lr 0.2,
weight decay 5e-4) and the same batch size; both use the same loss (cross-entropy + smooth-L1).

    python benchmarks/detection_speed.py                          # CPU: 128 images of 128 px
    python benchmarks/detection_speed.py --device cuda --image-size 256 --images 1024
"""

from __future__ import annotations

import argparse
import copy
import platform
import time

import torch
from hydra import compose, initialize_config_module
from torch.utils.data import DataLoader, TensorDataset
from torchvision.ops import box_iou

import dlrun  # noqa: F401  (registers the config resolvers)
from dlrun.config import validate
from dlrun.data.loader import TensorLoader
from dlrun.data.splits import TensorSplit
from dlrun.data.synthetic_detection import synthetic_detection
from dlrun.detection.boxes import encode_offsets, multibox_loss, split_predictions
from dlrun.engine.loop import Trainer, train_one_epoch
from dlrun.engine.precision import Precision
from dlrun.models import build_model
from dlrun.tasks import Detection


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--image-size", type=int, default=None, help="default: 256 on CUDA, 128 on the CPU")
    parser.add_argument("--images", type=int, default=None, help="per epoch; default: 1024 on CUDA, 128 on the CPU")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per loop; the best counts")
    args = parser.parse_args()
    device = torch.device(args.device)
    size = args.image_size or (256 if device.type == "cuda" else 128)
    count = args.images or (1024 if device.type == "cuda" else 128)

    with initialize_config_module(version_base="1.3", config_module="dlrun.conf"):
        cfg = validate(compose(config_name="config", overrides=[
            "dataset=synthetic_detection", "model=tiny_ssd", f"dataset.image_size={size}"]))
    data = synthetic_detection(num_train=count, num_test=1, image_size=size, seed=0)
    images, targets = data.train.inputs, data.train.targets
    torch.manual_seed(0)
    model = build_model(cfg.model)

    dlrun_model = copy.deepcopy(model).to(device)
    dlrun_optimizer = sgd(dlrun_model)
    loader = TensorLoader(TensorSplit(images, targets).to(device), args.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(0), transform=lambda batch: batch.float().div_(255))
    task, precision = Detection(data.extras["classes"]), Precision("off", device)

    def dlrun_epoch() -> None:
        train_one_epoch(Trainer(dlrun_model, task, dlrun_optimizer, precision), loader)

    plain_model = copy.deepcopy(model).to(device)
    plain_optimizer = sgd(plain_model)
    plain_loader = DataLoader(TensorDataset(images.float() / 255, targets), batch_size=args.batch_size, shuffle=True)

    def plain_epoch() -> None:
        plain_loop(plain_model, plain_loader, plain_optimizer, device)

    loops = {"plain": plain_epoch, "dlrun": dlrun_epoch}
    for epoch in loops.values():
        epoch()  # warm-up
    # Alternate the loops and keep each one's best, so load from other processes penalises neither.
    best = {label: float("inf") for label in loops}
    for _ in range(args.repeats):
        for label, epoch in loops.items():
            best[label] = min(best[label], timed(epoch, device))
    rates = {label: count / seconds for label, seconds in best.items()}
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"TinySSD training, {count} images of {size}x{size}, batch {args.batch_size}, {where}, "
          f"torch {torch.__version__}")
    print(f"dlrun {rates['dlrun']:,.1f} images/s, plain loop {rates['plain']:,.1f} images/s, "
          f"ratio {rates['dlrun'] / rates['plain']:.2f}x (best of {args.repeats} epochs each)")


def sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    """d2l's optimizer for TinySSD."""
    return torch.optim.SGD(model.parameters(), lr=0.2, weight_decay=5e-4)


def plain_loop(model: torch.nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
               device: torch.device) -> None:
    """d2l 14.7.3's training epoch: per-image target assignment, host reads of the metrics every step."""
    model.train()
    correct = anchors_seen = absolute = offsets_seen = 0.0
    for images, targets in loader:
        images, targets = images.to(device), targets.to(device)
        predictions = model(images)
        labels, offsets, mask = per_image_targets(model.anchors, targets)
        loss = multibox_loss(predictions, labels, offsets, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        class_logits, predicted = split_predictions(predictions.detach())
        correct += float((class_logits.argmax(dim=-1) == labels).sum())
        anchors_seen += labels.numel()
        absolute += float(((offsets - predicted) * mask).abs().sum())
        offsets_seen += offsets.numel()


def per_image_targets(anchors: torch.Tensor, targets: torch.Tensor,
                      iou_threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """d2l's multibox_target: one image at a time, the greedy best-anchor-per-object step as a Python loop."""
    all_labels, all_offsets, all_masks = [], [], []
    for target in targets:
        objects = target[target[:, 0] >= 0]
        iou = box_iou(anchors, objects[:, 1:])
        best_iou, best_object = iou.max(dim=1) if len(objects) else (iou.new_zeros(len(anchors)), None)
        matched = torch.full((len(anchors),), -1, dtype=torch.long, device=anchors.device)
        if best_object is not None:
            matched = torch.where(best_iou >= iou_threshold, best_object, matched)
        for _ in range(len(objects)):
            index = torch.argmax(iou)
            anchor, box = index // len(objects), index % len(objects)
            matched[anchor] = box
            iou[:, box], iou[anchor, :] = -1, -1
        positive = matched >= 0
        assigned = objects[matched.clamp(min=0)] if len(objects) else target[:1].expand(len(anchors), -1)
        mask = positive[:, None].float().expand(-1, 4)
        all_offsets.append(encode_offsets(anchors, assigned[:, 1:]) * mask)
        all_labels.append(torch.where(positive, assigned[:, 0].long() + 1, 0))
        all_masks.append(mask)
    return torch.stack(all_labels), torch.stack(all_offsets), torch.stack(all_masks)


def timed(function, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
