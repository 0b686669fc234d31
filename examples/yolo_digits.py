"""A YOLO detector adapted under a latency budget, scored by mAP: Ultralytics' YOLOv8n on digits placed on a canvas.

    python examples/yolo_digits.py --run runs/yolo-digits [--latency 60%] [--size 64] [--lut LUT.sqlite | --measure]

Everything here is the user's, not netopt's: the model (Ultralytics' `DetectionModel` from its
bundled yolov8n.yaml, 10 classes, random init: nothing downloaded), the training loop
(Ultralytics' own loss, `v8DetectionLoss`, with its default box/cls/dfl gains; AdamW) and the
metric (torchmetrics' COCO mAP@[.5:.95] on the holdout canvases after Ultralytics' NMS). The data
are `netopt.data_detection.mnist_detection()`: real MNIST digits placed on canvases, their ink
boxes as labels, train/holdout/test from disjoint digit images. netopt gets the loop and the
metric through `FunctionObjective` and adapts the network with ProgressiveBarrier until its ONNX
Runtime latency meets the budget: each candidate priced by a lookup table of layer costs (the
head's decoding, kept whole, is a unit of its own, measured with its module), calibrated once and
kept in --lut for the next run, or measured end to end with --measure (the user's own estimator,
`MeasuredLatency`: slower, every candidate exported and timed). Stop it at any point and run it
again with --resume.

Needs Ultralytics (installed with --no-deps beside the CPU torch, as `make test` does) and the
`detection` extra (torchmetrics, pycocotools).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolo-config-"))  # Ultralytics writes settings

import torch
from torch import nn

import netopt
from netopt.data_detection import DigitCanvases, mnist_detection
from netopt.measure import NoisyMeasurementWarning, OnnxRuntimeCPU
from netopt.testing.peers import import_torchvision

import_torchvision()  # torchmetrics imports torchvision, whose compiled ops a CPU-only torch lacks

from torchmetrics.detection import MeanAveragePrecision  # noqa: E402
from ultralytics.cfg import get_cfg  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402
from ultralytics.utils.loss import v8DetectionLoss  # noqa: E402
from ultralytics.utils.nms import TorchNMS  # noqa: E402
from ultralytics.utils.ops import xywh2xyxy  # noqa: E402
from ultralytics.utils.tal import make_anchors  # noqa: E402

# --- the user's model -------------------------------------------------------------------------


def yolo(num_classes: int = 10) -> DetectionModel:
    """YOLOv8n from Ultralytics' yaml, random init; `args` holds the loss gains its criterion reads."""
    model = DetectionModel("yolov8n.yaml", nc=num_classes, verbose=False)
    model.args = get_cfg()  # type: ignore[assignment]  # box 7.5, cls 0.5, dfl 1.5: Ultralytics' defaults
    return model


# --- the user's loop and metric ---------------------------------------------------------------


def targets(split: DigitCanvases, rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """The canvases `rows` as Ultralytics' loss takes them: image index, class, normalized xywh boxes."""
    side = split.images.shape[-1]
    boxes = [split.boxes[int(r)] for r in rows]
    xyxy = torch.cat(boxes) / side
    return {"batch_idx": torch.cat([torch.full((len(b),), float(i)) for i, b in enumerate(boxes)]),
            "cls": torch.cat([split.labels[int(r)] for r in rows]).float()[:, None],
            "bboxes": torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], dim=1)}


def raw_predictions(output: Any, box_channels: int) -> dict[str, Any]:
    """The head's raw predictions (boxes, scores, feats) out of what a network returns: Ultralytics'
    dict or (decoded, dict) tuple, or the per-level maps (B, box_channels + nc, H, W)."""
    if isinstance(output, dict):
        return output.get("one2many", output)
    if isinstance(output, (tuple, list)) and isinstance(output[-1], dict):
        return raw_predictions(output[-1], box_channels)
    maps = list(output)
    flat = torch.cat([m.reshape(m.shape[0], m.shape[1], -1) for m in maps], dim=-1)
    return {"boxes": flat[:, :box_channels], "scores": flat[:, box_channels:], "feats": maps}


class Detection:
    """The task: canvases, Ultralytics' loss, NMS and mAP. Top-level, so that workers can receive it."""

    def __init__(self, model: DetectionModel, data: Any, batch_size: int = 32, device: str = "auto") -> None:
        self.data, self.batch_size = data, batch_size
        self.reference = copy.deepcopy(model).cpu()  # the criterion's strides, reg_max and gains
        head: Any = self.reference.model[-1]  # type: ignore[index]
        self.box_channels = int(4 * head.reg_max)
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   "cpu" if device == "auto" else device)
        self._criteria: dict[str, v8DetectionLoss] = {}

    def criterion(self) -> v8DetectionLoss:
        """Ultralytics' loss, built once per device from the original model, applied to any network's output."""
        key = str(self.device)
        if key not in self._criteria:
            self._criteria[key] = v8DetectionLoss(copy.deepcopy(self.reference).to(self.device))
        return self._criteria[key]

    def raw(self, output: Any) -> dict[str, Any]:
        return raw_predictions(output, self.box_channels)

    def fine_tune(self, model: nn.Module, steps: int, seed: int, phase: str) -> int:
        """AdamW on Ultralytics' detection loss for `steps` batches; a cosine decay for the final network."""
        model.to(self.device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=5e-4)
        schedule = _warmup_cosine(optimizer, steps) if phase == "long" else None
        criterion, train = self.criterion(), self.data.train
        order = torch.Generator().manual_seed(seed)
        rows, at = torch.randperm(len(train), generator=order), 0
        for _ in range(steps):
            if at + self.batch_size > len(train):  # a new pass over the canvases, freshly shuffled
                rows, at = torch.randperm(len(train), generator=order), 0
            batch, at = rows[at:at + self.batch_size], at + self.batch_size
            loss, _ = criterion(self.raw(model(train.images[batch].to(self.device))),
                                {k: v.to(self.device) for k, v in targets(train, batch).items()})
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()
            nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            if schedule is not None:
                schedule.step()
        return steps

    def detect(self, model: nn.Module, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Boxes (xyxy px), scores and labels per image: the head's decoding, then Ultralytics' NMS."""
        with torch.no_grad():
            output = model(images.to(self.device))
        decoded = output[0] if isinstance(output, (tuple, list)) and _is_decoded(output[0]) else output
        if _is_decoded(decoded):
            boxes, scores = xywh2xyxy(decoded[:, :4].transpose(1, 2)), decoded[:, 4:].transpose(1, 2)
        else:
            boxes, scores = self.decode(self.raw(output))
        return [_nms(b, s) for b, s in zip(boxes.cpu(), scores.cpu(), strict=True)]

    def decode(self, raw: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """xyxy pixel boxes (B, A, 4) and class probabilities (B, A, nc) from raw predictions."""
        criterion = self.criterion()
        anchors, strides = make_anchors(raw["feats"], criterion.stride, 0.5)
        boxes = criterion.bbox_decode(anchors, raw["boxes"].permute(0, 2, 1)) * strides
        return boxes, raw["scores"].permute(0, 2, 1).sigmoid()

    def mean_ap(self, model: nn.Module, split: DigitCanvases) -> dict[str, float]:
        """COCO mAP@[.5:.95] and mAP@0.5 over the whole split, from torchmetrics."""
        model.to(self.device).eval()
        metric = MeanAveragePrecision(iou_type="bbox", backend="pycocotools")
        for at in range(0, len(split), 128):
            rows = torch.arange(at, min(at + 128, len(split)))
            truth = [{"boxes": split.boxes[int(r)], "labels": split.labels[int(r)]} for r in rows]
            metric.update(self.detect(model, split.images[rows]), truth)
        result = metric.compute()
        return {"map": float(result["map"]), "map_50": float(result["map_50"])}

    def score(self, model: nn.Module) -> float:
        return self.mean_ap(model, self.data.holdout)["map"]

    def test(self, model: nn.Module) -> float:
        return self.mean_ap(model, self.data.test)["map"]


def _warmup_cosine(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A linear warm-up over the first 5% of the steps, then a cosine decay to zero."""
    warm = max(1, steps // 20)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, max(0, i - warm) / max(1, steps - warm)))))


def _is_decoded(output: Any) -> bool:
    return isinstance(output, torch.Tensor) and output.dim() == 3


def _nms(boxes: torch.Tensor, scores: torch.Tensor, conf: float = 0.001, iou: float = 0.7,
         max_det: int = 100) -> dict[str, torch.Tensor]:
    """Best class per anchor, then Ultralytics' class-aware NMS (boxes offset by class, as its own)."""
    best, labels = scores.max(dim=1)
    keep = best > conf
    boxes, best, labels = boxes[keep], best[keep], labels[keep]
    top = best.argsort(descending=True)[:3000]
    boxes, best, labels = boxes[top], best[top], labels[top]
    kept = TorchNMS.nms(boxes + labels[:, None].float() * 4096, best, iou)[:max_det]
    return {"boxes": boxes[kept], "scores": best[kept], "labels": labels[kept]}


# --- adapting it ------------------------------------------------------------------------------


class MeasuredLatency:
    """Latency (ms) of a candidate measured end to end on ONNX Runtime, side by side with the start:
    the start's figure times the ratio of their fastest runs, taken in alternating turns, so that a
    busy minute on the machine moves both and cancels. Measured once per set of widths. The user's
    own estimator: netopt only asks for `unit`, `fingerprint` and `estimate(network)`."""

    unit = "ms"
    turns = 2

    def __init__(self, traced: netopt.Traced, example: torch.Tensor, backend: OnnxRuntimeCPU) -> None:
        self.traced, self.example, self.backend = traced, example, backend
        self.fingerprint = backend.fingerprint
        self.start = traced.materialize(traced.network).eval()
        self.reference = min(self._fastest(self.start) for _ in range(self.turns))
        self._seen = {self._key(traced.network): self.reference}

    def estimate(self, network: netopt.ir.Network) -> float:
        key = self._key(network)
        if key not in self._seen:
            module = self.traced.materialize(network).eval()
            pairs = [(self._fastest(self.start), self._fastest(module)) for _ in range(self.turns)]
            self._seen[key] = self.reference * min(m for _, m in pairs) / min(s for s, _ in pairs)
        return self._seen[key]

    def _fastest(self, module: nn.Module) -> float:
        with warnings.catch_warnings():  # the spread it warns of leaves the minimum, which is what is kept
            warnings.simplefilter("ignore", NoisyMeasurementWarning)
            return float(self.backend.measure(module, self.example).min)

    @staticmethod
    def _key(network: netopt.ir.Network) -> tuple[tuple[str, int], ...]:
        return tuple(sorted((str(g), int(w)) for g, w in network.widths.items()))


def latency(args: argparse.Namespace, traced: netopt.Traced, example: torch.Tensor) -> netopt.LatencyConstraint:
    """The latency budget, priced by a lookup table of ONNX Runtime layer costs (`args.lut`, the
    default) or by measuring each candidate end to end (`args.measure`)."""
    backend = OnnxRuntimeCPU(threads=1)
    estimator: Any
    if args.measure:  # measures the start when made: only where it prices the run
        estimator = MeasuredLatency(traced, example, backend)
    else:
        args.lut.parent.mkdir(parents=True, exist_ok=True)
        # the problem calibrates it, once; the head's decoding, kept whole, is priced with its module
        estimator = netopt.LookupTable.open(args.lut, backend, opaque=traced.opaque)
    return netopt.LatencyConstraint(args.latency, estimator, netopt.ReductionSchedule("10%", decay=0.96))


def pretrained(task: Detection, steps: int) -> DetectionModel:
    """YOLOv8n trained on the canvases: stands in for the user's own trained detector."""
    torch.manual_seed(0)
    model = yolo()
    started = time.perf_counter()
    task.fine_tune(model, steps, seed=0, phase="long")
    model.to("cpu").eval()
    scores = task.mean_ap(model, task.data.holdout)
    print(f"trained in {time.perf_counter() - started:.0f} s: holdout mAP@[.5:.95] {scores['map']:.3f}, "
          f"mAP@0.5 {scores['map_50']:.3f}")
    return model


def report(result: Any, task: Detection, model: nn.Module, seconds: float) -> None:
    final, start = result.final, result.family[0]
    print(f"adapted in {seconds:.0f} s, {len(result.family) - 1} iterations")
    print(f"mAP@[.5:.95] on holdout: start {start.accuracy:.3f}, final {final.accuracy:.3f} "
          f"(mAP@0.5 {task.mean_ap(final.module, task.data.holdout)['map_50']:.3f}); test {final.test_accuracy:.3f}")
    print(f"latency: {final.resources['latency']:.4g} ms, {final.resources['latency'] / start.resources['latency']:.1%}"
          " of the start" + (f"; measured {final.measured['latency']:.4g} ms" if "latency" in final.measured else "")
          + f"; budget {result.budgets['latency']:.4g}, checked as {result.basis['latency']}")
    print(f"parameters: {sum(p.numel() for p in model.parameters())} -> "
          f"{sum(p.numel() for p in final.module.parameters())}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, default=Path("runs/yolo-digits"))
    how = p.add_mutually_exclusive_group()
    how.add_argument("--lut", type=Path, default=Path("runs/lut-ort-cpu1.sqlite"),
                     help="the lookup table that prices latency (kept for the next run)")
    how.add_argument("--measure", action="store_true", help="measure each candidate end to end instead of a table")
    p.add_argument("--latency", default="60%")
    p.add_argument("--size", type=int, default=64, help="canvas side in px (a multiple of 32)")
    p.add_argument("--canvases", type=int, default=2000, help="training canvases")
    p.add_argument("--pretrain", type=int, default=600, help="steps that train the user's model first")
    p.add_argument("--short", type=int, default=30)
    p.add_argument("--long", type=int, default=300)
    p.add_argument("--resume", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)

    data = mnist_detection(train=args.canvases, holdout=200, test=500, canvas=args.size,
                           digit_size=(args.size // 4, args.size // 2))
    task = Detection(yolo(), data)
    model = pretrained(task, args.pretrain)
    example = data.train.images[:1]
    objective = netopt.FunctionObjective(task.fine_tune, task.score, test=task.test, example_input=example)
    traced = netopt.trace(model, example)
    problem = netopt.Problem(traced, [latency(args, traced, example)], objective)
    started = time.perf_counter()
    result = netopt.ProgressiveBarrier(short_term_steps=args.short, long_term_steps=args.long).run(
        problem, run_dir=args.run, resume=args.resume)
    report(result, task, model, time.perf_counter() - started)


if __name__ == "__main__":
    main()
