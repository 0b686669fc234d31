"""Ultralytics YOLO traced and shrunk (netopt/bridge/heads.py): the backbone, neck and head branches
shrink, the Detect head's decoding is kept whole, outputs equal at full width, and train mode hands
Ultralytics' loss what the original hands it. Skipped where ultralytics (a test-only peer) is absent."""

from __future__ import annotations

import importlib.util
import os
import tempfile
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from torch import nn

import netopt
from netopt.bridge.heads import DetectDecode
from netopt.bridge.trace import OpaqueWarning

if importlib.util.find_spec("ultralytics") is None:
    pytest.skip("ultralytics (a test-only peer, installed with --no-deps) is not installed", allow_module_level=True)

SIZE = 128
CLASSES = 3


@pytest.fixture(scope="module")
def ultralytics() -> ModuleType:
    """Ultralytics' model code, its settings file (written on import) in a temporary folder."""
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="netopt-yolo-config-"))
    from netopt.testing.peers import import_torchvision

    import_torchvision()  # imported first the way the other peers need it
    return importlib.import_module("ultralytics.nn.tasks")


def _yolo(ultralytics: ModuleType, yaml: str) -> Any:
    torch.manual_seed(0)
    model = ultralytics.DetectionModel(yaml, nc=CLASSES, verbose=False).eval()
    from ultralytics.cfg import get_cfg

    model.args = get_cfg()  # the loss gains v8DetectionLoss reads
    return model


@pytest.fixture(scope="module", params=["yolov8n.yaml", "yolov5nu.yaml"])
def yolo(request: pytest.FixtureRequest, ultralytics: ModuleType) -> tuple[nn.Module, netopt.Traced]:
    model = _yolo(ultralytics, request.param)
    with warnings.catch_warnings():
        warnings.simplefilter("error", OpaqueWarning)  # the routed decoder is no user-visible opaque block
        traced = netopt.trace(model, torch.randn(1, 3, SIZE, SIZE))
    return model, traced


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_the_traced_yolo_returns_the_decoded_predictions_of_the_original_at_full_width(yolo: Any) -> None:
    model, traced = yolo
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        decoded, _raw = model(x)
        mine = traced.materialize().eval()(x)
    assert mine.shape == (2, 4 + CLASSES, (SIZE // 8) ** 2 + (SIZE // 16) ** 2 + (SIZE // 32) ** 2)
    torch.testing.assert_close(mine, decoded)


def test_every_group_halves_and_the_materialized_yolo_runs_with_exact_parameters(yolo: Any) -> None:
    model, traced = yolo
    assert netopt.ir.params(traced.network) == _params(model)
    small = traced.network.scaled(0.5)
    small.lint()
    assert all(g.width <= max(g.min_width, (g.full_width + 1) // 2) for g in small.groups)
    module = traced.materialize(small).eval()
    with torch.no_grad():
        out = module(torch.randn(1, 3, SIZE, SIZE))
    assert out.shape[1] == 4 + CLASSES
    assert netopt.ir.params(small) == _params(module) < _params(model) * 0.4


def test_the_head_branches_shrink_inside_while_their_box_and_class_maps_stay_whole(yolo: Any) -> None:
    model, traced = yolo
    head = model.model[-1]
    groups = {g.id: g for g in traced.network.groups}
    inner = [name for name in groups if ".cv2.0.0." in name or ".cv3.0.0." in name]
    assert inner, sorted(groups)
    last = {f"{head_path}.{branch}.{level}.2" for head_path in [_path(model, head)]
            for branch in ("cv2", "cv3") for level in range(head.nl)}
    assert not last & set(groups)  # 4 * reg_max box bins and nc classes: fixed, as the decoder needs
    (decoder,) = [n for n in traced.network.nodes if n.op is netopt.ir.OpKind.OPAQUE]
    assert decoder.attrs.params == _params(head.dfl) and isinstance(traced.opaque[decoder.name], DetectDecode)


def test_a_yolo_netopt_built_traces_again_exactly_as_progressive_barrier_retraces_it(yolo: Any) -> None:
    _, traced = yolo
    x = torch.randn(1, 3, SIZE, SIZE)
    small = traced.materialize(traced.network.scaled(0.5)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", OpaqueWarning)
        again = netopt.trace(small, x, step=traced.network.step)
    assert netopt.ir.params(again.network) == _params(small) == netopt.ir.params(traced.network.scaled(0.5))
    assert netopt.ir.macs(again.network) == netopt.ir.macs(traced.network.scaled(0.5))
    with torch.no_grad():
        torch.testing.assert_close(again.materialize().eval()(x), small(x))
        assert again.materialize(again.network.scaled(0.5)).eval()(x).shape == small(x).shape


def test_netopt_recognises_the_head_by_its_class_name_and_never_imports_ultralytics() -> None:
    import ast

    import netopt.bridge.heads as heads

    tree = ast.parse(Path(heads.__file__).read_text(encoding="utf-8"))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(name.split(".")[0] == "ultralytics" for name in imported)
    assert all(name.startswith("ultralytics.nn.modules.head.") for name in heads.HEADS)


def _path(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


def test_in_train_mode_the_materialized_yolo_feeds_ultralytics_loss_like_the_original(yolo: Any) -> None:
    from ultralytics.utils.loss import v8DetectionLoss

    model, traced = yolo
    x = torch.randn(2, 3, SIZE, SIZE)
    batch = {"batch_idx": torch.tensor([0.0, 1.0]), "cls": torch.tensor([[1.0], [2.0]]),
             "bboxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.6, 0.1, 0.1]])}
    criterion = v8DetectionLoss(model)
    full = traced.materialize().train()
    try:
        theirs, mine = model.train()(x), full(x)
    finally:
        model.eval()
    assert mine["boxes"].shape == theirs["boxes"].shape and mine["scores"].shape == theirs["scores"].shape
    assert [f.shape[2:] for f in mine["feats"]] == [f.shape[2:] for f in theirs["feats"]]
    torch.testing.assert_close(criterion(mine, batch)[0], criterion(theirs, batch)[0])
    small = traced.materialize(traced.network.scaled(0.5)).train()
    loss, _ = criterion(small(x), batch)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and all(p.grad is not None for p in small.parameters() if p.requires_grad)


def test_the_decoder_moves_with_the_module_its_strides_and_anchors_too(yolo: Any) -> None:
    _, traced = yolo
    x = torch.randn(1, 3, SIZE, SIZE)
    module = traced.materialize().eval()
    with torch.no_grad():
        expected = module(x)
        doubled = module.double()(x.double())
    assert doubled.dtype == torch.float64
    torch.testing.assert_close(doubled.float(), expected, rtol=1e-4, atol=1e-3)


NEWER = [pytest.param("yolov10n.yaml", marks=pytest.mark.slow), "yolo11n.yaml",
         pytest.param("yolo26n.yaml", marks=pytest.mark.slow)]
"""YOLO11 in the default suite; v10 and 26 (the same head, end to end) with the slow tests."""


def _check_newer(model: Any, traced: netopt.Traced) -> None:
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        decoded = model(x)[0]
        torch.testing.assert_close(traced.materialize().eval()(x), decoded)
        small = traced.materialize(traced.network.scaled(0.5)).eval()
        assert small(x).shape == decoded.shape
    assert netopt.ir.params(traced.network) == _params(model)
    raw = traced.materialize().train()(torch.randn(2, 3, SIZE, SIZE))
    end2end = getattr(model.model[-1], "one2one_cv2", None) is not None
    assert set(raw) == ({"one2many", "one2one"} if end2end else {"boxes", "scores", "feats"})


@pytest.mark.parametrize("yaml", NEWER)
def test_newer_yolos_with_their_attention_kept_whole_trace_and_match(ultralytics: ModuleType, yaml: str) -> None:
    from ultralytics.nn.modules.block import Attention

    model = _yolo(ultralytics, yaml)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OpaqueWarning)  # the attention blocks are
        traced = netopt.trace(model, torch.randn(1, 3, SIZE, SIZE), opaque=[Attention])
    _check_newer(model, traced)


@pytest.mark.parametrize("yaml", NEWER)
def test_newer_yolos_go_through_as_far_as_the_ir_models_their_attention(ultralytics: ModuleType, yaml: str) -> None:
    model = _yolo(ultralytics, yaml)
    try:
        traced = netopt.trace(model, torch.randn(1, 3, SIZE, SIZE))
    except netopt.errors.UnsupportedOpError as exc:  # stopped inside PSA / C2PSA, in one line
        assert ".attn" in str(exc) and "\n" not in str(exc)
        return
    _check_newer(model, traced)


def test_a_yolo_head_named_opaque_is_refused_in_one_line_since_it_returns_a_tuple(ultralytics: ModuleType) -> None:
    model = _yolo(ultralytics, "yolov8n.yaml")
    head = _path(model, model.model[-1])
    with pytest.raises(netopt.errors.UnsupportedOpError, match="returns several values"):  # (tensor, dict)
        netopt.trace(model, torch.randn(1, 3, SIZE, SIZE), opaque=[head])
