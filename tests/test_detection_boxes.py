"""dlrun.detection: anchors, matching, offsets, NMS, the loss and mAP against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from dlrun.detection.boxes import (anchor_errors, decode_offsets, encode_offsets, match_anchors, multibox_detection,
                                   multibox_loss, multibox_prior, multibox_target)
from dlrun.detection.metrics import DetectionMetric
from dlrun.detection.targets import pad_target, to_records, unpad


def test_anchors_of_a_2x2_map_are_the_four_quarters():
    expected = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.0, 1.0, 0.5], [0.0, 0.5, 0.5, 1.0], [0.5, 0.5, 1.0, 1.0]])
    torch.testing.assert_close(multibox_prior((2, 2), [0.5], [1]), expected)


def test_anchor_sizes_and_ratios_per_cell():
    # every size with the first ratio, then the first size with the other ratios: s·√r wide, s/√r high
    anchors = multibox_prior((1, 1), [0.5, 0.25], [1, 2])
    w, h = 0.5 * math.sqrt(2), 0.5 / math.sqrt(2)
    expected = torch.tensor([[0.25, 0.25, 0.75, 0.75], [0.375, 0.375, 0.625, 0.625],
                             [0.5 - w / 2, 0.5 - h / 2, 0.5 + w / 2, 0.5 + h / 2]])
    torch.testing.assert_close(anchors, expected)
    # a map twice as wide as high: widths are scaled by h/w, centres at (j + 0.5) / w
    wide = multibox_prior((1, 2), [0.5], [1])
    torch.testing.assert_close(wide, torch.tensor([[0.125, 0.25, 0.375, 0.75], [0.625, 0.25, 0.875, 0.75]]))


# d2l 14.4.3's worked example: a dog and a cat, five anchors.
ANCHORS = torch.tensor([[0.0, 0.1, 0.2, 0.3], [0.15, 0.2, 0.4, 0.4], [0.63, 0.05, 0.88, 0.98],
                        [0.66, 0.45, 0.8, 0.8], [0.57, 0.3, 0.92, 0.9]])
DOG_AND_CAT = torch.stack([pad_target(torch.tensor([[0.1, 0.08, 0.52, 0.92], [0.55, 0.2, 0.9, 0.88]]),
                                      torch.tensor([0, 1]), max_objects=3)])


def test_multibox_target_matches_the_worked_example():
    labels, offsets, mask = multibox_target(ANCHORS, DOG_AND_CAT)
    assert labels.tolist() == [[0, 1, 2, 0, 2]]  # background, dog, cat, background, cat
    assert mask[0, :, 0].tolist() == [0, 1, 1, 0, 1]
    # anchor 1 (centre 0.275, 0.3; size 0.25 x 0.2) to the dog (centre 0.31, 0.5; size 0.42 x 0.84)
    expected = [10 * 0.035 / 0.25, 10 * 0.2 / 0.2, 5 * math.log(0.42 / 0.25), 5 * math.log(0.84 / 0.2)]
    torch.testing.assert_close(offsets[0, 1], torch.tensor(expected), atol=1e-4, rtol=0)
    assert (offsets[0, [0, 3]] == 0).all()


def test_matching_by_threshold_and_best_anchor_per_object():
    anchors = torch.tensor([[0.0, 0.0, 0.4, 0.4], [0.0, 0.0, 0.5, 0.5], [0.6, 0.6, 0.7, 0.7]])
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.55, 0.55, 1.0, 1.0]]])
    # IoU(anchor 0, box 0) = 0.16 / 0.25 = 0.64 >= 0.5; anchor 1 is box 0 exactly; box 1 overlaps anchor 2 by
    # 0.01 / 0.2025 ≈ 0.05 only, yet gets it: every object has its best anchor
    matched = match_anchors(anchors, boxes, torch.tensor([[True, True]]), iou_threshold=0.5)
    assert matched.tolist() == [[0, 0, 1]]
    stricter = match_anchors(anchors, boxes, torch.tensor([[True, True]]), iou_threshold=0.7)
    assert stricter.tolist() == [[-1, 0, 1]]  # 0.64 < 0.7: anchor 0 is background now
    padded = match_anchors(anchors, boxes, torch.tensor([[True, False]]), iou_threshold=0.5)
    assert padded.tolist() == [[0, 0, -1]]  # a padding row is never matched


def test_encoding_then_decoding_returns_the_boxes():
    torch.manual_seed(0)
    corners = torch.rand(2, 50, 2, 2).sort(dim=2).values  # x1 < x2 and y1 < y2
    boxes = corners.permute(0, 1, 3, 2).reshape(2, 50, 4)[..., [0, 2, 1, 3]].clamp(min=0.01)
    boxes[..., 2:] += 0.01
    anchors = multibox_prior((5, 10), [0.3], [1])
    round_trip = decode_offsets(anchors, encode_offsets(anchors.expand(2, -1, -1), boxes))
    torch.testing.assert_close(round_trip, boxes, atol=1e-5, rtol=0)


def logits(probabilities: list[list[float]]) -> torch.Tensor:
    """Class logits whose softmax is `probabilities` (background first)."""
    return torch.tensor(probabilities).clamp(min=1e-9).log()


def test_nms_keeps_the_best_of_overlapping_boxes_per_class():
    # d2l 14.4.4: three overlapping dog anchors (0.9, 0.8, 0.7) and a cat anchor (0.9)
    anchors = torch.tensor([[0.1, 0.08, 0.52, 0.92], [0.08, 0.2, 0.56, 0.95], [0.15, 0.3, 0.62, 0.91],
                            [0.55, 0.2, 0.9, 0.88]])
    classes = logits([[0, 0.9, 0.1], [0, 0.8, 0.2], [0, 0.7, 0.3], [0, 0.1, 0.9]])
    predictions = torch.cat([classes, torch.zeros(4, 4)], dim=1)
    second = predictions.clone()
    second[3, :3] = logits([[0, 0.9, 0.1]])[0]  # the same boxes, all dogs: the fourth does not overlap
    detections = multibox_detection(torch.stack([predictions, second]), anchors, nms_iou=0.5)
    first, other = detections
    assert first["labels"].tolist() == [0, 1] and first["scores"].tolist() == pytest.approx([0.9, 0.9])
    torch.testing.assert_close(first["boxes"], anchors[[0, 3]])
    assert other["labels"].tolist() == [0, 0]
    torch.testing.assert_close(other["boxes"], anchors[[0, 3]])
    # a looser NMS keeps more; a high score threshold and max_detections drop some
    assert len(multibox_detection(predictions[None], anchors, nms_iou=0.95)[0]["boxes"]) == 4
    assert multibox_detection(predictions[None], anchors, score_threshold=0.85)[0]["scores"].tolist() == \
        pytest.approx([0.9, 0.9])
    assert len(multibox_detection(predictions[None], anchors, nms_iou=0.95, max_detections=2)[0]["boxes"]) == 2


def test_loss_and_anchor_errors_vanish_for_perfect_predictions():
    labels, offsets, mask = multibox_target(ANCHORS, DOG_AND_CAT)
    perfect = torch.cat([torch.nn.functional.one_hot(labels, 3).float() * 50, offsets], dim=2)
    assert multibox_loss(perfect, labels, offsets, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert anchor_errors(perfect, labels, offsets, mask).tolist() == [5.0, 5.0, 0.0, 20.0]
    wrong = perfect.clone()
    wrong[0, 1, :3] = torch.tensor([50.0, 0.0, 0.0])  # anchor 1 called background
    wrong[0, 1, 3] += 1.0  # and its x offset off by 1
    correct, anchors, absolute, values = anchor_errors(wrong, labels, offsets, mask).tolist()
    assert (correct, anchors, absolute, values) == (4.0, 5.0, pytest.approx(1.0), 20.0)
    # cross-entropy 50 on one of 5 anchors, smooth-L1 0.5 on one of 20 offsets
    assert multibox_loss(wrong, labels, offsets, mask).item() == pytest.approx(50 / 5 + 0.5 / 20, rel=1e-4)


def test_targets_pad_and_unpad():
    target = pad_target(torch.tensor([[0.1, 0.2, 0.3, 0.4]]), torch.tensor([2]), max_objects=3)
    torch.testing.assert_close(target, torch.tensor([[2, 0.1, 0.2, 0.3, 0.4], [-1, 0, 0, 0, 0], [-1, 0, 0, 0, 0]]))
    boxes, labels = unpad(target)
    assert labels.tolist() == [2] and boxes.shape == (1, 4)
    assert [len(r["labels"]) for r in to_records(torch.stack([target, pad_target(torch.zeros(0, 4),
                                                                                  torch.zeros(0), 3)]))] == [1, 0]
    with pytest.raises(ValueError, match="3 objects in an image, more than max_objects=2"):
        pad_target(torch.zeros(3, 4), torch.zeros(3), max_objects=2)


def test_map_of_perfect_shifted_and_wrong_detections():
    truth = torch.stack([pad_target(torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9]]),
                                    torch.tensor([0, 1]), 2)])
    perfect = DetectionMetric(["nut", "bolt", "washer"])
    perfect.update([{"boxes": truth[0, :, 1:], "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([0, 1])}],
                   truth, (100, 100))
    assert perfect.compute() == {"map50": pytest.approx(1.0), "map": pytest.approx(1.0)}
    per_class = perfect.per_class()
    assert per_class["nut"] == {"ap50": pytest.approx(1.0), "ap": pytest.approx(1.0)}
    assert math.isnan(per_class["washer"]["ap50"])  # no washers anywhere: no AP

    # the nut found with IoU 0.256 / 0.4 = 0.64 (a hit at IoU thresholds 0.5, 0.55, 0.6 of ten), the bolt called a nut
    shifted = DetectionMetric(["nut", "bolt", "washer"])
    shifted.update([{"boxes": torch.tensor([[0.1, 0.1, 0.356, 0.5], [0.6, 0.6, 0.9, 0.9]]),
                     "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([0, 0])}], truth, (100, 100))
    per_class = shifted.per_class()
    assert per_class["nut"] == {"ap50": pytest.approx(1.0), "ap": pytest.approx(0.3)}
    assert per_class["bolt"] == {"ap50": 0.0, "ap": 0.0}
    assert shifted.compute() == {"map50": pytest.approx(0.5), "map": pytest.approx(0.15)}
